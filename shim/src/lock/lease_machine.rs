//! The PostgreSQL lock's decisions, as a pure state machine: every rule that keeps two holders
//! from acting at once lives here, where a model check (`lease_machine/model.rs`) can drive it on
//! virtual time against a simulated database.
//!
//! In the style of sans-IO protocol crates (quinn-proto): the I/O shell (`postgres.rs`) feeds in
//! what happened, each with the time it happened at —
//! - [`LeaseMachine::handle_want`]: what the [`Lock`](super::Lock) handle asks for now;
//! - [`LeaseMachine::handle_outcome`]: the answer to the operation [`LeaseMachine::poll_op`] gave;
//! - [`LeaseMachine::handle_timeout`]: [`LeaseMachine::poll_timeout`] passed (while an operation
//!   is under way: the shell gave up on it);
//! - [`LeaseMachine::handle_session_ended`]: the database connection closed;
//! - [`LeaseMachine::handle_wake`], [`LeaseMachine::handle_loss_unheard`]: see there —
//!
//! and carries out what it asks for: the next database operation ([`Op`], one at a time), the
//! events for the handle ([`Event`]: granted, renewed, lost, …), and the moment to be woken at.
//! The machine reads no clock and does no I/O: `now` is always passed in, on the boot-time clock
//! (see `fence.rs` for why that clock).
//!
//! # Never two holders
//! - A grant is acted on only until the renew deadline counted from when the acquisition was
//!   *sent* ([`Fence`]); every renewal that succeeds moves it on, counted from its own sending.
//! - While held, the first thing on every input is the fence check: past the renew deadline the
//!   lock is reported lost, with a kill deadline a full `renew` before the database can let anyone
//!   else in.
//! - A renewal still unanswered at the renew deadline is given up ([`Self::poll_timeout`]).
//! - After a loss nothing is given back until the engine must be dead: a courtesy release would
//!   let a waiter in early.
//! - An advisory lock taken while free is held [`ADVISORY_SETTLE`] before it is used.

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Duration;

use super::conn::{DbError, ErrorKind};
use super::fence::{BootInstant, Fence};
use super::pacing::{unreachable_line, WaitReport};
use super::pg_config::PgLockConfig;
use super::HolderInfo;
use crate::backoff::Backoff;
use crate::pace::Pacer;

/// Most the pause between attempts grows to while the database is unreachable: no busy loop, and
/// a takeover still follows within a few seconds of the database's return.
const UNREACHABLE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long a shim that has just taken a free advisory lock (advisory mode) holds it before
/// using it. When a shim is killed, the kernel closes its connection (freeing the lock) *before*
/// its engine receives its parent-death signal, as with the file lock; and a holder whose session
/// the server ended learns it at once and kills its engine at once. Either engine is dead within
/// milliseconds; this delay keeps the next engine from starting inside that window. (Dual mode
/// does not need it: the lease outlives the session.)
pub(super) const ADVISORY_SETTLE: Duration = Duration::from_millis(250);

/// What the machine needs to know of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Policy {
    pub(super) uses_lease: bool,
    pub(super) uses_advisory: bool,
    pub(super) lease: Duration,
    pub(super) renew: Duration,
}

impl Policy {
    pub(super) fn of(config: &PgLockConfig) -> Self {
        Policy {
            uses_lease: config.mode().uses_lease(),
            uses_advisory: config.mode().uses_advisory(),
            lease: config.lease(),
            renew: config.renew(),
        }
    }
}

/// What the handle asks for, read from its phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Want {
    /// Nothing: give back whatever the database still holds for us (unless lingering after a loss).
    Nothing,
    /// Get the lock for acquisition `serial`, naming `me` as its holder.
    Acquire { serial: u64, me: HolderInfo },
    /// Keep the lock granted to acquisition `serial`.
    Hold { serial: u64 },
}

