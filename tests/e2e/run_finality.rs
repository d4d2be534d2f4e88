//! Finality never goes backwards: after the upgrade block, a node that comes back behind it (a
//! replica a few blocks late) or on another chain never makes the shim hand back to the old
//! engine or act on a block twice.
//!
//! The node the shim talks to is replaced on the same address, as a load balancer or a restarted
//! container would do: the old `fake-node` is killed and another one takes its port. fake-node's
//! hashes are deterministic, so a node built with the same releases at the same blocks is a
//! replica of the same chain, and one started with another release has another genesis.

use crate::common::{EngineEvent, Host, Node, Shim};

/// Kills `node` and starts another fake-node with `args` on its port: the shim's `--node` URL
/// now reaches the new one.
async fn replace(mut node: Node, args: &[&str]) -> Node {
    let port = node.port;
    node.proc.kill();
    drop(node);
    Node::start_on(port, args).await
}

/// Builds the upgrade story on `node`: release 1.0.0 up to block #5, 1.1.0 from block #6 (the
/// upgrade block), blocks up to `to`.
async fn upgrade_at_6(node: &Node, to: u64) {
    node.build_to(5).await;
    node.set_release("1.1.0").await;
    node.build_to(to).await;
}

fn starts(events: &[EngineEvent], version: &str) -> usize {
    events
        .iter()
        .filter(|e| e.event == "start" && e.version == version)
        .count()
}

/// A shim with engines 1.0.0 and 1.1.0 on one host, handed over to 1.1.0 at block #6.
async fn handed_over_at_6(node: &Node, host: &Host) -> (Shim, EngineEvent, String) {
    let shim = host.shim(node).engine("1.0.0").engine("1.1.0").spawn();
    let old = host.wait_event("start", "1.0.0", 1).await;
    upgrade_at_6(node, 6).await;
    let upgrade = node.block_hash(6).await;
    let new = host.assert_hand_over(&old, "1.1.0", 6, &upgrade).await;
    (shim, new, upgrade)
}

/// The node comes back as a replica behind the upgrade block: the shim says once that it waits
/// for the node to pass block #6, never starts 1.0.0 again, and goes on with block #7 once the
/// replica passes #6 — acting on block #9's release, and on no block twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_last_processed_block_is_waited_for() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let (shim, new, upgrade) = handed_over_at_6(&node, &host).await;
    let url = node.url.clone();

    let mark = shim.mark();
    let replica = replace(node, &["--release", "1.0.0"]).await;
    replica.build_to(3).await;
    let behind = "behind #6 already processed; waiting for it to pass #6";
    let (at, line) = shim
        .wait_message(
            mark,
            &[&format!("node at {url} reports finalized block #"), behind],
        )
        .await;
    assert_eq!(line.level(), "WARN");

    // Still behind (#4, #5), then level with #6: nothing is acted on, and the line is not
    // repeated per block.
    replica.build_to(5).await;
    replica.set_release("1.1.0").await;
    replica.build_to(6).await;
    assert_eq!(
        replica.block_hash(6).await,
        upgrade,
        "the replica is the same chain"
    );
    // Past #6: blocks #7 and #8 change nothing, #9 carries release 1.2.0, which no engine fits.
    replica.build_to(8).await;
    replica.set_release("1.2.0").await;
    replica.build_to(9).await;
    let at_9 = replica.block_hash(9).await;
    shim.wait_message(
        at,
        &[
            "This version '1.1.0' is no longer compatible with the release version '1.2.0'",
            &at_9,
        ],
    )
    .await;
    let stop = host.wait_event("stop", "1.1.0", 1).await;
    assert_eq!(stop.pid, new.pid);

    let events = host.events();
    assert_eq!(starts(&events, "1.0.0"), 1, "1.0.0 never started again");
    assert_eq!(
        starts(&events, "1.1.0"),
        1,
        "1.1.0 started once, at block #6"
    );
    assert_eq!(shim.count_messages(behind), 1, "said once, not per block");
    assert_eq!(shim.count_messages("starting engine"), 2);
    assert_eq!(shim.count_messages("no longer compatible"), 2);
    host.assert_no_lock_failed();
}

/// The node comes back on another chain (another genesis): a loud ERROR, asked again after a
/// back-off, and nothing starts or stops on that chain's blocks; when a node of the followed
/// chain is back, the shim goes on after block #6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_another_chain_changes_nothing_until_ours_is_back() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let ours = node.block_hash(0).await;
    let host = Host::new();
    let (shim, new, _) = handed_over_at_6(&node, &host).await;
    let url = node.url.clone();

    let mark = shim.mark();
    // Another chain, already past #6, whose release would hand back to 1.0.0.
    let other = replace(node, &["--release", "1.0.1"]).await;
    let theirs = other.block_hash(0).await;
    assert_ne!(theirs, ours);
    other.build_to(10).await;
    let wrong = format!("node at {url} serves another chain: its genesis is {theirs}, the followed chain's is {ours}");
    let (first, line) = shim.wait_message(mark, &[&wrong]).await;
    assert_eq!(line.level(), "ERROR");
    assert!(line
        .message()
        .contains("nothing is started or stopped on its blocks"));
    // The shim keeps asking (after its back-off), and keeps refusing.
    shim.wait_message(first + 1, &[&wrong]).await;
    assert_eq!(
        host.events().len(),
        3,
        "no engine started or stopped: {:?}",
        host.events()
    );
    assert!(
        host.alive().iter().any(|e| e.pid == new.pid),
        "1.1.0 still runs"
    );

    let mark = shim.mark();
    let ours_again = replace(other, &["--release", "1.0.0"]).await;
    upgrade_at_6(&ours_again, 8).await;
    ours_again.set_release("1.2.0").await;
    ours_again.build_to(9).await;
    let at_9 = ours_again.block_hash(9).await;
    shim.wait_message(
        mark,
        &[
            "This version '1.1.0' is no longer compatible with the release version '1.2.0'",
            &at_9,
        ],
    )
    .await;
    let stop = host.wait_event("stop", "1.1.0", 1).await;
    assert_eq!(stop.pid, new.pid);
    let events = host.events();
    assert_eq!(starts(&events, "1.0.0"), 1, "1.0.0 never started again");
    assert_eq!(starts(&events, "1.1.0"), 1);
    host.assert_no_lock_failed();
}
