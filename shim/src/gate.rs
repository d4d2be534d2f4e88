//! The gate: a pure state machine deciding which engine runs.
//!
//! It is fed [`Event`]s (a finalized block with the release read at it, a child's exit, lock
//! news, an operator's request, the passing of time) and answers with [`Action`]s for the async
//! shell to carry out. It never touches a process, a socket or a clock: the shell passes `now`
//! into every [`Gate::step`], the gate keeps its own deadlines (a crash restart's back-off, the end
//! of a stand-by, the lock's fencing deadline) and names the next one with
//! [`Gate::next_deadline`], and the shell wakes it then with [`Event::Tick`]. A deadline lives in
//! the state it belongs to, so it cannot outlive that state and fire stale. That keeps every
//! decision testable on its own, including the guarantees operators rely on:
//!
//! - an engine is started only when the last *known* release is compatible with it;
//! - nothing is started while another child is still alive (a stop must complete first);
//! - nothing is started without the lock (the host-wide or cross-host exclusion), which is asked
//!   for only to start an engine and given back once no child is alive and none is about to start;
//!   a grant that comes too late to be used is given back and asked for again;
//! - a lost lock stops the engine at once and kills it by the lock's fencing deadline;
//! - nothing is started on a held lock past its renewal deadline, however long after the grant
//!   the start comes (a hand-over, the end of a lock wait): a process paused past that deadline
//!   may already have been replaced by another holder. The start waits until a renewal moves the
//!   deadline on ([`Event::LockUsableUntil`]) or the loss is reported;
//! - an unknown release (absent, 0.0.0, malformed) changes nothing: the state is kept;
//! - an engine that exits on its own is not restarted before the release at the node's latest
//!   finalized head has been read (the gate asks for it with [`Action::CheckHead`]): an engine
//!   that left because the chain moved past it is a hand-over, not a crash;
//! - a block at or below one already seen changes nothing either. The follower never sends one
//!   (it owns the node connection and decides what a lower finalized head means, see
//!   `follower.rs`); the gate refusing it too means no path can ever act on a block twice.

use std::time::{Duration, Instant};

use crate::backoff::RestartBackoff;
use crate::block::BlockRef;
use crate::covers::Covers;
use crate::pace::Pacer;
use crate::version::{Compatibility, ReleaseError, Rule, SemVer};

/// Index of an engine in the list the gate was built with.
pub type EngineId = usize;

/// What happened, as far as the gate is concerned. The moment it happened is passed beside it
/// to [`Gate::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The next finalized block, with the release read at it.
    Block {
        block: BlockRef,
        release: Result<SemVer, ReleaseError>,
    },
    /// A child the gate started has been reaped. `uptime` is how long it ran.
    ChildExited {
        engine: EngineId,
        uptime: Duration,
        status: String,
    },
    /// The answer to [`Action::CheckHead`]: the release at the node's latest finalized head, or
    /// why it could not be read (node unreachable, release unknown there).
    HeadRelease {
        engine: EngineId,
        answer: Result<(BlockRef, SemVer), String>,
    },
    /// The lock the gate asked for is ours, and until when it may be acted on.
    LockGranted(Grant),
    /// The held lock may be acted on until this moment: a lock that must be renewed (PostgreSQL)
    /// is usable only until its renewal deadline, which every successful renewal moves on. The
    /// shell states it before every event it feeds, converted afresh to the gate's clock: the
    /// lock keeps its deadline on the boot-time clock, which (unlike the gate's) counts a host's
    /// suspend, so a conversion made once could make a passed deadline look ahead. Ignored while
    /// the lock is not held.
    LockUsableUntil(Instant),
    /// The lock was lost (not renewed in time, taken, database gone): stop the engine at once;
    /// it must be dead by `kill_by`, after which another holder may be let in.
    LockLost { reason: String, kill_by: Instant },
    /// The operator asked this instance to step down, so another instance takes the work over
    /// (SIGUSR1 or `engine-shim step-down`).
    StepDown,
    /// The shim was asked to stop (SIGTERM / SIGINT, named by `signal`). A second one means
    /// "now": the engine is killed without waiting out its grace period.
    Shutdown { signal: &'static str },
    /// The engine's program was replaced on disk (or re-probed after SIGHUP) and now covers
    /// `covers`. A running engine is not restarted for it: the news applies from its next start.
    EngineReplaced { engine: EngineId, covers: Covers },
    /// Nothing happened but time: the deadline named by [`Gate::next_deadline`] may have come.
    Tick,
}

/// Until when a grant of the lock may be acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Until the gate gives it back (a file lock, no lock): it cannot be lost meanwhile.
    UntilReleased,
    /// Until this moment unless renewed ([`Event::LockUsableUntil`]): a lock that must be renewed
    /// (PostgreSQL). Past it a new holder may already be let in, so nothing may start on it; a
    /// grant that arrives past it (the process was paused) is given back and asked for again.
    Until(Instant),
}

