//! The deadline killer: a signal sent at a hard deadline by an OS thread of its own, so it comes on
//! time even when no thread of the shim's async runtime is free to run.
//!
//! Why it exists: once the PostgreSQL lock is lost, the engine must be dead by the lock's kill
//! deadline, because shortly after it another host's shim may start its engine on the same data.
//! The supervisor's task normally kills it first, but that task runs on the shared runtime: a
//! runtime kept busy (a blocking call, a flood of work) delays the kill past the deadline, and
//! "never two engines" must not depend on the runtime being responsive. This thread is the
//! backstop: it needs nothing but the kernel to wake it.
//!
//! How it is used: the supervisor [`watch`]es every child it spawns (through a pidfd, so a
//! recycled pid is never signalled), [`Watch::arm`]s it with a deadline when the lock is lost, and
//! drops the [`Watch`] once the child is reaped, which disarms it for good. While the child runs on
//! a database lock, the lock's own worker thread also keeps a [`LeaseLink`] to it: it sets the
//! lease's kill deadline at the grant and moves it later at every renewal (a dead man's switch),
//! so the child dies by that deadline even if the loss of the lock is never handled by the run
//! loop at all (its runtime starved before the loss was even reported).
//!
//! Shape: the decisions — which watched child is armed, by when, which are due — are the pure
//! [`Schedule`]; the thread only sleeps on a `CLOCK_BOOTTIME` timerfd (the clock the lock's
//! deadlines are kept on, which keeps counting through a suspend) set to the schedule's next
//! deadline, and sends the signals the schedule hands it.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use rustix::io::Errno;
use rustix::process::Signal;
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};

use crate::lock::BootInstant;

/// Which watched targets are armed and by when. Pure: no clock, no signals.
///
/// A target is watched from its spawn until it is reaped ([`Schedule::forget`]); only a watched
/// target can be armed, so a late arm for a reaped child does nothing. A target is handed out (and
/// forgotten) once, when its deadline has come.
///
/// A target has two deadlines, and is due at the earlier of them:
/// - the **fence** ([`Schedule::arm`]): set once the lock is lost; it only ever moves earlier,
///   since nothing can make a lost lock good again;
/// - the **lease** ([`Schedule::hold_until`]): the kill deadline of a lock still held, owned by
///   the lock's worker, which moves it later at every renewal and clears it when the lock is
///   given back. A renewal can therefore never undo a fence.
#[derive(Debug)]
pub struct Schedule<T> {
    entries: BTreeMap<u64, Entry<T>>,
    next_key: u64,
}

#[derive(Debug)]
struct Entry<T> {
    target: T,
    fence: Option<BootInstant>,
    lease: Option<BootInstant>,
}

impl<T> Entry<T> {
    /// When the target is due: the earlier of its two deadlines.
    fn deadline(&self) -> Option<BootInstant> {
        match (self.fence, self.lease) {
            (Some(fence), Some(lease)) => Some(fence.min(lease)),
            (fence, lease) => fence.or(lease),
        }
    }
}

impl<T> Default for Schedule<T> {
    fn default() -> Self {
        Schedule {
            entries: BTreeMap::new(),
            next_key: 0,
        }
    }
}

