//! Operator stories about the shim's and the engine's own lives: stopping the shim stops the engine
//! within its grace, killing the shim leaves no orphan, and a crashing engine is restarted with
//! back-off.

use std::time::{Duration, Instant};

use crate::common::{exit_code, is_gone, shim_with_running_engine, wait_gone, Node, Shim};
use rustix::process::Signal;

/// `systemctl stop`: SIGTERM to the shim stops the engine gracefully (it gets its shutdown time,
/// well inside the grace), then the shim exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_engine_within_grace_and_exits_zero() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let (mut shim, start) = shim_with_running_engine(
        Shim::builder(&node, "1.0.0")
            .shim_args(&["--grace", "10s"])
            .engine_args(&["--shutdown-delay", "300ms"]),
    )
    .await;

    let asked = Instant::now();
    shim.proc.signal(Signal::TERM);
    let status = shim.proc.wait_exit().await;
    let took = asked.elapsed();
    assert_eq!(exit_code(status), 0, "SIGTERM is a clean exit");
    assert!(
        took < Duration::from_secs(10),
        "the shim took {took:?}, more than the grace"
    );

    let stop = shim.wait_event("stop", 1).await;
    assert_eq!(stop.pid, start.pid);
    assert!(
        is_gone(start.pid),
        "the engine is gone when the shim has exited"
    );
    let messages = shim.messages();
    assert!(
        messages.iter().any(|m| m.contains("SIGTERM")),
        "the shim says why it stops: {messages:#?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("engine 1.0.0 stopped")),
        "the engine's stop is logged: {messages:#?}"
    );
    assert!(
        !messages.iter().any(|m| m.contains("killed")),
        "a graceful engine is not killed: {messages:#?}"
    );
}

/// Ctrl-C in a terminal (SIGINT) stops the engine the same graceful way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_the_engine_and_exits_zero() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let (mut shim, start) = shim_with_running_engine(Shim::builder(&node, "1.0.0")).await;

    shim.proc.signal(Signal::INT);
    assert_eq!(exit_code(shim.proc.wait_exit().await), 0);
    let stop = shim.wait_event("stop", 1).await;
    assert_eq!(stop.pid, start.pid);
    assert!(is_gone(start.pid));
}

/// A shim with nothing running (its engine waits for the upgrade) exits 0 at once on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_an_idle_shim_exits_zero_at_once() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let mut shim = Shim::spawn(&node, "1.1.0");
    shim.wait_message(0, &["WAITING"]).await;

    shim.proc.signal(Signal::TERM);
    assert_eq!(exit_code(shim.proc.wait_exit().await), 0);
    assert!(shim.engine_events().is_empty(), "nothing was started");
}

/// An engine that ignores SIGTERM is killed once the grace (1 s) is over; the shim still exits 0
/// and says it had to kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_ignoring_sigterm_is_killed_after_the_grace() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let (mut shim, start) = shim_with_running_engine(
        Shim::builder(&node, "1.0.0")
            .shim_args(&["--grace", "1s"])
            .engine_args(&["--ignore-term"]),
    )
    .await;

    let asked = Instant::now();
    shim.proc.signal(Signal::TERM);
    let status = shim.proc.wait_exit().await;
    let took = asked.elapsed();
    assert_eq!(exit_code(status), 0);
    assert!(
        took >= Duration::from_secs(1),
        "the engine got its full grace, but the shim exited after {took:?}"
    );
    wait_gone(start.pid, "the engine that ignored SIGTERM").await;
    assert!(
        shim.count_messages("did not stop within") == 1,
        "the kill is logged: {:#?}",
        shim.messages()
    );
}

/// The shim itself is SIGKILLed (OOM killer, `kill -9`): its engine dies with it rather than run on
/// unsupervised beside the next shim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_shim_leaves_no_orphan_engine() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let (mut shim, start) = shim_with_running_engine(Shim::builder(&node, "1.0.0")).await;
    assert!(!is_gone(start.pid));

    shim.proc.signal(Signal::KILL);
    shim.proc.wait_exit().await;
    wait_gone(start.pid, "the engine of a SIGKILLed shim").await;
}

/// The engine crashes 200 ms after each start: the shim says so, restarts it after 1 s, then after
/// 2 s (back-off doubles while it does not stay up `--start-secs`), each time for the same block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_engine_is_restarted_with_back_off() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let shim = Shim::builder(&node, "1.0.0")
        .engine_args(&["--crash-after", "200ms"])
        .spawn();

    let first = shim.wait_event("start", 1).await;
    let (crashed, line) = shim
        .wait_message(0, &["engine 1.0.0 exited unexpectedly", "restarting in 1s"])
        .await;
    assert_eq!(line.level(), "ERROR");
    let (restarting, _) = shim
        .wait_message(crashed + 1, &["restarting engine 1.0.0"])
        .await;
    let second = shim.wait_event("start", 2).await;
    assert_ne!(second.pid, first.pid, "a new process");
    assert_eq!(
        second.start_block(),
        first.start_block(),
        "restarted for the same block"
    );
    shim.wait_message(
        restarting + 1,
        &["engine 1.0.0 exited unexpectedly", "restarting in 2s"],
    )
    .await;
    let events = shim.engine_events();
    let starts: Vec<_> = events.iter().filter(|e| e.event == "start").collect();
    let crashes: Vec<_> = events.iter().filter(|e| e.event == "crash").collect();
    assert!(crashes.len() >= 2, "each crash is recorded: {events:#?}");
    // Back-off: the second start came about 1 s after the first crash, not at once.
    let first_crash = crashes[0].raw["unix_nanos"].as_u64().unwrap();
    let second_start = starts[1].raw["unix_nanos"].as_u64().unwrap();
    let gap = Duration::from_nanos(second_start.saturating_sub(first_crash));
    assert!(
        gap >= Duration::from_millis(900),
        "restarted {gap:?} after the crash; expected the 1 s back-off"
    );
}