/// One database operation, the only ones the lock ever runs. The shell runs each on the lock's
/// own session within a time budget, and answers with an [`Outcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op {
    /// Open a session. Answer: `Done`.
    Connect,
    /// Create the lease table if it is missing. Answer: `Done`.
    EnsureTable,
    /// Name the session after its holder, for waiters to show. Answer: `Done`.
    NameSession(HolderInfo),
    /// `pg_try_advisory_lock`. Answer: `Answer(got)`.
    TryAdvisoryLock,
    /// Whether this session still holds the advisory lock. Answer: `Answer(held)`.
    CheckAdvisoryLock,
    /// The lease row's holder, `None` if free or ours. Answer: `Holder`.
    ReadLeaseHolder,
    /// The advisory lock's holder, by its session's name. Answer: `Holder`.
    ReadAdvisoryHolder,
    /// Take the lease row if free, expired or ours. Answer: `LeaseTaken` or `LeaseBusy`.
    TakeLease(HolderInfo),
    /// Extend our unexpired lease. Answer: `Answer(still ours)`.
    RenewLease,
    /// End our lease now. Answer: `Done`.
    ReleaseLease,
    /// `pg_advisory_unlock`. Answer: `Done`.
    UnlockAdvisory,
    /// Close the session without giving anything back. Not answered: it is done when asked.
    Disconnect,
}

/// The answer to an [`Op`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    Done,
    Answer(bool),
    Holder(Option<HolderInfo>),
    LeaseTaken {
        epoch: u64,
    },
    LeaseBusy {
        holder: Option<HolderInfo>,
    },
    /// The operation failed or ran out of time; `kind` says whether retrying can help.
    Failed(DbError),
}

/// What the machine tells the handle (the first five) and the operator (the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Event {
    /// Acquisition `serial` waits for `holder` (`None`: unknown, or the database is unreachable).
    Waiting {
        serial: u64,
        holder: Option<HolderInfo>,
    },
    /// Acquisition `serial` holds the lock; it may be acted on until `usable_until`, and its
    /// engine must be dead by `kill_by` unless a renewal succeeds first.
    Granted {
        serial: u64,
        epoch: Option<u64>,
        usable_until: BootInstant,
        kill_by: BootInstant,
    },
    /// A renewal succeeded: the held lock may be acted on until `usable_until`, and its engine
    /// must be dead by `kill_by` unless another renewal succeeds first.
    Renewed {
        usable_until: BootInstant,
        kill_by: BootInstant,
    },
    /// The lock granted to `serial` is lost; its engine must be dead by `kill_by`. If the handle
    /// gave the lock back first, answer with [`LeaseMachine::handle_loss_unheard`].
    Lost {
        serial: u64,
        reason: String,
        kill_by: BootInstant,
    },
    /// Acquisition `serial` cannot work at all; `error` names the fix.
    Failed { serial: u64, error: String },
    /// The database cannot be reached; the next attempt follows in `retry_in`.
    Unreachable { error: String, retry_in: Duration },
    /// A renewal failed; the lock is lost unless one succeeds within `fence_in`.
    RenewalFailed { error: String, fence_in: Duration },
    /// Giving the lease back failed; it runs out by itself.
    ReleaseFailed { error: String },
}

/// The lock held, as the machine keeps it.
#[derive(Debug, Clone)]
struct Held {
    serial: u64,
    fence: Fence,
    /// When the last renewal (successful or not) was sent.
    last_attempt: BootInstant,
    last_error: Option<String>,
}

/// The multi-operation piece of work under way, if any.
#[derive(Debug, Clone)]
enum Job {
    None,
    Attempt(Attempt),
    Renewal(Renewal),
    Release(ReleaseStep),
}

