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
            // The log format may come from the config file, so errors before this are plain text.
            let config = match args.resolve() {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            telemetry::init(config.log_format, false);
            match runtime.block_on(run::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    if e.downcast_ref::<run::UsageError>().is_some() {
                        ExitCode::from(2)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
        Command::Check(args) => {
            telemetry::init(args.chain.log_format, true);
            ExitCode::from(runtime.block_on(check::run(args)))
        }
    }
}
