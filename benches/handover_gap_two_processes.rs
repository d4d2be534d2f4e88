//! Hand-over gap, two processes through the file lock (target ≤ 20 ms p99): two shims, one engine
//! each (1.0.0 and 1.1.0), on one data directory and one lock file, as two systemd services on a
//! VPS. The gap is the new engine's `start` event minus the old engine's `stop` event: it spans the
//! old shim reaping its engine and giving the lock back, and the new shim waking, taking the lock
//! and starting its engine (see `handover.rs`).

#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)] // the end-to-end harness: each bench uses its own subset
mod common;
mod handover;
mod support;

use handover::{measure, Layout};

fn main() {
    let rounds = support::iterations(200, 6);
    support::runtime().block_on(async {
        let samples = measure(Layout::TwoProcesses, rounds).await;
        support::report_latency(
            "hand-over gap, two processes (old engine stopped → lock → new engine started)",
            &samples.gap,
            "≤ 20 ms p99",
        );
        support::report_latency(
            "  of which the shims' share (old engine reaped → lock → new engine spawned, from their logs)",
            &samples.shim_share,
            "part of the above",
        );
    });
}
