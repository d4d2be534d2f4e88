//! The lock that keeps engines sharing one data directory from ever running at the same time.
//!
//! Inside one shim the gate already orders stop before start; this lock extends that order to
//! separate `engine-shim run` processes (one systemd service per engine package). The gate asks
//! for the lock only to start an engine and gives it back only after the child is reaped, so an
//! idle shim holds nothing and a waiting one wakes the moment the other lets go.
//!
//! [`Lock`] is a non-blocking handle for the run loop: [`Lock::acquire`] returns at once and the
//! outcome arrives later as [`LockEvent`]s on a channel the loop already selects on. Backends:
//! - [`LockSpec::None`]: granted at once, for a shim that is alone by construction;
//! - [`LockSpec::File`]: an flock on a file that also names its holder (see `file.rs` for why
//!   flock). Waiting happens on a dedicated thread blocked in `flock(LOCK_EX)`, so the grant
//!   follows the holder's release or death immediately, without polling.
//!
//! # Every `Granted` is true
//! The run loop receives events some time after they are sent, and may cancel in between. The
//! rules that make a received [`LockEvent::Granted`] always mean "this `Lock` holds the lock now"
//! (until the loop itself calls [`Lock::release`]):
//! - an acquisition sends at most one `Granted`, and only while it is still wanted: the decision
//!   and the switch to "held" happen together under one mutex that [`Lock::cancel`] also takes;
//! - a cancelled acquisition's channel sender is dropped at once, so nothing of it can arrive
//!   later, in particular nothing that could be mistaken for a newer acquisition's grant;
//! - a `cancel` that comes after the `Granted` was sent (it is still in the channel) is too late:
//!   the lock stays held, [`Lock::is_held`] says so, and the `Granted` arrives as usual. A caller
//!   that no longer wants the lock when that `Granted` arrives must [`Lock::release`] it; a
//!   caller that asks again first simply has its answer (`acquire` while held is a no-op).
//!
//! # Shared with the engine
//! When a process dies the kernel closes its files (dropping its flock) *before* its children get
//! their parent-death signal. So if only the shim held the flock, a SIGKILLed shim would let the
//! next shim start its engine while the old engine is still alive on data.db (measured: 191 of 200
//! kills). The engine child therefore inherits the flock's descriptor ([`InheritedLock`], applied
//! between fork and exec): the lock is free only once the shim *and* its engine have closed it.

mod file;
mod holder;
mod spec;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc::UnboundedSender;

use file::{LockFile, TryLock};
pub use holder::HolderInfo;
pub use spec::{LockSpec, LockSpecError, DEFAULT_CONFIG_ROOT, LOCK_FILE_NAME};

/// What became of an acquisition, in the order it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockEvent {
    /// Somebody else holds it; sent once when the wait begins (holder `None` if unknown/unreadable).
    Waiting { holder: Option<HolderInfo> },
    /// We hold it now.
    Granted,
    /// The lock cannot be used at all (e.g. the lock file cannot be opened: permission, missing
    /// directory). The message names the fix. Nothing follows it.
    Failed { error: String },
}

/// One process's handle on its lock. Not `Clone`: exactly one owner decides when to give it back.
///
/// Dropping a `Lock` gives up a pending acquisition and releases a held lock.
#[derive(Debug)]
pub struct Lock {
    spec: LockSpec,
    /// Shared with the thread blocked in `flock`, which completes an acquisition under this mutex.
    phase: Arc<Mutex<Phase>>,
}

/// Where one `Lock` stands. Only the waiting thread moves it out of `Waiting`.
#[derive(Debug)]
enum Phase {
    Idle,
    /// A thread is blocked in `flock` for this `Lock`. `want` is whom the lock goes to when the
    /// thread gets it; `None` once cancelled, and then the thread unlocks at once, silently. A
    /// later `acquire` fills `want` again instead of starting a second thread.
    Waiting {
        want: Option<Want>,
    },
    Held(Holding),
}

/// The acquisition currently asked for: its holder information and where its outcome goes.
#[derive(Debug)]
struct Want {
    me: HolderInfo,
    events: UnboundedSender<LockEvent>,
}

/// What keeps a held lock held.
#[derive(Debug)]
enum Holding {
    /// `LockSpec::None`: nothing to keep.
    Nothing,
    File(LockFile),
}

impl Lock {
    pub fn new(spec: LockSpec) -> Self {
        Lock {
            spec,
            phase: Arc::new(Mutex::new(Phase::Idle)),
        }
    }

    pub fn spec(&self) -> &LockSpec {
        &self.spec
    }

    /// Starts acquiring without blocking; the outcome arrives on `events`: `Granted` (at once if
    /// the lock is free, or with [`LockSpec::None`]), or `Waiting` and later `Granted`, or
    /// `Failed`. `me` is written into the lock once it is ours, for waiters to show.
    ///
    /// Calling `acquire` while already held or acquiring is a no-op (and `events` is dropped).
    pub fn acquire(&mut self, me: HolderInfo, events: UnboundedSender<LockEvent>) {
        let mut phase = lock(&self.phase);
        match &mut *phase {
            Phase::Held(_) | Phase::Waiting { want: Some(_) } => {}
            Phase::Waiting { want } => {
                // A cancelled attempt's thread is still blocked in flock: it now works for this one.
                let holder = match &self.spec {
                    LockSpec::File(path) => LockFile::open(path).ok().and_then(|f| f.holder()),
                    LockSpec::None => None,
                };
                let _ = events.send(LockEvent::Waiting { holder });
                *want = Some(Want { me, events });
            }
            Phase::Idle => *phase = begin(&self.spec, me, events, &self.phase),
        }
    }