impl Grant {
    /// The renewal deadline, if the lock has one.
    fn deadline(self) -> Option<Instant> {
        match self {
            Grant::UntilReleased => None,
            Grant::Until(until) => Some(until),
        }
    }
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start this engine from `block`: the upgrade block (the first finalized block carrying the
    /// release) for the first start after an upgrade, else the latest finalized block seen.
    Start { engine: EngineId, block: BlockRef },
    /// Stop this engine gracefully (TERM, grace, KILL); its exit comes back as [`Event::ChildExited`].
    Stop { engine: EngineId },
    /// Read the release at the node's latest finalized head, once, beside the follower's ordered
    /// stream, and send the answer back as [`Event::HeadRelease`] for this engine.
    CheckHead { engine: EngineId },
    /// Start acquiring the lock; [`Event::LockGranted`] comes back once it is ours.
    AcquireLock,
    /// The grant came too late to be used (past its [`Grant::Until`]): give it back and ask
    /// again; the next [`Event::LockGranted`] answers the same wait.
    RetryLock,
    /// A start of `engine` is due, but the held lock is past its renewal deadline: nothing
    /// starts, and the shell tells the operator. The gate starts it once a renewal moves the
    /// deadline on ([`Event::LockUsableUntil`]), or asks for the lock again after its loss.
    /// Said once per wait.
    HoldStart { engine: EngineId },
    /// Give up a pending acquisition: no grant may follow.
    CancelLock,
    /// Give back the held lock: no child is alive any more.
    ReleaseLock,
    /// The lock is lost: stop this engine now (TERM, grace). The gate kills it with
    /// [`Action::Kill`] at the lock's fencing deadline if it is still alive then.
    Fence { engine: EngineId },
    /// The engine must die now: SIGKILL to its whole tree.
    Kill { engine: EngineId, cause: KillCause },
    /// A requested step-down is complete: no engine runs here and the lock is given back.
    SteppedDown,
    /// Tell the operator something; the shell formats and logs it.
    Notify(Notice),
    /// Everything is stopped after a shutdown: the shell may exit.
    Exit,
}

/// Why an engine is killed rather than left to its grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillCause {
    /// The lock's fencing deadline came while the fenced engine was still alive: its grace is
    /// over (it is reported as killed after its grace period, like any stop that ran out).
    FenceDeadline,
    /// The operator signalled a second time while the shim was stopping.
    SecondSignal,
}

/// What kind of start an engine's start is, for the operator's line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// A start on a release (the first, or after a hand-over, a step-down or a lock wait).
    Fresh,
    /// A restart after the engine exited while it should run (a crash).
    Restart,
}

/// Operator-visible news. The wording lives in the telemetry layer; the gate only says what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// An engine is about to start because the release at `block` is compatible with it.
    Starting {
        engine: Covers,
        release: SemVer,
        block: BlockRef,
        kind: StartKind,
    },
    /// The engine is newer than the release and waits (Chainflip's WAITING line). `engine` is the
    /// version the line is about: the oldest the engine covers, the next to become compatible.
    Waiting {
        engine: SemVer,
        release: SemVer,
        block: BlockRef,
    },
    /// The running engine is older than the release and is being stopped. `engine` is the newest
    /// version it covers: everything it covers is older than the release.
    NoLongerCompatible {
        engine: SemVer,
        release: SemVer,
        block: BlockRef,
    },
    /// The release moved backwards below the running engine, which is being stopped. `engine` is
    /// the oldest version it covers.
    ReleaseMovedBack {
        engine: SemVer,
        release: SemVer,
        block: BlockRef,
    },
    /// No installed engine fits the release; the operator must install one. `installed` lists
    /// every version covered by any engine.
    NoCompatibleEngine {
        release: SemVer,
        block: BlockRef,
        installed: Vec<SemVer>,
    },
    /// The release could not be used at this block; nothing changes.
    ReleaseUnknown {
        block: BlockRef,
        error: ReleaseError,
        running: Option<Covers>,
    },
    /// An engine exited while it should run; it is restarted after `restart_in`. `unconfirmed`
    /// says why the release at the finalized head could not be read: the restart then waits
    /// until it can.
    Crashed {
        engine: Covers,
        status: String,
        uptime: Duration,
        restart_in: Duration,
        unconfirmed: Option<String>,
    },
    /// An engine exited on its own because the chain moved past it: a hand-over, not a crash.
    /// The next engine starts when the follower reaches the upgrade block.
    ExitedAtUpgrade {
        engine: Covers,
        release: SemVer,
        block: BlockRef,
        status: String,
    },
    /// A restart is due, but the release at the finalized head could not be read: asked again
    /// after `retry_in`.
    RestartDeferred {
        engine: Covers,
        error: String,
        retry_in: Duration,
    },
    /// An engine that was asked to stop has exited.
    Stopped { engine: Covers, status: String },
    /// The lock was lost while an engine ran: it is being stopped at once.
    Fenced { engine: Covers, reason: String },
    /// A step-down was asked for; `engine` is the one being stopped, if any.
    SteppingDown { engine: Option<Covers> },
    /// The stand-by after a step-down ended; this instance competes for the lock again.
    StandbyOver,
    /// The operator asked the shim to stop (`signal` names how).
    ShutdownRequested { signal: &'static str },
    /// The operator asked again while the shim was stopping: the engine is killed now.
    ShutdownAgain { signal: &'static str },
}

/// The durations the operator chose that the gate decides with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often a "nothing runs" line may repeat.
    pub wait_log_every: Duration,
    /// How long a child must stay up for its crash back-off to reset.
    pub start_secs: Duration,
    /// How long to ask for no lock after a step-down.
    pub standby: Duration,
}

