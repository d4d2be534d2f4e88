//! Self-fencing: the holder's own deadlines, kept on the clock that counts through every pause.
//!
//! A lease is judged expired by the database's clock; the holder cannot read that clock, so it
//! keeps a stricter deadline of its own and stops its engine before the database could let anyone
//! else in. The arithmetic ([`Fence`]) is pure. Every deadline is on `CLOCK_BOOTTIME`
//! ([`BootInstant`]): unlike `CLOCK_MONOTONIC` (and so tokio's timers) it keeps counting while the
//! host is suspended, so a holder waking up from a freeze sees at once that its deadline passed.
//! [`BootTimer`] sleeps on that clock for the same reason.

use std::io;
use std::ops::Add;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::time::{
    clock_gettime, timerfd_create, timerfd_settime, ClockId, Itimerspec, TimerfdClockId,
    TimerfdFlags, TimerfdTimerFlags, Timespec,
};
use tokio::io::unix::AsyncFd;

/// A moment on `CLOCK_BOOTTIME`: time since boot, including time spent suspended or stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BootInstant(Duration);

impl BootInstant {
    pub fn now() -> Self {
        let now = clock_gettime(ClockId::Boottime);
        BootInstant(Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
    }

    /// The moment this far after boot.
    #[cfg(test)]
    pub const fn from_boot(since_boot: Duration) -> Self {
        BootInstant(since_boot)
    }

    pub const fn since_boot(self) -> Duration {
        self.0
    }

    /// How long from `earlier` to this moment; zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: BootInstant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// How long from now until this moment; zero once it has passed.
    pub fn remaining(self) -> Duration {
        self.saturating_duration_since(BootInstant::now())
    }
}

impl Add<Duration> for BootInstant {
    type Output = BootInstant;

    fn add(self, rhs: Duration) -> BootInstant {
        BootInstant(self.0.saturating_add(rhs))
    }
}

/// A timer on `CLOCK_BOOTTIME` that a tokio task can await (a `timerfd` in the reactor).
///
/// tokio's own timers follow `CLOCK_MONOTONIC`, which stops while the host is suspended: a holder
/// sleeping on one after a suspend would wake late by the length of the suspend, its engine
/// running all that time on a lease the database may have given away.
#[derive(Debug)]
pub struct BootTimer {
    fd: AsyncFd<OwnedFd>,
}

impl BootTimer {
    /// Needs a tokio runtime with I/O enabled.
    pub fn new() -> io::Result<Self> {
        let fd = timerfd_create(
            TimerfdClockId::Boottime,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // SAFETY: the `OwnedFd` is moved into the `AsyncFd` and stays open, the same descriptor,
        // until the `AsyncFd` drops it.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(BootTimer { fd })
    }

    /// Resolves once `deadline` has passed (at once if it already has).
    pub async fn sleep_until(&mut self, deadline: BootInstant) -> io::Result<()> {
        // An all-zero value would disarm the timer instead of firing it.
        let at = deadline.0.max(Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: at.as_secs() as _,
                tv_nsec: at.subsec_nanos() as _,
            },
        };
        // Re-arming also clears an expiry nobody read, so a stale one cannot end this wait.
        timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::ABSTIME, &spec)?;
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            match rustix::io::read(self.fd.get_ref(), &mut expirations) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(rustix::io::Errno::INTR) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
}

/// The holder's deadlines, all counted from the moment it *sent* its last renewal that succeeded.
///
/// The database set that renewal's expiry to its own `now() + lease`, no earlier than the moment
/// the request left (a request is never executed before it is sent). So, with `renew ≤ lease / 2`:
/// - **renew deadline** `last_ok_sent + lease / 2`: no renewal succeeded by then ⇒ the holder gives
///   up: it reports the lock lost and its engine is told to stop (TERM) at once;
/// - **kill deadline** `last_ok_sent + lease − renew`: the engine is KILLed by then, at least
///   `renew` before the database can consider the lease expired and let a taker in. The margin
///   absorbs the time a KILL takes and any rate difference between the two clocks.
///
/// `kill deadline ≥ renew deadline` because `lease − renew ≥ lease / 2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub lease: Duration,
    pub renew: Duration,
    /// When the last successful renewal (or the acquisition) was sent.
    pub last_ok_sent: BootInstant,
}

