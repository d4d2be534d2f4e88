//! How often a waiting database lock speaks: the `Waiting` reports a waiter sends its run loop, and
//! the "cannot reach the lock database" line. Both are pure and take the time as an argument, so
//! the lock machine that uses them stays free of clock reads. The gaps come from the shared
//! [`Pacer`]; what is news (a new holder) is decided here.

use std::time::Duration;

use super::fence::BootInstant;
use super::HolderInfo;
use crate::pace::Pacer;

/// Spacing of repeated `Waiting` reports and "unreachable" log lines: doubling up to the cap.
const REPORT_GAP_FIRST: Duration = Duration::from_secs(5);
const REPORT_GAP_MAX: Duration = Duration::from_secs(300);

/// The pacer of the "cannot reach the lock database" line: the first at once, then at doubling
/// intervals until the database answers again (then reset).
pub(super) fn unreachable_line() -> Pacer<BootInstant> {
    Pacer::doubling(REPORT_GAP_FIRST, REPORT_GAP_MAX)
}

/// Decides when a waiting acquisition reports (again) whom it waits for: at once the first time,
/// then only when the holder changes, and then no more often than a doubling gap.
#[derive(Debug, Clone)]
pub(super) struct WaitReport {
    /// The acquisition this report is about; a new acquisition starts a new report.
    pub(super) serial: u64,
    /// The holder last reported (`Some(None)`: that nobody held it); `None` before the first
    /// report.
    last: Option<Option<HolderKey>>,
    /// How soon after the last report a change may be reported.
    pacer: Pacer<BootInstant>,
}

/// What makes a holder a different one (its expiry changes with every renewal, so it does not).
type HolderKey = (String, u32, String, Option<u64>);

impl WaitReport {
    pub(super) fn new(serial: u64) -> Self {
        WaitReport {
            serial,
            last: None,
            pacer: Pacer::doubling(REPORT_GAP_FIRST, REPORT_GAP_MAX),
        }
    }

    /// Whether to report `holder` now.
    pub(super) fn observe(&mut self, holder: &Option<HolderInfo>, now: BootInstant) -> bool {
        let key = holder
            .as_ref()
            .map(|h| (h.host.clone(), h.pid, h.engine_version.clone(), h.epoch));
        // Before the first report nothing has been said, so the pacer lets it through at once.
        let report = self.last.as_ref() != Some(&key) && self.pacer.is_due(now);
        if report {
            self.pacer.said(now);
            self.last = Some(key);
        }
        report
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
    fn the_unreachable_line_is_spaced_on_the_boot_clock_until_reset() {
        let mut pacer = unreachable_line();
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
