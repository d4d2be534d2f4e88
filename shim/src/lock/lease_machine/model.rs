//! Model check of the database lock on virtual time: several shims, each a real [`LeaseMachine`]
//! driven by a copy of the I/O shell's loop and the shell's real `desire`/`deliver` (so the
//! handle's phase is the real one), against a simulated PostgreSQL with its own clock: a lease row
//! whose expiry only the database's clock judges, advisory locks tied to sessions, sessions that
//! die with the server.
//!
//! The world, in seeded random schedules (every seed is reproducible):
//! - every message between a shim and the database takes 0–300 ms one way, and 3 % of them up to
//!   3 s (past every query budget: the shim gives up while the database may still act on it),
//!   always less than a lease (a connection whose data goes unacknowledged for half a lease is
//!   aborted: `conn.rs`); one session's messages arrive in order, its close after them;
//! - clocks: every host's boot-time clock and the database's clock run within ±5 % of real time,
//!   from unrelated origins;
//! - database outages of up to 15 s (every session dies with the server);
//! - network cuts between one host and the database of up to 12 s (lease and dual modes): messages
//!   are lost, and the server drops a session silent for a lease;
//! - process pauses of up to 20 s: the shim **and** its engine stop together (a cgroup freeze, a VM
//!   pause), as `FACTS.md` describes; on resume the shim handles everything pending before the
//!   engine is counted as running again (the engine's first instants after a resume are what the
//!   epoch handed downstream is for);
//! - the run loop asks for the lock, gives it back (after its engine is reaped), cancels, and on
//!   `Lost` kills its engine by `kill_by` (counted as alive until then); while holding, it stops
//!   its engine and starts another on the same grant any time later (a release change, a
//!   restart), only while the grant is usable (`run.rs`: `start`). The run loop and the lock's
//!   task are separate threads, so on resume the run loop's pending work may go first.
//!
//! Checked after every step: **never two engines running at once**; in lease and dual modes, a
//! running engine's shim holds an unexpired lease by the database's clock, and so does every shim
//! whose machine considers itself holder (granted, not lost, renew deadline not passed by its own
//! clock).
//!
//! The bounds that make this true, checked by the tests below (with lease 5 s and renew 1 s):
//! - drift: the holder kills by `lease − renew` on its clock, the database expires a lease at
//!   `lease` on its own; safe while `(lease − renew)/(1 − ρ) < lease/(1 + ρ)`, i.e. each clock's
//!   rate error ρ < renew/(2·lease − renew) (11 % at the defaults; the model uses 5 % and shows
//!   an overlap at 15 %);
//! - advisory mode: a session's end reaches its holder within 200 ms, inside the 250 ms a taker
//!   waits before using a free advisory lock, and there are no network cuts (a cut holder learns
//!   of nothing; that is what lease and dual modes are for).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{LeaseMachine, Op, Outcome, Policy};
use crate::lock::conn::{DbError, ErrorKind};
use crate::lock::fence::BootInstant;
use crate::lock::pg_config::PgLockConfig;
use crate::lock::postgres::{deliver, desire};
use crate::lock::{Claim, HolderInfo, Holding, LockEvent, LockMode, PgOptions, Want as Asked};

const MS: u64 = 1000;
const LEASE_MS: u64 = 5000;
const RENEW_MS: u64 = 1000;

/// The world's limits for one exploration.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    mode: LockMode,
    nodes: usize,
    max_delay_ms: u64,
    slow_delay_ms: u64,
    /// Each clock's rate differs from real time by at most this many parts per million.
    drift_ppm: i64,
    max_pause_ms: u64,
    outages: bool,
    cuts: bool,
    /// How long a session's end (server restart) takes to reach its client.
    notice_ms: u64,
    run_ms: u64,
    /// A start on a grant held for a while checks that it is still usable, as `run.rs` does.
    start_checks_usable: bool,
}

impl Bounds {
    fn documented(mode: LockMode) -> Self {
        Bounds {
            mode,
            nodes: 3,
            max_delay_ms: 300,
            slow_delay_ms: 3000,
            drift_ppm: 50_000,
            max_pause_ms: 20_000,
            outages: true,
            cuts: mode != LockMode::Advisory,
            notice_ms: 200,
            run_ms: 120_000,
            start_checks_usable: true,
        }
    }
}

