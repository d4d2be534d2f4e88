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
//! - [`LockSpec::Postgres`]: a lock in a PostgreSQL database shared by shims on several hosts, as
//!   a lease row, a session advisory lock, or both ([`LockMode`]); a worker task per `Lock` talks
//!   to the database (`postgres.rs`). Unlike a file lock it can be **lost** while held (a renewal
//!   fails, the session ends): see "Lost" below.
//!
//! # Every `Granted` is true
//! The run loop receives events some time after they are sent, and may cancel in between. The
//! rules that make a received [`LockEvent::Granted`] always mean "this `Lock` holds the lock now"
//! (until the loop itself calls [`Lock::release`], or a [`LockEvent::Lost`] follows):
//! - an acquisition sends at most one `Granted`, and only while it is still wanted: the decision
//!   and the switch to "held" happen together under one mutex that [`Lock::cancel`] also takes;
//! - a cancelled acquisition's channel sender is dropped at once, so nothing of it can arrive
//!   later, in particular nothing that could be mistaken for a newer acquisition's grant;
//! - a `cancel` that comes after the `Granted` was sent (it is still in the channel) is too late:
//!   the lock stays held, [`Lock::is_held`] says so, and the `Granted` arrives as usual. A caller
//!   that no longer wants the lock when that `Granted` arrives must [`Lock::release`] it; a
//!   caller that asks again first simply has its answer (`acquire` while held is a no-op).
//!
//! # Lost
//! A PostgreSQL lock held by a process that cannot renew it (database unreachable, network cut,
//! session ended, process frozen past its deadline) is reported [`LockEvent::Lost`], at most once
//! per grant, on the channel its `Granted` came on, and only while still held: a `release` before
//! the loss means no `Lost` follows. From that moment the `Lock` is not held ([`Lock::is_held`] is
//! false, no release is needed) and a later [`Lock::acquire`] starts afresh.
//!
//! `Lost` carries `kill_by`, a moment on the boot-time clock: the engine must be **dead** by then,
//! because shortly after it the database may let another host's shim in. The run loop stops the
//! engine at once (TERM) and KILLs it at `kill_by` if it is still alive: with the defaults (lease
//! 5 s, renew 1 s) a holder whose renewals stop gives up 2.5 s after its last good renewal was
//! sent and must have killed its engine by 4 s, while the database keeps the lease until at
//! least 5 s (see `fence.rs`). A `Lost` received late (the whole process was frozen) has a
//! `kill_by` in the past: kill at once. Events arrive in the order they were sent and a `Lost`
//! only follows its own `Granted`, so a `Lost` that arrives while the loop does not count the lock
//! as held (it released it, or is acquiring anew) belongs to an earlier grant: ignore it.
//!
//! The run loop may be too starved to handle a `Lost` in time, so it does not rely on that alone:
//! it [`Lock::attach`]es every engine it starts, and the worker's own thread keeps that engine's
//! kill deadline armed with the deadline killer (`deadline_kill.rs`) at every grant and renewal.
//!
//! Before exiting after a release, await [`Lock::settle`]: a PostgreSQL lock is given back by its
//! worker, and a process that exits first leaves its lease to run out instead of handing over.
//!
//! # Shared with the engine's guardian
//! When a process dies the kernel closes its files (dropping its flock) *before* its children get
//! their parent-death signal. So if only the shim held the flock, a SIGKILLed shim would let the
//! next shim start its engine while the old engine is still alive on data.db (measured: 191 of 200
//! kills). The engine's guardian (see `guardian.rs`) and the engine therefore inherit the lock's
//! descriptors ([`InheritedLock`], applied between fork and exec). The guardian is a child
//! subreaper that outlives the engine: it closes its copy only after every process of the engine's
//! tree is killed and reaped, so the lock is free only once nothing of that engine is left — even
//! after the shim was SIGKILLed, and even for helpers that escaped with `setsid`.

mod advisory;
mod conn;
mod fence;
mod file;
mod holder;
mod lease;
mod lease_machine;
mod pacing;
mod pg_config;
#[cfg(test)]
mod pg_tests;
mod postgres;
pub(crate) mod preflight;
mod spec;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::deadline_kill::LeaseLink;

pub use fence::BootInstant;
use file::{LockFile, TryLock};
pub use holder::HolderInfo;
pub use pg_config::{
    LockMode, Password, PgOptions, DEFAULT_LEASE, DEFAULT_LOCK_NAME, DEFAULT_RENEW, PASSWORD_ENV,
    PASSWORD_FILE_ENV,
};
#[cfg(test)]
use spec::LOCK_FILE_NAME;
pub use spec::{LockSpec, LockSpecError, CONFIG_ROOT_ENV};

