//! The PostgreSQL lock's I/O shell: one task per [`Lock`](super::Lock) that owns the database
//! connection and carries out what the pure [`LeaseMachine`] decides, one operation at a time.
//!
//! The handle only changes the shared [`Claim`] and wakes the task. The task reads the phase as
//! the machine's [`Want`], runs the operations the machine asks for with tokio-postgres (each
//! within its time budget), feeds back their outcomes and the time on the boot-time clock, and
//! sleeps (on a [`BootTimer`]) until the machine's `poll_timeout`, the session's end, or a wake.
//! The machine's events are delivered under the phase mutex: `Waiting → Held` on a grant,
//! `Held → Idle` on a loss, each only if the handle still wants it. Being one sequential task,
//! it can never let a release overtake a later acquisition of the same lock.
//!
//! The task runs on a thread of its own, with its own single-threaded runtime (its timer, its
//! connection and the connection's task all live there), not on the shim's runtime: a renewal
//! and the fence deadline must never wait behind other work of the shim. A worker thread of the
//! shim's runtime that blocks (a slow file read on a loaded host takes seconds) would otherwise
//! hold back the renewals and the loss until the database had let another holder in. For the same
//! reason this thread keeps the engines' kill deadlines armed itself (see [`Lock::attach`]),
//! moving them on at every renewal, so a loss kills in time even if nobody ever handles it.
//!
//! [`Lock::attach`]: super::Lock::attach

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::advisory::{self, Advisory};
use super::conn::{Conn, DbError, ErrorKind};
use super::fence::{BootInstant, BootTimer};
use super::lease::{self, Lease};
use super::lease_machine::{Event, LeaseMachine, Op, Outcome, Policy, Want};
use super::pg_config::PgLockConfig;
use super::{lock, Claim, HolderInfo, Holding, LockEvent};

/// The handle's side of the worker.
#[derive(Debug)]
pub(super) struct Worker {
    shared: Arc<Shared>,
    /// Left running when the handle goes: it gives the lock back, then ends by itself.
    #[cfg_attr(not(test), allow(dead_code))]
    task: JoinHandle<()>,
}

/// What the handle and the worker share besides the phase.
#[derive(Debug)]
struct Shared {
    wake: Notify,
    /// The `Lock` was dropped: once nothing is held, the worker ends.
    closing: AtomicBool,
    /// True while the database side holds nothing for us and nothing is asked for.
    settled: watch::Sender<bool>,
    /// Asked by a test: block the worker's thread this long, as a paused process would be.
    #[cfg(test)]
    freeze: Mutex<Option<Duration>>,
}

impl Worker {
    /// Starts the worker on a thread of its own (see the module docs). The caller must be in a
    /// tokio runtime all the same: the lock's events go to its tasks.
    pub(super) fn start(config: PgLockConfig, phase: Arc<Mutex<Claim>>) -> Result<Worker, String> {
        tokio::runtime::Handle::try_current()
            .map_err(|_| "the PostgreSQL lock needs a tokio runtime".to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| format!("cannot start the lock's runtime: {err}"))?;
        // Inside the runtime's context: the timer registers with its reactor.
        let timer = {
            let _entered = runtime.enter();
            BootTimer::new()
        }
        .map_err(|err| format!("cannot create a boot-time timer for the lock: {err}"))?;
        let shared = Arc::new(Shared {
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            settled: watch::Sender::new(true),
            #[cfg(test)]
            freeze: Mutex::new(None),
        });
        let task = Task::new(config, phase, Arc::clone(&shared), timer);
        // The thread runs the runtime until the task has ended (or was aborted): dropping the
        // runtime then closes the connection with it.
        let (ended_tx, ended) = tokio::sync::oneshot::channel::<()>();
        let task = runtime.spawn(async move {
            let _ended = ended_tx;
            task.run().await;
        });
        std::thread::Builder::new()
            .name("postgres-lock".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = ended.await;
                });
            })
            .map_err(|err| format!("cannot start a thread for the lock: {err}"))?;
        Ok(Worker { shared, task })
    }

    /// Something changed in the phase: look again.
    pub(super) fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// A held lock was given back or an acquisition cancelled: the database side has work to do.
    pub(super) fn unsettle(&self) {
        self.shared.settled.send_replace(false);
        self.wake();
    }

    /// The handle is gone: give everything back, then end.
    pub(super) fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.unsettle();
    }

    /// Waits until the database side holds nothing for us, at most `within`; false on timeout.
    pub(super) async fn settle(&self, within: Duration) -> bool {
        let mut settled = self.shared.settled.subscribe();
        tokio::time::timeout(within, settled.wait_for(|settled| *settled))
            .await
            .is_ok_and(|result| result.is_ok())
    }

    /// Stops the worker dead, as if its process had been killed: nothing is released, the
    /// connection just closes.
    #[cfg(test)]
    pub(super) async fn abandon(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Blocks the worker's thread for `pause`, from its next turn on: with the caller's own
    /// thread blocked as long, the whole process is paused as SIGSTOP would pause it.
    #[cfg(test)]
    pub(super) fn freeze_for(&self, pause: Duration) {
        *self.shared.freeze.lock().unwrap_or_else(|e| e.into_inner()) = Some(pause);
        self.wake();
    }
}