/// xorshift64*: reproducible schedules from a seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A clock that runs at `1 + ppm/10⁶` of real time from its own origin (real time in µs).
#[derive(Debug, Clone, Copy)]
struct Clock {
    origin_us: u64,
    ppm: i64,
}

impl Clock {
    fn at(&self, real_us: u64) -> u64 {
        let elapsed = real_us as i128 * (1_000_000 + self.ppm as i128) / 1_000_000;
        (self.origin_us as i128 + elapsed) as u64
    }

    fn instant(&self, real_us: u64) -> BootInstant {
        BootInstant::from_boot(Duration::from_micros(self.at(real_us)))
    }

    /// The first real moment at which this clock shows `local`.
    fn real_of(&self, local: BootInstant) -> u64 {
        let local = local.since_boot().as_micros() as i128 - self.origin_us as i128;
        let mut real = (local.max(0) * 1_000_000 / (1_000_000 + self.ppm as i128)) as u64;
        while self.instant(real)
            < BootInstant::from_boot(Duration::from_micros(self.origin_us))
                + Duration::from_micros(local.max(0) as u64)
        {
            real += 1;
        }
        real
    }
}

#[derive(Debug)]
enum Ev {
    Timer {
        node: usize,
        generation: u64,
    },
    Arrive {
        node: usize,
        req: u64,
        session: Option<u64>,
        op: Op,
    },
    Reply {
        node: usize,
        req: u64,
        session: Option<u64>,
        outcome: Outcome,
    },
    Budget {
        node: usize,
        req: u64,
    },
    Closed {
        node: usize,
        session: u64,
    },
    Gate {
        node: usize,
    },
    /// The shell looks at what is pending (after a resume).
    Shell {
        node: usize,
    },
    Kill {
        node: usize,
        serial: u64,
    },
    Pause {
        node: usize,
    },
    Resume {
        node: usize,
    },
    Outage,
    Restart,
    Cut {
        node: usize,
    },
    ServerDrops {
        node: usize,
        session: u64,
    },
}