/// What became of an acquisition, in the order it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockEvent {
    /// Somebody else holds it; sent when the wait begins (holder `None` if unknown, unreadable,
    /// or the database is unreachable). A PostgreSQL lock sends it again when the holder it sees
    /// changes, at most once per growing interval.
    Waiting { holder: Option<HolderInfo> },
    /// We hold it now. `epoch` is the lease's epoch (PostgreSQL lease and dual modes), which grows
    /// with every change of holder: hand it downstream so others can fence on it.
    Granted { epoch: Option<u64> },
    /// We held it and do not any more (PostgreSQL only; see "Lost" in the module docs). Stop the
    /// engine at once and make sure it is dead by `kill_by` ([`BootInstant::remaining`] says how
    /// long that is from now; zero when it has passed). Nothing more follows for this grant.
    Lost {
        reason: String,
        kill_by: BootInstant,
    },
    /// The lock cannot be used at all (e.g. the lock file cannot be opened: permission, missing
    /// directory). The message names the fix. Nothing follows it.
    Failed { error: String },
}

/// Until when a [`Lock`] may be acted on ([`Lock::usability`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usability {
    /// Not held: never granted, given back, or lost.
    NotHeld,
    /// Held until given back (a file lock, or no lock): it cannot be lost meanwhile.
    UntilReleased,
    /// Held, and usable until this renewal deadline (a database lock), which every successful
    /// renewal moves on. Past it the lock must not be acted on, even before its loss is reported.
    Until(BootInstant),
}

/// One process's handle on its lock. Not `Clone`: exactly one owner decides when to give it back.
///
/// Dropping a `Lock` gives up a pending acquisition and releases a held lock.
#[derive(Debug)]
pub struct Lock {
    spec: LockSpec,
    /// Shared with the thread blocked in `flock` or the PostgreSQL worker, which complete an
    /// acquisition (and report a loss) under this mutex.
    phase: Arc<Mutex<Claim>>,
    /// Numbers acquisitions, so a worker never grants an older one's request to a newer one.
    serial: u64,
    /// The PostgreSQL worker, started by the first acquisition.
    worker: Option<postgres::Worker>,
}

/// What one `Lock` claims: nothing, the lock once it is got (`Waiting`), or the lock itself.
/// Only the waiting thread (or the worker) moves it out of `Waiting`.
#[derive(Debug)]
enum Claim {
    Idle,
    /// A thread is blocked in `flock` (or the worker polls the database) for this `Lock`. `want`
    /// is whom the lock goes to when it is got; `None` once cancelled, and then it is given back
    /// at once, silently. A later `acquire` fills `want` again instead of starting over.
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
    serial: u64,
}

/// What keeps a held lock held.
#[derive(Debug)]
enum Holding {
    /// `LockSpec::None`: nothing to keep.
    Nothing,
    File(LockFile),
    /// A PostgreSQL lock: the worker keeps it, and reports its loss on `events`.
    Database {
        serial: u64,
        events: UnboundedSender<LockEvent>,
        /// The worker's renew deadline, moved on with every renewal: past it the lock must not
        /// be used any more, even before the worker (perhaps just woken from a pause) says so.
        usable_until: BootInstant,
        /// The kill deadline of the last grant or renewal: by then the engines running on the
        /// lock must be dead unless another renewal succeeds first.
        kill_by: BootInstant,
        /// The engines running on the lock, whose kill deadline the worker's own thread moves on
        /// at every renewal ([`Lock::attach`]); links to engines already reaped are dropped then.
        links: Vec<LeaseLink>,
    },
}

impl Lock {
    pub fn new(spec: LockSpec) -> Self {
        Lock {
            spec,
            phase: Arc::new(Mutex::new(Claim::Idle)),
            serial: 0,
            worker: None,
        }
    }

    pub fn spec(&self) -> &LockSpec {
        &self.spec
    }