/// The worker task: the machine, and what it needs to carry out the machine's decisions.
struct Task {
    phase: Arc<Mutex<Claim>>,
    shared: Arc<Shared>,
    db: Db,
    timer: BootTimer,
    machine: LeaseMachine,
}

impl Task {
    fn new(
        config: PgLockConfig,
        phase: Arc<Mutex<Claim>>,
        shared: Arc<Shared>,
        timer: BootTimer,
    ) -> Self {
        Task {
            phase,
            shared,
            machine: LeaseMachine::new(Policy::of(&config)),
            db: Db::new(config),
            timer,
        }
    }

    async fn run(mut self) {
        loop {
            #[cfg(test)]
            self.freeze_if_asked();
            if let Some(why) = self.db.session_ended() {
                self.machine.handle_session_ended(BootInstant::now(), &why);
            }
            self.sync();
            if self.machine.settled() {
                self.shared.settled.send_replace(true);
                if self.shared.closing.load(Ordering::SeqCst) {
                    return;
                }
            }
            match self.machine.poll_op() {
                Some(Op::Disconnect) => self.db.disconnect(),
                Some(op) => self.carry_out(op).await,
                None => self.wait().await,
            }
        }
    }

    /// Blocks this thread if a test asked for a pause ([`Worker::freeze_for`]).
    #[cfg(test)]
    fn freeze_if_asked(&self) {
        let pause = self
            .shared
            .freeze
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(pause) = pause {
            std::thread::sleep(pause);
        }
    }

    /// Delivers the machine's events to the handle and tells the machine what the handle wants
    /// now, under one hold of the phase mutex, until neither has anything new.
    fn sync(&mut self) {
        let mut phase = lock(&self.phase);
        loop {
            while let Some(event) = self.machine.poll_event() {
                if !deliver(&mut phase, event, &self.db.config) {
                    self.machine.handle_loss_unheard(BootInstant::now());
                }
            }
            let want = desire(&mut phase);
            if matches!(want, Want::Acquire { .. }) {
                self.shared.settled.send_replace(false);
            }
            self.machine.handle_want(BootInstant::now(), want);
            if !self.machine.has_events() {
                return;
            }
        }
    }

    /// Runs one operation; a renewal is given up at the machine's deadline.
    async fn carry_out(&mut self, op: Op) {
        let deadline = self.machine.poll_timeout();
        let outcome = tokio::select! {
            biased;
            _ = sleep_until(&mut self.timer, deadline) => None,
            outcome = self.db.run(op) => Some(outcome),
        };
        let now = BootInstant::now();
        match outcome {
            Some(outcome) => self.machine.handle_outcome(now, outcome),
            None => self.machine.handle_timeout(now),
        }
    }

    /// Nothing to run: sleep until the machine's deadline, the session's end, or a wake.
    async fn wait(&mut self) {
        let deadline = self.machine.poll_timeout();
        tokio::select! {
            biased;
            _ = sleep_until(&mut self.timer, deadline) => {
                self.machine.handle_timeout(BootInstant::now());
            }
            why = self.db.session_end() => {
                self.machine.handle_session_ended(BootInstant::now(), &why);
            }
            _ = self.shared.wake.notified() => self.machine.handle_wake(BootInstant::now()),
        }
    }
}

/// Resolves at `deadline` on the boot-time clock; never without one. A timer that fails (it
/// cannot, short of running out of file descriptors) fires at once: waking early is safe.
async fn sleep_until(timer: &mut BootTimer, deadline: Option<BootInstant>) {
    match deadline {
        Some(deadline) => {
            let _ = timer.sleep_until(deadline).await;
        }
        None => std::future::pending().await,
    }
}

/// What the phase asks of the worker now.
pub(super) fn desire(phase: &mut Claim) -> Want {
    match phase {
        Claim::Waiting { want: Some(want) } => Want::Acquire {
            serial: want.serial,
            me: want.me.clone(),
        },
        Claim::Waiting { want: None } => {
            // Cancelled: nothing of it is wanted any more.
            *phase = Claim::Idle;
            Want::Nothing
        }
        Claim::Held(Holding::Database { serial, .. }) => Want::Hold { serial: *serial },
        Claim::Held(_) | Claim::Idle => Want::Nothing,
    }
}

