//! Start-up checks of the lock the operator named, before any node is asked anything.
//!
//! A lock that cannot work is otherwise found only when an engine must start — possibly hours
//! later, at the upgrade block — and the shim then exits, so the upgrade is missed. These checks
//! run once at start-up, independently of the node, so a wrong `--lock` / `--lock-dir` fails at
//! once. They look without touching: nothing is created, opened or locked here (the lock backend
//! does its own checks when it opens the file, for what may change later).

use std::fs::{self, Metadata};
use std::io::ErrorKind;
use std::path::Path;

use rustix::fs::Access;

use super::file::check_is_a_lock_file;
use super::LockSpec;

/// The tail of every file-lock error: the three ways out an operator has.
const WAYS_OUT: &str = "or pass --lock-dir DIR / --lock file:PATH / --lock none";

/// Whether the lock can be used, as far as can be told without taking it. The error names the lock
/// and the fix. A PostgreSQL lock was already parsed (URL, mode, timings); reaching the database
/// is the lock's own business, as the database may come and go.
pub(crate) fn check(spec: &LockSpec) -> Result<(), String> {
    match spec {
        LockSpec::None | LockSpec::Postgres(_) => Ok(()),
        LockSpec::File(path) => {
            check_file(path).map_err(|problem| format!("the lock {spec} cannot be used: {problem}"))
        }
    }
}

/// The lock file's directory exists, is a directory we may create files in, and the lock path is
/// absent or a regular file we may read and write (never a link: whoever can write the directory
/// could point it elsewhere).
fn check_file(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "lock directory {} is not a directory: name a directory, {WAYS_OUT}",
                dir.display()
            ))
        }
        Err(err) if err.kind() == ErrorKind::NotFound => {
            return Err(format!(
                "lock directory {} does not exist: create it, {WAYS_OUT}",
                dir.display()
            ))
        }
        Err(err) => {
            return Err(format!(
                "lock directory {} cannot be read ({err}): fix its permissions, {WAYS_OUT}",
                dir.display()
            ))
        }
    }
    if let Err(err) = rustix::fs::access(dir, Access::WRITE_OK | Access::EXEC_OK) {
        return Err(format!(
            "lock directory {} is not writable by this user ({err}): make it writable for the \
             user the shim runs as, {WAYS_OUT}",
            dir.display()
        ));
    }
    match fs::symlink_metadata(path) {
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        Err(err) => Err(format!(
            "{} cannot be inspected ({err}): fix its permissions, {WAYS_OUT}",
            path.display()
        )),
        Ok(meta) => check_existing(path, &meta),
    }
}

/// An existing lock path must be what the lock backend will accept (a regular file with one link,
/// never a symbolic link: the same rule, from the same place) and one we may read and write.
fn check_existing(path: &Path, meta: &Metadata) -> Result<(), String> {
    check_is_a_lock_file(path, meta)?;
    rustix::fs::access(path, Access::READ_OK | Access::WRITE_OK).map_err(|err| {
        format!(
            "{} is not readable and writable by this user ({err}): fix its owner or mode, \
             {WAYS_OUT}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn file_lock(path: &Path) -> LockSpec {
        LockSpec::File(path.to_path_buf())
    }

    #[test]
    fn an_absent_or_regular_lock_file_in_a_writable_directory_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine-shim.lock");
        assert_eq!(check(&file_lock(&path)), Ok(()));
        fs::write(&path, b"").unwrap();
        assert_eq!(check(&file_lock(&path)), Ok(()));
        assert_eq!(check(&LockSpec::None), Ok(()));
    }

    #[test]
    fn a_missing_directory_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope/engine-shim.lock");
        let err = check(&file_lock(&path)).unwrap_err();
        assert_eq!(
            err,
            format!(
                "the lock file:{} cannot be used: lock directory {} does not exist: create it, \
                 or pass --lock-dir DIR / --lock file:PATH / --lock none",
                path.display(),
                dir.path().join("nope").display()
            )
        );
    }

    #[test]
    fn a_file_where_the_directory_should_be_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("file"), b"").unwrap();
        let err = check(&file_lock(&dir.path().join("file/engine-shim.lock"))).unwrap_err();
        assert!(err.contains("is not a directory"), "{err}");
    }

    #[test]
    fn links_directories_and_fifos_are_not_lock_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"").unwrap();
        let link = dir.path().join("link.lock");
        symlink(&target, &link).unwrap();
        let err = check(&file_lock(&link)).unwrap_err();
        assert!(err.contains("is a symbolic link"), "{err}");

        let sub = dir.path().join("sub.lock");
        fs::create_dir(&sub).unwrap();
        assert!(check(&file_lock(&sub))
            .unwrap_err()
            .contains("is a directory"));

        let fifo = dir.path().join("fifo.lock");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(check(&file_lock(&fifo))
            .unwrap_err()
            .contains("is a named pipe"));

        let hard = dir.path().join("hard.lock");
        fs::hard_link(&target, &hard).unwrap();
        assert!(check(&file_lock(&hard))
            .unwrap_err()
            .contains("is a file with 2 hard links"));
    }
}
