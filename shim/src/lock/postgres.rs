//! The PostgreSQL backends' worker: one task per [`Lock`](super::Lock) that owns the database
//! connection and carries out what the handle asks for, one step at a time.
//!
//! The handle only changes the shared [`Phase`] and wakes the worker; the worker alone talks to
//! the database and moves `Waiting → Held` (sending `Granted`) and `Held → Idle` on a loss
//! (sending `Lost`), both under the phase mutex. Being one sequential task, it can never let a
//! release overtake a later acquisition of the same lock.
//!
//! While held, the worker renews every `renew` and keeps the [`Fence`] deadlines on the boot-time
//! clock: whenever it wakes (timer, answer, closed session, or the end of a process freeze) it
//! first checks whether the renew deadline passed, and if so reports the loss before anything
//! else. After a loss it keeps whatever the database still grants it (the session, the row) until
//! the engine is surely dead, so a waiter is not let in early by a courtesy release.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::advisory::{self, Advisory};
use super::conn::{Conn, DbError, ErrorKind};
use super::fence::{BootInstant, BootTimer, Fence};
use super::lease::{self, Lease};
use super::pg_config::PgLockConfig;
use super::{lock, HolderInfo, Holding, LockEvent, Phase};
use crate::backoff::Backoff;

/// First pause between attempts while the database is unreachable, and the most it grows to:
/// no busy loop, and a takeover still follows within a few seconds of the database's return.
const UNREACHABLE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long a shim that has just taken a free advisory lock (advisory mode) holds it before
/// using it. When a shim is killed, the kernel closes its connection (freeing the lock) *before*
/// its engine receives its parent-death signal, as with the file lock; and a holder whose session
/// the server ended learns it at once and kills its engine at once. Either engine is dead within
/// milliseconds; this delay keeps the next engine from starting inside that window. (Dual mode
/// does not need it: the lease outlives the session.)
const ADVISORY_SETTLE: Duration = Duration::from_millis(250);

/// Spacing of repeated `Waiting` reports and "unreachable" log lines: doubling up to the cap.
const REPORT_GAP_FIRST: Duration = Duration::from_secs(5);
const REPORT_GAP_MAX: Duration = Duration::from_secs(300);

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
}

impl Worker {
    /// Starts the worker on the current tokio runtime.
    pub(super) fn start(config: PgLockConfig, phase: Arc<Mutex<Phase>>) -> Result<Worker, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the PostgreSQL lock needs a tokio runtime".to_string())?;
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
        });
        let task = Task::new(config, phase, Arc::clone(&shared), timer);
        let task = runtime.spawn(task.run());
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
}

/// What the phase asks of the worker now.
#[derive(Debug)]
enum Desire {
    Nothing,
    Acquire { serial: u64, me: HolderInfo },
    Hold { serial: u64 },
}

/// A held lock's bookkeeping.
#[derive(Debug)]
struct Held {
    serial: u64,
    fence: Fence,
    last_attempt: BootInstant,
    last_error: Option<String>,
}

/// The worker task's state.
struct Task {
    phase: Arc<Mutex<Phase>>,
    shared: Arc<Shared>,
    db: Db,
    timer: BootTimer,
    held: Option<Held>,
    /// After a loss: keep the database side as it is until then (the engine may live until its
    /// kill deadline), then drop it without a release.
    linger_until: Option<BootInstant>,
    waiting: WaitReport,
    unreachable: Backoff,
    unreachable_log: Pacer,
}

impl Task {
    fn new(
        config: PgLockConfig,
        phase: Arc<Mutex<Phase>>,
        shared: Arc<Shared>,
        timer: BootTimer,
    ) -> Self {
        let renew = config.renew();
        Task {
            phase,
            shared,
            db: Db::new(config),
            timer,
            held: None,
            linger_until: None,
            waiting: WaitReport::new(0),
            unreachable: Backoff::new(renew, UNREACHABLE_BACKOFF_MAX.max(renew)),
            unreachable_log: Pacer::new(),
        }
    }