/// One attempt to get the lock: the advisory lock first (if used), then the lease (if used).
#[derive(Debug, Clone)]
struct Attempt {
    serial: u64,
    me: HolderInfo,
    /// When the attempt began: the database acts on it no earlier, so a grant counts from here.
    sent: BootInstant,
    /// The advisory lock was ours when the attempt began (a loss we linger on): check it rather
    /// than take it again (session locks stack).
    had_advisory: bool,
    step: AttemptStep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttemptStep {
    Connection,
    NameSession,
    Advisory,
    LeaseHolder,
    AdvisoryHolder,
    TakeLease,
}

/// One renewal of a held lock.
#[derive(Debug, Clone, Copy)]
struct Renewal {
    serial: u64,
    sent: BootInstant,
    step: RenewStep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RenewStep {
    Connection,
    Renew,
}

/// Giving back what is held: the lease (over a new session if need be), then the advisory lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReleaseStep {
    Connection,
    ReleaseLease,
    Unlock,
}

/// What an acquisition attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Got {
        epoch: Option<u64>,
    },
    Busy {
        holder: Option<HolderInfo>,
    },
    /// Just taken, not to be used yet (see [`ADVISORY_SETTLE`]).
    Settling,
    Error(DbError),
}

/// The PostgreSQL lock's state: see the module docs.
#[derive(Debug, Clone)]
pub(super) struct LeaseMachine {
    policy: Policy,
    want: Want,
    /// A session is open (as far as the machine knows).
    connected: bool,
    /// The session should be closed: the next operation is [`Op::Disconnect`].
    disconnect: bool,
    table_ready: bool,
    /// The lease row may be ours (taken and not given back).
    holds_lease: bool,
    /// This session holds the advisory lock.
    holds_advisory: bool,
    held: Option<Held>,
    /// After a loss: keep the database side as it is until then (the engine may live until its
    /// kill deadline), then drop it without a release.
    linger_until: Option<BootInstant>,
    job: Job,
    /// An operation has been handed out and not answered.
    in_flight: bool,
    /// No acquisition attempt before this (after a busy or failed one); a wake ends it early.
    pause_until: Option<BootInstant>,
    /// A lease release whose answer never came may still land until then (a retransmitted
    /// packet on its old session) and end a lease taken again since: no grant of the lease
    /// before it.
    stale_release_until: Option<BootInstant>,
    events: VecDeque<Event>,
    waiting: WaitReport,
    unreachable: Backoff,
    unreachable_log: Pacer<BootInstant>,
}

impl LeaseMachine {
    pub(super) fn new(policy: Policy) -> Self {
        LeaseMachine {
            policy,
            want: Want::Nothing,
            connected: false,
            disconnect: false,
            table_ready: false,
            holds_lease: false,
            holds_advisory: false,
            held: None,
            linger_until: None,
            job: Job::None,
            in_flight: false,
            pause_until: None,
            stale_release_until: None,
            events: VecDeque::new(),
            waiting: WaitReport::new(0),
            unreachable: Backoff::new(policy.renew, UNREACHABLE_BACKOFF_MAX.max(policy.renew)),
            unreachable_log: unreachable_line(),
        }
    }

    // ----- inputs -----

    /// What the handle asks for now. A grant not confirmed by `Hold` of its serial (the handle
    /// cancelled or asked again meanwhile) is forgotten: nothing ran on it.
    pub(super) fn handle_want(&mut self, now: BootInstant, want: Want) {
        match (&want, &self.held) {
            (Want::Hold { serial }, Some(held)) if held.serial == *serial => {
                // The grant was heard: the loss we lingered on before it is over.
                self.linger_until = None;
            }
            (_, Some(_)) => self.held = None,
            (_, None) => {}
        }
        if let Want::Acquire { serial, .. } = &want {
            if self.waiting.serial != *serial {
                self.waiting = WaitReport::new(*serial);
            }
        }
        self.want = want;
        self.advance(now);
    }

    /// The handle changed something: a pause between attempts ends now.
    pub(super) fn handle_wake(&mut self, now: BootInstant) {
        self.pause_until = None;
        self.advance(now);
    }

    /// The answer to the operation under way.
    pub(super) fn handle_outcome(&mut self, now: BootInstant, outcome: Outcome) {
        if !self.in_flight {
            return;
        }
        self.in_flight = false;
        match std::mem::replace(&mut self.job, Job::None) {
            Job::None => {}
            Job::Attempt(attempt) => self.attempt_outcome(now, attempt, outcome),
            Job::Renewal(renewal) => self.renewal_outcome(now, renewal, Some(outcome)),
            Job::Release(step) => self.release_outcome(now, step, outcome),
        }
        self.advance(now);
    }