impl Ev {
    /// The shim the event happens to, if it is one that stops while its host is paused.
    fn target(&self) -> Option<usize> {
        match self {
            Ev::Timer { node, .. }
            | Ev::Reply { node, .. }
            | Ev::Budget { node, .. }
            | Ev::Closed { node, .. }
            | Ev::Gate { node }
            | Ev::Shell { node }
            | Ev::Kill { node, .. } => Some(*node),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Row {
    holder: usize,
    expires_us: u64,
}

/// The simulated PostgreSQL: its clock, the lease row, the advisory lock and the sessions.
struct Db {
    clock: Clock,
    up: bool,
    row: Option<Row>,
    advisory: Option<u64>,
    /// Session id → (its shim, alive).
    sessions: Vec<(usize, bool)>,
}

/// One shim: its machine, the handle's phase, the run loop's engine, the shell's connection.
struct Node {
    machine: LeaseMachine,
    clock: Clock,
    phase: Claim,
    serial: u64,
    tx: UnboundedSender<LockEvent>,
    rx: UnboundedReceiver<LockEvent>,
    /// The running engine and the grant it runs on.
    engine: Option<u64>,
    session: Option<u64>,
    /// The shim has learnt that its session ended.
    session_closed: bool,
    /// The request under way and whether it opens a session.
    req: Option<u64>,
    generation: u64,
    paused: bool,
    deferred: Vec<Ev>,
    wake: bool,
    cut_until: u64,
}

struct World {
    bounds: Bounds,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    /// When the last request sent on each session arrives: one session's requests arrive in
    /// order (one TCP connection, one server process).
    arrivals: BTreeMap<u64, u64>,
    db: Db,
    nodes: Vec<Node>,
    config: PgLockConfig,
    trace: VecDeque<String>,
}

impl World {
    fn new(bounds: Bounds, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let clock = |rng: &mut Rng| Clock {
            origin_us: rng.below(1_000_000) * MS,
            ppm: rng.below(2 * bounds.drift_ppm as u64 + 1) as i64 - bounds.drift_ppm,
        };
        let config = PgLockConfig::new(
            "postgres://shim@db/locks",
            &PgOptions {
                mode: bounds.mode,
                lease: Duration::from_millis(LEASE_MS),
                renew: Duration::from_millis(RENEW_MS),
                ..PgOptions::default()
            },
        )
        .unwrap();
        let db = Db {
            clock: clock(&mut rng),
            up: true,
            row: None,
            advisory: None,
            sessions: Vec::new(),
        };
        let nodes = (0..bounds.nodes)
            .map(|_| {
                let (tx, rx) = unbounded_channel();
                Node {
                    machine: LeaseMachine::new(Policy::of(&config)),
                    clock: clock(&mut rng),
                    phase: Claim::Idle,
                    serial: 0,
                    tx,
                    rx,
                    engine: None,
                    session: None,
                    session_closed: false,
                    req: None,
                    generation: 0,
                    paused: false,
                    deferred: Vec::new(),
                    wake: false,
                    cut_until: 0,
                }
            })
            .collect();
        let mut world = World {
            bounds,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            arrivals: BTreeMap::new(),
            db,
            nodes,
            config,
            trace: VecDeque::new(),
        };
        for node in 0..bounds.nodes {
            let at = world.rng.below(3000) * MS;
            world.at(at, Ev::Gate { node });
            let at = world.rng.below(bounds.run_ms) * MS;
            world.at(at, Ev::Pause { node });
            if bounds.cuts {
                let at = world.rng.below(bounds.run_ms) * MS;
                world.at(at, Ev::Cut { node });
            }
        }
        if bounds.outages {
            let at = world.rng.below(bounds.run_ms) * MS;
            world.at(at, Ev::Outage);
        }
        world
    }

    fn at(&mut self, real_us: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((real_us.max(self.now), self.seq), ev);
    }

    fn after_ms(&mut self, ms: u64, ev: Ev) {
        self.at(self.now + ms * MS, ev);
    }

    fn delay_ms(&mut self) -> u64 {
        if self.rng.chance(3) {
            self.rng.below(self.bounds.slow_delay_ms + 1)
        } else {
            self.rng.below(self.bounds.max_delay_ms + 1)
        }
    }

    fn local(&self, node: usize) -> BootInstant {
        self.nodes[node].clock.instant(self.now)
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == 80 {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("{:>9.3}s {line}", self.now as f64 / 1e6));
    }

    /// Runs the schedule to its end; `Err` with the trace at the first broken invariant.
    fn run(&mut self) -> Result<(), String> {
        while let Some(((at, _), ev)) = self.queue.pop_first() {
            if at > self.bounds.run_ms * MS {
                break;
            }
            self.now = at;
            match ev.target() {
                Some(node) if self.nodes[node].paused => self.nodes[node].deferred.push(ev),
                _ => self.handle(ev),
            }
            self.check()?;
        }
        Ok(())
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Timer { node, generation } => {
                if self.nodes[node].generation != generation {
                    return;
                }
                let now = self.local(node);
                let n = &mut self.nodes[node];
                // The shell drops a request it gave up on (only a renewal is ever given up).
                n.req = None;
                n.machine.handle_timeout(now);
                self.shell(node);
            }
            Ev::Budget { node, req } => {
                if self.nodes[node].req != Some(req) {
                    return;
                }
                self.nodes[node].req = None;
                let now = self.local(node);
                let failed = Outcome::Failed(DbError::timeout("the query", Duration::ZERO));
                self.nodes[node].machine.handle_outcome(now, failed);
                self.shell(node);
            }
            Ev::Reply {
                node,
                req,
                session,
                outcome,
            } => self.reply(node, req, session, outcome),
            Ev::Arrive {
                node,
                req,
                session,
                op,
            } => self.arrive(node, req, session, op),
            Ev::Closed { node, session } => {
                if self.nodes[node].session == Some(session) {
                    self.nodes[node].session_closed = true;
                    if self.nodes[node].req.is_none() {
                        self.shell(node);
                    }
                }
            }
            Ev::Gate { node } => {
                self.gate(node);
                let next = 200 + self.rng.below(8000);
                self.after_ms(next, Ev::Gate { node });
            }
            Ev::Shell { node } => self.shell(node),
            Ev::Kill { node, serial } => {
                if self.nodes[node].engine == Some(serial) {
                    self.note(format!("shim {node}: engine of grant {serial} killed"));
                    self.nodes[node].engine = None;
                }
            }
            Ev::Pause { node } => {
                let length = 100 + self.rng.below(self.bounds.max_pause_ms);
                self.note(format!("shim {node}: paused for {length} ms"));
                self.nodes[node].paused = true;
                self.after_ms(length, Ev::Resume { node });
            }
            Ev::Resume { node } => {
                self.note(format!("shim {node}: resumed"));
                self.nodes[node].paused = false;
                // The run loop and the lock's task are separate threads: on resume either may act
                // first, so the run loop's pending work sometimes goes ahead of the shell's timer.
                let deferred = std::mem::take(&mut self.nodes[node].deferred);
                let (gates, others): (Vec<Ev>, Vec<Ev>) = deferred
                    .into_iter()
                    .partition(|ev| matches!(ev, Ev::Gate { .. }));
                // An engine that was paused with the host is not counted before the shell has
                // handled what is pending (see the module docs); one the run loop starts after
                // the resume is.
                if !gates.is_empty() && self.nodes[node].engine.is_none() && self.rng.chance(50) {
                    // The run loop first; the shell's work follows as a step of its own.
                    for ev in gates {
                        self.handle(ev);
                    }
                    for ev in others {
                        self.at(self.now, ev);
                    }
                    self.at(self.now, Ev::Shell { node });
                } else {
                    for ev in gates.into_iter().chain(others) {
                        self.handle(ev);
                    }
                    self.shell(node);
                }
                let next = self.rng.below(self.bounds.run_ms / 2);
                self.after_ms(next, Ev::Pause { node });
            }
            Ev::Outage => {
                self.note("database down: every session ends".into());
                self.db.up = false;
                self.db.advisory = None;
                for session in 0..self.db.sessions.len() {
                    let (node, alive) = self.db.sessions[session];
                    if alive {
                        self.db.sessions[session].1 = false;
                        let cut_left = self.nodes[node]
                            .cut_until
                            .saturating_sub(self.now)
                            .div_ceil(MS);
                        let notice = cut_left + self.rng.below(self.bounds.notice_ms + 1);
                        self.after_ms(
                            notice,
                            Ev::Closed {
                                node,
                                session: session as u64,
                            },
                        );
                    }
                }
                let length = 500 + self.rng.below(15_000);
                self.after_ms(length, Ev::Restart);
            }
            Ev::Restart => {
                self.note("database up".into());
                self.db.up = true;
                let next = self.rng.below(self.bounds.run_ms / 2);
                self.after_ms(next, Ev::Outage);
            }
            Ev::Cut { node } => {
                let length = 500 + self.rng.below(12_000);
                self.note(format!("shim {node}: network cut for {length} ms"));
                self.nodes[node].cut_until = self.now + length * MS;
                if let Some(session) = self.nodes[node].session {
                    if length >= LEASE_MS {
                        // The server's keepalives give up on a client silent for a lease.
                        self.after_ms(LEASE_MS, Ev::ServerDrops { node, session });
                    }
                }
                let next = length + self.rng.below(self.bounds.run_ms / 2);
                self.after_ms(next, Ev::Cut { node });
            }
            Ev::ServerDrops { node, session } => {
                if self.end_session(session) {
                    let left = self.nodes[node].cut_until.saturating_sub(self.now);
                    self.at(self.now + left, Ev::Closed { node, session });
                }
            }
        }
    }

    /// The database side of one request.
    fn arrive(&mut self, node: usize, req: u64, session: Option<u64>, op: Op) {
        let db_now = self.db.clock.at(self.now);
        let failed = |message: &str| {
            Outcome::Failed(DbError {
                message: message.into(),
                kind: ErrorKind::Transient,
            })
        };
        let mut opened = None;
        let outcome = if !self.db.up {
            failed("the database is down")
        } else if op == Op::Connect {
            self.db.sessions.push((node, true));
            opened = Some(self.db.sessions.len() as u64 - 1);
            Outcome::Done
        } else if !session.is_some_and(|s| self.db.sessions[s as usize].1) {
            failed("the connection is closed")
        } else {
            let session = session.unwrap_or_default();
            let info = |holder: usize| {
                Some(HolderInfo {
                    pid: holder as u32,
                    host: format!("host-{holder}"),
                    engine_version: "1.0.0".into(),
                    since_unix_ms: 0,
                    epoch: None,
                    expires_at: None,
                })
            };
            let lease_us = LEASE_MS * MS;
            match op {
                Op::Connect | Op::Disconnect => Outcome::Done,
                Op::EnsureTable | Op::NameSession(_) => Outcome::Done,
                Op::TryAdvisoryLock => match self.db.advisory {
                    None => {
                        self.db.advisory = Some(session);
                        Outcome::Answer(true)
                    }
                    Some(owner) => Outcome::Answer(owner == session),
                },
                Op::CheckAdvisoryLock => Outcome::Answer(self.db.advisory == Some(session)),
                Op::ReadLeaseHolder => Outcome::Holder(
                    self.db
                        .row
                        .as_ref()
                        .filter(|row| row.holder != node)
                        .and_then(|row| info(row.holder)),
                ),
                Op::ReadAdvisoryHolder => Outcome::Holder(
                    self.db
                        .advisory
                        .and_then(|s| info(self.db.sessions[s as usize].0)),
                ),
                Op::TakeLease(_) => match &mut self.db.row {
                    Some(row) if row.holder != node && row.expires_us >= db_now => {
                        Outcome::LeaseBusy {
                            holder: info(row.holder),
                        }
                    }
                    row => {
                        *row = Some(Row {
                            holder: node,
                            expires_us: db_now + lease_us,
                        });
                        Outcome::LeaseTaken { epoch: 1 }
                    }
                },
                Op::RenewLease => match &mut self.db.row {
                    Some(row) if row.holder == node && row.expires_us >= db_now => {
                        row.expires_us = db_now + lease_us;
                        Outcome::Answer(true)
                    }
                    _ => Outcome::Answer(false),
                },
                Op::ReleaseLease => {
                    if let Some(row) = &mut self.db.row {
                        if row.holder == node && row.expires_us > db_now {
                            row.expires_us = db_now;
                        }
                    }
                    Outcome::Done
                }
                Op::UnlockAdvisory => {
                    if self.db.advisory == Some(session) {
                        self.db.advisory = None;
                    }
                    Outcome::Done
                }
            }
        };
        self.note(format!("db: shim {node} {op:?} -> {outcome:?}"));
        if self.now < self.nodes[node].cut_until {
            if let Some(session) = opened {
                // Nobody will ever use it; the server drops it once silent for a lease.
                self.after_ms(LEASE_MS, Ev::ServerDrops { node, session });
            }
            return;
        }
        let delay = self.delay_ms();
        self.after_ms(
            delay,
            Ev::Reply {
                node,
                req,
                session: opened,
                outcome,
            },
        );
    }

    fn reply(&mut self, node: usize, req: u64, session: Option<u64>, outcome: Outcome) {
        if self.nodes[node].req != Some(req) {
            // Given up on: a session it opened is closed at once by the dropped connection.
            if let Some(session) = session {
                self.end_session(session);
            }
            return;
        }
        let n = &mut self.nodes[node];
        n.req = None;
        if let Some(session) = session {
            n.session = Some(session);
            n.session_closed = false;
        }
        let now = n.clock.instant(self.now);
        n.machine.handle_outcome(now, outcome);
        self.shell(node);
    }

    /// Kills a session on the server; true if it was alive.
    fn end_session(&mut self, session: u64) -> bool {
        let alive = std::mem::replace(&mut self.db.sessions[session as usize].1, false);
        if self.db.advisory == Some(session) {
            self.db.advisory = None;
        }
        alive
    }

    /// The I/O shell's loop (`postgres.rs`), on virtual time.
    fn shell(&mut self, node: usize) {
        loop {
            let now = self.local(node);
            let n = &mut self.nodes[node];
            if n.req.is_some() {
                return;
            }
            if n.session_closed && n.session.is_some() {
                n.machine
                    .handle_session_ended(now, "the server closed the connection");
            }
            self.sync(node);
            let n = &mut self.nodes[node];
            match n.machine.poll_op() {
                Some(Op::Disconnect) => {
                    if let Some(session) = n.session.take() {
                        n.session_closed = false;
                        // The server sees the connection close after what was sent on it before:
                        // a request given up on may still run.
                        let delay = self.delay_ms();
                        let last = self.arrivals.get(&session).copied().unwrap_or_default();
                        let at = (self.now + delay * MS).max(last);
                        self.at(at, Ev::ServerDrops { node, session });
                    }
                }
                Some(op) => {
                    self.send(node, op);
                    self.arm_timer(node);
                    return;
                }
                None if n.wake => {
                    n.wake = false;
                    n.machine.handle_wake(now);
                }
                None => {
                    self.arm_timer(node);
                    return;
                }
            }
        }
    }

    fn arm_timer(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.generation += 1;
        let generation = n.generation;
        if let Some(deadline) = n.machine.poll_timeout() {
            let at = n.clock.real_of(deadline);
            self.at(at, Ev::Timer { node, generation });
        }
    }

    fn send(&mut self, node: usize, op: Op) {
        self.seq += 1;
        let req = self.seq;
        let n = &mut self.nodes[node];
        n.req = Some(req);
        let budget = if op == Op::Connect {
            Duration::from_millis((LEASE_MS / 2).max(1000))
        } else {
            Duration::from_millis(RENEW_MS)
        };
        let give_up = n.clock.real_of(n.clock.instant(self.now) + budget);
        let session = n.session;
        let cut = self.now < n.cut_until;
        self.at(give_up, Ev::Budget { node, req });
        self.note(format!("shim {node}: sends {op:?}"));
        if !cut {
            let delay = self.delay_ms();
            let mut arrival = self.now + delay * MS;
            if let Some(session) = session {
                let last = self.arrivals.entry(session).or_default();
                arrival = arrival.max(*last);
                *last = arrival;
            }
            self.at(
                arrival,
                Ev::Arrive {
                    node,
                    req,
                    session,
                    op,
                },
            );
        }
    }

    /// `Task::sync`: the machine's events to the handle's phase, the phase's want to the machine;
    /// then the run loop reacts to what reached it.
    fn sync(&mut self, node: usize) {
        loop {
            let now = self.local(node);
            let n = &mut self.nodes[node];
            loop {
                while let Some(event) = n.machine.poll_event() {
                    if !deliver(&mut n.phase, event, &self.config) {
                        n.machine.handle_loss_unheard(now);
                    }
                }
                let want = desire(&mut n.phase);
                n.machine.handle_want(now, want);
                if !n.machine.has_events() {
                    break;
                }
            }
            if !self.run_loop(node) {
                return;
            }
        }
    }

    /// The run loop's side (`run.rs`): start the engine on a usable grant, give back a stale one,
    /// kill the engine by `kill_by` on a loss. True if it changed the phase.
    fn run_loop(&mut self, node: usize) -> bool {
        let now = self.local(node);
        let mut changed = false;
        while let Ok(event) = self.nodes[node].rx.try_recv() {
            let n = &mut self.nodes[node];
            match event {
                LockEvent::Granted { .. } => {
                    let usable = matches!(&n.phase,
                        Claim::Held(Holding::Database { usable_until, .. }) if now < *usable_until);
                    if usable {
                        n.engine = Some(n.serial);
                        let serial = n.serial;
                        self.note(format!("shim {node}: granted {serial}, engine starts"));
                    } else {
                        n.phase = Claim::Idle;
                        self.acquire(node);
                        changed = true;
                    }
                }
                LockEvent::Lost { kill_by, reason } => {
                    let serial = n.engine.unwrap_or_default();
                    let at = n.clock.real_of(kill_by);
                    self.note(format!("shim {node}: lost ({reason}), kill by {at}"));
                    if at <= self.now {
                        self.nodes[node].engine = None;
                    } else {
                        self.at(at, Ev::Kill { node, serial });
                    }
                }
                LockEvent::Waiting { .. } | LockEvent::Failed { .. } => {}
            }
        }
        changed
    }

    fn acquire(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.serial += 1;
        let want = Asked {
            me: HolderInfo {
                pid: node as u32,
                host: format!("host-{node}"),
                engine_version: "1.0.0".into(),
                since_unix_ms: 0,
                epoch: None,
                expires_at: None,
            },
            events: n.tx.clone(),
            serial: n.serial,
        };
        match &mut n.phase {
            Claim::Idle => n.phase = Claim::Waiting { want: Some(want) },
            Claim::Waiting { want: slot @ None } => *slot = Some(want),
            _ => {}
        }
        n.wake = true;
    }

    /// What the run loop asks of its lock now and then: the lock when no engine runs, giving it
    /// back (after its engine is reaped) or cancelling a wait.
    fn gate(&mut self, node: usize) {
        let roll = self.rng.below(100);
        let n = &mut self.nodes[node];
        let no_engine = n.engine.is_none();
        match &mut n.phase {
            Claim::Idle if no_engine => self.acquire(node),
            Claim::Waiting { want: None } if no_engine => self.acquire(node),
            Claim::Held(_) if roll < 25 => {
                n.engine = None;
                n.phase = Claim::Idle;
                n.wake = true;
                self.note(format!("shim {node}: engine stopped, lock given back"));
            }
            // A release change: the engine stops and another starts on the same grant, any time
            // later (after a head check, a restart back-off, or a pause of the whole host).
            Claim::Held(_) if roll < 50 && !no_engine => {
                n.engine = None;
                self.note(format!("shim {node}: engine stopped, lock kept"));
                return;
            }
            Claim::Held(_) if no_engine => {
                self.start_on_held(node);
                return;
            }
            Claim::Waiting { want } if want.is_some() && roll < 10 => {
                *want = None;
                n.wake = true;
            }
            _ => return,
        }
        if self.nodes[node].req.is_none() {
            self.shell(node);
        }
    }

    /// `run.rs`'s `start` on a lock already held: the engine starts only while the grant is
    /// usable; past its renew deadline nothing starts, and the loss the shell reports follows.
    fn start_on_held(&mut self, node: usize) {
        let now = self.local(node);
        let n = &mut self.nodes[node];
        let usable = !self.bounds.start_checks_usable
            || matches!(&n.phase,
                Claim::Held(Holding::Database { usable_until, .. }) if now < *usable_until);
        let serial = n.serial;
        if usable {
            n.engine = Some(serial);
            self.note(format!(
                "shim {node}: engine starts again on grant {serial}"
            ));
        } else {
            self.note(format!(
                "shim {node}: grant {serial} past its deadline, no start"
            ));
        }
    }

    fn check(&self) -> Result<(), String> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].engine.is_some() && !self.nodes[i].paused)
            .collect();
        if running.len() > 1 {
            return Err(self.broken(format!("engines of shims {running:?} run at once")));
        }
        if self.bounds.mode == LockMode::Advisory {
            return Ok(());
        }
        let db_now = self.db.clock.at(self.now);
        let owns_lease = |node: usize| {
            self.db
                .row
                .as_ref()
                .is_some_and(|row| row.holder == node && row.expires_us >= db_now)
        };
        for node in 0..self.nodes.len() {
            let n = &self.nodes[node];
            if n.paused || owns_lease(node) {
                continue;
            }
            if n.engine.is_some() {
                return Err(self.broken(format!(
                    "shim {node}'s engine runs without the lease ({:?})",
                    self.db.row
                )));
            }
            if n.machine.holds_at(self.local(node)) {
                return Err(self.broken(format!(
                    "shim {node} considers itself holder without the lease ({:?})",
                    self.db.row
                )));
            }
        }
        Ok(())
    }

    fn broken(&self, what: String) -> String {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        format!(
            "{what} at {:.3}s\nlast steps:\n{}",
            self.now as f64 / 1e6,
            trace.join("\n")
        )
    }
}

