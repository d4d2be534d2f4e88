//! Accept loops that never die and never spin.
//!
//! `accept` fails for reasons that pass on their own: out of file descriptors (EMFILE, ENFILE), out
//! of memory, a connection reset before it was taken. A server that stops on the first such error
//! leaves a healthy shim unreachable (and a probe then restarts its pod); one that retries at once
//! burns a core and floods the log, because the pending connection is still there and fails again.
//! So each loop retries after a back-off (reset by a good accept) and logs calmly.
//! [`AcceptErrors`] makes those decisions from the time it is given; [`AcceptLoop`] logs and sleeps.

use std::io;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::pace::Pacer;

/// What to do after one failed accept: wait `delay`, and log a line if `line` says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterError {
    pub delay: Duration,
    pub line: Option<ErrorLine>,
}

/// A log line about accept errors that is due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorLine {
    /// Errors since the previous line that were not logged.
    pub suppressed: u64,
}

/// The back-off and log-rate decisions of one accept loop.
///
/// Back-off: `initial` doubling to `max`, back to `initial` after a good accept. Log rate: an error
/// is logged when no error line was logged in the last `log_every`; the others are counted and the
/// next line says how many. A good accept after a logged error is worth one line ("accepting
/// again"), so an operator sees the end of the trouble; flapping (fail, succeed, fail…) therefore
/// costs at most two lines per `log_every`.
#[derive(Debug, Clone)]
pub struct AcceptErrors {
    backoff: Backoff,
    /// When the next error line may be said.
    error_line: Pacer<Instant>,
    suppressed: u64,
    /// Errors since the last "accepting again" line (or since the start).
    since_recovery: u64,
    /// Whether an error line was logged since the last "accepting again" line.
    logged_since_recovery: bool,
}

impl AcceptErrors {
    /// The first retry comes quickly: most accept errors are gone after one closed connection.
    pub const INITIAL: Duration = Duration::from_millis(10);
    /// A stuck listener is retried once a second, which costs nothing and recovers quickly.
    pub const MAX: Duration = Duration::from_secs(1);
    /// At most one error line per this period.
    pub const LOG_EVERY: Duration = Duration::from_secs(10);

    pub fn new(initial: Duration, max: Duration, log_every: Duration) -> Self {
        AcceptErrors {
            backoff: Backoff::new(initial, max),
            error_line: Pacer::every(log_every),
            suppressed: 0,
            since_recovery: 0,
            logged_since_recovery: false,
        }
    }

    /// An accept failed at `now`.
    pub fn failed(&mut self, now: Instant) -> AfterError {
        self.since_recovery += 1;
        let line = if self.error_line.due(now) {
            self.logged_since_recovery = true;
            Some(ErrorLine {
                suppressed: std::mem::take(&mut self.suppressed),
            })
        } else {
            self.suppressed += 1;
            None
        };
        AfterError {
            delay: self.backoff.next_delay(),
            line,
        }
    }

    /// An accept succeeded. Returns `Some(errors)` when an "accepting again" line is due: errors
    /// were logged since the last such line; `errors` counts every failure since then.
    pub fn accepted(&mut self) -> Option<u64> {
        self.backoff.reset();
        if !self.logged_since_recovery {
            return None;
        }
        self.logged_since_recovery = false;
        Some(std::mem::take(&mut self.since_recovery))
    }
}

impl Default for AcceptErrors {
    fn default() -> Self {
        AcceptErrors::new(Self::INITIAL, Self::MAX, Self::LOG_EVERY)
    }
}

/// The thin shell around [`AcceptErrors`] for one named listener: logs and sleeps.
#[derive(Debug)]
pub struct AcceptLoop {
    what: String,
    errors: AcceptErrors,
}

impl AcceptLoop {
    /// `what` names the listener in log lines, e.g. `control socket /run/engine-shim.sock`.
    pub fn new(what: impl Into<String>) -> Self {
        AcceptLoop {
            what: what.into(),
            errors: AcceptErrors::default(),
        }
    }

    /// Call after each good accept.
    pub fn accepted(&mut self) {
        if let Some(errors) = self.errors.accepted() {
            info!(
                "{}: accepting connections again after {errors} failed accept(s)",
                self.what
            );
        }
    }

    /// Call after each failed accept: logs if a line is due, then waits out the back-off.
    pub async fn failed(&mut self, error: &io::Error) {
        let after = self.errors.failed(Instant::now());
        match after.line {
            Some(ErrorLine { suppressed: 0 }) => warn!(
                "{}: cannot accept a connection: {error}; retrying in {:?}",
                self.what, after.delay
            ),
            Some(ErrorLine { suppressed }) => warn!(
                "{}: cannot accept a connection: {error}; retrying in {:?} \
                 ({suppressed} more failed accept(s) not logged)",
                self.what, after.delay
            ),
            None => {}
        }
        tokio::time::sleep(after.delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn errors() -> AcceptErrors {
        AcceptErrors::new(MS(10), MS(1000), Duration::from_secs(10))
    }

    #[test]
    fn back_off_doubles_to_the_cap_and_resets_on_a_good_accept() {
        let mut errors = errors();
        let now = Instant::now();
        let delays: Vec<_> = (0..9).map(|_| errors.failed(now).delay).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000].map(MS));
        errors.accepted();
        assert_eq!(errors.failed(now).delay, MS(10));
    }

    #[test]
    fn logs_the_first_error_then_one_line_per_period_with_the_count() {
        let mut errors = errors();
        let start = Instant::now();
        let lines: Vec<_> = (0..25u64)
            .map(|i| errors.failed(start + Duration::from_secs(i)).line)
            .collect();
        let logged: Vec<_> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_some())
            .collect();
        assert_eq!(
            logged,
            [
                (0, &Some(ErrorLine { suppressed: 0 })),
                (10, &Some(ErrorLine { suppressed: 9 })),
                (20, &Some(ErrorLine { suppressed: 9 })),
            ]
        );
    }

    #[test]
    fn a_burst_of_errors_is_one_line() {
        let mut errors = errors();
        let now = Instant::now();
        let logged = (0..400_000)
            .filter(|_| errors.failed(now).line.is_some())
            .count();
        assert_eq!(logged, 1);
    }

    #[test]
    fn recovery_is_reported_once_with_every_error_counted() {
        let mut errors = errors();
        let now = Instant::now();
        assert_eq!(errors.accepted(), None, "nothing to recover from");
        for _ in 0..5 {
            errors.failed(now);
        }
        assert_eq!(errors.accepted(), Some(5));
        assert_eq!(errors.accepted(), None);
    }

    #[test]
    fn flapping_costs_at_most_two_lines_per_period() {
        let mut errors = errors();
        let start = Instant::now();
        let mut lines = 0;
        // One failure and one success every 10 ms, for 20 s: two periods.
        for i in 0..2000u64 {
            let now = start + MS(10 * i);
            lines += usize::from(errors.failed(now).line.is_some());
            lines += usize::from(errors.accepted().is_some());
        }
        assert!(lines <= 4, "{lines} lines");
        // The errors of a quiet stretch are counted into the next "accepting again" line.
        let late = start + Duration::from_secs(30);
        assert!(errors.failed(late).line.is_some());
        assert_eq!(errors.accepted(), Some(1000));
    }
}
