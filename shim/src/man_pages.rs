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