impl<T> Schedule<T> {
    /// Starts watching `target`, unarmed; the key names it from now on.
    pub fn watch(&mut self, target: T) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        self.entries.insert(
            key,
            Entry {
                target,
                fence: None,
                lease: None,
            },
        );
        key
    }

    /// Arms `key`'s fence to be due at `deadline`, or earlier if it already is. False if `key` is
    /// not watched (any more): it was reaped or has been handed out already.
    pub fn arm(&mut self, key: u64, deadline: BootInstant) -> bool {
        match self.entries.get_mut(&key) {
            Some(entry) => {
                entry.fence = Some(entry.fence.map_or(deadline, |d| d.min(deadline)));
                true
            }
            None => false,
        }
    }

    /// Sets `key`'s lease deadline to `deadline`, later or earlier than before, or clears it
    /// (`None`: the lock was given back). Leaves the fence alone. False if `key` is not watched.
    pub fn hold_until(&mut self, key: u64, deadline: Option<BootInstant>) -> bool {
        match self.entries.get_mut(&key) {
            Some(entry) => {
                entry.lease = deadline;
                true
            }
            None => false,
        }
    }

    /// Stops watching `key` (its process was reaped, or it was killed by other means).
    pub fn forget(&mut self, key: u64) -> Option<T> {
        self.entries.remove(&key).map(|entry| entry.target)
    }

    /// Removes and returns every target whose deadline is at or before `now`.
    pub fn take_due(&mut self, now: BootInstant) -> Vec<T> {
        let due: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.deadline().is_some_and(|d| d <= now))
            .map(|(key, _)| *key)
            .collect();
        due.into_iter().filter_map(|key| self.forget(key)).collect()
    }

    /// The earliest armed deadline: when the thread must wake next.
    pub fn next_deadline(&self) -> Option<BootInstant> {
        self.entries.values().filter_map(Entry::deadline).min()
    }

    /// Whether `key` is watched and armed.
    #[cfg(test)]
    pub fn is_armed(&self, key: u64) -> bool {
        self.entries
            .get(&key)
            .is_some_and(|e| e.deadline().is_some())
    }
}

/// What the thread signals: a process by its pidfd, with the signal that kills it, and how to
/// name it in the log.
#[derive(Debug)]
pub struct Target {
    pub pidfd: OwnedFd,
    pub signal: Signal,
    /// Names the engine in the log line, e.g. `1.1.0`.
    pub label: String,
    /// The engine's pid, for the log line only (never signalled by number).
    pub engine_pid: u32,
}

/// What became of a signal sent through a pidfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Delivered,
    /// The process has already exited (reaped or not): nothing was signalled, and no other
    /// process can be.
    AlreadyGone,
}

impl Target {
    /// Sends the target's signal through its pidfd. A pidfd names one process for ever: once that
    /// process is reaped the kernel answers `ESRCH`, even if its pid number was reused since.
    pub fn send(&self) -> io::Result<Sent> {
        // Exited but not yet reaped (the engine ended on its own just now): nothing to kill, and
        // the log must not claim a kill.
        if self.has_exited() {
            return Ok(Sent::AlreadyGone);
        }
        match rustix::process::pidfd_send_signal(&self.pidfd, self.signal) {
            Ok(()) => Ok(Sent::Delivered),
            Err(Errno::SRCH) => Ok(Sent::AlreadyGone),
            Err(error) => Err(error.into()),
        }
    }

    /// A pidfd polls readable once its process has exited, reaped or not.
    fn has_exited(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call; a zero timeout never blocks.
        unsafe { libc::poll(&mut poll, 1, 0) > 0 }
    }
}

/// The process-wide schedule and the timer its thread sleeps on.
struct Shared {
    schedule: Mutex<Schedule<Target>>,
    /// A blocking `CLOCK_BOOTTIME` timerfd, always set to the schedule's next deadline (under the
    /// schedule's mutex, so an arm and the thread never undo each other's setting).
    timer: OwnedFd,
}

impl Shared {
    fn schedule(&self) -> MutexGuard<'_, Schedule<Target>> {
        // The schedule stays consistent even if a holder panicked: every change is one map call.
        self.schedule.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// One watched process: arm it with a deadline; dropping the watch forgets the process, so
/// nothing is sent to it afterwards (drop it once the process is reaped).
#[derive(Debug)]
pub struct Watch {
    key: u64,
    shared: &'static Shared,
}

/// Starts watching `target`; its signal is sent only after [`Watch::arm`], at the deadline.
/// Starts the thread on first use; fails only if the timer cannot be created.
pub fn watch(target: Target) -> io::Result<Watch> {
    let shared = shared()?;
    let key = shared.schedule().watch(target);
    Ok(Watch { key, shared })
}

impl Watch {
    /// The process must be dead by `deadline` (on the boot-time clock): the thread sends its
    /// signal then, unless the watch is dropped first. A later deadline than one already armed
    /// changes nothing; a past one fires at once.
    pub fn arm(&self, deadline: BootInstant) {
        let mut schedule = self.shared.schedule();
        if schedule.arm(self.key, deadline) {
            set_timer(&self.shared.timer, schedule.next_deadline());
        }
    }