    /// [`Self::poll_timeout`] has passed. If an operation was under way, the shell has given up
    /// on it (only a renewal is ever given up on: at the renew deadline).
    pub(super) fn handle_timeout(&mut self, now: BootInstant) {
        if self.in_flight {
            match std::mem::replace(&mut self.job, Job::None) {
                Job::Renewal(renewal) => {
                    self.in_flight = false;
                    self.renewal_outcome(now, renewal, None);
                }
                // Nothing else is ever given up on: still waiting for its answer.
                other => self.job = other,
            }
        }
        if self.pause_until.is_some_and(|until| now >= until) {
            self.pause_until = None;
        }
        self.advance(now);
    }

    /// The session closed (from either side): so is whatever it held. A held advisory lock is
    /// then lost at once: the server has freed it for the next taker already.
    pub(super) fn handle_session_ended(&mut self, now: BootInstant, why: &str) {
        if !self.connected || self.in_flight {
            return;
        }
        // The fence goes first: past its deadline the loss is for want of renewals.
        self.fence_check(now);
        self.forget_session();
        if self.policy.uses_advisory {
            if let Some(held) = &self.held {
                let serial = held.serial;
                self.lose(
                    serial,
                    format!("the database session holding the advisory lock ended: {why}"),
                    now,
                );
            }
        }
        self.advance(now);
    }

    /// A `Lost` was not delivered: the handle had given the lock back first, and its engine was
    /// reaped before it did. Nothing is left to linger for: give back at once.
    pub(super) fn handle_loss_unheard(&mut self, now: BootInstant) {
        self.linger_until = None;
        self.advance(now);
    }

    // ----- outputs -----

    /// The next operation to run now, if any. The machine waits for its outcome before asking
    /// for anything else (`Disconnect` excepted, which is done once asked).
    pub(super) fn poll_op(&mut self) -> Option<Op> {
        if self.in_flight {
            return None;
        }
        if self.disconnect {
            self.disconnect = false;
            return Some(Op::Disconnect);
        }
        let connection = self.connection_op();
        let policy = self.policy;
        let op = match &mut self.job {
            Job::None => return None,
            Job::Attempt(attempt) => attempt_op(attempt, connection),
            Job::Renewal(renewal) => renewal_op(renewal, connection, &policy),
            Job::Release(step) => {
                let step = *step;
                Some(self.release_op(step))
            }
        };
        self.in_flight = op.is_some();
        op
    }

    /// Whether events wait to be polled.
    pub(super) fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    pub(super) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to be woken if nothing else happens first; `None`: only an input can move things.
    /// While a renewal is under way, its renew deadline: the shell gives up on it then.
    pub(super) fn poll_timeout(&self) -> Option<BootInstant> {
        if self.in_flight {
            return match (&self.job, &self.held) {
                (Job::Renewal(_), Some(held)) => Some(held.fence.renew_deadline()),
                _ => None,
            };
        }
        if !matches!(self.job, Job::None) || self.disconnect {
            return None;
        }
        match &self.want {
            Want::Acquire { .. } => self.pause_until,
            Want::Hold { .. } => self
                .held
                .as_ref()
                .map(|held| held.fence.next_attempt(held.last_attempt)),
            Want::Nothing => self.linger_until.filter(|_| self.holds_anything()),
        }
    }

    /// Nothing is asked for and the database holds nothing for us.
    pub(super) fn settled(&self) -> bool {
        self.want == Want::Nothing
            && !self.holds_anything()
            && matches!(self.job, Job::None)
            && !self.in_flight
    }

    /// Whether the lock is granted and usable at `now` by the machine's own reckoning; for the
    /// model check.
    #[cfg(test)]
    pub(super) fn holds_at(&self, now: BootInstant) -> bool {
        self.held
            .as_ref()
            .is_some_and(|held| !held.fence.expired(now))
    }