/// Which mode the instance is in: what it does when the release asks for an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Runs the compatible engine, asking for the lock to start it.
    Active,
    /// Stepped down: asks for no lock until `until`, so another instance takes over.
    Standby { until: Instant },
    /// Asked to stop: starts nothing and exits once nothing is alive.
    ShuttingDown,
}

/// What happens once a stopping child is reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    /// Go on with what the release asks for: this is the hand-over point (or, after a fence,
    /// the wait for the lock again).
    Target,
    /// Complete the requested step-down: give the lock back and answer. The stand-by may have
    /// run out meanwhile; then the instance goes on with the target too.
    StepDown,
    /// The shim is shutting down: give everything back and exit.
    Exit,
}

/// The one child the gate may have, as an explicit life cycle rather than a heap of flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    /// No child is alive.
    Idle,
    /// A child was started and has not exited.
    Running(EngineId),
    /// A stop was requested; the child is alive until its exit is reported. `kill_at` is the
    /// lock's fencing deadline while one is pending: the child is killed then if still alive.
    Stopping {
        engine: EngineId,
        then: AfterStop,
        kill_at: Option<Instant>,
    },
    /// The child crashed; it is restarted (after a look at the head) at `due`. No child is alive.
    RestartPending { engine: EngineId, due: Instant },
    /// The child exited on its own; the release at the finalized head is being read to tell an
    /// upgrade from a crash. No child is alive; the lock is kept for the hand-over.
    ExitCheck(EngineId),
    /// A restart is due; the release at the finalized head is being read first. No child is alive.
    RestartCheck(EngineId),
    /// The child left at an upgrade the follower has not reached yet: it is not restarted, and
    /// the next engine starts at the upgrade block. No child is alive.
    Retired(EngineId),
}

impl Job {
    /// A stop of `engine`, with nothing after it but `then` and no fencing deadline yet.
    fn stopping(engine: EngineId, then: AfterStop) -> Job {
        Job::Stopping {
            engine,
            then,
            kill_at: None,
        }
    }
}

/// How fresh the news is when no engine can run, which decides whether the calm lines are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum News {
    /// Nothing changed: the lines repeat at the calm interval only.
    Same,
    /// The release or the engine to run changed: the lines are due at once.
    Changed,
    /// An engine just left (stopped, or exited at the upgrade): due at once, but its "no longer
    /// compatible" line has been said already.
    EngineLeft,
}

/// How the last child that exited on its own went, for the decision and the crash line.
#[derive(Debug, Clone)]
struct LastExit {
    uptime: Duration,
    status: String,
    /// What the exited program covered (a replacement on disk may cover more by now).
    covered: Covers,
}

/// Where the gate stands with the lock. A live child always implies `Held`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockState {
    Free,
    /// Asked for, for a start of this kind.
    Acquiring {
        start: StartKind,
    },
    /// Ours. `usable_until` is the renewal deadline of a lock that must be renewed (`None`: usable
    /// until given back). `held_back` is a start of that kind that came past the deadline and
    /// waits for a renewal or the loss; no child is alive then.
    Held {
        usable_until: Option<Instant>,
        held_back: Option<StartKind>,
    },
}

/// The release the gate last knew for sure, and the first block that carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KnownRelease {
    version: SemVer,
    /// The engine compatible with it, if one is installed.
    target: Option<EngineId>,
    /// First finalized block at which `target` became the engine to run (the hand-over block).
    since: BlockRef,
    /// `since` is an upgrade block no engine has been started from yet: the next start begins
    /// there, so no block is skipped or processed twice at the hand-over.
    upgrade_pending: bool,
    /// Last block seen, for log lines.
    latest: BlockRef,
}

/// Decides run / idle for a set of engines from finalized releases and child exits.
#[derive(Debug, Clone)]
pub struct Gate {
    engines: Vec<Covers>,
    rule: Rule,
    timing: Timing,
    mode: Mode,
    job: Job,
    lock: LockState,
    known: Option<KnownRelease>,
    backoff: Vec<RestartBackoff>,
    /// When a waiting / no-engine / unknown-release line may repeat. Not a wake-up (so not in
    /// [`Gate::next_deadline`]): the line names the latest block, so it is said with the next
    /// block after it.
    calm_line: Pacer<Instant>,
    /// The problem last reported for an unknown release, so a change of problem is logged at once.
    last_release_error: Option<ReleaseError>,
    /// The moment of the event being handled.
    now: Option<Instant>,
    /// Number of the latest block acted on: finality only moves forward.
    last_block: Option<u64>,
    /// How the last child that exited on its own went (uptime, status), for the crash line.
    last_exit: Option<LastExit>,
    /// What a replaced engine covers now, kept until its live child (the old program) is gone.
    replaced: Vec<Option<Covers>>,
}

impl Gate {
    /// Builds a gate for `engines` (at least one).
    pub fn new(engines: Vec<Covers>, rule: Rule, timing: Timing) -> Self {
        assert!(!engines.is_empty(), "the gate needs at least one engine");
        let engines_len = engines.len();
        let backoff = engines
            .iter()
            .map(|_| RestartBackoff::new(timing.start_secs))
            .collect();
        Gate {
            engines,
            rule,
            timing,
            mode: Mode::Active,
            job: Job::Idle,
            lock: LockState::Free,
            known: None,
            backoff,
            calm_line: Pacer::every(timing.wait_log_every),
            last_release_error: None,
            now: None,
            last_block: None,
            last_exit: None,
            replaced: vec![None; engines_len],
        }
    }