    async fn run(mut self) {
        loop {
            match self.desire() {
                Desire::Nothing => {
                    if self.idle_step().await.is_break() {
                        return;
                    }
                }
                Desire::Acquire { serial, me } => {
                    self.shared.settled.send_replace(false);
                    self.acquire_step(serial, &me).await;
                }
                Desire::Hold { serial } => self.hold_step(serial).await,
            }
        }
    }

    fn desire(&self) -> Desire {
        let mut phase = lock(&self.phase);
        match &mut *phase {
            Phase::Waiting { want: Some(want) } => Desire::Acquire {
                serial: want.serial,
                me: want.me.clone(),
            },
            Phase::Waiting { want: None } => {
                // Cancelled: nothing of it is wanted any more.
                *phase = Phase::Idle;
                Desire::Nothing
            }
            Phase::Held(Holding::Database { serial, .. }) => Desire::Hold { serial: *serial },
            Phase::Held(_) | Phase::Idle => Desire::Nothing,
        }
    }

    /// Nothing is wanted: give back what the database still holds for us, then wait to be woken.
    async fn idle_step(&mut self) -> std::ops::ControlFlow<()> {
        self.held = None;
        if self.db.holds_anything() {
            match self.linger_until {
                Some(until) if BootInstant::now() < until => {
                    tokio::select! {
                        _ = self.timer.sleep_until(until) => {}
                        _ = self.shared.wake.notified() => {}
                    }
                }
                Some(_) => {
                    // The engine of the lost holding is dead by now: let the session go (and
                    // with it an advisory lock); the lease, if any, runs out by itself.
                    self.linger_until = None;
                    self.db.forget();
                }
                // Given back (or got after a cancel): nothing ran on it, so release at once.
                None => self.db.release().await,
            }
            return std::ops::ControlFlow::Continue(());
        }
        self.linger_until = None;
        self.shared.settled.send_replace(true);
        if self.shared.closing.load(Ordering::SeqCst) {
            return std::ops::ControlFlow::Break(());
        }
        self.shared.wake.notified().await;
        std::ops::ControlFlow::Continue(())
    }

    /// One attempt to get the lock for acquisition `serial`, then a pause if it is not ours yet.
    async fn acquire_step(&mut self, serial: u64, me: &HolderInfo) {
        if self.waiting.serial != serial {
            self.waiting = WaitReport::new(serial);
        }
        let sent = BootInstant::now();
        match self.db.acquire(me).await {
            Ok(Found::Got { epoch }) => {
                self.unreachable.reset();
                self.unreachable_log.reset();
                self.grant(serial, sent, epoch);
            }
            Ok(Found::Settling) => {
                self.pause(ADVISORY_SETTLE.min(self.db.config.renew()))
                    .await;
            }
            Ok(Found::Busy { holder }) => {
                self.unreachable.reset();
                self.unreachable_log.reset();
                self.report_waiting(serial, holder);
                self.pause(self.db.config.renew()).await;
            }
            Err(err) if err.kind == ErrorKind::Fatal => self.fail(serial, err),
            Err(err) => {
                let delay = self.unreachable.next_delay();
                if self.unreachable_log.due() {
                    tracing::warn!(
                        lock = %self.db.config,
                        "cannot reach the lock database {}: {}; retrying in {}",
                        self.db.config.url(), err.message, humantime::format_duration(delay)
                    );
                }
                self.report_waiting(serial, None);
                self.pause(delay).await;
            }
        }
    }

