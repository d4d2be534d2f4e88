//! The `engine-shim` binary: parses flags, installs the signal handlers and hands over to `run` or
//! `check`. Everything that touches clap or the process's signals stays here and in `cli`, so the
//! library's shells take plain values and run in-process in tests.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use engine_shim::cli::{Cli, Command, HandoffArgs};
use engine_shim::config::Overrides;
use engine_shim::run::{Request, Requests};
use engine_shim::{check, run, telemetry};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

fn main() -> ExitCode {
    // The engine's guardian is this binary too, started by the supervisor; it needs no runtime.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|arg| arg == engine_shim::GUARDIAN_SUBCOMMAND)
    {
        engine_shim::guardian_main(&args[2..]);
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
            let config = match Overrides::from(*args).resolve() {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let _logs = telemetry::init(config.log_format, false);
            let running = async {
                let requests = forward_signals()?;
                run::run(config, requests).await
            };
            match runtime.block_on(running) {
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
            ExitCode::from(runtime.block_on(check::run(args.request())))
        }
    }
}

/// `engine-shim handoff`: through the control socket (and wait for the answer), or by SIGUSR1.
/// Exit codes: 0 done, 1 failed, 2 the pid names no engine-shim.
async fn hand_off(args: HandoffArgs) -> ExitCode {
    use engine_shim::{send_hand_off, HandOffPidError};
    let result = match (&args.control_socket, args.pid) {
        (Some(path), _) => engine_shim::request_hand_off(path, args.timeout())
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

/// Installs the handlers for the signals `run` answers and forwards each signal as a [`Request`]:
/// SIGTERM and SIGINT shut down (a second one kills the engine at once), SIGUSR1 hands off,
/// SIGHUP re-reads the config file. Installed before start-up, so a signal during the engine
/// probes is answered too rather than killing the shim.
fn forward_signals() -> anyhow::Result<Requests> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let (requests, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                _ = sigterm.recv() => Request::Shutdown { signal: "SIGTERM" },
                _ = sigint.recv() => Request::Shutdown { signal: "SIGINT" },
                _ = sigusr1.recv() => Request::HandOff { signal: "SIGUSR1" },
                _ = sighup.recv() => Request::Reload,
            };
            if requests.send(request).is_err() {
                return;
            }
        }
    });
    Ok(received)
}
