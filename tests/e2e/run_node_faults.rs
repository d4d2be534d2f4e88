//! Operator stories about an unreliable node: the engine is never stopped only because the node
//! went away, the shim reconnects and follows on, and it never starts an engine on a release it
//! could not read for sure.

use crate::common::{shim_with_running_engine, EngineEvent, Node, Shim};

/// Asserts the engine ran through the fault: exactly one start, then the stop the release change
/// caused, both for the same process.
fn assert_one_run_stopped_by_the_upgrade(events: &[EngineEvent], start: &EngineEvent) {
    assert_eq!(
        events.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["start", "stop"],
        "the engine ran through the fault and stopped only for the upgrade"
    );
    assert!(
        events.iter().all(|e| e.pid == start.pid),
        "one engine process throughout"
    );
}

/// The upgrade to 1.1.0 at the next block: waits for the no-longer-compatible line naming that
/// block and for the engine's stop.
async fn upgrade_and_expect_stop(node: &Node, shim: &Shim, from: usize) -> Vec<EngineEvent> {
    node.set_release("1.1.0").await;
    let upgrade = node.new_blocks(1).await;
    shim.wait_message(from, &["no longer compatible", "'1.1.0'", &upgrade])
        .await;
    shim.wait_event("stop", 1).await;
    shim.engine_events()
}

/// The node drops every connection mid-run: the engine keeps running, the shim logs the loss,
/// reconnects, and still acts on a later release change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_keeps_the_engine_running_and_the_shim_follows_on() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let (shim, start) = shim_with_running_engine(Shim::builder(&node, "1.0.0")).await;
    let (connected, _) = shim.wait_message(0, &["connected to node"]).await;

    node.drop_connections().await;
    let (lost, _) = shim
        .wait_message(connected + 1, &["lost the node", "reconnecting in"])
        .await;
    let (reconnected, _) = shim.wait_message(lost + 1, &["connected to node"]).await;
    assert_eq!(shim.engine_events().len(), 1, "the engine was not touched");

    node.new_blocks(2).await;
    let events = upgrade_and_expect_stop(&node, &shim, reconnected).await;
    assert_one_run_stopped_by_the_upgrade(&events, &start);
}

/// The node process is killed and a new one starts on the same port: the engine keeps running,
/// the shim reconnects to the new process and acts on its release change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restarted_on_the_same_port_keeps_the_engine_running() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let (shim, start) = shim_with_running_engine(Shim::builder(&node, "1.0.0")).await;
    let (connected, _) = shim.wait_message(0, &["connected to node"]).await;

    let port = node.port;
    let node = node.restart().await;
    assert_eq!(node.port, port);
    let (lost, _) = shim.wait_message(connected + 1, &["lost the node"]).await;
    let (reconnected, _) = shim.wait_message(lost + 1, &["connected to node"]).await;
    assert_eq!(shim.engine_events().len(), 1, "the engine was not touched");

    node.new_blocks(3).await;
    let events = upgrade_and_expect_stop(&node, &shim, reconnected).await;
    assert_one_run_stopped_by_the_upgrade(&events, &start);
}

/// The node comes back from genesis (its database wiped), behind the blocks the shim already
/// processed: the shim says it waits for the node to pass them, keeps the engine running, acts on
/// none of them again, and follows on once the node has rebuilt the same chain past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_back_from_genesis_is_waited_for_until_it_passes_the_processed_blocks() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let (shim, start) = shim_with_running_engine(Shim::builder(&node, "1.0.0")).await;
    // Block #1 carries a value the shim reports, so we know when it has processed it.
    node.set_release_value(Some("0x0102")).await;
    node.new_blocks(1).await;
    let unusable = "cannot use the release at block #1";
    shim.wait_message(0, &[unusable, "keeping engine 1.0.0 running"])
        .await;

    let node = node.restart().await;
    let (behind, line) = shim
        .wait_message(
            0,
            &["reports finalized block #0, behind #1 already processed; waiting for it to pass #1"],
        )
        .await;
    assert_eq!(line.level(), "WARN");
    assert_eq!(shim.engine_events().len(), 1, "the engine was not touched");

    // The same chain again: block #1 carries the same value, so it has the same hash.
    node.set_release_value(Some("0x0102")).await;
    node.new_blocks(1).await;
    node.set_release_value(Some("0x010000")).await;
    node.new_blocks(2).await;
    let events = upgrade_and_expect_stop(&node, &shim, behind).await;
    assert_one_run_stopped_by_the_upgrade(&events, &start);
    assert_eq!(
        shim.count_messages(unusable),
        1,
        "block #1 was acted on once"
    );
}

