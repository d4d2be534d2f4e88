//! Follower catch-up: finalized blocks per second with one storage read each (target ≥ 5,000/s).
//!
//! The follower (the shim's own library code) connects to a fake-node process, finality is stalled
//! while N blocks are built, then released in one jump: the follower must fill the whole gap, block
//! by block, reading the release at each one.

#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)] // the end-to-end harness: each bench uses its own subset
mod common;
mod support;

use std::time::{Duration, Instant};

use common::Node;
use engine_shim::follower::{follow, FollowerConfig, FollowerEvent};
use engine_shim::storage_key::release_key;

fn main() {
    let blocks = support::iterations(50_000, 2_000) as u64;
    support::runtime().block_on(async {
        let node = Node::start(&["--release", "1.0.0"]).await;
        let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
        let config = FollowerConfig {
            url: node.url.clone(),
            storage_key: release_key(),
            stale_after: Duration::from_secs(60),
            ping_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            syncing_poll: Duration::from_secs(1),
            behind_log_every: Duration::from_secs(60),
        };
        let follower = tokio::spawn(follow(config, tx));
        wait_for_block(&mut rx, 0).await;
        node.stall_finality(true).await;
        node.new_blocks(blocks).await;
        let started = Instant::now();
        node.stall_finality(false).await;
        wait_for_block(&mut rx, blocks).await;
        let elapsed = started.elapsed();
        follower.abort();
        println!(
            "follower catch-up: {blocks} finalized blocks in {:.3} s = {:.0} blocks/s, one storage read each (target ≥ 5,000/s)",
            elapsed.as_secs_f64(),
            blocks as f64 / elapsed.as_secs_f64()
        );
    });
}

/// Consumes follower events until block `number`, checking that blocks come in order.
async fn wait_for_block(rx: &mut tokio::sync::mpsc::Receiver<FollowerEvent>, number: u64) {
    let mut last: Option<u64> = None;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await
            .expect("follower went quiet")
            .expect("follower stopped");
        if let FollowerEvent::Block { block, release } = event {
            assert!(release.is_ok(), "release unreadable at {block}");
            if let Some(last) = last {
                assert_eq!(block.number, last + 1, "blocks out of order or skipped");
            }
            last = Some(block.number);
            if block.number == number {
                return;
            }
        }
    }
}