    /// The engine whose child is alive (running or being stopped), if any.
    pub fn alive(&self) -> Option<EngineId> {
        match self.job {
            Job::Running(engine) | Job::Stopping { engine, .. } => Some(engine),
            Job::Idle
            | Job::RestartPending { .. }
            | Job::ExitCheck(_)
            | Job::RestartCheck(_)
            | Job::Retired(_) => None,
        }
    }

    /// The engine that should run according to the last known release.
    pub fn target(&self) -> Option<EngineId> {
        self.known.and_then(|known| known.target)
    }

    /// The last known release while no installed engine covers it and some engine is behind it:
    /// the state of the "install a X.Y.x engine" line, which the shell turns into a gauge
    /// operators alert on. Every engine being ahead of the release is the normal wait before an
    /// upgrade, not a missing engine.
    pub fn missing_engine(&self) -> Option<SemVer> {
        let known = self.known?;
        let behind = self
            .engines
            .iter()
            .any(|covers| covers.oldest() <= known.version);
        (known.target.is_none() && behind).then_some(known.version)
    }

    /// The earliest of the gate's own deadlines (a restart due, a stand-by ending, a fenced
    /// engine to kill): the shell sends [`Event::Tick`] then, unless another event comes first.
    /// Each deadline lives in the state it belongs to, so one that no longer matters is gone.
    pub fn next_deadline(&self) -> Option<Instant> {
        let restart_or_kill = match self.job {
            Job::RestartPending { due, .. } => Some(due),
            Job::Stopping { kill_at, .. } => kill_at,
            _ => None,
        };
        let standby_end = match self.mode {
            Mode::Standby { until } => Some(until),
            Mode::Active | Mode::ShuttingDown => None,
        };
        [restart_or_kill, standby_end].into_iter().flatten().min()
    }

    /// Feeds one event that happened at `now` (monotonic, never earlier than the last) and
    /// returns what to do, in order. Deadlines that have come by `now` fire after the event.
    pub fn step(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        self.now = Some(now);
        self.on_event(now, event, &mut actions);
        self.fire_due(now, &mut actions);
        actions
    }

    /// The moment of the event being handled.
    fn now(&self) -> Instant {
        self.now
            .expect("the gate only decides inside step, which sets the time")
    }

    fn on_event(&mut self, now: Instant, event: Event, actions: &mut Vec<Action>) {
        match event {
            Event::Block { block, release } => {
                if self.last_block.is_some_and(|last| block.number <= last) {
                    return;
                }
                self.last_block = Some(block.number);
                match release {
                    Ok(version) => self.on_release(block, version, actions),
                    Err(error) => self.on_unknown_release(block, error, actions),
                }
            }
            Event::ChildExited {
                engine,
                uptime,
                status,
            } => self.on_child_exited(engine, uptime, status, actions),
            Event::HeadRelease { engine, answer } => self.on_head_release(engine, answer, actions),
            Event::LockGranted(grant) => self.on_lock_granted(grant, actions),
            Event::LockUsableUntil(until) => self.on_lock_usable_until(until, actions),
            Event::LockLost { reason, kill_by } => self.on_lock_lost(reason, kill_by, actions),
            Event::StepDown => self.on_step_down(now, actions),
            Event::Shutdown { signal } => self.on_shutdown(signal, actions),
            Event::EngineReplaced { engine, covers } => {
                self.on_engine_replaced(engine, covers, actions)
            }
            Event::Tick => {}
        }
    }

    /// Acts on every deadline that has come by `now`: the fencing deadline first (nothing is
    /// more urgent than a lost lock), then the end of a stand-by, then a restart.
    fn fire_due(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if let Job::Stopping {
            engine,
            then,
            kill_at: Some(kill_at),
        } = self.job
        {
            if kill_at <= now {
                actions.push(Action::Kill {
                    engine,
                    cause: KillCause::FenceDeadline,
                });
                self.job = Job::stopping(engine, then);
            }
        }
        if let Mode::Standby { until } = self.mode {
            if until <= now {
                self.mode = Mode::Active;
                actions.push(Action::Notify(Notice::StandbyOver));
                if self.job == Job::Idle {
                    self.start_or_wait(News::Changed, actions);
                }
            }
        }
        if let Job::RestartPending { engine, due } = self.job {
            if due <= now {
                // Never restart on a release the node has not confirmed: it may have moved on.
                self.job = Job::RestartCheck(engine);
                actions.push(Action::CheckHead { engine });
            }
        }
    }

    /// The running child is the old program and keeps running as it is; any other engine takes
    /// its new versions at once, and the last known release is judged again with them (an idle
    /// shim starts the new program now rather than at the next block).
    fn on_engine_replaced(&mut self, engine: EngineId, covers: Covers, actions: &mut Vec<Action>) {
        if self.alive() == Some(engine) {
            self.replaced[engine] = Some(covers);
            return;
        }
        self.replaced[engine] = None;
        if self.engines[engine] == covers {
            return;
        }
        self.engines[engine] = covers;
        match self.known {
            Some(known) if self.mode != Mode::ShuttingDown => {
                self.on_release(known.latest, known.version, actions)
            }
            _ => {}
        }
    }

