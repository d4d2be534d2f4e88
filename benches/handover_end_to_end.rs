//! End to end: the upgrade block finalized (a clock read just before `dev_newBlock`) → the new
//! engine running (its `start` event), in both layouts: one shim with both engines, and two shims
//! handing over through the lock file. Reported as p50/p99 (see `handover.rs`).

#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)] // the end-to-end harness: each bench uses its own subset
mod common;
mod handover;
mod support;

use handover::{measure, Layout};

fn main() {
    let rounds = support::iterations(200, 6);
    support::runtime().block_on(async {
        for (layout, name) in [
            (Layout::OneProcess, "one process"),
            (Layout::TwoProcesses, "two processes"),
        ] {
            let samples = measure(layout, rounds).await;
            support::report_latency(
                &format!("end to end, {name} (upgrade block finalized → new engine started)"),
                &samples.end_to_end,
                "p50/p99 reported",
            );
        }
    });
}
