//! Operator stories around a runtime upgrade: the engine runs when it fits the on-chain release,
//! waits when it is too new, stops when it is too old, and always acts on the right block.

use crate::common::{Node, Shim};

/// Run with `--engine-version` given: the engine that fits release 1.0.0 starts on the block the
/// shim first sees (the finalized genesis), and is told that block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compatible_engine_starts_at_once() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let genesis = node.block_hash(0).await;
    let shim = Shim::spawn(&node, "1.0.3");

    let start = shim.wait_event("start", 1).await;
    assert_eq!(start.version, "1.0.3");
    assert_eq!(
        start.start_block(),
        Some(0),
        "{{block}} = the first finalized block"
    );
    assert_eq!(start.start_hash(), Some(genesis.as_str()));
    shim.wait_message(0, &["engine 1.0.3 started (pid", &start.pid.to_string()])
        .await;
    let starting = shim
        .log()
        .into_iter()
        .find(|l| l.message().starts_with("starting engine 1.0.3"))
        .expect("a `starting engine 1.0.3` line before the start");
    assert_eq!(starting.field("block_number"), 0);
    assert_eq!(
        shim.count_messages("WAITING"),
        0,
        "a compatible engine never waits"
    );
}

/// Without `--engine-version` the shim asks the engine binary (`CMD --version`) and acts on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_version_is_probed_from_the_binary_when_not_given() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let shim = Shim::builder(&node, "1.0.7").probe_version().spawn();

    let start = shim.wait_event("start", 1).await;
    assert_eq!(start.version, "1.0.7");
    shim.wait_message(0, &["engine 1.0.7 started"]).await;
}

/// The new engine (1.1.0) is installed before the upgrade: it waits with Chainflip's WAITING line,
/// said once rather than per block; the upgrade lands at block #3 and the engine starts there,
/// told `{block}` = 3 and the hash of block #3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_engine_waits_then_starts_on_the_upgrade_block() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let genesis = node.block_hash(0).await;
    let shim = Shim::spawn(&node, "1.1.0");

    let waiting = format!(
        "This version '1.1.0' is incompatible with the current release '1.0.0' at block: {genesis}. WAITING for a compatible release version."
    );
    let (_, line) = shim
        .wait_log(0, "the WAITING line", |l| l.message() == waiting)
        .await;
    assert_eq!(line.level(), "INFO");
    assert!(
        shim.engine_events().is_empty(),
        "nothing runs while waiting"
    );

    node.new_blocks(2).await;
    node.set_release("1.1.0").await;
    node.new_blocks(1).await; // #3 carries 1.1.0
    node.new_blocks(2).await;
    let upgrade = node.block_hash(3).await;

    let start = shim.wait_event("start", 1).await;
    assert_eq!(start.version, "1.1.0");
    assert_eq!(
        start.start_block(),
        Some(3),
        "started for the upgrade block"
    );
    assert_eq!(start.start_hash(), Some(upgrade.as_str()));
    assert_eq!(
        start.raw["env"]["ENGINE_SHIM_START_BLOCK"], "3",
        "the start block is in the environment too"
    );
    assert_eq!(
        start.raw["env"]["ENGINE_SHIM_START_BLOCK_HASH"],
        upgrade.as_str()
    );
    let (_, starting) = shim
        .wait_message(0, &["starting engine 1.1.0", &upgrade])
        .await;
    assert_eq!(starting.field("block_number"), 3);
    assert_eq!(
        shim.count_messages("WAITING"),
        1,
        "the WAITING line repeats at --wait-log-every (60 s), not per block"
    );
}

/// The old engine (1.0.0) runs; the upgrade to 1.1.0 lands at block #2: the shim says it is no
/// longer compatible at that block, stops it, and stays idle afterwards (no restart, no exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_engine_stops_at_the_upgrade_block_and_stays_idle() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let mut shim = Shim::spawn(&node, "1.0.0");
    let start = shim.wait_event("start", 1).await;

    node.new_blocks(1).await;
    node.set_release("1.1.0").await;
    node.new_blocks(1).await; // #2 carries 1.1.0
    let upgrade = node.block_hash(2).await;

    let no_longer = format!(
        "This version '1.0.0' is no longer compatible with the release version '1.1.0' at block: {upgrade}"
    );
    shim.wait_log(0, "the no-longer-compatible line", |l| {
        l.message() == no_longer
    })
    .await;
    let stop = shim.wait_event("stop", 1).await;
    assert_eq!(stop.pid, start.pid);
    shim.wait_message(0, &["engine 1.0.0 stopped"]).await;

    // More blocks of the new release, then one the shim cannot use: its line says what runs now.
    node.new_blocks(2).await;
    node.set_release_value(Some("0x0102")).await;
    let bad = node.new_blocks(1).await;
    shim.wait_message(
        0,
        &[
            "cannot use the release at block #5",
            &bad,
            "starting nothing",
        ],
    )
    .await;
    let events = shim.engine_events();
    assert_eq!(
        events.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["start", "stop"],
        "stopped once and never restarted"
    );
    assert_eq!(shim.count_messages("starting engine"), 1);
    assert!(
        shim.proc.try_exit().is_none(),
        "the shim idles instead of exiting, so systemd does not restart it in a loop"
    );
}

/// Finality stalls while blocks #1..#5 are built, the upgrade at #3; then finality jumps from #0
/// to #5 in one notification. The shim fills the gap in order and starts the new engine for #3,
/// not #5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finality_jump_over_the_upgrade_block_still_starts_on_the_upgrade_block() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let shim = Shim::spawn(&node, "1.1.0");
    shim.wait_message(0, &["WAITING"]).await;

    node.stall_finality(true).await;
    node.new_blocks(2).await;
    node.set_release("1.1.0").await;
    node.new_blocks(3).await; // #3 carries 1.1.0; best = #5
    let status = node.status().await;
    assert_eq!(status["best"]["number"], 5, "fake_status: {status}");
    assert_eq!(
        status["finalized"]["number"], 0,
        "finality is stalled: {status}"
    );
    let upgrade = node.block_hash(3).await;
    assert!(shim.engine_events().is_empty());

    node.stall_finality(false).await;
    let start = shim.wait_event("start", 1).await;
    assert_eq!(start.start_block(), Some(3), "acted on the upgrade block");
    assert_eq!(start.start_hash(), Some(upgrade.as_str()));
    let status = node.status().await;
    assert_eq!(
        status["finalized"]["number"], 5,
        "finality jumped to the best block: {status}"
    );
}