    /// Starts acquiring without blocking; the outcome arrives on `events`: `Granted` (at once if
    /// the lock is free, or with [`LockSpec::None`]), or `Waiting` and later `Granted`, or
    /// `Failed`; for PostgreSQL, possibly `Lost` after `Granted`. `me` is written into the lock
    /// once it is ours, for waiters to show.
    ///
    /// Calling `acquire` while already held or acquiring is a no-op (and `events` is dropped).
    /// A PostgreSQL lock needs to be called within a tokio runtime.
    pub fn acquire(&mut self, me: HolderInfo, events: UnboundedSender<LockEvent>) {
        self.serial += 1;
        let serial = self.serial;
        let mut phase = lock(&self.phase);
        match &mut *phase {
            Claim::Held(_) | Claim::Waiting { want: Some(_) } => return,
            Claim::Waiting { want } => {
                // A cancelled attempt's thread is still blocked in flock: it now works for this
                // one. (The PostgreSQL worker reports on its next attempt.)
                let holder = match &self.spec {
                    LockSpec::File(path) => LockFile::open(path).ok().and_then(|f| f.holder()),
                    LockSpec::None | LockSpec::Postgres(_) => None,
                };
                if !matches!(self.spec, LockSpec::Postgres(_)) {
                    let _ = events.send(LockEvent::Waiting { holder });
                }
                *want = Some(Want { me, events, serial });
            }
            Claim::Idle => match &self.spec {
                LockSpec::Postgres(_) => {
                    *phase = Claim::Waiting {
                        want: Some(Want { me, events, serial }),
                    }
                }
                spec => *phase = begin(spec, me, events, serial, &self.phase),
            },
        }
        drop(phase);
        if let LockSpec::Postgres(config) = &self.spec {
            if self.worker.is_none() {
                match postgres::Worker::start((**config).clone(), Arc::clone(&self.phase)) {
                    Ok(worker) => self.worker = Some(worker),
                    Err(error) => {
                        let mut phase = lock(&self.phase);
                        if let Claim::Waiting { want: Some(want) } = &*phase {
                            let _ = want.events.send(LockEvent::Failed { error });
                        }
                        *phase = Claim::Idle;
                        return;
                    }
                }
            }
            if let Some(worker) = &self.worker {
                worker.unsettle();
            }
        }
    }

    /// Gives up a pending acquisition: nothing more is sent for it, and if the lock is got anyway
    /// later it is given back at once. A no-op when idle, and when already held (the grant was
    /// sent before: see the module docs).
    pub fn cancel(&mut self) {
        if let Claim::Waiting { want } = &mut *lock(&self.phase) {
            *want = None;
            if let Some(worker) = &self.worker {
                worker.unsettle();
            }
        }
    }

    /// Gives back a held lock: clears the holder information, then unlocks. No-op if not held
    /// (including after a `Lost`).
    ///
    /// A PostgreSQL lock is handed back by its worker shortly after (the lease's expiry set to
    /// the database's now, the advisory lock unlocked); [`Lock::settle`] waits for that.
    pub fn release(&mut self) {
        let mut phase = lock(&self.phase);
        match std::mem::replace(&mut *phase, Claim::Idle) {
            Claim::Held(Holding::Database { links, .. }) => {
                for link in links {
                    link.released();
                }
                if let Some(worker) = &self.worker {
                    worker.unsettle();
                }
            }
            Claim::Held(holding) => give_back(holding),
            other => *phase = other,
        }
    }

    /// Waits until a release or cancel has reached the lock itself, at most `within`: for
    /// PostgreSQL, until the database holds nothing for this `Lock` any more (the next holder
    /// then gets it without waiting for a lease to run out). At once for the other locks, whose
    /// release is done when `release` returns. False if `within` ran out first.
    ///
    /// Call it before exiting after a release: a process that exits first leaves its lease to run
    /// out by itself.
    pub async fn settle(&self, within: Duration) -> bool {
        match &self.worker {
            Some(worker) => worker.settle(within).await,
            None => true,
        }
    }

    /// Until when the lock may be acted on, as of now. The run loop tells the gate, which starts
    /// nothing on a lock past its deadline: after a pause the worker may not have reported the
    /// loss yet (a `Granted` in the channel may be stale too), while the database may already
    /// have let another holder in.
    pub fn usability(&self) -> Usability {
        match &*lock(&self.phase) {
            Claim::Held(Holding::Database { usable_until, .. }) => Usability::Until(*usable_until),
            Claim::Held(_) => Usability::UntilReleased,
            Claim::Idle | Claim::Waiting { .. } => Usability::NotHeld,
        }
    }

    /// Whether the lock may be acted on right now.
    #[cfg(test)]
    pub fn usable(&self) -> bool {
        match self.usability() {
            Usability::NotHeld => false,
            Usability::UntilReleased => true,
            Usability::Until(deadline) => BootInstant::now() < deadline,
        }
    }

    #[cfg(test)]
    pub fn is_held(&self) -> bool {
        matches!(*lock(&self.phase), Claim::Held(_))
    }

    /// Puts the engine just started on this lock under the lock's dead man's switch: a database
    /// lock's worker arms the engine's kill deadline at once, from its own thread moves it on at
    /// every renewal, and clears it when the lock is given back, so the engine dies by the lock's
    /// kill deadline even if the run loop never gets to handle the loss. A no-op for a file lock or
    /// no lock (they cannot be lost while held) and when nothing is held.
    pub fn attach(&self, link: LeaseLink) {
        if let Claim::Held(Holding::Database { kill_by, links, .. }) = &mut *lock(&self.phase) {
            if link.hold_until(*kill_by) {
                links.push(link);
            }
        }
    }