    /// The database says the lock is ours: tell the handle, if it still wants it.
    fn grant(&mut self, serial: u64, sent: BootInstant, epoch: Option<u64>) {
        let fence = Fence {
            lease: self.db.config.lease(),
            renew: self.db.config.renew(),
            last_ok_sent: sent,
        };
        if fence.expired(BootInstant::now()) {
            // The answer took so long (a freeze?) that it is already too old to act on; the next
            // attempt finds the lock ours and renews it.
            return;
        }
        let mut phase = lock(&self.phase);
        let Phase::Waiting { want } = &mut *phase else {
            return;
        };
        match want.take() {
            Some(want) if want.serial == serial => {
                let _ = want.events.send(LockEvent::Granted { epoch });
                *phase = Phase::Held(Holding::Database {
                    serial,
                    events: want.events,
                    usable_until: fence.renew_deadline(),
                });
                self.held = Some(Held {
                    serial,
                    fence,
                    last_attempt: sent,
                    last_error: None,
                });
                self.linger_until = None;
            }
            // Asked for again meanwhile (with other holder information): the next attempt,
            // finding the lock ours, grants that acquisition.
            other => *want = other,
        }
    }

    /// The lock cannot be used at all: say why and stop trying.
    fn fail(&mut self, serial: u64, err: DbError) {
        // Whatever a partial attempt got goes with the session.
        self.db.forget();
        let mut phase = lock(&self.phase);
        if let Phase::Waiting { want: Some(want) } = &*phase {
            if want.serial == serial {
                let _ = want.events.send(LockEvent::Failed { error: err.message });
                *phase = Phase::Idle;
            }
        }
    }

    /// One turn of holding: wait for the next renewal (or a release, or the session's end), then
    /// check the fence before anything else, then renew.
    async fn hold_step(&mut self, serial: u64) {
        let Some(next) = self
            .held
            .as_ref()
            .filter(|held| held.serial == serial)
            .map(|held| held.fence.next_attempt(held.last_attempt))
        else {
            // Held without bookkeeping cannot happen; losing the lock is the safe way out.
            self.lose(
                serial,
                "the lock's bookkeeping was lost".into(),
                BootInstant::now(),
            );
            return;
        };
        tokio::select! {
            biased;
            _ = self.timer.sleep_until(next) => {}
            _ = self.db.session_end() => {}
            _ = self.shared.wake.notified() => {}
        }
        if !self.still_held(serial) {
            return;
        }
        let now = BootInstant::now();
        if self.fenced(serial, now) {
            return;
        }
        if let Some(why) = self.db.session_ended() {
            self.db.forget_session();
            if self.db.config.mode().uses_advisory() {
                self.lose(
                    serial,
                    format!("the database session holding the advisory lock ended: {why}"),
                    now,
                );
                return;
            }
        }
        if now < next {
            return;
        }
        let Some(held) = self.held.as_mut() else {
            return;
        };
        held.last_attempt = now;
        let deadline = held.fence.renew_deadline();
        let outcome = tokio::select! {
            biased;
            _ = self.timer.sleep_until(deadline) => None,
            outcome = self.db.renew() => Some(outcome),
        };
        let Some(held) = self.held.as_mut() else {
            return;
        };
        match outcome {
            Some(Ok(Renewal::Renewed)) => {
                held.fence.renewed(now);
                held.last_error = None;
                let deadline = held.fence.renew_deadline();
                if let Phase::Held(Holding::Database { usable_until, .. }) = &mut *lock(&self.phase)
                {
                    *usable_until = deadline;
                }
            }
            Some(Ok(Renewal::Gone(why))) => self.lose(serial, why, BootInstant::now()),
            Some(Err(err)) => {
                tracing::warn!(
                    lock = %self.db.config,
                    "renewing the lock failed: {}; the engine will be stopped if no renewal \
                     succeeds within {}",
                    err.message,
                    humantime::format_duration(deadline.remaining())
                );
                held.last_error = Some(err.message);
            }
            None => {}
        }
        // Checked again at once: a renewal that failed or came too late may have been the last.
        self.fenced(serial, BootInstant::now());
    }

    /// Reports the loss if the renew deadline has passed; true if it has.
    fn fenced(&mut self, serial: u64, now: BootInstant) -> bool {
        let Some(held) = self.held.as_ref() else {
            return false;
        };
        if !held.fence.expired(now) {
            return false;
        }
        let reason = match &held.last_error {
            Some(err) => format!(
                "no renewal succeeded within {} (last error: {err})",
                humantime::format_duration(held.fence.lease / 2)
            ),
            None => format!(
                "no renewal succeeded within {} (the database did not answer in time, or this \
                 process was paused)",
                humantime::format_duration(held.fence.lease / 2)
            ),
        };
        let kill_by = held.fence.kill_deadline();
        self.lose(serial, reason, kill_by);
        true
    }

