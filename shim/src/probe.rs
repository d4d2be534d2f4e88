//! Learns what an engine program covers when its versions are not declared: `PROGRAM --version`,
//! plus the engine libraries the program links (see [`crate::elf`]).
//!
//! The program is run with `--version` alone, without the engine's other arguments: those are
//! for a running engine (and may name files that only exist at run time), while `--version` is
//! answered before any of them is read. Every error says so, so an engine that needs more to
//! print its version is given one with `--engine-version` / `VERSION=` instead.
//!
//! The engine's version decides whether it may run, so a probe that cannot give a clear answer is an
//! error that tells the operator how to fix it, never a guess.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::process::Command;

use crate::covers::Covers;
use crate::elf::{self, ElfError};
use crate::version::SemVer;

/// Why `PROGRAM --version` gave no usable version. Each message names the way out.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot execute {} (to ask `{} --version`, run without the engine's other arguments): {source}; check the path and that it is executable, or pass --engine-version X.Y.Z", program.display(), program.display())]
    CannotExecute {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{} --version` (run without the engine's other arguments) did not finish within {}; pass --engine-version X.Y.Z", program.display(), humantime::format_duration(*timeout))]
    TimedOut { program: PathBuf, timeout: Duration },
    #[error("`{} --version` (run without the engine's other arguments) failed ({status}){}; pass --engine-version X.Y.Z", program.display(), output_excerpt(output))]
    ExitStatus {
        program: PathBuf,
        status: ExitStatus,
        output: String,
    },
    #[error("no X.Y.Z version in the output of `{} --version` (run without the engine's other arguments){}; pass --engine-version X.Y.Z", program.display(), output_excerpt(output))]
    NoVersion { program: PathBuf, output: String },
    #[error("cannot read the engine libraries {} links: {source}; give its versions as --engine X.Y.Z,X.Y.Z=CMD or versions = [...] in its [[engine]] table", program.display())]
    Libraries {
        program: PathBuf,
        #[source]
        source: LibrariesError,
    },
}

/// Why a program's linked libraries could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LibrariesError {
    #[error(transparent)]
    Read(#[from] io::Error),
    #[error(transparent)]
    Elf(#[from] ElfError),
}

/// Everything `program` covers: the version `program --version` prints, plus the versions of the
/// engine libraries it links (a runner prints only its newest). A script or any other non-ELF
/// program links nothing: its `--version` alone counts.
pub async fn discover(program: &Path, timeout: Duration) -> Result<Covers, ProbeError> {
    let printed = probe_version(program, timeout).await?;
    let mut versions = linked_versions(program).map_err(|source| ProbeError::Libraries {
        program: program.to_path_buf(),
        source,
    })?;
    versions.push(printed);
    Ok(Covers::new(versions).expect("holds the printed version"))
}

/// The engine library versions in `program`'s dynamic section.
pub fn linked_versions(program: &Path) -> Result<Vec<SemVer>, LibrariesError> {
    let image = std::fs::read(program)?;
    Ok(elf::engine_library_versions(&image)?)
}

/// Runs `program --version` once and takes the first `X.Y.Z` in its stdout, then its stderr.
///
/// The program runs in its own process group, which is killed if it does not finish within
/// `timeout`, so a hanging probe leaves nothing behind.
pub async fn probe_version(program: &Path, timeout: Duration) -> Result<SemVer, ProbeError> {
    let cannot_execute = |source| ProbeError::CannotExecute {
        program: program.to_path_buf(),
        source,
    };
    let child = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(cannot_execute)?;
    let pgid = child.id().and_then(|pid| Pid::from_raw(pid as i32));
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.map_err(cannot_execute)?,
        Err(_elapsed) => {
            // Dropping the future killed the program itself; this takes anything it started with it.
            if let Some(pgid) = pgid {
                let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
            }
            return Err(ProbeError::TimedOut {
                program: program.to_path_buf(),
                timeout,
            });
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        return Err(ProbeError::ExitStatus {
            program: program.to_path_buf(),
            status: output.status,
            output: text,
        });
    }
    SemVer::find_in(&text).ok_or_else(|| ProbeError::NoVersion {
        program: program.to_path_buf(),
        output: text,
    })
}

/// A short, one-line view of what the program printed, for error messages.
fn output_excerpt(output: &str) -> String {
    const LIMIT: usize = 200;
    let flat = output.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        return " with no output".to_string();
    }
    match flat.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!(": \"{}…\"", &flat[..cut]),
        None => format!(": \"{flat}\""),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// Writes an executable shell script standing in for an engine binary.
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// `probe_version`, retried while the script is busy: a test on another thread may fork while
    /// this one's script is still open for writing, and exec then fails with ETXTBSY for a moment.
    async fn probe(program: &Path, timeout: Duration) -> Result<SemVer, ProbeError> {
        const ETXTBSY: i32 = 26;
        for _ in 0..50 {
            match probe_version(program, timeout).await {
                Err(ProbeError::CannotExecute { source, .. })
                    if source.raw_os_error() == Some(ETXTBSY) =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                other => return other,
            }
        }
        probe_version(program, timeout).await
    }

    #[tokio::test]
    async fn takes_the_first_version_printed() {
        let dir = tempfile::tempdir().unwrap();
        let engine = script(
            dir.path(),
            "engine",
            r#"[ "$1" = "--version" ] || exit 9; echo "chainflip-engine 1.3.2 (build 2.0.0)""#,
        );
        let version = probe(&engine, TIMEOUT).await.unwrap();
        assert_eq!(version, SemVer::new(1, 3, 2));
    }

    #[tokio::test]
    async fn a_script_covers_only_the_version_it_prints() {
        let dir = tempfile::tempdir().unwrap();
        let engine = script(dir.path(), "engine", "echo 'chainflip-engine 2.3.0'");
        probe(&engine, TIMEOUT).await.unwrap();
        let covers = discover(&engine, TIMEOUT).await.unwrap();
        assert_eq!(covers, Covers::one(SemVer::new(2, 3, 0)));
    }

    #[tokio::test]
    async fn reads_stderr_too() {
        let dir = tempfile::tempdir().unwrap();
        let engine = script(dir.path(), "engine", "echo 'engine v1.1.0' >&2");
        assert_eq!(probe(&engine, TIMEOUT).await.unwrap(), SemVer::new(1, 1, 0));
    }

    #[tokio::test]
    async fn missing_program_cannot_execute() {
        let err = probe(Path::new("/nonexistent/engine"), TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::CannotExecute { .. }), "{err:?}");
        assert!(err.to_string().contains("pass --engine-version"), "{err}");
    }

    #[tokio::test]
    async fn failing_program_reports_its_status_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let engine = script(dir.path(), "engine", "echo 'unknown flag 1.2.3'; exit 4");
        let err = probe(&engine, TIMEOUT).await.unwrap_err();
        let ProbeError::ExitStatus { status, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(status.code(), Some(4));
        let message = err.to_string();
        assert!(message.contains("unknown flag 1.2.3"), "{message}");
        assert!(message.contains("pass --engine-version"), "{message}");
        assert!(
            message.contains("run without the engine's other arguments"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn output_without_a_version_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let engine = script(dir.path(), "engine", "echo 'engine (dev build)'");
        let err = probe(&engine, TIMEOUT).await.unwrap_err();
        assert!(matches!(err, ProbeError::NoVersion { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("no X.Y.Z version") && message.contains("engine (dev build)"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn hanging_program_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let engine = script(dir.path(), "engine", "sleep 30 & wait");
        let started = std::time::Instant::now();
        let err = probe(&engine, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::TimedOut { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("200ms"), "{err}");
    }
}
