//! Pacing of repeated log lines: say it now, then not again until a gap has passed.
//!
//! A shim that waits (for a compatible release, for a node that caught up, for a lock, for a
//! listener that accepts again) would otherwise say the same thing on every block or every retry,
//! and bury the one line that matters. Every such line goes through one [`Pacer`], so they all
//! follow the same rule: the first line at once, the next one no sooner than one gap after it.
//!
//! The pacer never reads a clock: the caller passes the moment in, on whichever clock it keeps
//! (`std`'s or tokio's `Instant` for the gate, the follower and the accept loops, the lock's
//! boot-time clock for the database lock), so the decisions stay pure and testable on made-up
//! time. It is not a timer either: a paced line is said with the next event after it is due.

use std::ops::Add;
use std::time::Duration;

use crate::backoff::Backoff;

/// A moment on some clock that a pacer can count gaps on.
pub trait Moment: Copy + Ord + Add<Duration, Output = Self> {}

impl<T: Copy + Ord + Add<Duration, Output = T>> Moment for T {}

/// How far apart the lines are.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Gap {
    /// Always the same: a line that repeats while a state lasts (waiting for a release).
    Fixed(Duration),
    /// Doubling up to a cap: a line about a fault that may last long (an unreachable lock
    /// database), so a long outage costs a few lines, not one per interval.
    Doubling(Backoff),
}

/// Decides when a repeated line is due: the first at once, then one gap after the last one said,
/// until [`Pacer::reset`] (the episode the line is about ended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pacer<T> {
    next_due: Option<T>,
    gap: Gap,
}

impl<T: Moment> Pacer<T> {
    /// Lines at most every `gap`.
    pub fn every(gap: Duration) -> Self {
        Pacer {
            next_due: None,
            gap: Gap::Fixed(gap),
        }
    }

    /// Lines `first` apart, then twice as far each time, up to `max` apart.
    pub fn doubling(first: Duration, max: Duration) -> Self {
        Pacer {
            next_due: None,
            gap: Gap::Doubling(Backoff::new(first, max)),
        }
    }

    /// The earliest moment the next line may be said; `None`: at once.
    pub fn next_due(&self) -> Option<T> {
        self.next_due
    }

    /// Whether a line may be said at `now`. Asks only: see [`Pacer::said`].
    pub fn is_due(&self, now: T) -> bool {
        self.next_due().is_none_or(|due| now >= due)
    }

    /// A line was said at `now` (due or not: fresh news is said at once): the next is due one
    /// gap later.
    pub fn said(&mut self, now: T) {
        let gap = match &mut self.gap {
            Gap::Fixed(gap) => *gap,
            Gap::Doubling(backoff) => backoff.next_delay(),
        };
        self.next_due = Some(now + gap);
    }

    /// Whether the line is due at `now`; if it is, it counts as said.
    pub fn due(&mut self, now: T) -> bool {
        let due = self.is_due(now);
        if due {
            self.said(now);
        }
        due
    }

    /// The episode ended: the next line is due at once, and a doubling gap starts small again.
    pub fn reset(&mut self) {
        self.next_due = None;
        if let Gap::Doubling(backoff) = &mut self.gap {
            backoff.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up clock: whole seconds, so the tests read as a timeline.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    struct At(Duration);

    impl Add<Duration> for At {
        type Output = At;
        fn add(self, rhs: Duration) -> At {
            At(self.0 + rhs)
        }
    }

    fn at(s: u64) -> At {
        At(Duration::from_secs(s))
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_fixed_pacer_says_the_first_line_at_once_then_one_per_gap() {
        let mut pacer = Pacer::every(S(60));
        assert_eq!(pacer.next_due(), None);
        assert!(pacer.due(at(0)));
        assert_eq!(pacer.next_due(), Some(at(60)));
        assert!(!pacer.due(at(59)));
        assert!(pacer.due(at(60)));
        // The gap counts from the line said, not from when it was due.
        assert!(pacer.due(at(200)));
        assert!(!pacer.due(at(259)));
        assert!(pacer.due(at(260)));
    }

    #[test]
    fn a_doubling_pacer_spaces_lines_until_reset() {
        let mut pacer = Pacer::doubling(S(5), S(300));
        assert!(pacer.due(at(0)));
        assert!(!pacer.due(at(1)));
        assert!(pacer.due(at(5)));
        // Then 10 s.
        assert!(!pacer.due(at(14)));
        assert!(pacer.due(at(15)));
        pacer.reset();
        assert!(pacer.due(at(16)));
        // And small again after the reset.
        assert!(pacer.due(at(21)));
    }

    #[test]
    fn a_doubling_gap_stops_growing_at_its_cap() {
        let mut pacer = Pacer::doubling(S(5), S(20));
        let mut now = at(0);
        let mut gaps = Vec::new();
        for _ in 0..5 {
            pacer.said(now);
            let due = pacer.next_due().unwrap();
            gaps.push(due.0 - now.0);
            now = due;
        }
        assert_eq!(gaps, [S(5), S(10), S(20), S(20), S(20)]);
    }

    #[test]
    fn asking_does_not_count_as_saying() {
        let mut pacer = Pacer::every(S(60));
        assert!(pacer.is_due(at(0)));
        assert!(pacer.is_due(at(0)));
        // Fresh news is said before it is due, and the gap counts from it.
        pacer.said(at(0));
        pacer.said(at(30));
        assert!(!pacer.is_due(at(60)));
        assert!(pacer.is_due(at(90)));
    }

    #[test]
    fn a_reset_makes_the_next_line_due_at_once() {
        let mut pacer = Pacer::every(S(60));
        assert!(pacer.due(at(0)));
        pacer.reset();
        assert!(pacer.due(at(1)));
        assert!(!pacer.due(at(2)));
    }

    #[test]
    fn works_on_every_clock_the_shim_keeps() {
        let start = std::time::Instant::now();
        let mut std_pacer = Pacer::every(S(60));
        assert!(std_pacer.due(start));
        assert!(!std_pacer.due(start + S(59)));
        assert!(std_pacer.due(start + S(60)));

        let start = tokio::time::Instant::now();
        let mut tokio_pacer = Pacer::every(S(60));
        assert!(tokio_pacer.due(start));
        assert!(!tokio_pacer.due(start + S(59)));
        assert!(tokio_pacer.due(start + S(60)));
    }
}