    // ----- decisions -----

    fn holds_anything(&self) -> bool {
        self.holds_lease || self.holds_advisory
    }

    /// Starts whatever the want calls for, when nothing is under way.
    fn advance(&mut self, now: BootInstant) {
        if self.in_flight || !matches!(self.job, Job::None) || self.disconnect {
            // The fence is checked even then: a renewal under way cannot save a passed deadline.
            if !self.in_flight {
                self.fence_check(now);
            }
            return;
        }
        match self.want.clone() {
            Want::Nothing => self.idle(now),
            Want::Acquire { serial, me } => {
                if self.pause_until.is_some_and(|until| now < until) {
                    return;
                }
                self.pause_until = None;
                self.job = Job::Attempt(Attempt {
                    serial,
                    me,
                    sent: now,
                    had_advisory: self.holds_advisory,
                    step: AttemptStep::Connection,
                });
            }
            Want::Hold { serial } => self.hold(now, serial),
        }
    }

    /// Nothing is wanted: give back what the database still holds for us, unless lingering.
    fn idle(&mut self, now: BootInstant) {
        self.held = None;
        if !self.holds_anything() {
            self.linger_until = None;
            return;
        }
        match self.linger_until {
            Some(until) if now < until => {}
            Some(_) => {
                // The engine of the lost holding is dead by now: let the session go (and with it
                // an advisory lock); the lease, if any, runs out by itself.
                self.linger_until = None;
                self.forget();
            }
            // Given back (or got after a cancel): nothing ran on it, so release at once.
            None => self.next_release_step(),
        }
    }

    /// Held: the fence first, then a renewal when it is due.
    fn hold(&mut self, now: BootInstant, serial: u64) {
        let Some(held) = self.held.as_ref().filter(|held| held.serial == serial) else {
            // Held without bookkeeping cannot happen; losing the lock is the safe way out.
            self.lose(serial, "the lock's bookkeeping was lost".into(), now);
            return;
        };
        let next = held.fence.next_attempt(held.last_attempt);
        if self.fence_check(now) || now < next {
            return;
        }
        if self.policy.uses_advisory && (!self.connected || !self.holds_advisory) {
            self.lose(
                serial,
                "the database session holding the advisory lock is gone".into(),
                now,
            );
            return;
        }
        if let Some(held) = self.held.as_mut() {
            held.last_attempt = now;
        }
        self.job = Job::Renewal(Renewal {
            serial,
            sent: now,
            step: RenewStep::Connection,
        });
    }

    /// Reports the loss if the renew deadline has passed; true if it has.
    fn fence_check(&mut self, now: BootInstant) -> bool {
        let Some(held) = self.held.as_ref() else {
            return false;
        };
        if !held.fence.expired(now) {
            return false;
        }
        let within = humantime::format_duration(held.fence.lease / 2);
        let reason = match &held.last_error {
            Some(err) => format!("no renewal succeeded within {within} (last error: {err})"),
            None => format!(
                "no renewal succeeded within {within} (the database did not answer in time, or \
                 this process was paused)"
            ),
        };
        let (serial, kill_by) = (held.serial, held.fence.kill_deadline());
        self.lose(serial, reason, kill_by);
        true
    }

    /// The lock is not ours any more: tell the handle, and keep the database side untouched until
    /// the engine must be dead (one renew of margin for the KILL to take effect, as the lease has:
    /// see `fence.rs`).
    fn lose(&mut self, serial: u64, reason: String, kill_by: BootInstant) {
        self.held = None;
        // The handle's phase goes idle with the loss: nothing more is held for it.
        self.want = Want::Nothing;
        self.linger_until = Some(kill_by + self.policy.renew);
        self.events.push_back(Event::Lost {
            serial,
            reason,
            kill_by,
        });
    }

    /// Ends the session without releasing anything: the server frees an advisory lock, the lease
    /// row stays until it expires.
    fn forget(&mut self) {
        self.forget_session();
        self.holds_lease = false;
    }