/// Carries out one of the machine's events: to the handle if it still wants it, to the log for
/// the operator. False only for a `Lost` the handle did not hear (it gave the lock back first).
pub(super) fn deliver(phase: &mut Claim, event: Event, config: &PgLockConfig) -> bool {
    match event {
        Event::Waiting { serial, holder } => {
            if let Claim::Waiting { want: Some(want) } = &*phase {
                if want.serial == serial {
                    let _ = want.events.send(LockEvent::Waiting { holder });
                }
            }
        }
        Event::Granted {
            serial,
            epoch,
            usable_until,
            kill_by,
        } => {
            let Claim::Waiting { want } = phase else {
                return true;
            };
            match want.take() {
                Some(want) if want.serial == serial => {
                    let _ = want.events.send(LockEvent::Granted { epoch });
                    *phase = Claim::Held(Holding::Database {
                        serial,
                        events: want.events,
                        usable_until,
                        kill_by,
                        links: Vec::new(),
                    });
                }
                // Asked for again meanwhile (with other holder information): the next attempt,
                // finding the lock ours, grants that acquisition.
                other => *want = other,
            }
        }
        Event::Renewed {
            usable_until: until,
            kill_by: renewed_kill_by,
        } => {
            if let Claim::Held(Holding::Database {
                usable_until,
                kill_by,
                links,
                ..
            }) = phase
            {
                *usable_until = until;
                *kill_by = renewed_kill_by;
                // On this thread, not the shim's runtime: the engines' deadlines move on even
                // while the runtime is starved, and before the previous ones come.
                links.retain(|link| link.hold_until(renewed_kill_by));
            }
        }
        Event::Lost {
            serial,
            reason,
            kill_by,
        } => {
            let Claim::Held(Holding::Database {
                serial: held,
                events,
                links,
                ..
            }) = &*phase
            else {
                return false;
            };
            if *held != serial {
                return false;
            }
            tracing::debug!(lock = %config, "lock lost: {reason}");
            // The loss goes to the run loop first: it reads lock news before an engine's exit, so
            // an engine killed by the deadline armed below is seen as fenced, never as crashed.
            let _ = events.send(LockEvent::Lost { reason, kill_by });
            // Armed here, on this thread: the engines die by `kill_by` even if the run loop never
            // gets to handle the loss.
            for link in links {
                link.lost(kill_by);
            }
            *phase = Claim::Idle;
        }
        Event::Failed { serial, error } => {
            if let Claim::Waiting { want: Some(want) } = &*phase {
                if want.serial == serial {
                    let _ = want.events.send(LockEvent::Failed { error });
                    *phase = Claim::Idle;
                }
            }
        }
        Event::Unreachable { error, retry_in } => tracing::warn!(
            lock = %config,
            "cannot reach the lock database {}: {}; retrying in {}",
            config.url(), error, humantime::format_duration(retry_in)
        ),
        Event::RenewalFailed { error, fence_in } => tracing::warn!(
            lock = %config,
            "renewing the lock failed: {}; the engine will be stopped if no renewal succeeds \
             within {}",
            error,
            humantime::format_duration(fence_in)
        ),
        Event::ReleaseFailed { error } => tracing::warn!(
            lock = %config,
            "cannot release the lease ({}): it runs out by itself within {}",
            error, humantime::format_duration(config.lease())
        ),
    }
    true
}

/// The database side: the connection, and how each [`Op`] is run on it.
struct Db {
    config: PgLockConfig,
    conn: Option<Conn>,
    lease: Option<Lease>,
    advisory: Option<Advisory>,
}

impl Db {
    fn new(config: PgLockConfig) -> Self {
        let lease = config.mode().uses_lease().then(|| Lease {
            name: config.name().to_string(),
            holder_id: holder_id(),
            lease: config.lease(),
        });
        let advisory = config
            .mode()
            .uses_advisory()
            .then(|| Advisory::new(config.name()));
        Db {
            config,
            conn: None,
            lease,
            advisory,
        }
    }

    /// How long one query may take: a stuck query must not hold up the next attempt.
    fn query_budget(&self) -> Duration {
        self.config.renew()
    }

    fn connect_budget(&self) -> Duration {
        (self.config.lease() / 2).max(Duration::from_secs(1))
    }

    /// Closes the session: the server frees an advisory lock, a lease row stays until it expires.
    fn disconnect(&mut self) {
        self.conn = None;
    }

    fn session_ended(&self) -> Option<String> {
        self.conn.as_ref().and_then(Conn::closed_reason)
    }

    /// Resolves when the open session ends; never if there is none.
    async fn session_end(&mut self) -> String {
        match self.conn.as_mut() {
            Some(conn) => conn.closed().await,
            None => std::future::pending().await,
        }
    }