    /// The process must be dead by `deadline` unless this is called again before it: the lease's
    /// kill deadline, which a renewal moves later; `None` clears it (the lock was given back).
    /// Leaves a deadline set by [`Watch::arm`] alone. False once the process is not watched any
    /// more (reaped, or killed already).
    pub fn hold_until(&self, deadline: Option<BootInstant>) -> bool {
        let mut schedule = self.shared.schedule();
        let watched = schedule.hold_until(self.key, deadline);
        if watched {
            set_timer(&self.shared.timer, schedule.next_deadline());
        }
        watched
    }

    /// Nothing is to be sent to the process any more: it was reaped, or killed by other means.
    /// Idempotent; dropping the watch does the same.
    pub fn forget(&self) {
        let mut schedule = self.shared.schedule();
        // Closing the pidfd here, under the mutex, is fine: the thread only signals targets it
        // has taken out of the schedule, which this key then no longer names.
        if schedule.forget(self.key).is_some() {
            set_timer(&self.shared.timer, schedule.next_deadline());
        }
    }

    #[cfg(test)]
    pub fn is_armed(&self) -> bool {
        self.shared.schedule().is_armed(self.key)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.forget();
    }
}

/// A database lock's dead man's switch on one engine: the lock's worker thread, not the run loop,
/// keeps the engine's kill deadline armed while the engine runs on the lock.
///
/// Why from the worker's thread: the run loop arms the fence only once it has *handled* a loss,
/// and a starved runtime may not get that far before the database lets another host in. The
/// worker arms the lease's kill deadline at the grant and moves it on with every renewal that
/// succeeds, on its own thread, before the previous deadline (renewals succeed before the renew
/// deadline, which is earlier than the kill deadline); so an engine whose lock goes unrenewed dies
/// by the kill deadline with no help from the runtime, and one whose lock is renewed never does.
#[derive(Debug, Clone)]
pub struct LeaseLink(Arc<Watch>);

impl LeaseLink {
    pub fn new(watch: Arc<Watch>) -> Self {
        LeaseLink(watch)
    }

    /// The lock was granted or renewed: the engine must be dead by `kill_by` unless a later
    /// renewal moves it on. False once the engine is not watched any more (it was reaped): the
    /// link can be dropped.
    pub fn hold_until(&self, kill_by: BootInstant) -> bool {
        self.0.hold_until(Some(kill_by))
    }

    /// The lock is lost: the engine must be dead by `kill_by`, which no renewal can move later.
    pub fn lost(&self, kill_by: BootInstant) {
        self.0.arm(kill_by);
    }

    /// The lock was given back cleanly: no lease deadline any more (a fence, if any, stays).
    pub fn released(&self) {
        self.0.hold_until(None);
    }
}

/// The one schedule of this process, with its thread started.
fn shared() -> io::Result<&'static Shared> {
    static SHARED: OnceLock<Result<Arc<Shared>, String>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        let start = || -> io::Result<Arc<Shared>> {
            let timer = timerfd_create(TimerfdClockId::Boottime, TimerfdFlags::CLOEXEC)?;
            let shared = Arc::new(Shared {
                schedule: Mutex::new(Schedule::default()),
                timer,
            });
            let thread = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("deadline-kill".into())
                .spawn(move || run(&thread))?;
            Ok(shared)
        };
        start().map_err(|error| error.to_string())
    });
    match shared {
        Ok(shared) => Ok(shared.as_ref()),
        Err(error) => Err(io::Error::other(format!(
            "cannot start the engine's deadline killer: {error}"
        ))),
    }
}

/// The thread: sleep until the timer fires, send every due signal, set the timer again.
fn run(shared: &Shared) {
    loop {
        let mut expirations = [0u8; 8];
        match rustix::io::read(&shared.timer, &mut expirations) {
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(error) => {
                tracing::error!(%error, "the engine's deadline killer cannot read its timer; engines are killed at their deadlines by the async runtime only");
                return;
            }
        }
        let due = {
            let mut schedule = shared.schedule();
            let due = schedule.take_due(BootInstant::now());
            set_timer(&shared.timer, schedule.next_deadline());
            due
        };
        for target in due {
            fire(&target);
        }
    }
}

