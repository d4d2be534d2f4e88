//! Capped exponential back-off, shared by reconnects and crash restarts.

use std::time::Duration;

/// Delays that double from `initial` up to `max`, until reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            next: initial.min(max),
        }
    }

    /// The delay to wait now; the one after it is twice as long, capped.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Back to the initial delay, after something went well.
    pub fn reset(&mut self) {
        self.next = self.initial.min(self.max);
    }
}

/// Crash-restart back-off as supervisord's `startsecs` understands it: 1 s doubling to 60 s, and a
/// child that stayed up at least `start_secs` counts as a good start, so its next crash waits 1 s again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartBackoff {
    backoff: Backoff,
    start_secs: Duration,
}

impl RestartBackoff {
    pub const INITIAL: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(60);

    pub fn new(start_secs: Duration) -> Self {
        RestartBackoff {
            backoff: Backoff::new(Self::INITIAL, Self::MAX),
            start_secs,
        }
    }

    /// The delay before restarting a child that exited after running for `uptime`.
    pub fn next_delay(&mut self, uptime: Duration) -> Duration {
        if uptime >= self.start_secs {
            self.backoff.reset();
        }
        self.backoff.next_delay()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn doubles_up_to_the_cap() {
        let mut backoff = Backoff::new(S(1), S(10));
        let delays: Vec<_> = (0..6).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays, [S(1), S(2), S(4), S(8), S(10), S(10)]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), S(1));
    }

    #[test]
    fn never_exceeds_the_cap_even_when_it_starts_above_it() {
        let mut backoff = Backoff::new(S(10), S(2));
        assert_eq!(backoff.next_delay(), S(2));
        assert_eq!(backoff.next_delay(), S(2));
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let mut backoff = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(backoff.next_delay(), Duration::MAX);
        assert_eq!(backoff.next_delay(), Duration::MAX);
    }

    #[test]
    fn restart_backoff_resets_after_a_good_start() {
        let mut restart = RestartBackoff::new(S(10));
        let quick: Vec<_> = (0..8).map(|_| restart.next_delay(S(0))).collect();
        assert_eq!(quick, [S(1), S(2), S(4), S(8), S(16), S(32), S(60), S(60)]);
        assert_eq!(restart.next_delay(S(10)), S(1));
        assert_eq!(restart.next_delay(S(9)), S(2));
    }
}
