//! Detection latency: the upgrade block's finalized head published by fake-node → SIGTERM delivered
//! to the old engine (target ≤ 5 ms p99 on loopback).
//!
//! Each round sets the next release, then times from just before `dev_newBlock` (which builds the
//! block, finalizes it and publishes the head) to the `stop` event fake-engine writes on SIGTERM
//! (`--shutdown-delay 0`). The start includes the control call's round trip, so the figure is an
//! upper bound. The release then moves back and the engine restarts for the next round.

#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)] // the end-to-end harness: each bench uses its own subset
mod common;
mod support;

use std::time::Duration;

use common::{Node, Shim};

fn main() {
    let rounds = support::iterations(200, 5);
    support::runtime().block_on(async {
        let node = Node::start(&["--release", "1.0.0"]).await;
        let shim = Shim::builder(&node, "1.0.0")
            .shim_args(&["--grace", "5s"])
            .spawn();
        shim.wait_event("start", 1).await;
        let mut samples = Vec::with_capacity(rounds);
        for round in 1..=rounds {
            node.set_release("1.1.0").await;
            let before = support::unix_nanos();
            node.new_blocks(1).await;
            let stop = shim.wait_event("stop", round).await;
            let stopped_at = stop.raw["unix_nanos"].as_u64().expect("stop event time") as u128;
            samples.push(Duration::from_nanos(
                (stopped_at.saturating_sub(before)) as u64,
            ));
            node.set_release("1.0.0").await;
            node.new_blocks(1).await;
            shim.wait_event("start", round + 1).await;
        }
        support::report_latency(
            "detection latency (upgrade head published → old engine got SIGTERM)",
            &samples,
            "≤ 5 ms p99",
        );
    });
}