    /// The held flock, for the engine about to be started to inherit (see the module docs).
    /// `None` when nothing is held or there is nothing to inherit ([`LockSpec::None`]).
    pub fn inheritable(&self) -> Option<InheritedLock> {
        match &*lock(&self.phase) {
            Claim::Held(Holding::File(file)) => Some(InheritedLock {
                fds: file.raw_fds(),
            }),
            _ => None,
        }
    }
}

/// A held file lock's descriptors (the flock's file and the anchor's directory, see `file.rs`), to
/// be kept open across `exec` in one child.
///
/// Use it in `CommandExt::pre_exec` for the engine's guardian, and keep the [`Lock`] held until
/// the spawn has returned (the child's copies of the descriptors are made by `fork`). The guardian
/// (and the engine it starts) then hold the same lock as the shim: the lock is free only once the
/// shim, the guardian and every process of the engine are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InheritedLock {
    fds: [RawFd; 2],
}

impl InheritedLock {
    /// Clears close-on-exec on the descriptors in the calling process. Call it only in the child,
    /// between fork and exec: in the shim itself it would leak the lock into every later child.
    /// Async-signal-safe: two `fcntl`s, no allocation.
    pub fn keep_across_exec(self) -> io::Result<()> {
        for fd in self.fds {
            // SAFETY: `fork` copied the shim's descriptor table, in which the held `Lock` keeps
            // this descriptor open; the borrow ends before this function returns.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
        }
        Ok(())
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.cancel();
        self.release();
        if let Some(worker) = &self.worker {
            worker.close();
        }
    }
}

#[cfg(test)]
impl Lock {
    /// Vanishes like a killed process: the worker stops dead and its connection closes, without
    /// releasing anything (a lease row stays until it expires).
    async fn abandon(mut self) {
        if let Some(worker) = self.worker.take() {
            worker.abandon().await;
        }
        *lock(&self.phase) = Claim::Idle;
    }
}

/// Starts an acquisition of a file lock or no lock from `Idle`; returns the phase it leads to.
fn begin(
    spec: &LockSpec,
    me: HolderInfo,
    events: UnboundedSender<LockEvent>,
    serial: u64,
    shared: &Arc<Mutex<Claim>>,
) -> Claim {
    let path = match spec {
        LockSpec::None => {
            let _ = events.send(LockEvent::Granted { epoch: None });
            return Claim::Held(Holding::Nothing);
        }
        LockSpec::File(path) => path,
        LockSpec::Postgres(_) => unreachable!("the PostgreSQL worker acquires database locks"),
    };
    let file = match LockFile::try_lock(path) {
        Ok(TryLock::Got(file)) => {
            write_holder(&file, &me);
            let _ = events.send(LockEvent::Granted { epoch: None });
            return Claim::Held(Holding::File(file));
        }
        Ok(TryLock::Busy(file)) => file,
        Err(error) => {
            let _ = events.send(LockEvent::Failed { error });
            return Claim::Idle;
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
        Ok(_) => Claim::Waiting {
            want: Some(Want { me, events, serial }),
        },
        Err(err) => {
            let _ = events.send(LockEvent::Failed {
                error: format!("cannot start a thread to wait for the lock: {err}"),
            });
            Claim::Idle
        }
    }
}

/// The waiting thread: blocks until the flock is ours, then hands it to whoever wants it now.
fn wait_for(file: LockFile, phase: &Mutex<Claim>) {
    let outcome = file.lock();
    let mut phase = lock(phase);
    let want = match &mut *phase {
        Claim::Waiting { want } => want.take(),
        // Only this thread leaves `Waiting`; anything else would be a bug, and then doing nothing
        // (dropping the flock) is the safe way out.
        _ => return,
    };
    match (outcome, want) {
        (Ok(file), Some(want)) => {
            write_holder(&file, &want.me);
            *phase = Claim::Held(Holding::File(file));
            let _ = want.events.send(LockEvent::Granted { epoch: None });
        }
        (Ok(file), None) => {
            *phase = Claim::Idle;
            tracing::debug!(path = %file.path().display(), "lock got after its acquisition was cancelled; unlocked");
            drop(file);
        }
        (Err(error), Some(want)) => {
            *phase = Claim::Idle;
            let _ = want.events.send(LockEvent::Failed { error });
        }
        (Err(_), None) => *phase = Claim::Idle,
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
fn lock(phase: &Mutex<Claim>) -> MutexGuard<'_, Claim> {
    phase.lock().unwrap_or_else(PoisonError::into_inner)
}
