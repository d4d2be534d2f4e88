//! `engine-shim man-pages DIR`: writes the man pages (`engine-shim.1`, `engine-shim-run.1`, …) from the
//! very clap definitions the binary parses, so the packaged pages cannot drift from the flags. Hidden
//! from `--help`: it exists for the Debian package build (`scripts/build-deb`), not for operators.

use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;
use engine_shim::cli::Cli;

/// The first argument that selects this mode, checked before clap parses anything.
pub const SUBCOMMAND: &str = "man-pages";

/// Writes one page for the binary and one per subcommand into `args[0]` (created if missing).
pub fn main(args: &[std::ffi::OsString]) -> ExitCode {
    let [dir] = args else {
        eprintln!("usage: engine-shim {SUBCOMMAND} DIR");
        return ExitCode::from(2);
    };
    match write_pages(Path::new(dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing man pages to {}: {e}", dir.to_string_lossy());
            ExitCode::FAILURE
        }
    }
}

fn write_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_page_per_command_with_its_flags() {
        let dir = tempfile::tempdir().unwrap();
        write_pages(dir.path()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "engine-shim-check.1",
                "engine-shim-run.1",
                "engine-shim-step-down.1",
                "engine-shim.1"
            ]
        );
        let run = std::fs::read_to_string(dir.path().join("engine-shim-run.1")).unwrap();
        for flag in ["grace", "lock\\-dir", "ENGINE_SHIM_NODE"] {
            assert!(run.contains(flag), "engine-shim-run.1 lacks {flag}");
        }
    }

    #[test]
    fn refuses_anything_but_one_directory() {
        assert_eq!(main(&[]), ExitCode::from(2));
        assert_eq!(main(&["a".into(), "b".into()]), ExitCode::from(2));
    }
}