/// Finality stalls: with `--stale-after 2s` the shim notices that no finalized head arrives,
/// reconnects, keeps the engine running, and follows on once finality resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_finality_triggers_a_reconnect() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let (shim, start) =
        shim_with_running_engine(Shim::builder(&node, "1.0.0").shim_args(&["--stale-after", "2s"]))
            .await;
    let (connected, _) = shim.wait_message(0, &["connected to node"]).await;

    node.stall_finality(true).await;
    node.new_blocks(2).await;
    let silence = format!("no finalized head from the node at {} for 2s", node.url);
    let (lost, line) = shim
        .wait_message(connected + 1, &["lost the node", &silence])
        .await;
    assert_eq!(line.level(), "WARN");
    shim.wait_message(lost + 1, &["connected to node"]).await;
    assert_eq!(shim.engine_events().len(), 1, "the engine was not touched");

    node.stall_finality(false).await;
    let events = upgrade_and_expect_stop(&node, &shim, lost).await;
    assert_one_run_stopped_by_the_upgrade(&events, &start);
}

/// The node reports `isSyncing`: the shim says so and starts nothing, even though the release
/// fits; once the node has synced the engine starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncing_node_starts_nothing_until_it_has_synced() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    node.set_syncing(true).await;
    let shim = Shim::spawn(&node, "1.0.0");

    let syncing = format!(
        "node at {} is syncing; waiting before reading the release",
        node.url
    );
    shim.wait_message(0, &[&syncing]).await;
    node.new_blocks(2).await;
    // Everything logged before the node stops syncing happened while it was syncing.
    let before_synced = shim.mark();
    node.set_syncing(false).await;

    let start = shim.wait_event("start", 1).await;
    let (started, _) = shim.wait_message(0, &["engine 1.0.0 started"]).await;
    assert!(
        started >= before_synced,
        "the engine started while the node was still syncing"
    );
    let begun = start.start_block().expect("start-block arg");
    assert!(begun <= 2, "started for a block the node has: {begun}");
}

/// A node answers `state_getStorage` with garbage: the shim cannot read the release, keeps the
/// running engine as it is, and recovers once the node answers properly again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_storage_answers_keep_the_engine_running_until_the_node_recovers() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let (shim, start) = shim_with_running_engine(Shim::builder(&node, "1.0.0")).await;
    let (connected, _) = shim.wait_message(0, &["connected to node"]).await;

    node.set_fault("state_getStorage", "garbage").await;
    node.new_blocks(1).await;
    let (lost, line) = shim
        .wait_message(connected + 1, &["lost the node", "state_getStorage"])
        .await;
    assert_eq!(line.level(), "WARN");

    node.set_fault("state_getStorage", "error").await;
    node.new_blocks(1).await;
    shim.wait_message(lost + 1, &["lost the node", "refused state_getStorage"])
        .await;
    assert_eq!(shim.engine_events().len(), 1, "the engine was not touched");
    assert_eq!(shim.count_messages("starting engine"), 1);

    node.set_fault("state_getStorage", "none").await;
    let recovered = shim.mark();
    let events = upgrade_and_expect_stop(&node, &shim, recovered).await;
    assert_one_run_stopped_by_the_upgrade(&events, &start);
    assert_eq!(
        shim.count_messages("cannot use the release"),
        0,
        "a bad answer is a node fault, not a bad release value"
    );
}