    /// Once `engine`'s child is gone, what it covers is what the replaced program covers.
    fn take_replacement(&mut self, engine: EngineId) {
        let Some(covers) = self.replaced[engine].take() else {
            return;
        };
        self.engines[engine] = covers;
        if let Some(known) = &mut self.known {
            let keep = match self.job {
                Job::RestartPending { engine, .. } => Some(engine),
                _ => None,
            };
            let target = pick_engine(&self.engines, self.rule, known.version, keep);
            if target != known.target {
                known.target = target;
                known.since = known.latest;
            }
        }
    }

    fn on_release(&mut self, block: BlockRef, version: SemVer, actions: &mut Vec<Action>) {
        self.last_release_error = None;
        // The engine that runs, or is between an exit of its own and its restart, stays while it
        // fits; one that left at an upgrade (retired) does not.
        let keep = match self.job {
            Job::Running(engine)
            | Job::RestartPending { engine, .. }
            | Job::ExitCheck(engine)
            | Job::RestartCheck(engine) => Some(engine),
            Job::Idle | Job::Stopping { .. } | Job::Retired(_) => None,
        };
        let target = pick_engine(&self.engines, self.rule, version, keep);
        let target_changed = self.known.is_none_or(|known| known.target != target);
        let release_changed = self.known.is_none_or(|known| known.version != version);
        let (since, upgrade_pending) = match self.known {
            Some(known) if !target_changed => (known.since, known.upgrade_pending),
            // An engine for this release only now (installed or replaced while nothing could
            // run): nobody has processed the blocks since the release began, so it starts there.
            Some(known) if known.target.is_none() && !release_changed => {
                (known.since, known.upgrade_pending)
            }
            // A change of target after a known release is an upgrade (or a move back).
            Some(_) => (block, true),
            // The first release this shim learns: a fresh start, from the present.
            None => (block, false),
        };
        self.known = Some(KnownRelease {
            version,
            target,
            since,
            upgrade_pending,
            latest: block,
        });
        if self.mode == Mode::ShuttingDown {
            return;
        }
        let news = if release_changed || target_changed {
            News::Changed
        } else {
            News::Same
        };
        match self.job {
            Job::Running(engine) if Some(engine) != target => {
                let notice = self.incompatible_notice(engine, version, block);
                actions.push(Action::Notify(notice));
                actions.push(Action::Stop { engine });
                self.job = Job::stopping(engine, AfterStop::Target);
            }
            Job::RestartPending { engine, .. } if Some(engine) != target => {
                // The pending restart is void: the engine is no longer the one to run.
                let notice = self.incompatible_notice(engine, version, block);
                actions.push(Action::Notify(notice));
                self.job = Job::Idle;
                self.start_or_wait(news, actions);
            }
            Job::RestartCheck(engine) if Some(engine) != target => {
                let notice = self.incompatible_notice(engine, version, block);
                actions.push(Action::Notify(notice));
                self.job = Job::Idle;
                self.start_or_wait(news, actions);
            }
            Job::ExitCheck(engine) if self.exited_program_left(engine, target, version) => {
                // The follower reached the upgrade before the head was read: the answer is in.
                let covered = self.exited_covers(engine);
                self.exited_at_upgrade(covered, version, block, actions);
                self.job = Job::Idle;
                self.start_or_wait(News::EngineLeft, actions);
            }
            Job::Retired(engine) if self.exited_program_left(engine, target, version) => {
                // The upgrade block the retired engine left at: the hand-over completes here.
                self.job = Job::Idle;
                self.start_or_wait(News::EngineLeft, actions);
            }
            Job::Idle => self.start_or_wait(news, actions),
            Job::Running(_)
            | Job::Stopping { .. }
            | Job::RestartPending { .. }
            | Job::ExitCheck(_)
            | Job::RestartCheck(_)
            | Job::Retired(_) => {}
        }
    }

    fn incompatible_notice(&self, engine: EngineId, release: SemVer, block: BlockRef) -> Notice {
        let covers = &self.engines[engine];
        match covers.compare(self.rule, release) {
            Compatibility::NotYetCompatible => Notice::ReleaseMovedBack {
                engine: covers.oldest(),
                release,
                block,
            },
            _ => Notice::NoLongerCompatible {
                engine: covers.newest(),
                release,
                block,
            },
        }
    }

    /// With no child alive: start the target, or say why nothing runs (calmly, not per block,
    /// unless the `news` is fresh).
    fn start_or_wait(&mut self, news: News, actions: &mut Vec<Action>) {
        let Some(known) = self.known else { return };
        if let Some(engine) = known.target {
            self.start(engine, known, StartKind::Fresh, actions);
            return;
        }
        self.give_back_lock(actions);
        if !self.calm_line_due(news != News::Same) {
            return;
        }
        for covers in &self.engines {
            let (release, block) = (known.version, known.latest);
            match covers.compare(self.rule, release) {
                Compatibility::NotYetCompatible => actions.push(Action::Notify(Notice::Waiting {
                    engine: covers.oldest(),
                    release,
                    block,
                })),
                // Said once per change: repeating it adds nothing the no-engine line does not say.
                Compatibility::NoLongerCompatible if news == News::Changed => {
                    actions.push(Action::Notify(Notice::NoLongerCompatible {
                        engine: covers.newest(),
                        release,
                        block,
                    }))
                }
                _ => {}
            }
        }
        let mut installed: Vec<SemVer> = self
            .engines
            .iter()
            .flat_map(|covers| covers.versions().iter().copied())
            .collect();
        installed.sort();
        installed.dedup();
        actions.push(Action::Notify(Notice::NoCompatibleEngine {
            release: known.version,
            block: known.latest,
            installed,
        }));
    }

