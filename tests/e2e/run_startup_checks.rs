//! Everything that can be checked at start-up is checked at start-up: a wrong lock, engine
//! program, control socket directory, metrics address, node URL or duration fails at once with a
//! clear message and exit code 1 (the environment) or 2 (usage), rather than hours later at the
//! upgrade block.
//!
//! Every shim here is pointed at a node port where nothing listens: each check must fail without
//! waiting for the node.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::common::{bin, exit_code, Proc};

/// A `ws://` URL on a loopback port where nothing listens (the kernel picked it, then it was freed).
fn dead_node() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("ws://127.0.0.1:{port}")
}

/// Runs `engine-shim ARGS` with `env` until it exits; asserts its exit code, and that its output
/// has a line containing each of `needles`.
async fn expect_exit(args: &[String], env: &[(&str, &str)], code: i32, needles: &[&str]) {
    let mut command = Command::new(bin("engine-shim"));
    command.args(args).env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    let mut proc = Proc::spawn("engine-shim", command);
    let exit = exit_code(proc.wait_exit().await);
    for needle in needles {
        let what = format!("a line containing {needle:?} (args {args:?}, env {env:?})");
        proc.output
            .wait_for(0, &what, |line| line.contains(needle).then_some(()))
            .await;
    }
    assert_eq!(
        exit,
        code,
        "exit code of {args:?} {env:?}; output:\n{}",
        proc.output.dump()
    );
}

/// `engine-shim run` against `node` with a fake-engine 1.0.0 whose version is given (so it is not
/// probed), `--lock LOCK`, and `extra` flags.
fn run_args(node: &str, lock: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--node", node, "--engine-version", "1.0.0"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(["--lock".to_string(), lock.to_string()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push("--".into());
    args.push(bin("fake-engine").display().to_string());
    args.extend(["--as-version".into(), "1.0.0".into()]);
    args
}

/// A file lock in `dir`, as the harness gives every shim.
fn lock_in(dir: &Path) -> String {
    format!("file:{}", dir.join("engine-shim.lock").display())
}

/// A lock that cannot work fails the shim at once (exit 1), naming the fix: a missing directory,
/// a link, a directory or a FIFO where the lock file should be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_lock_fails_at_once_without_the_node() {
    let node = dead_node();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let file = |path: &Path| format!("file:{}", path.display());

    let link = dir.path().join("link.lock");
    symlink(dir.path().join("elsewhere"), &link).unwrap();
    let subdir = dir.path().join("dir.lock");
    fs::create_dir(&subdir).unwrap();
    let fifo = dir.path().join("fifo.lock");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo failed");

    let missing_lock = missing.join("engine-shim.lock");
    let missing_message = format!(
        "the lock {} cannot be used: lock directory {} does not exist: create it, or pass \
         --lock-dir DIR / --lock file:PATH / --lock none",
        file(&missing_lock),
        missing.display()
    );
    let cases = [
        (file(&missing_lock), missing_message.as_str()),
        (file(&link), "is a symbolic link"),
        (file(&subdir), "is a directory, not a lock file"),
        (file(&fifo), "is a named pipe, not a lock file"),
    ];
    for (lock, message) in cases {
        let args = run_args(&node, &lock, &[]);
        expect_exit(&args, &[], 1, &[message]).await;
    }
    // A PostgreSQL lock is parsed at start-up too: a malformed one is a usage error.
    let args = run_args(&node, "postgres://shim:secret@db/locks", &[]);
    expect_exit(&args, &[], 2, &["the PostgreSQL URL contains a password"]).await;
    // The default lock, moved by --lock-dir to a directory that does not exist.
    let mut args = run_args(&node, "", &[]);
    let at = args.iter().position(|a| a == "--lock").unwrap();
    args.drain(at..at + 2);
    args.splice(
        1..1,
        ["--lock-dir".to_string(), missing.display().to_string()],
    );
    expect_exit(&args, &[], 1, &[&missing_message]).await;
}

/// A missing or unusable engine program fails at once (exit 1), even when its version is given
/// and it would otherwise be found only when it must start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_engine_program_fails_at_once_without_the_node() {
    let node = dead_node();
    let dir = tempfile::tempdir().unwrap();
    let not_executable = dir.path().join("engine-1.1");
    fs::write(&not_executable, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&not_executable, fs::Permissions::from_mode(0o644)).unwrap();
    let lock = format!("file:{}", dir.path().join("engine-shim.lock").display());
    let with_engine = |engine: String| -> Vec<String> {
        ["run", "--node", &node, "--lock", &lock, "--engine", &engine]
            .iter()
            .map(|a| a.to_string())
            .collect()
    };
    let missing = dir.path().join("engine-1.0");
    let cases = [
        (
            with_engine(format!("1.0.0={}", missing.display())),
            format!("engine program {} does not exist", missing.display()),
        ),
        (
            with_engine(format!("1.1.0={}", not_executable.display())),
            format!(
                "engine program {} is not executable by this user",
                not_executable.display()
            ),
        ),
        (
            with_engine(format!("1.2.0={}", dir.path().display())),
            format!(
                "engine program {} is not a regular file",
                dir.path().display()
            ),
        ),
        (
            with_engine("1.3.0=no-such-engine-program-anywhere".into()),
            "engine program no-such-engine-program-anywhere is not in PATH".into(),
        ),
    ];
    for (args, message) in cases {
        expect_exit(&args, &[], 1, &[&message]).await;
    }
}

