//! How often a waiting database lock speaks: the `Waiting` reports a waiter sends its run loop, and
//! the "cannot reach the lock database" line. Both are pure and take the time as an argument, so
//! the lock machine that uses them stays free of clock reads.

use std::time::Duration;

use super::fence::BootInstant;
use super::HolderInfo;
use crate::backoff::Backoff;

/// Spacing of repeated `Waiting` reports and "unreachable" log lines: doubling up to the cap.
const REPORT_GAP_FIRST: Duration = Duration::from_secs(5);
const REPORT_GAP_MAX: Duration = Duration::from_secs(300);

/// Decides when a waiting acquisition reports (again) whom it waits for: at once the first time,
/// then only when the holder changes, and then no more often than a doubling gap.
#[derive(Debug, Clone)]
pub(super) struct WaitReport {
    /// The acquisition this report is about; a new acquisition starts a new report.
    pub(super) serial: u64,
    /// What was last reported, and when.
    last: Option<(Option<HolderKey>, BootInstant)>,
    /// How long after the last report a change may be reported.
    gap: Duration,
}

/// What makes a holder a different one (its expiry changes with every renewal, so it does not).
type HolderKey = (String, u32, String, Option<u64>);

impl WaitReport {
    pub(super) fn new(serial: u64) -> Self {
        WaitReport {
            serial,
            last: None,
            gap: REPORT_GAP_FIRST,
        }
    }

    /// Whether to report `holder` now.
    pub(super) fn observe(&mut self, holder: &Option<HolderInfo>, now: BootInstant) -> bool {
        let key = holder
            .as_ref()
            .map(|h| (h.host.clone(), h.pid, h.engine_version.clone(), h.epoch));
        let report = match &self.last {
            None => true,
            Some((last, _)) if *last == key => false,
            Some((_, at)) => now.saturating_duration_since(*at) >= self.gap,
        };
        if report {
            if self.last.is_some() {
                self.gap = self.gap.saturating_mul(2).min(REPORT_GAP_MAX);
            }
            self.last = Some((key, now));
        }
        report
    }
}

/// Paces a repeated log line: the first at once, then at doubling intervals until reset.
#[derive(Debug, Clone)]
pub(super) struct Pacer {
    next_at: Option<BootInstant>,
    gap: Backoff,
}

impl Pacer {
    pub(super) fn new() -> Self {
        Pacer {
            next_at: None,
            gap: Backoff::new(REPORT_GAP_FIRST, REPORT_GAP_MAX),
        }
    }

    /// Whether the line is due at `now`; if so, the next one is due one (growing) gap later.
    pub(super) fn due(&mut self, now: BootInstant) -> bool {
        if self.next_at.is_some_and(|at| now < at) {
            return false;
        }
        self.next_at = Some(now + self.gap.next_delay());
        true
    }

    pub(super) fn reset(&mut self) {
        *self = Pacer::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(pid: u32, epoch: u64, expires: &str) -> Option<HolderInfo> {
        Some(HolderInfo {
            pid,
            host: "host-a".into(),
            engine_version: "1.0.0".into(),
            since_unix_ms: 0,
            epoch: Some(epoch),
            expires_at: Some(expires.into()),
        })
    }

    fn at(s: u64) -> BootInstant {
        BootInstant::from_boot(Duration::from_secs(1000 + s))
    }

    #[test]
    fn waiting_is_reported_first_then_on_a_new_holder_with_growing_gaps() {
        let mut report = WaitReport::new(1);
        assert!(report.observe(&holder(1, 1, "a"), at(0)));
        // The same holder renewing its lease is no news.
        assert!(!report.observe(&holder(1, 1, "b"), at(1)));
        assert!(!report.observe(&holder(1, 1, "c"), at(100)));
        // A new holder is news, but not sooner than the gap after the last report.
        let mut report = WaitReport::new(1);
        assert!(report.observe(&None, at(0)));
        assert!(!report.observe(&holder(2, 2, "a"), at(1)));
        assert!(report.observe(&holder(2, 2, "a"), at(5)));
        // The gap doubles: 10 s now.
        assert!(!report.observe(&holder(3, 3, "a"), at(14)));
        assert!(report.observe(&holder(3, 3, "a"), at(15)));
    }

    #[test]
    fn the_log_pacer_spaces_lines_until_reset() {
        let mut pacer = Pacer::new();
        assert!(pacer.due(at(0)));
        assert!(!pacer.due(at(1)));
        assert!(pacer.due(at(5)));
        // Then 10 s.
        assert!(!pacer.due(at(14)));
        assert!(pacer.due(at(15)));
        pacer.reset();
        assert!(pacer.due(at(16)));
    }
}
