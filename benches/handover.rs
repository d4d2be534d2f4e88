//! The hand-over loop the hand-over benchmarks share: release flips 1.0 ↔ 1.1 on a manual-block
//! fake-node, and the figures read from fake-engine's events.
//!
//! - gap: the new engine's `start` minus the old engine's `stop`. fake-engine writes `stop` just
//!   before it releases its data directory and exits, and `start` once it runs and holds the data
//!   directory, so this bounds "old engine reaped → new engine exec'd" from above (it also holds the
//!   new process's own start-up).
//! - shim's share: from the shim's `engine … stopped` line (logged once the old engine is reaped)
//!   to its `engine … started (pid N)` line (logged once the new one is spawned), by the lines'
//!   microsecond timestamps: the gap without the engines' own exit and start-up.
//! - end to end: the new engine's `start` minus a clock read taken just before `dev_newBlock` builds
//!   and finalizes the upgrade block (so it includes the control call's round trip).
//!
//! Engines stop at once (`--shutdown-delay 0`), so the figures are the shim's own cost.
#![allow(dead_code)] // each bench uses its own subset

use std::time::Duration;

use crate::common::{wait_until, Host, LogLine, Node, Shim};
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
    pub shim_share: Vec<Duration>,
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
        shim_share: Vec::with_capacity(rounds),
        end_to_end: Vec::with_capacity(rounds),
    };
    let shim_of = |version: &str| match layout {
        Layout::OneProcess => &shims[0],
        Layout::TwoProcesses => &shims[usize::from(version == "1.1.0")],
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
        let needle = format!("engine {from} stopped");
        let nth_stopped = || {
            shim_of(from)
                .log()
                .into_iter()
                .filter(|l| l.is_shim() && l.message().starts_with(&needle))
                .nth(stops_of_from - 1)
        };
        wait_until("the old engine's stopped line", || nth_stopped().is_some()).await;
        let stopped = nth_stopped().unwrap();
        let (_, started) = shim_of(to)
            .wait_message(0, &[&format!("engine {to} started (pid {})", start.pid)])
            .await;
        samples
            .shim_share
            .push(nanos(log_time(&started).saturating_sub(log_time(&stopped))));
    }
    host.assert_no_lock_failed();
    drop(shims);
    samples
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// A log line's `timestamp` (RFC 3339, UTC, as tracing prints it) in nanoseconds since the epoch.
fn log_time(line: &LogLine) -> u128 {
    let stamp = line.0["timestamp"]
        .as_str()
        .expect("a log line without a timestamp");
    let parse = |from: usize, to: usize| -> i64 {
        stamp[from..to]
            .parse()
            .unwrap_or_else(|e| panic!("timestamp {stamp}: {e}"))
    };
    let (year, month, day) = (parse(0, 4), parse(5, 7), parse(8, 10));
    let (hour, minute, second) = (parse(11, 13), parse(14, 16), parse(17, 19));
    let fraction = stamp[19..].trim_start_matches('.').trim_end_matches('Z');
    let nanos_in_second: u128 = format!("{fraction:0<9}")[..9]
        .parse()
        .unwrap_or_else(|e| panic!("timestamp {stamp}: {e}"));
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    seconds as u128 * 1_000_000_000 + nanos_in_second
}
