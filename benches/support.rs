//! What every benchmark shares: quick mode, timing helpers and percentiles.
//!
//! The benchmarks drive real processes (fake-node, engine-shim, fake-engine), so they use their own
//! harness and report the figures the targets are stated in (p50/p99, blocks per second, MB).
#![allow(dead_code)] // each bench uses its own subset

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `cargo bench -- --quick` (as CI runs it): few iterations, only to keep the benches working.
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

/// `full` iterations normally, `quick` in quick mode.
pub fn iterations(full: usize, quick_n: usize) -> usize {
    if quick() {
        quick_n
    } else {
        full
    }
}

pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_nanos()
}

/// Percentile (0..=100) of the samples, nearest-rank.
pub fn percentile(samples: &[Duration], pct: f64) -> Duration {
    assert!(!samples.is_empty(), "no samples");
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Prints `name: p50 …, p99 …, max … (n samples)` and the target.
pub fn report_latency(name: &str, samples: &[Duration], target: &str) {
    println!(
        "{name}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples; target {target})",
        ms(percentile(samples, 50.0)),
        ms(percentile(samples, 99.0)),
        ms(percentile(samples, 100.0)),
        samples.len()
    );
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Resident set size of a process in kB, from /proc/PID/status (`VmRSS`).
pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
}

/// CPU time (user + system) a process has used, from /proc/PID/stat (in USER_HZ = 100 ticks).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/stat: {e}"));
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime
    // are fields 14 and 15.
    let after_name = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