    fn still_held(&self, serial: u64) -> bool {
        matches!(&*lock(&self.phase), Phase::Held(Holding::Database { serial: s, .. }) if *s == serial)
    }

    /// The lock is not ours any more: tell the handle (unless it gave the lock back first), and
    /// keep the database side untouched until the engine must be dead.
    fn lose(&mut self, serial: u64, reason: String, kill_by: BootInstant) {
        let was_held = {
            let mut phase = lock(&self.phase);
            match &*phase {
                Phase::Held(Holding::Database {
                    serial: s, events, ..
                }) if *s == serial => {
                    tracing::debug!(lock = %self.db.config, "lock lost: {reason}");
                    let _ = events.send(LockEvent::Lost { reason, kill_by });
                    *phase = Phase::Idle;
                    true
                }
                _ => false,
            }
        };
        self.held = None;
        if was_held {
            // One renew of margin for the KILL to take effect, as the lease has (see fence.rs).
            // A lock given back first needs none: its engine was reaped before the release.
            self.linger_until = Some(kill_by + self.db.config.renew());
        }
    }

    /// Sends `Waiting` for acquisition `serial` if the report says it is news.
    fn report_waiting(&mut self, serial: u64, holder: Option<HolderInfo>) {
        if !self.waiting.observe(&holder, Instant::now()) {
            return;
        }
        let phase = lock(&self.phase);
        if let Phase::Waiting {
            want: Some(want), ..
        } = &*phase
        {
            if want.serial == serial {
                let _ = want.events.send(LockEvent::Waiting { holder });
            }
        }
    }

    /// Waits `delay`, or less if the handle changes its mind.
    async fn pause(&mut self, delay: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.shared.wake.notified() => {}
        }
    }
}

/// What an acquisition attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    /// Ours; the lease's epoch in lease and dual modes.
    Got {
        epoch: Option<u64>,
    },
    Busy {
        holder: Option<HolderInfo>,
    },
    /// Just taken, not to be used yet (see [`ADVISORY_SETTLE`]): the next attempt checks it is
    /// still ours and then grants it.
    Settling,
}

/// What a renewal found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Renewal {
    Renewed,
    /// Definitively not ours any more; why.
    Gone(String),
}

