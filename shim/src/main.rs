//! The `engine-shim` binary: parses flags and hands over to `run` or `check`.

use std::process::ExitCode;

use clap::Parser;
use engine_shim::cli::{Cli, Command, HandoffArgs};
use engine_shim::{check, run, telemetry};

fn main() -> ExitCode {
    // The engine's guardian is this binary too, started by the supervisor; it needs no runtime.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|arg| arg == engine_shim::guardian::SUBCOMMAND)
    {
        engine_shim::guardian::main(&args[2..]);
    }
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
            let _logs = telemetry::init(config.log_format, false);
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
        Command::Handoff(args) => runtime.block_on(hand_off(args)),
        Command::Check(args) => {
            let _logs = telemetry::init(args.chain.log_format, true);
            ExitCode::from(runtime.block_on(check::run(args)))
        }
    }
}

/// `engine-shim handoff`: through the control socket (and wait for the answer), or by SIGUSR1.
/// Exit codes: 0 done, 1 failed, 2 the pid names no engine-shim.
async fn hand_off(args: HandoffArgs) -> ExitCode {
    use engine_shim::handoff_pid::{send_hand_off, HandOffPidError};
    let result = match (&args.control_socket, args.pid) {
        (Some(path), _) => engine_shim::control::request_hand_off(path, args.timeout)
            .await
            .map_err(|e| (ExitCode::FAILURE, e)),
        (None, Some(pid)) => send_hand_off(pid).map_err(|e| match e {
            HandOffPidError::Refused(e) => (ExitCode::from(2), e),
            HandOffPidError::Failed(e) => (ExitCode::FAILURE, e),
        }),
        (None, None) => unreachable!("clap requires --control-socket or --pid"),
    };
    match result {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err((code, error)) => {
            eprintln!("error: {error}");
            code
        }
    }
}
