//! Start-up checks of what `engine-shim run` was told to use, before the node is asked anything.
//!
//! Anything wrong here would otherwise surface only when an engine must start — possibly hours
//! later, at the upgrade block, where a missing program means a restart loop and a missed
//! upgrade. So each engine program and the control socket's directory are looked at once, at
//! start-up, whether or not the node is up; the lock is checked by `lock::preflight`, the
//! metrics address by binding it before following starts.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use rustix::fs::Access;

/// The program an engine command names, resolved like `execvp` does (a name without `/` is
/// looked up in `PATH`), if it is a regular file (after links) that this user may execute.
pub fn engine_program(program: &str) -> Result<PathBuf, String> {
    let fix = "install it, or correct the path in --engine / -- CMD / [[engine]]";
    if program.is_empty() {
        return Err(format!("an engine has an empty program name: {fix}"));
    }
    if program.contains('/') {
        return executable(Path::new(program)).map(|()| PathBuf::from(program));
    }
    let path = env::var_os("PATH").unwrap_or_default();
    let candidates: Vec<PathBuf> = env::split_paths(&path)
        .map(|dir| dir.join(program))
        .collect();
    candidates
        .iter()
        .find(|candidate| executable(candidate).is_ok())
        .cloned()
        .ok_or_else(|| match candidates.iter().find(|c| c.exists()) {
            Some(found) => executable(found).unwrap_err(),
            None => format!(
                "engine program {program} is not in PATH ({}): {fix}, or give its full path",
                path.to_string_lossy()
            ),
        })
}

/// A regular file (links followed: a program may well be a link) that we may execute.
fn executable(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let fix = "install it, or correct the path in --engine / -- CMD / [[engine]]";
    let meta = fs::metadata(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => format!("engine program {shown} does not exist: {fix}"),
        _ => format!("engine program {shown} cannot be inspected ({err}): {fix}"),
    })?;
    if !meta.is_file() {
        return Err(format!(
            "engine program {shown} is not a regular file: {fix}"
        ));
    }
    rustix::fs::access(path, Access::EXEC_OK).map_err(|err| {
        format!(
            "engine program {shown} is not executable by this user ({err}): chmod +x it, or run \
             the shim as a user allowed to execute it"
        )
    })
}

/// The control socket's directory exists and we may create the socket in it. What is at the
/// path itself is the control module's business when it binds.
pub fn control_socket_dir(socket: &Path) -> Result<(), String> {
    let dir = match socket.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let shown = dir.display();
    let fix = "create it, or pass another --control-socket PATH";
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(format!("{shown} is not a directory: {fix}")),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("directory {shown} does not exist: {fix}"))
        }
        Err(err) => {
            return Err(format!(
                "directory {shown} cannot be inspected ({err}): {fix}"
            ))
        }
    }
    rustix::fs::access(dir, Access::WRITE_OK | Access::EXEC_OK)
        .map_err(|err| format!("directory {shown} is not writable by this user ({err}): {fix}"))?;
    if socket
        .file_name()
        .is_none_or(|name| name == OsStr::new(".."))
    {
        return Err(format!("{} names no socket file: {fix}", socket.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_executable_file_or_a_program_in_path_is_fine() {
        assert_eq!(engine_program("/bin/sh"), Ok(PathBuf::from("/bin/sh")));
        assert!(engine_program("sh").unwrap().ends_with("sh"));
    }

    #[test]
    fn missing_or_unusable_programs_name_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("engine");
        let err = engine_program(missing.to_str().unwrap()).unwrap_err();
        assert!(
            err.ends_with(
                "does not exist: install it, or correct the path in --engine / -- CMD / [[engine]]"
            ),
            "{err}"
        );
        assert!(engine_program(dir.path().to_str().unwrap())
            .unwrap_err()
            .contains("is not a regular file"));
        fs::write(&missing, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(&missing, fs::Permissions::from_mode(0o644)).unwrap();
        // root may execute a file only if some execute bit is set, so this holds for root too.
        assert!(engine_program(missing.to_str().unwrap())
            .unwrap_err()
            .contains("is not executable by this user"));
        assert!(engine_program("no-such-engine-program-anywhere")
            .unwrap_err()
            .contains("is not in PATH"));
    }

    #[test]
    fn the_control_socket_needs_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(control_socket_dir(&dir.path().join("shim.sock")), Ok(()));
        let err = control_socket_dir(&dir.path().join("nope/shim.sock")).unwrap_err();
        assert!(err.contains("does not exist: create it"), "{err}");
    }
}