    /// Starts `engine` if the lock is held; otherwise asks for it and starts on the grant.
    fn start(
        &mut self,
        engine: EngineId,
        known: KnownRelease,
        kind: StartKind,
        actions: &mut Vec<Action>,
    ) {
        match (self.lock, self.mode) {
            (
                LockState::Held {
                    usable_until,
                    held_back,
                },
                _,
            ) => {
                if usable_until.is_some_and(|until| self.now() >= until) {
                    // The lock may be gone already (this process was paused past its renewal
                    // deadline, and the loss is not reported yet): a start now could overlap a
                    // new holder. Wait for the renewal or the loss.
                    if held_back.is_none() {
                        actions.push(Action::HoldStart { engine });
                    }
                    self.lock = LockState::Held {
                        usable_until,
                        held_back: Some(kind),
                    };
                    return;
                }
                self.lock = LockState::Held {
                    usable_until,
                    held_back: None,
                };
            }
            (LockState::Acquiring { .. }, _) => return,
            (LockState::Free, Mode::Standby { .. } | Mode::ShuttingDown) => return,
            (LockState::Free, Mode::Active) => {
                actions.push(Action::AcquireLock);
                self.lock = LockState::Acquiring { start: kind };
                return;
            }
        }
        actions.push(Action::Notify(Notice::Starting {
            engine: self.engines[engine].clone(),
            release: known.version,
            block: known.since,
            kind,
        }));
        actions.push(Action::Start {
            engine,
            block: start_block(&known),
        });
        if let Some(known) = &mut self.known {
            known.upgrade_pending = false;
        }
        self.job = Job::Running(engine);
        self.calm_line.reset();
    }

    /// Whether a "nothing runs" line is due: at once when the news is fresh, else at most every
    /// `wait_log_every`. Marks it as said when it is.
    fn calm_line_due(&mut self, fresh: bool) -> bool {
        let now = self.now();
        let due = fresh || self.calm_line.is_due(now);
        if due {
            self.calm_line.said(now);
        }
        due
    }

    /// Nothing is alive and nothing is about to start: hold no lock.
    fn give_back_lock(&mut self, actions: &mut Vec<Action>) {
        match self.lock {
            LockState::Held { .. } => actions.push(Action::ReleaseLock),
            LockState::Acquiring { .. } => actions.push(Action::CancelLock),
            LockState::Free => return,
        }
        self.lock = LockState::Free;
    }

    fn on_lock_granted(&mut self, grant: Grant, actions: &mut Vec<Action>) {
        let LockState::Acquiring { start } = self.lock else {
            // A grant that crossed a cancel: the lock is ours after all, and nobody wants it.
            actions.push(Action::ReleaseLock);
            return;
        };
        let usable_until = grant.deadline();
        if usable_until.is_some_and(|until| self.now() >= until) {
            // Starting an engine on it could overlap a new holder: still acquiring.
            actions.push(Action::RetryLock);
            return;
        }
        self.lock = LockState::Held {
            usable_until,
            held_back: None,
        };
        match (self.job, self.known) {
            (Job::Idle, Some(known)) if self.mode == Mode::Active => match known.target {
                Some(engine) => self.start(engine, known, start, actions),
                None => self.give_back_lock(actions),
            },
            _ => self.give_back_lock(actions),
        }
    }

    /// A renewal moved the held lock's deadline (or the shell stated it again): a start held back
    /// for it goes ahead once the lock is usable again.
    fn on_lock_usable_until(&mut self, until: Instant, actions: &mut Vec<Action>) {
        let LockState::Held { held_back, .. } = self.lock else {
            // Not ours (any more): nothing to move.
            return;
        };
        self.lock = LockState::Held {
            usable_until: Some(until),
            held_back,
        };
        if let Some(kind) = held_back {
            if self.now() < until {
                self.start_held_back(kind, actions);
            }
        }
    }

    /// Starts what was held back for the lock (now usable, or to be asked for again), if it is
    /// still what the release asks for.
    fn start_held_back(&mut self, kind: StartKind, actions: &mut Vec<Action>) {
        if self.job != Job::Idle || self.mode != Mode::Active {
            return;
        }
        let Some(known) = self.known else { return };
        match known.target {
            Some(engine) => self.start(engine, known, kind, actions),
            None => self.give_back_lock(actions),
        }
    }

    fn on_unknown_release(
        &mut self,
        block: BlockRef,
        error: ReleaseError,
        actions: &mut Vec<Action>,
    ) {
        let changed = self.last_release_error.as_ref() != Some(&error);
        if self.calm_line_due(changed) {
            self.last_release_error = Some(error.clone());
            actions.push(Action::Notify(Notice::ReleaseUnknown {
                block,
                error,
                running: self.alive().map(|engine| self.engines[engine].clone()),
            }));
        }
    }

