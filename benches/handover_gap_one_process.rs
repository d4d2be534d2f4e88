//! Hand-over gap, one process (target ≤ 5 ms p99): one shim holds engines 1.0.0 and 1.1.0 on one
//! data directory; the release flips between them every round, and the gap is the new engine's
//! `start` event minus the old engine's `stop` event (an upper bound of old engine reaped → new
//! engine exec'd; see `handover.rs`).

#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)] // the end-to-end harness: each bench uses its own subset
mod common;
mod handover;
mod support;

use handover::{measure, Layout};

fn main() {
    let rounds = support::iterations(200, 6);
    support::runtime().block_on(async {
        let samples = measure(Layout::OneProcess, rounds).await;
        support::report_latency(
            "hand-over gap, one process (old engine stopped → new engine started)",
            &samples.gap,
            "≤ 5 ms p99",
        );
        support::report_latency(
            "  of which the shim's share (old engine reaped → new engine spawned, from its log)",
            &samples.shim_share,
            "part of the above",
        );
    });
}
