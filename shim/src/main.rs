//! The `engine-shim` binary: parses flags and hands over to `run` or `check`.

use std::process::ExitCode;

use clap::Parser;
use engine_shim::cli::{Cli, Command};
use engine_shim::{check, run, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Run(args) => {
            telemetry::init(args.chain.log_format, false);
            match runtime.block_on(run::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check(args) => {
            telemetry::init(args.chain.log_format, true);
            ExitCode::from(runtime.block_on(check::run(args)))
        }
    }
}