    fn on_child_exited(
        &mut self,
        engine: EngineId,
        uptime: Duration,
        status: String,
        actions: &mut Vec<Action>,
    ) {
        match self.job {
            Job::Stopping {
                engine: stopping,
                then,
                ..
            } if stopping == engine => {
                actions.push(Action::Notify(Notice::Stopped {
                    engine: self.engines[engine].clone(),
                    status,
                }));
                self.job = Job::Idle;
                self.take_replacement(engine);
                match then {
                    AfterStop::Exit => {
                        self.give_back_lock(actions);
                        actions.push(Action::Exit);
                    }
                    AfterStop::StepDown => {
                        self.give_back_lock(actions);
                        actions.push(Action::SteppedDown);
                        if self.mode == Mode::Active {
                            // The stand-by ran out while the engine was still stopping.
                            self.start_or_wait(News::EngineLeft, actions);
                        }
                    }
                    // A stop always completes before the next start: this is the hand-over point.
                    AfterStop::Target => self.start_or_wait(News::EngineLeft, actions),
                }
            }
            Job::Running(running) if running == engine => {
                // Not asked to stop: an upgrade the follower has not reached yet, or a crash.
                // Only the release at the latest finalized head tells them apart.
                self.last_exit = Some(LastExit {
                    uptime,
                    status,
                    covered: self.engines[engine].clone(),
                });
                self.job = Job::ExitCheck(engine);
                // The old program is gone: a replacement on disk counts from now on.
                self.take_replacement(engine);
                actions.push(Action::CheckHead { engine });
            }
            // An exit for a child the gate no longer tracks changes nothing.
            _ => {}
        }
    }

    /// Decides what an engine's own exit (or a due restart) means, from the release at the head.
    fn on_head_release(
        &mut self,
        engine: EngineId,
        answer: Result<(BlockRef, SemVer), String>,
        actions: &mut Vec<Action>,
    ) {
        let checking_exit = match self.job {
            Job::ExitCheck(checking) if checking == engine => true,
            Job::RestartCheck(checking) if checking == engine => false,
            // A late answer for a question the follower already settled.
            _ => return,
        };
        // An exit is judged by what the exited program covered, even if a replacement on disk
        // has been taken since; a due restart by what would be started now.
        let judged = match (&self.last_exit, checking_exit) {
            (Some(exit), true) => exit.covered.clone(),
            _ => self.engines[engine].clone(),
        };
        let fits = match answer {
            Ok((block, release))
                if judged.compare(self.rule, release) != Compatibility::Compatible =>
            {
                self.exited_at_upgrade(judged, release, block, actions);
                // Kept after an exit (held for the hand-over), already given back after a crash.
                self.job = Job::Retired(engine);
                return;
            }
            Ok(_) => Ok(()),
            Err(error) => Err(error),
        };
        match (checking_exit, fits) {
            (true, fits) => {
                let (uptime, status) = self
                    .last_exit
                    .as_ref()
                    .map(|exit| (exit.uptime, exit.status.clone()))
                    .unwrap_or_default();
                let restart_in = self.backoff[engine].next_delay(uptime);
                actions.push(Action::Notify(Notice::Crashed {
                    engine: self.engines[engine].clone(),
                    status,
                    uptime,
                    restart_in,
                    unconfirmed: fits.err(),
                }));
                self.job = Job::RestartPending {
                    engine,
                    due: self.now() + restart_in,
                };
                // Reaped: the lock goes back until the restart, so an idle shim holds nothing.
                self.give_back_lock(actions);
            }
            (false, Ok(())) => {
                self.job = Job::Idle;
                match self.known {
                    Some(known) if known.target == Some(engine) => {
                        self.start(engine, known, StartKind::Restart, actions)
                    }
                    // E.g. the engine was replaced on disk meanwhile and no longer fits.
                    Some(_) if self.mode != Mode::ShuttingDown => {
                        self.start_or_wait(News::Changed, actions)
                    }
                    _ => {}
                }
            }
            (false, Err(error)) => {
                let retry_in = self.backoff[engine].next_delay(Duration::ZERO);
                actions.push(Action::Notify(Notice::RestartDeferred {
                    engine: self.engines[engine].clone(),
                    error,
                    retry_in,
                }));
                self.job = Job::RestartPending {
                    engine,
                    due: self.now() + retry_in,
                };
            }
        }
    }

    /// What the program of `engine` that last exited on its own covered (what it covers now if
    /// none did).
    fn exited_covers(&self, engine: EngineId) -> Covers {
        match &self.last_exit {
            Some(exit) => exit.covered.clone(),
            None => self.engines[engine].clone(),
        }
    }

    /// Whether the chain at `release` has left the program of `engine` that exited on its own:
    /// another engine is the target, or the exited program covers nothing compatible (the target
    /// may still be `engine` itself, when its replacement on disk covers the new release).
    fn exited_program_left(
        &self,
        engine: EngineId,
        target: Option<EngineId>,
        release: SemVer,
    ) -> bool {
        Some(engine) != target
            || self.exited_covers(engine).compare(self.rule, release) != Compatibility::Compatible
    }

    fn exited_at_upgrade(
        &self,
        covered: Covers,
        release: SemVer,
        block: BlockRef,
        actions: &mut Vec<Action>,
    ) {
        let status = self
            .last_exit
            .as_ref()
            .map(|exit| exit.status.clone())
            .unwrap_or_default();
        actions.push(Action::Notify(Notice::ExitedAtUpgrade {
            engine: covered,
            release,
            block,
            status,
        }));
    }

