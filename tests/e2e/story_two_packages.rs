//! The operator's story with the 1.0–1.3 two-package layout: `chainflip-engine1.0` and
//! `chainflip-engine1.1` on one data directory, each following the node itself
//! (`fake-engine --node`): while not yet compatible it waits, and at the first finalized block that
//! no longer fits it prints Chainflip's line and exits 1 on its own. The shim must take that exit
//! for the hand-over it is, whoever sees the upgrade block first: no ERROR, no restart of the old
//! engine, the new one started from the upgrade block, never two engines at once.
//!
//! Which process sees a block first is a race on a real machine; each ordered story pins it by
//! pausing the process that must come second (SIGSTOP) while the block lands.

use crate::common;

use crate::common::{wait_gone, EngineEvent, Host, LogLine, Node, Shim};
use rustix::process::{Pid, Signal};

/// The old engine's own line at the upgrade block (Chainflip's wording), forwarded by the shim.
fn no_longer_line(hash: &str) -> String {
    format!("This version '1.0.0' is no longer compatible with the release version '1.1.0' at block: {hash}")
}

/// One shim with both packages' engines, each following `node` itself.
fn shim_with_both(host: &Host, node: &Node, old_flags: &[&str]) -> Shim {
    let mut old = vec!["--node", node.url.as_str()];
    old.extend_from_slice(old_flags);
    host.shim(node)
        .engine_with("1.0.0", &old)
        .engine_with("1.1.0", &["--node", &node.url])
        .spawn()
}

fn signal(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap_or_else(|e| panic!("signal {pid:?}: {e}"));
}

/// Every ERROR line of the shim, engine output included.
fn errors(shim: &Shim) -> Vec<String> {
    shim.log()
        .iter()
        .filter(|l| l.level() == "ERROR")
        .map(|l| l.message().to_string())
        .collect()
}

fn starts_of(host: &Host, version: &str) -> usize {
    host.events()
        .iter()
        .filter(|e| e.event == "start" && e.version == version)
        .count()
}

/// Waits for a line the engine printed, as the shim forwarded it.
async fn wait_engine_line(shim: &Shim, text: &str) {
    shim.proc
        .output
        .wait_for(0, &format!("the engine line {text:?}"), |line| {
            LogLine::parse(line).filter(|l| l.target() == "engine" && l.message() == text)
        })
        .await;
}

/// The hand-over from `old` (which left on its own: `exit_incompatible` at `block`) to 1.1.0 is
/// exact: 1.1.0 starts after the old engine's last event, told the upgrade block, and sees that
/// block compatible itself. Returns its start event.
async fn assert_exact_hand_over(
    host: &Host,
    old: &EngineEvent,
    block: u64,
    hash: &str,
) -> EngineEvent {
    let new = host.wait_event("start", "1.1.0", 1).await;
    let left = host.wait_event("exit_incompatible", "1.0.0", 1).await;
    assert_eq!(left.pid, old.pid);
    assert_eq!(
        left.raw["block"], block,
        "the old engine left at the upgrade"
    );
    assert_eq!(left.raw["release"], "1.1.0");
    assert!(
        left.unix_nanos() < new.unix_nanos(),
        "1.0.0 left before 1.1.0 started"
    );
    assert_eq!(
        new.start_block(),
        Some(block),
        "{{block}} = the upgrade block"
    );
    assert_eq!(new.start_hash(), Some(hash));
    assert_eq!(new.raw["block"], block, "1.1.0 runs from the upgrade block");
    assert!(
        host.events()
            .iter()
            .all(|e| !(e.event == "stop" && e.pid == old.pid)),
        "1.0.0's exit was its own, not a stop"
    );
    new
}

/// The engine sees the upgrade block first: it exits 1 while the shim is still at the block
/// before. The shim reads the release at the finalized head, says at INFO that 1.0.0 exited at
/// the upgrade, restarts nothing, and starts 1.1.0 once its follower reaches the upgrade block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_engine_exits_before_the_shim_sees_the_upgrade() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let mut shim = shim_with_both(&host, &node, &[]);
    let old = host.wait_event("start", "1.0.0", 1).await;
    assert_eq!(old.start_block(), Some(0));

    // The shim is paused while the block lands and the engine leaves; when it resumes, the node
    // cannot tell its follower the block's hash yet, so the exit reaches it first.
    shim.proc.signal(Signal::STOP);
    node.set_release("1.1.0").await;
    let upgrade = node.new_blocks(1).await; // #1 carries 1.1.0
    host.wait_event("exit_incompatible", "1.0.0", 1).await;
    wait_gone(old.pid, "1.0.0 leaving at the upgrade").await;
    node.set_fault("chain_getBlockHash", "error").await;
    shim.proc.signal(Signal::CONT);

    let (_, line) = shim
        .wait_message(0, &["engine 1.0.0 exited at the upgrade to 1.1.0"])
        .await;
    assert_eq!(line.level(), "INFO");
    assert_eq!(line.field("block_number"), 1);
    assert_eq!(line.field("block_hash"), upgrade.as_str());
    assert!(
        line.message().contains("exit status: 1"),
        "{}",
        line.message()
    );
    wait_engine_line(&shim, &no_longer_line(&upgrade)).await;
    assert_eq!(
        starts_of(&host, "1.1.0"),
        0,
        "the follower has not reached the upgrade block: nothing may start yet"
    );

    node.set_fault("chain_getBlockHash", "none").await;
    let new = assert_exact_hand_over(&host, &old, 1, &upgrade).await;
    shim.wait_message(0, &["engine 1.1.0 started", &new.pid.to_string()])
        .await;
    assert_eq!(starts_of(&host, "1.0.0"), 1, "1.0.0 was never restarted");
    assert_eq!(shim.count_messages("exited unexpectedly"), 0);
    assert_eq!(errors(&shim), Vec::<String>::new(), "no ERROR line");
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
    assert!(shim.proc.try_exit().is_none());
}