    /// The session is gone (or given up): so is whatever it held.
    fn forget_session(&mut self) {
        if self.connected {
            self.disconnect = true;
        }
        self.connected = false;
        self.holds_advisory = false;
    }

    /// What the session still needs before use, if anything.
    fn connection_op(&self) -> Option<Op> {
        if !self.connected {
            Some(Op::Connect)
        } else if self.policy.uses_lease && !self.table_ready {
            Some(Op::EnsureTable)
        } else {
            None
        }
    }

    /// Records what a connection step achieved; true if the answer was one.
    fn connection_done(&mut self, outcome: &Outcome) -> bool {
        if !matches!(outcome, Outcome::Done) {
            return false;
        }
        if !self.connected {
            self.connected = true;
        } else {
            self.table_ready = true;
        }
        true
    }

    fn attempt_outcome(&mut self, now: BootInstant, mut attempt: Attempt, outcome: Outcome) {
        use AttemptStep as Step;
        let next = match (attempt.step, outcome) {
            (_, Outcome::Failed(err)) => Err(Found::Error(err)),
            (Step::Connection, outcome) if self.connection_done(&outcome) => Ok(Step::Connection),
            (Step::NameSession, Outcome::Done) if self.policy.uses_advisory => Ok(Step::Advisory),
            (Step::NameSession, Outcome::Done) => Ok(Step::TakeLease),
            (Step::Advisory, Outcome::Answer(true)) => {
                self.holds_advisory = true;
                match (self.policy.uses_lease, attempt.had_advisory) {
                    (true, _) => Ok(Step::TakeLease),
                    (false, true) => Err(Found::Got { epoch: None }),
                    (false, false) => Err(Found::Settling),
                }
            }
            (Step::Advisory, Outcome::Answer(false)) => {
                self.holds_advisory = false;
                if self.policy.uses_lease {
                    // The lease row names the holder better, with its epoch.
                    Ok(Step::LeaseHolder)
                } else {
                    Ok(Step::AdvisoryHolder)
                }
            }
            (Step::LeaseHolder, Outcome::Holder(None)) => Ok(Step::AdvisoryHolder),
            (Step::LeaseHolder | Step::AdvisoryHolder, Outcome::Holder(holder)) => {
                Err(Found::Busy { holder })
            }
            (Step::TakeLease, Outcome::LeaseTaken { epoch }) => {
                self.holds_lease = true;
                Err(Found::Got { epoch: Some(epoch) })
            }
            (Step::TakeLease, Outcome::LeaseBusy { holder }) => Err(Found::Busy { holder }),
            (_, outcome) => Err(Found::Error(unexpected(&outcome))),
        };
        match next {
            Ok(step) => {
                attempt.step = step;
                self.job = Job::Attempt(attempt);
            }
            Err(found) => self.attempt_found(now, attempt, found),
        }
    }

    /// What an attempt's result means for the handle and the next attempt.
    fn attempt_found(&mut self, now: BootInstant, attempt: Attempt, found: Found) {
        let serial = attempt.serial;
        match found {
            Found::Got { epoch } => {
                self.unreachable.reset();
                self.unreachable_log.reset();
                match self.stale_release_until.filter(|until| now < *until) {
                    // Ours, but an old release may still end it: look again once it cannot.
                    Some(until) if epoch.is_some() => self.pause_until = Some(until),
                    _ => {
                        self.stale_release_until = None;
                        self.grant(now, serial, attempt.sent, epoch);
                    }
                }
            }
            Found::Settling => {
                self.pause_until = Some(now + ADVISORY_SETTLE.min(self.policy.renew));
            }
            Found::Busy { holder } => {
                self.unreachable.reset();
                self.unreachable_log.reset();
                self.report_waiting(now, serial, holder);
                self.pause_until = Some(now + self.policy.renew);
            }
            Found::Error(err) => {
                if err.kind == ErrorKind::MissingTable {
                    self.table_ready = false;
                }
                if err.kind == ErrorKind::Fatal {
                    // Whatever a partial attempt got goes with the session.
                    self.forget();
                    self.want = Want::Nothing;
                    self.events.push_back(Event::Failed {
                        serial,
                        error: err.message,
                    });
                    return;
                }
                // A failed attempt may leave the session in any state: start the next afresh.
                self.forget_session();
                let delay = self.unreachable.next_delay();
                if self.unreachable_log.due(now) {
                    self.events.push_back(Event::Unreachable {
                        error: err.message,
                        retry_in: delay,
                    });
                }
                self.report_waiting(now, serial, None);
                self.pause_until = Some(now + delay);
            }
        }
    }