    fn on_lock_lost(&mut self, reason: String, kill_by: Instant, actions: &mut Vec<Action>) {
        let LockState::Held { held_back, .. } = self.lock else {
            // A loss that belongs to an earlier grant (see the lock module): nothing to act on.
            return;
        };
        // Lost means not ours any more: there is nothing to give back.
        self.lock = LockState::Free;
        if let Some(kind) = held_back {
            // The start held back for it now waits for the lock again.
            self.start_held_back(kind, actions);
            return;
        }
        let (engine, then, kill_at) = match self.job {
            Job::Running(engine) => (engine, AfterStop::Target, kill_by),
            Job::Stopping {
                engine,
                then,
                kill_at,
            } => (engine, then, kill_at.map_or(kill_by, |at| at.min(kill_by))),
            Job::Idle
            | Job::RestartPending { .. }
            | Job::ExitCheck(_)
            | Job::RestartCheck(_)
            | Job::Retired(_) => return,
        };
        actions.push(Action::Notify(Notice::Fenced {
            engine: self.engines[engine].clone(),
            reason,
        }));
        actions.push(Action::Fence { engine });
        self.job = Job::Stopping {
            engine,
            then,
            kill_at: Some(kill_at),
        };
    }

    /// Stop the engine, give the lock back and stand by, so another instance takes over. A
    /// request during a stand-by starts the stand-by afresh.
    fn on_step_down(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if self.mode == Mode::ShuttingDown {
            return;
        }
        actions.push(Action::Notify(Notice::SteppingDown {
            engine: self.alive().map(|engine| self.engines[engine].clone()),
        }));
        self.mode = Mode::Standby {
            until: now + self.timing.standby,
        };
        match self.job {
            Job::Running(engine) => {
                actions.push(Action::Stop { engine });
                self.job = Job::stopping(engine, AfterStop::StepDown);
            }
            Job::Stopping {
                engine, kill_at, ..
            } => {
                self.job = Job::Stopping {
                    engine,
                    then: AfterStop::StepDown,
                    kill_at,
                }
            }
            Job::Idle
            | Job::RestartPending { .. }
            | Job::ExitCheck(_)
            | Job::RestartCheck(_)
            | Job::Retired(_) => {
                self.job = Job::Idle;
                self.give_back_lock(actions);
                actions.push(Action::SteppedDown);
            }
        }
    }

    /// The first request stops the engine gracefully and exits once it is reaped; a second one
    /// kills the engine at once.
    fn on_shutdown(&mut self, signal: &'static str, actions: &mut Vec<Action>) {
        if self.mode == Mode::ShuttingDown {
            actions.push(Action::Notify(Notice::ShutdownAgain { signal }));
            if let Job::Stopping { engine, then, .. } = self.job {
                actions.push(Action::Kill {
                    engine,
                    cause: KillCause::SecondSignal,
                });
                // Killed: no fencing deadline is left to keep.
                self.job = Job::stopping(engine, then);
            }
            return;
        }
        actions.push(Action::Notify(Notice::ShutdownRequested { signal }));
        self.mode = Mode::ShuttingDown;
        match self.job {
            Job::Running(engine) => {
                actions.push(Action::Stop { engine });
                self.job = Job::stopping(engine, AfterStop::Exit);
            }
            Job::Stopping {
                engine, kill_at, ..
            } => {
                self.job = Job::Stopping {
                    engine,
                    then: AfterStop::Exit,
                    kill_at,
                }
            }
            Job::Idle
            | Job::RestartPending { .. }
            | Job::ExitCheck(_)
            | Job::RestartCheck(_)
            | Job::Retired(_) => {
                self.job = Job::Idle;
                self.give_back_lock(actions);
                actions.push(Action::Exit);
            }
        }
    }
}

/// Where a start begins: at the upgrade block for the first start after an upgrade, so the new
/// engine processes exactly the blocks the old one did not; otherwise (a fresh start, a restart, a
/// start delayed by the lock) at the latest finalized block, as Chainflip's runner passes no
/// start block to an engine it starts afresh.
fn start_block(known: &KnownRelease) -> BlockRef {
    if known.upgrade_pending {
        known.since
    } else {
        known.latest
    }
}

/// Which engine should run at `release`: the rule operators read in the README.
///
/// - An engine is compatible when any version it covers is.
/// - `keep` (the engine running now, or about to restart) stays while it is compatible: there is
///   no hand-over between two compatible engines, since a hand-over is a stop and a start for
///   nothing.
/// - Otherwise, of the compatible engines, the one whose newest version is highest starts (the
///   first given on a tie). Engines of one version each never tie: the config refuses two that
///   share a release.
pub fn pick_engine(
    engines: &[Covers],
    rule: Rule,
    release: SemVer,
    keep: Option<EngineId>,
) -> Option<EngineId> {
    let compatible =
        |id: &EngineId| engines[*id].compare(rule, release) == Compatibility::Compatible;
    if let Some(keep) = keep.filter(compatible) {
        return Some(keep);
    }
    (0..engines.len())
        .filter(compatible)
        // `max_by_key` keeps the last of equals: reversed, the first given wins a tie.
        .rev()
        .max_by_key(|&id| engines[id].newest())
}

#[cfg(test)]
mod tests;