/// The control socket's directory and the metrics address are checked before the node is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_and_metrics_address_are_checked_without_the_node() {
    let node = dead_node();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("missing/shim.sock");
    let socket = socket.display().to_string();
    let args = run_args(&node, &lock_in(dir.path()), &["--control-socket", &socket]);
    expect_exit(
        &args,
        &[],
        1,
        &[&format!(
            "cannot listen on the control socket {socket}: directory {} does not exist",
            dir.path().join("missing").display()
        )],
    )
    .await;

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let args = run_args(&node, &lock_in(dir.path()), &["--metrics-listen", &addr]);
    expect_exit(&args, &[], 1, &[&format!("cannot serve metrics on {addr}")]).await;
}

/// Only `ws://` is spoken: `wss://` (no TLS in this build), `http://` and a bare address are
/// refused as usage errors (exit 2) naming the fix, for `run` and `check`, from a flag, the
/// environment or the config file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_url_the_shim_cannot_speak_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("wss://rpc.example.com:443", "no TLS"),
        ("http://127.0.0.1:9933", "WebSocket endpoint"),
        ("127.0.0.1:9944", "write ws://HOST:PORT"),
    ];
    for (url, fix) in cases {
        let needles = [&format!("'{url}' is not a ws:// URL")[..], fix];
        let args = run_args(url, &lock_in(dir.path()), &[]);
        expect_exit(&args, &[], 2, &needles).await;
        let check = ["check", "--engine-version", "1.0.0", "--node", url].map(String::from);
        expect_exit(&check, &[], 2, &needles).await;
        let mut args = run_args("ws://127.0.0.1:1", &lock_in(dir.path()), &[]);
        args.drain(1..3);
        expect_exit(&args, &[("ENGINE_SHIM_NODE", url)], 2, &needles).await;
        let file = dir.path().join("shim.toml");
        fs::write(&file, format!("node = \"{url}\"\n")).unwrap();
        let file_arg = file.display().to_string();
        args.splice(1..1, ["--config".to_string(), file_arg.clone()]);
        let in_file = format!("node in {file_arg}: '{url}' is not a ws:// URL");
        expect_exit(&args, &[], 2, &[&in_file, fix]).await;
    }
}

/// Every duration flag refuses zero and absurd values with its accepted range (exit 2), before
/// the node is asked; so do the environment and the config file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_numbers_are_usage_errors_naming_the_range() {
    let node = dead_node();
    let dir = tempfile::tempdir().unwrap();
    let ranges = [
        ("grace", "100ms", "1h"),
        ("start-secs", "100ms", "1h"),
        ("stale-after", "1s", "1h"),
        ("wait-log-every", "1s", "1day"),
        ("reconnect-max", "250ms", "1h"),
        ("standby", "100ms", "1day"),
        ("lease", "1s", "1h"),
        ("renew", "100ms", "30m"),
    ];
    for (flag, min, max) in ranges {
        for value in ["0s", "1000000000s"] {
            let args = run_args(&node, &lock_in(dir.path()), &[&format!("--{flag}"), value]);
            let given = format!("--{flag} {}", value.trim_end_matches("1000000000s"));
            let range = format!(": must be between {min} and {max}");
            expect_exit(&args, &[], 2, &[&given, &range]).await;
        }
    }
    let args = run_args(&node, &lock_in(dir.path()), &[]);
    expect_exit(
        &args,
        &[("ENGINE_SHIM_GRACE", "0s")],
        2,
        &["--grace 0s: must be between 100ms and 1h"],
    )
    .await;
    let file = dir.path().join("shim.toml");
    fs::write(&file, "stale_after = \"0s\"\n").unwrap();
    let config = file.display().to_string();
    let args = run_args(&node, &lock_in(dir.path()), &["--config", &config]);
    let message = format!(
        "stale_after in {} 0s: must be between 1s and 1h",
        file.display()
    );
    expect_exit(&args, &[], 2, &[&message]).await;
    let check = [
        "check",
        "--engine-version",
        "1.0.0",
        "--node",
        &node,
        "--timeout",
        "0s",
    ]
    .map(String::from);
    expect_exit(&check, &[], 2, &["must be between 100ms and 1h"]).await;
}