/// Sends one target's signal and says so; the log comes after the signal, never before it.
fn fire(target: &Target) {
    match target.send() {
        Ok(Sent::Delivered) => tracing::warn!(
            engine = %target.label,
            pid = target.engine_pid,
            "engine still alive at its kill deadline: SIGKILL to its process tree from the deadline thread"
        ),
        Ok(Sent::AlreadyGone) => {}
        Err(error) => tracing::error!(
            engine = %target.label,
            pid = target.engine_pid,
            %error,
            "cannot kill the engine at its kill deadline"
        ),
    }
}

/// Sets `timer` to fire at `deadline` (absolute, boot-time clock), or disarms it for `None`.
fn set_timer(timer: &OwnedFd, deadline: Option<BootInstant>) {
    // An all-zero value disarms the timer; a deadline at the very start of boot fires at once.
    let at = deadline.map_or(Duration::ZERO, |d| {
        d.since_boot().max(Duration::from_nanos(1))
    });
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
    if let Err(error) = timerfd_settime(timer, TimerfdTimerFlags::ABSTIME, &spec) {
        // Only for an invalid value, which the arithmetic above never makes.
        tracing::error!(%error, "cannot set the engine's deadline killer's timer");
    }
}

/// A real process to watch in tests: `sleep 300`, killed and reaped by [`Sleeper`]'s drop.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) struct Sleeper(std::process::Child);

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    pub(crate) fn watched_sleep() -> (Sleeper, Arc<Watch>) {
        let child = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .expect("cannot run sleep");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let watch = watch(Target {
            pidfd: rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap(),
            signal: Signal::KILL,
            label: "1.0.0".into(),
            engine_pid: child.id(),
        })
        .expect("the deadline killer starts");
        (Sleeper(child), Arc::new(watch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> BootInstant {
        BootInstant::from_boot(Duration::from_millis(ms))
    }

    #[test]
    fn a_watched_target_is_due_only_once_armed_and_only_once() {
        let mut schedule = Schedule::default();
        let key = schedule.watch("engine");
        assert_eq!(schedule.next_deadline(), None);
        assert!(schedule.take_due(at(1_000_000)).is_empty(), "unarmed");
        assert!(schedule.arm(key, at(500)));
        assert_eq!(schedule.next_deadline(), Some(at(500)));
        assert!(schedule.take_due(at(499)).is_empty());
        assert_eq!(schedule.take_due(at(500)), ["engine"]);
        // Handed out once: forgotten, so neither due again nor armable.
        assert!(schedule.take_due(at(1_000)).is_empty());
        assert!(!schedule.arm(key, at(600)));
        assert_eq!(schedule.next_deadline(), None);
    }

    #[test]
    fn a_deadline_only_moves_earlier() {
        let mut schedule = Schedule::default();
        let key = schedule.watch(1);
        schedule.arm(key, at(500));
        schedule.arm(key, at(900));
        assert_eq!(schedule.next_deadline(), Some(at(500)));
        schedule.arm(key, at(200));
        assert_eq!(schedule.next_deadline(), Some(at(200)));
    }

    #[test]
    fn a_renewal_moves_the_lease_deadline_later_and_a_release_clears_it() {
        let mut schedule = Schedule::default();
        let key = schedule.watch("engine");
        assert!(schedule.hold_until(key, Some(at(4_000))));
        assert_eq!(schedule.next_deadline(), Some(at(4_000)));
        // Renewed before the deadline: moved later, so not due at the old one.
        assert!(schedule.hold_until(key, Some(at(5_000))));
        assert!(schedule.take_due(at(4_000)).is_empty());
        assert_eq!(schedule.next_deadline(), Some(at(5_000)));
        // Given back cleanly: nothing is due, ever.
        assert!(schedule.hold_until(key, None));
        assert_eq!(schedule.next_deadline(), None);
        assert!(schedule.take_due(at(1_000_000)).is_empty());
    }

    #[test]
    fn an_unrenewed_lease_deadline_fires() {
        let mut schedule = Schedule::default();
        let key = schedule.watch("engine");
        schedule.hold_until(key, Some(at(4_000)));
        assert!(schedule.take_due(at(3_999)).is_empty());
        assert_eq!(schedule.take_due(at(4_000)), ["engine"]);
        assert!(
            !schedule.hold_until(key, Some(at(9_000))),
            "handed out already"
        );
    }

    #[test]
    fn a_renewal_never_postpones_a_fence_and_a_release_never_clears_it() {
        let mut schedule = Schedule::default();
        let key = schedule.watch("engine");
        schedule.hold_until(key, Some(at(4_000)));
        schedule.arm(key, at(3_000));
        assert_eq!(schedule.next_deadline(), Some(at(3_000)));
        // A late renewal's answer (delivered after the loss) changes nothing.
        schedule.hold_until(key, Some(at(9_000)));
        assert_eq!(schedule.next_deadline(), Some(at(3_000)));
        schedule.hold_until(key, None);
        assert_eq!(schedule.next_deadline(), Some(at(3_000)));
        // And a fence later than the lease deadline does not postpone the lease's.
        let other = schedule.watch("other");
        schedule.hold_until(other, Some(at(2_000)));
        schedule.arm(other, at(8_000));
        assert_eq!(schedule.take_due(at(2_000)), ["other"]);
    }

    #[test]
    fn a_reaped_target_ignores_its_lease() {
        let mut schedule = Schedule::default();
        let key = schedule.watch("reaped");
        schedule.hold_until(key, Some(at(4_000)));
        schedule.forget(key);
        assert!(!schedule.hold_until(key, Some(at(5_000))));
        assert_eq!(schedule.next_deadline(), None);
    }

    #[test]
    fn a_reaped_target_can_never_be_armed_or_fired() {
        let mut schedule = Schedule::default();
        let reaped = schedule.watch("reaped");
        let alive = schedule.watch("alive");
        schedule.arm(reaped, at(100));
        assert_eq!(schedule.forget(reaped), Some("reaped"));
        assert!(!schedule.arm(reaped, at(50)), "a late arm after reaping");
        assert!(!schedule.is_armed(reaped));
        schedule.arm(alive, at(300));
        assert_eq!(schedule.next_deadline(), Some(at(300)));
        assert_eq!(schedule.take_due(at(1_000)), ["alive"]);
    }

    #[test]
    fn several_targets_fire_in_their_own_time() {
        let mut schedule = Schedule::default();
        let (a, b, c) = (
            schedule.watch('a'),
            schedule.watch('b'),
            schedule.watch('c'),
        );
        schedule.arm(a, at(300));
        schedule.arm(b, at(100));
        schedule.arm(c, at(100));
        assert_eq!(schedule.take_due(at(100)), ['b', 'c']);
        assert_eq!(schedule.next_deadline(), Some(at(300)));
        assert_eq!(schedule.take_due(at(300)), ['a']);
    }

    /// A real process, reaped: its pidfd reaches nothing, whatever now has its pid number.
    #[test]
    fn a_reaped_process_is_never_signalled_through_its_pidfd() {
        let mut child = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .unwrap();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let target = Target {
            pidfd: rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap(),
            signal: Signal::KILL,
            label: "1.0.0".into(),
            engine_pid: child.id(),
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(target.send().unwrap(), Sent::AlreadyGone);
    }

    #[test]
    fn a_live_process_is_signalled_and_an_exited_one_is_not() {
        let mut child = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .unwrap();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let target = Target {
            pidfd: rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap(),
            signal: Signal::KILL,
            label: "1.0.0".into(),
            engine_pid: child.id(),
        };
        assert_eq!(target.send().unwrap(), Sent::Delivered);
        // Killed but not reaped: a zombie, which polls as exited.
        let mut poll = libc::pollfd {
            fd: target.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call. Waits for the exit, 30 s at most.
        unsafe { libc::poll(&mut poll, 1, 30_000) };
        assert!(target.has_exited(), "SIGKILL did not end the process");
        assert_eq!(target.send().unwrap(), Sent::AlreadyGone);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(Signal::KILL.as_raw()));
    }
}