    /// Gives up a pending acquisition: nothing more is sent for it, and if the lock is got anyway
    /// later it is unlocked at once. A no-op when idle, and when already held (the grant was sent
    /// before: see the module docs).
    pub fn cancel(&mut self) {
        if let Phase::Waiting { want } = &mut *lock(&self.phase) {
            *want = None;
        }
    }

    /// Gives back a held lock: clears the holder information, then unlocks. No-op if not held.
    pub fn release(&mut self) {
        let mut phase = lock(&self.phase);
        match std::mem::replace(&mut *phase, Phase::Idle) {
            Phase::Held(holding) => give_back(holding),
            other => *phase = other,
        }
    }

    pub fn is_held(&self) -> bool {
        matches!(*lock(&self.phase), Phase::Held(_))
    }

    /// The held flock, for the engine about to be started to inherit (see the module docs).
    /// `None` when nothing is held or there is nothing to inherit ([`LockSpec::None`]).
    pub fn inheritable(&self) -> Option<InheritedLock> {
        match &*lock(&self.phase) {
            Phase::Held(Holding::File(file)) => Some(InheritedLock { fd: file.raw_fd() }),
            _ => None,
        }
    }
}

/// A held flock's descriptor number, to be kept open across `exec` in one child.
///
/// Use it in `CommandExt::pre_exec` for the engine, and keep the [`Lock`] held until the spawn
/// has returned (the child's copy of the descriptor is made by `fork`). The engine then holds
/// the same lock as the shim: whichever of the two lives longer keeps it, so the next engine can
/// only start once both are gone. Its process-group mates inherit it too, and they are killed
/// with the group after the engine exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InheritedLock {
    fd: RawFd,
}

impl InheritedLock {
    /// Clears close-on-exec on the descriptor in the calling process. Call it only in the child,
    /// between fork and exec: in the shim itself it would leak the lock into every later child.
    /// Async-signal-safe: one `fcntl`, no allocation.
    pub fn keep_across_exec(self) -> io::Result<()> {
        // SAFETY: `fork` copied the shim's descriptor table, in which the held `Lock` keeps this
        // descriptor open; the borrow ends before this function returns.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
        Ok(())
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.cancel();
        self.release();
    }
}

/// Starts an acquisition from `Idle`; returns the phase it leads to.
fn begin(
    spec: &LockSpec,
    me: HolderInfo,
    events: UnboundedSender<LockEvent>,
    shared: &Arc<Mutex<Phase>>,
) -> Phase {
    let path = match spec {
        LockSpec::None => {
            let _ = events.send(LockEvent::Granted);
            return Phase::Held(Holding::Nothing);
        }
        LockSpec::File(path) => path,
    };
    let file = match LockFile::try_lock(path) {
        Ok(TryLock::Got(file)) => {
            write_holder(&file, &me);
            let _ = events.send(LockEvent::Granted);
            return Phase::Held(Holding::File(file));
        }
        Ok(TryLock::Busy(file)) => file,
        Err(error) => {
            let _ = events.send(LockEvent::Failed { error });
            return Phase::Idle;
        }
    };
    let _ = events.send(LockEvent::Waiting {
        holder: file.holder(),
    });
    let shared = Arc::clone(shared);
    // A plain thread, not `spawn_blocking`: a runtime waits for its blocking tasks when it shuts
    // down, and this one may block for as long as another shim runs its engine. Nothing is ever
    // spawned from this thread.
    let spawned = std::thread::Builder::new()
        .name("engine-shim-lock".into())
        .spawn(move || wait_for(file, &shared));
    match spawned {
        Ok(_) => Phase::Waiting {
            want: Some(Want { me, events }),
        },
        Err(err) => {
            let _ = events.send(LockEvent::Failed {
                error: format!("cannot start a thread to wait for the lock: {err}"),
            });
            Phase::Idle
        }
    }
}

/// The waiting thread: blocks until the flock is ours, then hands it to whoever wants it now.
fn wait_for(file: LockFile, phase: &Mutex<Phase>) {
    let outcome = file.lock();
    let mut phase = lock(phase);
    let want = match &mut *phase {
        Phase::Waiting { want } => want.take(),
        // Only this thread leaves `Waiting`; anything else would be a bug, and then doing nothing
        // (dropping the flock) is the safe way out.
        _ => return,
    };
    match (outcome, want) {
        (Ok(file), Some(want)) => {
            write_holder(&file, &want.me);
            *phase = Phase::Held(Holding::File(file));
            let _ = want.events.send(LockEvent::Granted);
        }
        (Ok(file), None) => {
            *phase = Phase::Idle;
            tracing::debug!(path = %file.path().display(), "lock got after its acquisition was cancelled; unlocked");
            drop(file);
        }
        (Err(error), Some(want)) => {
            *phase = Phase::Idle;
            let _ = want.events.send(LockEvent::Failed { error });
        }
        (Err(_), None) => *phase = Phase::Idle,
    }
}

/// Records `me` as the holder. A failure only costs waiters the holder's name, never exclusion.
fn write_holder(file: &LockFile, me: &HolderInfo) {
    if let Err(err) = file.write_holder(me) {
        tracing::warn!(
            "cannot write the holder into lock file {}: {err}; waiting shims will not see who holds it",
            file.path().display()
        );
    }
}

fn give_back(holding: Holding) {
    if let Holding::File(file) = holding {
        if let Err(err) = file.clear_holder() {
            tracing::warn!(
                "cannot clear the holder in lock file {}: {err}",
                file.path().display()
            );
        }
        // Closing the descriptor is what unlocks.
        drop(file);
    }
}

/// The mutex only guards plain state changes, so a panic elsewhere leaves it consistent.
fn lock(phase: &Mutex<Phase>) -> MutexGuard<'_, Phase> {
    phase.lock().unwrap_or_else(PoisonError::into_inner)
}