    /// Runs `op` within its budget; every failure, timeout included, is an `Outcome::Failed`.
    async fn run(&mut self, op: Op) -> Outcome {
        match self.try_run(op).await {
            Ok(outcome) => outcome,
            Err(err) => Outcome::Failed(err),
        }
    }

    async fn try_run(&mut self, op: Op) -> Result<Outcome, DbError> {
        let budget = self.query_budget();
        if op == Op::Connect {
            self.conn = Some(Conn::open(&self.config, self.connect_budget()).await?);
            return Ok(Outcome::Done);
        }
        let (lease, advisory) = (self.lease.as_ref(), self.advisory);
        let Some(conn) = self.conn.as_mut() else {
            return Err(DbError {
                message: "the database session is closed".into(),
                kind: ErrorKind::Transient,
            });
        };
        let no_lease = || DbError {
            message: "this lock mode has no lease".into(),
            kind: ErrorKind::Fatal,
        };
        let no_advisory = || DbError {
            message: "this lock mode has no advisory lock".into(),
            kind: ErrorKind::Fatal,
        };
        Ok(match op {
            Op::Connect | Op::Disconnect => Outcome::Done,
            Op::EnsureTable => {
                within(
                    budget,
                    "creating the lease table",
                    Lease::ensure_table(conn),
                )
                .await?;
                Outcome::Done
            }
            Op::NameSession(me) => {
                let name = advisory::app_name(&me);
                within(budget, "naming the session", conn.set_app_name(&name)).await?;
                Outcome::Done
            }
            Op::TryAdvisoryLock => {
                let advisory = advisory.ok_or_else(no_advisory)?;
                let got =
                    within(budget, "taking the advisory lock", advisory.try_lock(conn)).await?;
                Outcome::Answer(got)
            }
            Op::CheckAdvisoryLock => {
                let advisory = advisory.ok_or_else(no_advisory)?;
                let held =
                    within(budget, "checking the advisory lock", advisory.held(conn)).await?;
                Outcome::Answer(held)
            }
            Op::ReadLeaseHolder => {
                let lease = lease.ok_or_else(no_lease)?;
                let row = within(budget, "reading the holder", lease.holder(conn)).await?;
                Outcome::Holder(
                    row.filter(|row| row.holder_id != lease.holder_id)
                        .map(|row| row.info),
                )
            }
            Op::ReadAdvisoryHolder => {
                let advisory = advisory.ok_or_else(no_advisory)?;
                Outcome::Holder(within(budget, "reading the holder", advisory.holder(conn)).await?)
            }
            Op::TakeLease(me) => {
                let lease = lease.ok_or_else(no_lease)?;
                match within(budget, "taking the lease", lease.acquire(conn, &me)).await? {
                    lease::Acquire::Got { epoch } => Outcome::LeaseTaken { epoch },
                    lease::Acquire::Busy { holder } => Outcome::LeaseBusy {
                        holder: holder.map(|row| row.info),
                    },
                }
            }
            Op::RenewLease => {
                let lease = lease.ok_or_else(no_lease)?;
                let renewed = within(budget, "renewing the lease", lease.renew(conn)).await?;
                Outcome::Answer(renewed.is_some())
            }
            Op::ReleaseLease => {
                let lease = lease.ok_or_else(no_lease)?;
                within(budget, "releasing the lease", lease.release(conn)).await?;
                Outcome::Done
            }
            Op::UnlockAdvisory => {
                let advisory = advisory.ok_or_else(no_advisory)?;
                within(budget, "releasing the advisory lock", advisory.unlock(conn)).await?;
                Outcome::Done
            }
        })
    }
}

/// `query` with a time limit; running out counts as the database being unreachable.
async fn within<T>(
    budget: Duration,
    what: &str,
    query: impl Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    tokio::time::timeout(budget, query)
        .await
        .unwrap_or_else(|_| Err(DbError::timeout(what, budget)))
}

/// This process's identity in the lease table: host, pid and randomness, so a restarted shim (same
/// host, maybe the same pid in a container) is a new holder, and its epoch moves on.
fn holder_id() -> String {
    let me = HolderInfo::me("");
    let mut random = [0u8; 8];
    if rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty()).is_err() {
        // No randomness: the boot-time clock still tells two starts of one pid apart.
        random = (BootInstant::now().since_boot().as_nanos() as u64).to_le_bytes();
    }
    format!("{}:{}:{}", me.host, me.pid, hex::encode(random))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_ids_differ_between_starts() {
        let (a, b) = (holder_id(), holder_id());
        assert_ne!(a, b);
        assert!(a.contains(&format!(":{}:", std::process::id())), "{a}");
    }
}