    /// The database says the lock is ours: grant it, unless the answer is already too old to act
    /// on (a freeze?); then the next attempt finds the lock ours and renews it.
    fn grant(&mut self, now: BootInstant, serial: u64, sent: BootInstant, epoch: Option<u64>) {
        let fence = Fence {
            lease: self.policy.lease,
            renew: self.policy.renew,
            last_ok_sent: sent,
        };
        if fence.expired(now) {
            return;
        }
        self.held = Some(Held {
            serial,
            fence,
            last_attempt: sent,
            last_error: None,
        });
        // Until the handle says otherwise (it may have cancelled meanwhile), it holds: no further
        // attempt for this acquisition.
        self.want = Want::Hold { serial };
        self.events.push_back(Event::Granted {
            serial,
            epoch,
            usable_until: fence.renew_deadline(),
            kill_by: fence.kill_deadline(),
        });
    }

    fn report_waiting(&mut self, now: BootInstant, serial: u64, holder: Option<HolderInfo>) {
        if self.waiting.observe(&holder, now) {
            self.events.push_back(Event::Waiting { serial, holder });
        }
    }

    /// A renewal's answer, or `None` if it was given up at the renew deadline.
    fn renewal_outcome(&mut self, now: BootInstant, renewal: Renewal, outcome: Option<Outcome>) {
        let result = match (renewal.step, outcome) {
            (_, None) => None,
            (_, Some(Outcome::Failed(err))) => Some(Err(err)),
            (RenewStep::Connection, Some(outcome)) => {
                if self.connection_done(&outcome) {
                    self.job = Job::Renewal(renewal);
                    return;
                }
                Some(Err(unexpected(&outcome)))
            }
            (RenewStep::Renew, Some(Outcome::Answer(true))) => Some(Ok(None)),
            (RenewStep::Renew, Some(Outcome::Answer(false))) => {
                let why = if self.policy.uses_lease {
                    self.holds_lease = false;
                    "the lease is no longer ours: it expired and was taken, or was deleted"
                } else {
                    self.holds_advisory = false;
                    "this session no longer holds the advisory lock (is the connection going \
                     through a pooler?)"
                };
                Some(Ok(Some(why.to_string())))
            }
            (RenewStep::Renew, Some(outcome)) => Some(Err(unexpected(&outcome))),
        };
        let serial = renewal.serial;
        if let Some(Err(err)) = &result {
            if err.kind == ErrorKind::MissingTable {
                self.table_ready = false;
            }
            // With a lease alone, a new session can renew the same row; with an advisory lock
            // the session is the lock, so it is kept for as long as there is hope.
            if !self.policy.uses_advisory {
                self.forget_session();
            }
        }
        let Some(held) = self.held.as_mut().filter(|held| held.serial == serial) else {
            return;
        };
        match result {
            Some(Ok(None)) => {
                held.fence.renewed(renewal.sent);
                held.last_error = None;
                self.events.push_back(Event::Renewed {
                    usable_until: held.fence.renew_deadline(),
                    kill_by: held.fence.kill_deadline(),
                });
            }
            Some(Ok(Some(why))) => self.lose(serial, why, now),
            Some(Err(err)) => {
                self.events.push_back(Event::RenewalFailed {
                    error: err.message.clone(),
                    fence_in: held.fence.renew_deadline().saturating_duration_since(now),
                });
                held.last_error = Some(err.message);
            }
            None => {}
        }
        // Checked again at once: a renewal that failed or came too late may have been the last.
        self.fence_check(now);
    }

