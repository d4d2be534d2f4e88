//! The hand-over loop the hand-over benchmarks share: release flips 1.0 ↔ 1.1 on a manual-block
//! fake-node, and the figures read from fake-engine's events.
//!
//! - gap: the new engine's `start` minus the old engine's `stop`. fake-engine writes `stop` just
//!   before it releases its data directory and exits, and `start` once it runs and holds the data
//!   directory, so this bounds "old engine reaped → new engine exec'd" from above (it also holds the
//!   new process's own start-up).
//! - end to end: the new engine's `start` minus a clock read taken just before `dev_newBlock` builds
//!   and finalizes the upgrade block (so it includes the control call's round trip).
//!
//! Engines stop at once (`--shutdown-delay 0`), so the figures are the shim's own cost.
#![allow(dead_code)] // each bench uses its own subset

use std::time::Duration;

use crate::common::{Host, Node, Shim};
use crate::support;

/// Where the two engine versions live.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// One shim with both engines.
    OneProcess,
    /// Two shims, one engine each, sharing the data directory and the lock file.
    TwoProcesses,
}

/// The samples of one measured series of hand-overs.
pub struct Samples {
    pub gap: Vec<Duration>,
    pub end_to_end: Vec<Duration>,
}

/// Runs `rounds` hand-overs in `layout` and returns their samples.
pub async fn measure(layout: Layout, rounds: usize) -> Samples {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let shims: Vec<Shim> = match layout {
        Layout::OneProcess => vec![host
            .shim(&node)
            .engine("1.0.0")
            .engine("1.1.0")
            .shim_args(&["--grace", "5s"])
            .spawn()],
        Layout::TwoProcesses => ["1.0.0", "1.1.0"]
            .iter()
            .map(|version| {
                host.shim(&node)
                    .engine(version)
                    .shim_args(&["--grace", "5s"])
                    .spawn()
            })
            .collect(),
    };
    host.wait_event("start", "1.0.0", 1).await;
    if let Layout::TwoProcesses = layout {
        // The 1.1.0 shim has seen the chain (it waits), so it acts on the very next block.
        shims[1].wait_message(0, &["WAITING"]).await;
    }

    let mut samples = Samples {
        gap: Vec::with_capacity(rounds),
        end_to_end: Vec::with_capacity(rounds),
    };
    for round in 0..rounds {
        let (from, to) = if round % 2 == 0 {
            ("1.0.0", "1.1.0")
        } else {
            ("1.1.0", "1.0.0")
        };
        // Hand-overs so far to each version: 1.0.0 started once before the first round.
        let stops_of_from = round / 2 + 1;
        let starts_of_to = if to == "1.0.0" {
            round / 2 + 2
        } else {
            round / 2 + 1
        };
        node.set_release(to).await;
        let before = support::unix_nanos();
        node.new_blocks(1).await;
        let start = host.wait_event("start", to, starts_of_to).await;
        let stop = host.wait_event("stop", from, stops_of_from).await;
        samples
            .gap
            .push(nanos(start.unix_nanos().saturating_sub(stop.unix_nanos())));
        samples
            .end_to_end
            .push(nanos(start.unix_nanos().saturating_sub(before)));
    }
    host.assert_no_lock_failed();
    drop(shims);
    samples
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}
