//! Resident memory of engine-shim while it supervises one engine (target ≤ 8 MB; supervisord idles
//! at 24.9 MB with two children), measured after it has followed a few hundred finalized blocks,
//! plus the engine's guardian (the shim's child that holds the lock for the engine's tree).

#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)] // the end-to-end harness: each bench uses its own subset
mod common;
mod support;

use common::{Node, Shim};

fn main() {
    let blocks = support::iterations(1_000, 50) as u64;
    support::runtime().block_on(async {
        let node = Node::start(&["--release", "1.0.0"]).await;
        let shim = Shim::spawn(&node, "1.0.0");
        shim.wait_event("start", 1).await;
        let at_start = support::rss_kb(shim.proc.pid());
        let guardians = common::chaos::children_of(shim.proc.pid());
        assert_eq!(guardians.len(), 1, "one engine runs under one guardian");
        let guardian = support::rss_kb(guardians[0]);
        for _ in 0..blocks / 10 {
            node.new_blocks(10).await;
        }
        // The shim has seen the last block once it would log on a change: make one and wait for it.
        node.set_release("1.1.0").await;
        let mark = shim.mark();
        node.new_blocks(1).await;
        shim.wait_message(mark, &["no longer compatible"]).await;
        let after = support::rss_kb(shim.proc.pid());
        println!(
            "engine-shim RSS supervising one engine: {:.1} MB at start, {:.1} MB after {} blocks (target ≤ 8 MB)",
            at_start as f64 / 1024.0,
            after as f64 / 1024.0,
            blocks + 1
        );
        println!(
            "engine-shim guardian RSS: {:.1} MB (mostly pages shared with the shim's binary)",
            guardian as f64 / 1024.0
        );
    });
}
