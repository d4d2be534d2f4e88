//! The run shell in-process: `engine_shim::run::run(config, requests)` against an in-process
//! fake node, with no signal handler and no `engine-shim` process of its own. The engine is a real
//! `fake-engine` under the real guardian binary; the shell is told to stop through its request
//! channel. The last test checks the other end of that channel: the binary turns SIGTERM into the
//! same request from its very start.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::common::{
    bin, exit_code, read_events, wait_for_events, wait_gone, wait_until, Proc, TIMEOUT,
};
use engine_shim::config::Overrides;
use engine_shim::run::{self, Request};
use engine_shim::version::SemVer;
use fake_node::{FakeNode, FakeNodeConfig};
use rustix::process::Signal;
use tokio::sync::mpsc;

/// The settings an operator would give as `run --engine-version 1.0.0 --node URL --lock
/// file:DIR/engine-shim.lock -- fake-engine --as-version 1.0.0 --events FILE`.
fn settings(node: &str, dir: &std::path::Path) -> engine_shim::config::RunConfig {
    let mut config = Overrides {
        node: Some(node.to_string()),
        engine_version: Some(SemVer::new(1, 0, 0)),
        lock: Some(format!("file:{}", dir.join("engine-shim.lock").display())),
        command: vec![
            bin("fake-engine").display().to_string(),
            "--as-version".into(),
            "1.0.0".into(),
            "--events".into(),
            dir.join("events.jsonl").display().to_string(),
        ],
        ..Overrides::default()
    }
    .resolve()
    .expect("valid settings");
    // The test executable cannot be the engine's guardian; the shim binary is.
    config.guardian = bin("engine-shim");
    config
}

/// Starts the engine at the compatible finalized head, then stops it and exits 0 when asked to shut
/// down through the request channel, leaving no engine behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_runs_in_process_and_stops_through_its_requests() {
    let node = FakeNode::spawn(FakeNodeConfig::default())
        .await
        .expect("fake node");
    node.new_blocks(3);
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let (requests, received) = mpsc::unbounded_channel();
    let shell = tokio::spawn(run::run(settings(&node.url(), dir.path()), received));

    let started = wait_for_events(
        &events,
        "the engine's start",
        |events| events.iter().any(|e| e.event == "start"),
        |events| format!("events: {events:?}"),
    )
    .await;
    let pid = started[0].pid;
    assert_eq!(started[0].version, "1.0.0");

    requests
        .send(Request::Shutdown { signal: "SIGTERM" })
        .unwrap();
    let result = tokio::time::timeout(TIMEOUT, shell)
        .await
        .expect("the shell ends after a shutdown request")
        .expect("the shell does not panic");
    assert!(result.is_ok(), "the shell failed: {result:?}");
    let events = read_events(&events);
    assert!(
        events.iter().any(|e| e.event == "stop" && e.pid == pid),
        "the engine was stopped gracefully: {events:?}"
    );
    wait_gone(pid, "the engine").await;
    node.shutdown().await;
}

/// A shutdown asked for while the shell is still starting ends it at once with success: nothing
/// was started, so there is nothing to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_before_the_start_ends_the_shell_cleanly() {
    let node = FakeNode::spawn(FakeNodeConfig::default())
        .await
        .expect("fake node");
    let dir = tempfile::tempdir().unwrap();
    let (requests, received) = mpsc::unbounded_channel();
    requests
        .send(Request::Shutdown { signal: "SIGTERM" })
        .unwrap();
    let result = tokio::time::timeout(
        TIMEOUT,
        run::run(settings(&node.url(), dir.path()), received),
    )
    .await
    .expect("the shell ends after a shutdown request");
    assert!(result.is_ok(), "the shell failed: {result:?}");
    assert!(
        read_events(&dir.path().join("events.jsonl")).is_empty(),
        "no engine was started"
    );
    node.shutdown().await;
}

/// `systemctl stop` while the shim still probes its engine (`CMD --version` hangs): the signal
/// handlers are installed before start-up, so the shim exits 0 at once, saying why, instead of
/// dying by the signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_probing_the_engine_exits_zero() {
    let node = FakeNode::spawn(FakeNodeConfig::default())
        .await
        .expect("fake node");
    let dir = tempfile::tempdir().unwrap();
    let probing = dir.path().join("probing");
    let engine = dir.path().join("engine");
    std::fs::write(
        &engine,
        format!("#!/bin/sh\ntouch '{}'\nexec sleep 120\n", probing.display()),
    )
    .unwrap();
    std::fs::set_permissions(&engine, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = Command::new(bin("engine-shim"));
    command.args([
        "run",
        "--node",
        &node.url(),
        "--lock",
        &format!("file:{}", dir.path().join("engine-shim.lock").display()),
        "--",
    ]);
    command.arg(&engine);
    let mut shim = Proc::spawn("engine-shim", command);
    wait_until("the shim to run CMD --version", || probing.exists()).await;

    shim.signal(Signal::TERM);
    assert_eq!(exit_code(shim.wait_exit().await), 0);
    assert!(
        shim.output.lines().iter().any(|line| line
            .contains("SIGTERM received while starting; exiting (no engine was started)")),
        "{}",
        shim.output.dump()
    );
    node.shutdown().await;
}