/// Runs `seeds` schedules; the first counterexample, with its seed, if any.
fn explore(bounds: Bounds, seeds: std::ops::Range<u64>) -> Result<(), String> {
    for seed in seeds {
        World::new(bounds, seed)
            .run()
            .map_err(|trace| format!("seed {seed}, {bounds:?}:\n{trace}"))?;
    }
    Ok(())
}

#[test]
fn lease_mode_never_lets_two_holders_act_at_once() {
    explore(Bounds::documented(LockMode::Lease), 0..500).unwrap();
}

#[test]
fn dual_mode_never_lets_two_holders_act_at_once() {
    explore(Bounds::documented(LockMode::Dual), 0..500).unwrap();
}

#[test]
fn advisory_mode_never_lets_two_holders_act_at_once_when_session_ends_are_noticed_in_time() {
    explore(Bounds::documented(LockMode::Advisory), 0..500).unwrap();
}

/// The model has teeth: past the documented drift bound it finds an overlap.
#[test]
fn clocks_drifting_past_the_bound_let_two_holders_overlap() {
    let bounds = Bounds {
        drift_ppm: 150_000,
        ..Bounds::documented(LockMode::Lease)
    };
    assert!(explore(bounds, 0..500).is_err());
}

/// The model has teeth: an engine started later on a held grant (after a release change or a
/// restart) without checking the grant is still usable overlaps the next holder after a pause.
#[test]
fn a_start_on_a_grant_past_its_deadline_lets_two_holders_overlap() {
    let bounds = Bounds {
        start_checks_usable: false,
        ..Bounds::documented(LockMode::Lease)
    };
    assert!(explore(bounds, 0..500).is_err());
}