/// The database side: the connection and what it holds for us.
struct Db {
    config: PgLockConfig,
    conn: Option<Conn>,
    lease: Option<Lease>,
    advisory: Option<Advisory>,
    table_ready: bool,
    /// The lease row may be ours (taken and not given back).
    holds_lease: bool,
    /// This session holds the advisory lock.
    holds_advisory: bool,
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
            table_ready: false,
            holds_lease: false,
            holds_advisory: false,
        }
    }

    fn holds_anything(&self) -> bool {
        self.holds_lease || self.holds_advisory
    }

    /// How long one query may take: a stuck query must not hold up the next attempt.
    fn query_budget(&self) -> Duration {
        self.config.renew()
    }

    /// Ends the session without releasing anything: the server frees an advisory lock, the lease
    /// row stays until it expires.
    fn forget(&mut self) {
        self.forget_session();
        self.holds_lease = false;
    }

    /// The session is gone (or given up): so is whatever it held.
    fn forget_session(&mut self) {
        self.conn = None;
        self.holds_advisory = false;
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

    /// The open session, connecting (and creating the lease table) if needed.
    async fn connection(&mut self) -> Result<&mut Conn, DbError> {
        if self.session_ended().is_some() {
            self.forget_session();
        }
        if self.conn.is_none() {
            let conn = Conn::open(&self.config, self.connect_budget()).await?;
            self.conn = Some(conn);
        }
        let budget = self.query_budget();
        let Some(conn) = self.conn.as_mut() else {
            unreachable!("connected just above");
        };
        if self.lease.is_some() && !self.table_ready {
            within(
                budget,
                "creating the lease table",
                Lease::ensure_table(conn),
            )
            .await?;
            self.table_ready = true;
        }
        Ok(conn)
    }

    fn connect_budget(&self) -> Duration {
        (self.config.lease() / 2).max(Duration::from_secs(1))
    }

    /// One attempt: the advisory lock first (if used), then the lease (if used).
    async fn acquire(&mut self, me: &HolderInfo) -> Result<Found, DbError> {
        let result = self.try_acquire(me).await;
        if let Err(err) = &result {
            if err.table_missing() {
                self.table_ready = false;
            }
            // A failed attempt may leave the session in any state: start the next one afresh.
            self.forget_session();
        }
        result
    }

    async fn try_acquire(&mut self, me: &HolderInfo) -> Result<Found, DbError> {
        let budget = self.query_budget();
        let (lease, advisory) = (self.lease.clone(), self.advisory);
        let holds_advisory = self.holds_advisory;
        let conn = self.connection().await?;
        within(
            budget,
            "naming the session",
            conn.set_app_name(&advisory::app_name(me)),
        )
        .await?;
        if let Some(advisory) = advisory {
            let got = if holds_advisory {
                // Still ours from before (a loss we are lingering on): make sure the session is.
                within(budget, "checking the advisory lock", advisory.held(conn)).await?
            } else {
                within(budget, "taking the advisory lock", advisory.try_lock(conn)).await?
            };
            if !got {
                let holder = match &lease {
                    // The lease row names the holder better, with its epoch.
                    Some(lease) => within(budget, "reading the holder", lease.holder(conn))
                        .await?
                        .filter(|row| row.holder_id != lease.holder_id)
                        .map(|row| row.info),
                    None => None,
                };
                let holder = match holder {
                    Some(holder) => Some(holder),
                    None => within(budget, "reading the holder", advisory.holder(conn)).await?,
                };
                self.holds_advisory = false;
                return Ok(Found::Busy { holder });
            }
            self.holds_advisory = true;
            if lease.is_none() && !holds_advisory {
                return Ok(Found::Settling);
            }
        }
        let Some(lease) = lease else {
            return Ok(Found::Got { epoch: None });
        };
        let Some(conn) = self.conn.as_mut() else {
            unreachable!("connected above");
        };
        match within(budget, "taking the lease", lease.acquire(conn, me)).await? {
            lease::Acquire::Got { epoch } => {
                self.holds_lease = true;
                Ok(Found::Got { epoch: Some(epoch) })
            }
            lease::Acquire::Busy { holder } => Ok(Found::Busy {
                holder: holder.map(|row| row.info),
            }),
        }
    }

    /// One renewal of a held lock: the lease's expiry, or the advisory session's check.
    async fn renew(&mut self) -> Result<Renewal, DbError> {
        let result = self.try_renew().await;
        if let Err(err) = &result {
            if err.table_missing() {
                self.table_ready = false;
            }
            // With a lease alone, a new session can renew the same row; with an advisory lock
            // the session is the lock, so it is kept for as long as there is hope.
            if !self.config.mode().uses_advisory() {
                self.forget_session();
            }
        }
        result
    }

    async fn try_renew(&mut self) -> Result<Renewal, DbError> {
        let budget = self.query_budget();
        let (lease, advisory) = (self.lease.clone(), self.advisory);
        if advisory.is_some() && (self.conn.is_none() || !self.holds_advisory) {
            return Ok(Renewal::Gone(
                "the database session holding the advisory lock is gone".into(),
            ));
        }
        let conn = self.connection().await?;
        if let Some(lease) = lease {
            // In dual mode this one query also proves the advisory session alive.
            return match within(budget, "renewing the lease", lease.renew(conn)).await? {
                Some(_) => Ok(Renewal::Renewed),
                None => {
                    self.holds_lease = false;
                    Ok(Renewal::Gone(
                        "the lease is no longer ours: it expired and was taken, or was deleted"
                            .into(),
                    ))
                }
            };
        }
        let Some(advisory) = advisory else {
            unreachable!("every mode uses a lease or an advisory lock");
        };
        if within(budget, "checking the advisory lock", advisory.held(conn)).await? {
            Ok(Renewal::Renewed)
        } else {
            self.holds_advisory = false;
            Ok(Renewal::Gone(
                "this session no longer holds the advisory lock (is the connection going \
                 through a pooler?)"
                    .into(),
            ))
        }
    }

    /// Gives back what is held, now; what cannot be given back goes with the session (an
    /// advisory lock) or runs out by itself (a lease).
    async fn release(&mut self) {
        let budget = self.query_budget();
        let (lease, advisory) = (self.lease.clone(), self.advisory);
        if let (Some(lease), true) = (&lease, self.holds_lease) {
            // Over a new session if the old one is gone: this is what makes a hand-off quick.
            let released = match self.connection().await {
                Ok(conn) => within(budget, "releasing the lease", lease.release(conn)).await,
                Err(err) => Err(err),
            };
            if let Err(err) = released {
                tracing::warn!(
                    lock = %self.config,
                    "cannot release the lease ({}): it runs out by itself within {}",
                    err.message, humantime::format_duration(self.config.lease())
                );
            }
        }
        self.holds_lease = false;
        if let (Some(advisory), true) = (advisory, self.holds_advisory) {
            let unlocked = match self.conn.as_mut() {
                Some(conn) => within(budget, "releasing the advisory lock", advisory.unlock(conn))
                    .await
                    .is_ok(),
                None => true,
            };
            if !unlocked {
                // Closing the session frees the advisory lock whatever state the session is in.
                self.forget_session();
            }
        }
        self.holds_advisory = false;
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

/// Decides when a waiting acquisition reports (again) whom it waits for: at once the first time,
/// then only when the holder changes, and then no more often than a doubling gap.
#[derive(Debug)]
struct WaitReport {
    serial: u64,
    /// What was last reported, and when.
    last: Option<(Option<HolderKey>, Instant)>,
    /// How long after the last report a change may be reported.
    gap: Duration,
}

/// What makes a holder a different one (its expiry changes with every renewal, so it does not).
type HolderKey = (String, u32, String, Option<u64>);

impl WaitReport {
    fn new(serial: u64) -> Self {
        WaitReport {
            serial,
            last: None,
            gap: REPORT_GAP_FIRST,
        }
    }

    /// Whether to report `holder` now.
    fn observe(&mut self, holder: &Option<HolderInfo>, now: Instant) -> bool {
        let key = holder
            .as_ref()
            .map(|h| (h.host.clone(), h.pid, h.engine_version.clone(), h.epoch));
        let report = match &self.last {
            None => true,
            Some((last, _)) if *last == key => false,
            Some((_, at)) => now.duration_since(*at) >= self.gap,
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
#[derive(Debug)]
struct Pacer {
    next_at: Option<Instant>,
    gap: Backoff,
}

impl Pacer {
    fn new() -> Self {
        Pacer {
            next_at: None,
            gap: Backoff::new(REPORT_GAP_FIRST, REPORT_GAP_MAX),
        }
    }

    fn due(&mut self) -> bool {
        let now = Instant::now();
        if self.next_at.is_some_and(|at| now < at) {
            return false;
        }
        self.next_at = Some(now + self.gap.next_delay());
        true
    }

    fn reset(&mut self) {
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

    #[test]
    fn waiting_is_reported_first_then_on_a_new_holder_with_growing_gaps() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
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
    fn holder_ids_differ_between_starts() {
        let (a, b) = (holder_id(), holder_id());
        assert_ne!(a, b);
        assert!(a.contains(&format!(":{}:", std::process::id())), "{a}");
    }

    #[test]
    fn the_log_pacer_spaces_lines_until_reset() {
        let mut pacer = Pacer::new();
        assert!(pacer.due());
        assert!(!pacer.due());
        pacer.reset();
        assert!(pacer.due());
    }
}