    fn release_outcome(&mut self, now: BootInstant, step: ReleaseStep, outcome: Outcome) {
        match (step, outcome) {
            (ReleaseStep::Connection | ReleaseStep::ReleaseLease, Outcome::Failed(err)) => {
                if step == ReleaseStep::ReleaseLease {
                    // Sent, but whether and when the database runs it is unknown. Messages
                    // arrive within a lease or never (see `conn.rs`: `tcp_user_timeout`).
                    self.stale_release_until = Some(now + self.policy.lease);
                }
                self.events
                    .push_back(Event::ReleaseFailed { error: err.message });
                self.holds_lease = false;
            }
            (ReleaseStep::Connection, outcome) => {
                self.connection_done(&outcome);
            }
            (ReleaseStep::ReleaseLease, _) => self.holds_lease = false,
            (ReleaseStep::Unlock, outcome) => {
                if matches!(outcome, Outcome::Failed(_)) {
                    // Closing the session frees the advisory lock whatever state it is in.
                    self.forget_session();
                }
                self.holds_advisory = false;
            }
        }
        self.next_release_step();
    }

    /// What a release does next: the lease over a (new, if need be) session, then the advisory
    /// lock on the session that took it; done when neither is held.
    fn next_release_step(&mut self) {
        self.job = if self.policy.uses_lease && self.holds_lease {
            if self.connection_op().is_some() {
                Job::Release(ReleaseStep::Connection)
            } else {
                Job::Release(ReleaseStep::ReleaseLease)
            }
        } else if self.holds_advisory && self.connected {
            Job::Release(ReleaseStep::Unlock)
        } else {
            self.holds_lease = false;
            self.holds_advisory = false;
            Job::None
        };
    }

    fn release_op(&self, step: ReleaseStep) -> Op {
        match step {
            ReleaseStep::Connection => self.connection_op().unwrap_or(Op::ReleaseLease),
            ReleaseStep::ReleaseLease => Op::ReleaseLease,
            ReleaseStep::Unlock => Op::UnlockAdvisory,
        }
    }
}

/// The operation an attempt's step needs now, moving past steps with nothing to do.
fn attempt_op(attempt: &mut Attempt, connection: Option<Op>) -> Option<Op> {
    if attempt.step == AttemptStep::Connection {
        if let Some(op) = connection {
            return Some(op);
        }
        attempt.step = AttemptStep::NameSession;
    }
    Some(match attempt.step {
        AttemptStep::Connection | AttemptStep::NameSession => {
            attempt.step = AttemptStep::NameSession;
            Op::NameSession(attempt.me.clone())
        }
        AttemptStep::Advisory if attempt.had_advisory => Op::CheckAdvisoryLock,
        AttemptStep::Advisory => Op::TryAdvisoryLock,
        AttemptStep::LeaseHolder => Op::ReadLeaseHolder,
        AttemptStep::AdvisoryHolder => Op::ReadAdvisoryHolder,
        AttemptStep::TakeLease => Op::TakeLease(attempt.me.clone()),
    })
}

fn renewal_op(renewal: &mut Renewal, connection: Option<Op>, policy: &Policy) -> Option<Op> {
    if renewal.step == RenewStep::Connection {
        if let Some(op) = connection {
            return Some(op);
        }
        renewal.step = RenewStep::Renew;
    }
    Some(if policy.uses_lease {
        // In dual mode this one query also proves the advisory session alive.
        Op::RenewLease
    } else {
        Op::CheckAdvisoryLock
    })
}

/// An answer that does not fit the question: a bug in the shell; treated as a failure.
fn unexpected(outcome: &Outcome) -> DbError {
    DbError {
        message: format!("unexpected answer from the database: {outcome:?}"),
        kind: ErrorKind::Transient,
    }
}