impl Fence {
    /// By when another renewal must have succeeded.
    pub fn renew_deadline(&self) -> BootInstant {
        self.last_ok_sent + self.lease / 2
    }

    /// By when the engine must be dead once the lock is lost for want of renewals.
    pub fn kill_deadline(&self) -> BootInstant {
        self.last_ok_sent + self.lease.saturating_sub(self.renew)
    }

    /// Whether the holder must give up at `now`.
    pub fn expired(&self, now: BootInstant) -> bool {
        now >= self.renew_deadline()
    }

    /// A renewal sent at `sent` succeeded. An older success than the one on record changes nothing.
    pub fn renewed(&mut self, sent: BootInstant) {
        self.last_ok_sent = self.last_ok_sent.max(sent);
    }

    /// When to send the next renewal, given when the last attempt (successful or not) was sent:
    /// one `renew` later, but never later than the renew deadline.
    pub fn next_attempt(&self, last_attempt_sent: BootInstant) -> BootInstant {
        (last_attempt_sent + self.renew).min(self.renew_deadline())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn at(ms: u64) -> BootInstant {
        BootInstant::from_boot(MS(ms))
    }

    fn fence(last_ok_sent_ms: u64) -> Fence {
        Fence {
            lease: MS(5000),
            renew: MS(1000),
            last_ok_sent: at(last_ok_sent_ms),
        }
    }

    #[test]
    fn deadlines_with_the_default_lease_and_renew() {
        let fence = fence(10_000);
        assert_eq!(fence.renew_deadline(), at(12_500));
        assert_eq!(fence.kill_deadline(), at(14_000));
        assert!(!fence.expired(at(12_499)));
        assert!(fence.expired(at(12_500)));
    }

    #[test]
    fn the_engine_is_dead_a_full_renew_before_the_database_can_expire_the_lease() {
        for (lease, renew) in [
            (5000, 1000),
            (5000, 2500),
            (2000, 500),
            (10_000, 1000),
            (3, 1),
        ] {
            let fence = Fence {
                lease: MS(lease),
                renew: MS(renew),
                last_ok_sent: at(777),
            };
            // The database executed the renewal no earlier than it was sent.
            let earliest_expiry = fence.last_ok_sent + MS(lease);
            assert!(fence.kill_deadline() + MS(renew) <= earliest_expiry);
            assert!(fence.renew_deadline() <= fence.kill_deadline());
        }
    }

    #[test]
    fn a_success_moves_the_deadlines_only_forwards() {
        let mut fence = fence(10_000);
        fence.renewed(at(11_000));
        assert_eq!(fence.renew_deadline(), at(13_500));
        // A late answer to an older request proves nothing newer.
        fence.renewed(at(10_500));
        assert_eq!(fence.last_ok_sent, at(11_000));
    }

    #[test]
    fn attempts_follow_every_renew_but_never_pass_the_deadline() {
        let fence = fence(10_000);
        assert_eq!(fence.next_attempt(at(10_000)), at(11_000));
        assert_eq!(fence.next_attempt(at(11_000)), at(12_000));
        assert_eq!(fence.next_attempt(at(12_000)), at(12_500));
    }

    #[test]
    fn remaining_saturates_at_zero() {
        assert_eq!(at(0).remaining(), Duration::ZERO);
        let soon = BootInstant::now() + Duration::from_secs(3600);
        assert!(soon.remaining() > Duration::from_secs(3599));
        assert_eq!(at(5).saturating_duration_since(at(9)), Duration::ZERO);
    }

    #[tokio::test]
    async fn the_boot_timer_fires_after_its_deadline_and_at_once_for_a_past_one() {
        let mut timer = BootTimer::new().unwrap();
        let deadline = BootInstant::now() + MS(50);
        timer.sleep_until(deadline).await.unwrap();
        assert!(BootInstant::now() >= deadline);
        // Re-armed, including to a moment already past.
        timer.sleep_until(at(1)).await.unwrap();
        let next = BootInstant::now() + MS(20);
        timer.sleep_until(next).await.unwrap();
        assert!(BootInstant::now() >= next);
    }
}