/// The shim sees the upgrade block first and asks 1.0.0 to stop; the engine, slower to see the
/// block (paused while it lands) and deaf to SIGTERM, then meets it and exits 1 on its own. Its
/// exit completes the stop: no ERROR, no restart, 1.1.0 starts from the upgrade block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_engine_exits_after_the_shim_saw_the_upgrade() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let mut shim = shim_with_both(&host, &node, &["--ignore-term"]);
    let old = host.wait_event("start", "1.0.0", 1).await;

    signal(old.pid, Signal::STOP);
    node.set_release("1.1.0").await;
    let upgrade = node.new_blocks(1).await; // #1 carries 1.1.0
    let (_, line) = shim
        .wait_log(0, "the shim's no-longer-compatible line", |l| {
            l.message() == no_longer_line(&upgrade)
        })
        .await;
    assert_eq!(line.level(), "WARN");
    assert!(
        host.events().iter().all(|e| e.event != "exit_incompatible"),
        "the engine has not seen the block yet"
    );
    signal(old.pid, Signal::CONT);

    let new = assert_exact_hand_over(&host, &old, 1, &upgrade).await;
    let (_, stopped) = shim.wait_message(0, &["engine 1.0.0 stopped"]).await;
    assert!(
        stopped.message().contains("exit status: 1"),
        "the exit was the engine's own: {}",
        stopped.message()
    );
    shim.wait_message(0, &["engine 1.1.0 started", &new.pid.to_string()])
        .await;
    assert_eq!(starts_of(&host, "1.0.0"), 1, "1.0.0 was never restarted");
    assert_eq!(errors(&shim), Vec::<String>::new(), "no ERROR line");
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
    assert!(shim.proc.try_exit().is_none());
}

/// The layout as the two packages' services run it: two shims, one engine each, one lock, and
/// nothing paused: the old engine and its shim meet the upgrade block in whatever order the
/// machine gives. Either way the old engine leaves once, the new one takes over at the upgrade
/// block, and neither shim logs an ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shims_on_one_lock_hand_over_whoever_sees_the_upgrade_first() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let old_shim = host
        .shim(&node)
        .engine_with("1.0.0", &["--node", &node.url])
        .spawn();
    let new_shim = host
        .shim(&node)
        .engine_with("1.1.0", &["--node", &node.url])
        .spawn();
    let old = host.wait_event("start", "1.0.0", 1).await;
    new_shim
        .wait_message(
            0,
            &[
                "This version '1.1.0' is incompatible with the current release '1.0.0'",
                "WAITING",
            ],
        )
        .await;

    node.set_release("1.1.0").await;
    let upgrade = node.new_blocks(1).await; // #1 carries 1.1.0
    let new = host.wait_event("start", "1.1.0", 1).await;
    assert_eq!(new.start_block(), Some(1), "{{block}} = the upgrade block");
    assert_eq!(new.start_hash(), Some(upgrade.as_str()));
    assert_eq!(new.raw["block"], 1);
    // The old engine either left on its own (exit_incompatible) or was stopped by its shim first
    // (stop): both end its life before the new one starts.
    let events = host.events();
    let end = events
        .iter()
        .find(|e| e.pid == old.pid && common::ends_a_life(&e.event))
        .unwrap_or_else(|| {
            panic!(
                "1.0.0's life has no end:\n{}",
                common::describe_events(&events)
            )
        });
    assert!(
        end.unix_nanos() < new.unix_nanos(),
        "1.0.0 ended before 1.1.0 started"
    );
    let (_, left) = old_shim
        .wait_log(0, "1.0.0's end, seen by its shim", |l| {
            let m = l.message();
            m.starts_with("engine 1.0.0 stopped")
                || m.starts_with("engine 1.0.0 exited at the upgrade")
        })
        .await;
    eprintln!("this run's order: {:?} / {}", end.event, left.message());
    new_shim
        .wait_message(0, &["engine 1.1.0 started", &new.pid.to_string()])
        .await;
    assert_eq!(starts_of(&host, "1.0.0"), 1, "1.0.0 was never restarted");
    assert_eq!(errors(&old_shim), Vec::<String>::new(), "no ERROR line");
    assert_eq!(errors(&new_shim), Vec::<String>::new(), "no ERROR line");
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
}
