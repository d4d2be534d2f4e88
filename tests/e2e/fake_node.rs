//! fake-node is a mock chain people can trust: the same flags give the same chain, old blocks keep
//! their old state, and unknown blocks are not made up.

use crate::common;

use std::path::PathBuf;

use crate::common::{Node, Shim};
use serde_json::{json, Value};

/// Two nodes started with the same flags and given the same commands agree on every block hash
/// and header: a CI run is repeatable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_flags_give_the_same_block_hashes() {
    let a = Node::start(&["--release", "1.0.0"]).await;
    let b = Node::start(&["--release", "1.0.0"]).await;
    for node in [&a, &b] {
        node.new_blocks(2).await;
        node.set_release("1.1.0").await;
        node.new_blocks(2).await;
    }
    for number in 0..=4 {
        let hash = a.block_hash(number).await;
        assert_eq!(hash, b.block_hash(number).await, "block #{number}");
        assert!(hash.starts_with("0x") && hash.len() == 66, "{hash}");
        let header_a: Value = a.call("chain_getHeader", vec![json!(hash)]).await;
        let header_b: Value = b.call("chain_getHeader", vec![json!(hash)]).await;
        assert_eq!(header_a, header_b, "header #{number}");
        assert_eq!(a.block_number(&hash).await, number);
        if number > 0 {
            assert_eq!(
                header_a["parentHash"],
                a.block_hash(number - 1).await.as_str(),
                "#{number} links to its parent"
            );
        }
    }
}

/// A chain with a different genesis state is a different chain: its genesis hash differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_genesis_state_gives_a_different_genesis_hash() {
    let a = Node::start(&["--release", "1.0.0"]).await;
    let b = Node::start(&["--release", "1.1.0"]).await;
    assert_ne!(a.block_hash(0).await, b.block_hash(0).await);
}

/// Reading at an old hash gives the value as it was then, like a real archive node; unknown
/// blocks give `null`, not made-up data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_hashes_serve_old_values_and_unknown_blocks_are_null() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let genesis = node.block_hash(0).await;
    node.new_blocks(1).await;
    node.set_release("1.1.0").await;
    let upgraded = node.new_blocks(1).await;
    assert_eq!(
        node.block_hash(2).await,
        upgraded,
        "dev_newBlock returns the new head"
    );

    assert_eq!(
        node.release_value_at(&genesis).await.as_deref(),
        Some("0x010000")
    );
    let one = node.block_hash(1).await;
    assert_eq!(
        node.release_value_at(&one).await.as_deref(),
        Some("0x010000"),
        "a change applies from the next block"
    );
    assert_eq!(
        node.release_value_at(&upgraded).await.as_deref(),
        Some("0x010100")
    );

    node.set_release_value(None).await;
    let removed = node.new_blocks(1).await;
    assert_eq!(
        node.release_value_at(&removed).await,
        None,
        "a removed value reads as null"
    );
    assert_eq!(
        node.release_value_at(&upgraded).await.as_deref(),
        Some("0x010100")
    );

    let missing: Option<String> = node.call("chain_getBlockHash", vec![json!(99)]).await;
    assert_eq!(missing, None, "no block #99 yet");
    let unknown = format!("0x{}", "ab".repeat(32));
    let header: Option<Value> = node
        .try_call("chain_getHeader", vec![json!(unknown)])
        .await
        .unwrap_or(None);
    assert_eq!(header, None, "an unknown hash has no header");
    let value: Option<Value> = node
        .try_call(
            "state_getStorage",
            vec![json!(common::release_key_hex()), json!(unknown)],
        )
        .await
        .unwrap_or(None);
    assert_eq!(value, None, "an unknown hash has no storage");
}

/// Finality can lag behind the best block and catch up in one jump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finality_lags_and_jumps() {
    let node = Node::start(&["--release", "1.0.0", "--finality-lag", "2"]).await;
    node.new_blocks(5).await;
    let status = node.status().await;
    assert_eq!(status["best"]["number"], 5, "{status}");
    assert_eq!(status["finalized"]["number"], 3, "{status}");
    let finalized: String = node.call("chain_getFinalizedHead", vec![]).await;
    assert_eq!(finalized, node.block_hash(3).await);

    let _: Value = node.call("fake_setFinalityLag", vec![json!(0)]).await;
    node.new_blocks(1).await;
    let status = node.status().await;
    assert_eq!(status["finalized"]["number"], 6, "{status}");
}

/// The shipped scenario (fake-node/scenarios/upgrade.toml) drives a shim end to end: release
/// 1.0.0, finality stalled from #8, release 1.1.0 in #10, finality jumping over it at #12,
/// connections dropped at #15, garbage storage answers in #18..#20, syncing in #22..#24, a 2-byte
/// value at #26 and patch release 1.1.1 at #28. Blocks are built by hand here (`--block-time 0`
/// overrides the file's 1 s) so the test runs at its own pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_upgrade_scenario_drives_the_shim_end_to_end() {
    let scenario =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fake-node/scenarios/upgrade.toml");
    let node = Node::start(&["--scenario", scenario.to_str().unwrap()]).await;
    let shim = Shim::spawn(&node, "1.1.0");
    shim.wait_message(0, &["WAITING"]).await;

    node.build_to(12).await;
    let upgrade = node.block_hash(10).await;
    let start = shim.wait_event("start", 1).await;
    assert_eq!(
        start.start_block(),
        Some(10),
        "started for the upgrade block"
    );
    assert_eq!(start.start_hash(), Some(upgrade.as_str()));

    let mark = shim.mark();
    node.build_to(16).await;
    let (mark, _) = shim.wait_message(mark, &["lost the node"]).await;
    node.build_to(19).await;
    shim.wait_message(mark, &["lost the node", "state_getStorage"])
        .await;

    node.build_to(30).await;
    shim.wait_message(
        0,
        &[
            "cannot use the release at block #26",
            "2 bytes",
            "keeping engine 1.1.0 running",
        ],
    )
    .await;
    assert_eq!(
        shim.engine_events().len(),
        1,
        "the engine ran through every fault: {:?}",
        shim.engine_events()
    );
}
