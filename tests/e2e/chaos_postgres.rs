//! Chaos across two hosts sharing a PostgreSQL lock: seeded random runs of release flips,
//! finality jumps, dropped node connections, engine crashes, shim SIGKILLs, hand-offs — and the
//! faults of the database lock: the database stopped and started again, one host's connections to
//! it reset or silenced (a [`TcpProxy`] per host), and a host paused past its lease (SIGSTOP of its
//! shim and engines together, as a cgroup freeze stops both).
//!
//! The two "hosts" are two `engine-shim run --lock postgres://…` sharing one data directory and one
//! events file (real hosts would not share a disk): fake-engine's exclusive lock on the data
//! directory turns any overlap of two engines into a `lock_failed` event, and the shared events file
//! puts every engine's life on one clock. No shim is given the file lock: the exclusion checked is
//! the database lock's alone. Most runs use a lease; some an advisory lock, some both (`dual`).
//!
//! Every run asserts:
//! - never two engines alive on the data directory: no overlap between lives seen in the events or
//!   through /proc, and no `lock_failed` — except while an engine we froze still existed. A paused
//!   host keeps what it holds, as a real one would keep `data.db/LOCK`, so the taker's engine may
//!   find the directory locked; nothing ran beside anything (FACTS.md: the paused-holder window);
//! - while a lease holder is frozen, the other host's engine comes (starts, or meets the frozen
//!   one's data-directory lock) only after the lease the database granted the frozen holder;
//! - a frozen host, thawed, kills its engines within [`RESUME_KILL_BOUND`] of SIGCONT;
//! - while the database is down, no engine runs once a lease has passed since it went down (the
//!   holder fences by `lease − renew` after its last renewal), and none starts until it is back;
//! - engines start on growing lock epochs (the same holder keeps its epoch; a new holder's is
//!   higher), except an engine resumed from a freeze, which is what the epoch is for;
//! - once the chain and the database settle, exactly the compatible engine runs, on one host, and
//!   every other shim says it starts nothing.
//!
//! `CHAOS_SEED` (decimal or 0x-hex) fixes the seed (default: from the clock, printed),
//! `CHAOS_PG_RUNS` the number of runs (default 40), `CHAOS_PG_JOBS` how many run at once (default
//! 3), and `CHAOS_ONLY=N` replays run N of a seed alone. A failure prints the seed, the run, its
//! plan and what happened. Runs with a database outage run alone (the outage would hit every run
//! using the database), holding [`pg::outage_guard`] against other test processes.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::chaos::{
    bury, children_of, crash_engines, descendants_of, engines_of_shim, note, observe, record_seen,
    run_all, seen_first_block, settle, Rng, Settings, SettleShim, SharedTrace, Stopping,
};
use crate::common::failover::{
    engines_of, freeze, is_stopped, lock_epoch, ms_between, nanos, read_lease, thaw, wait_gone_at,
    Mode, PgLock,
};
use crate::common::pg::{self, TcpProxy};
use crate::common::{
    describe_events, is_gone, sample_alive, unix_nanos_now, wait_gone, wait_until, EngineEvent,
    Host, Node, Shim,
};
use rustix::process::Signal;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// The versions engines may have, and the releases the chain may carry. 1.3.0 fits no engine;
/// 1.9.0 is kept for the settle marker.
const VERSIONS: [&str; 3] = ["1.0.0", "1.1.0", "1.2.0"];
const RELEASES: [&str; 4] = ["1.0.0", "1.1.0", "1.2.0", "1.3.0"];

/// The lease and renewal every run uses: short, so a takeover takes about a second. The holder's
/// kill deadline is `LEASE − RENEW` after its last renewal.
const LEASE: Duration = Duration::from_secs(1);
const RENEW: Duration = Duration::from_millis(200);

/// The grace every shim gives a stopping engine: short, so deaf engines are killed quickly.
const GRACE: &str = "300ms";
/// How long a handed-off shim stands by before it competes for the lock again.
const STANDBY: &str = "300ms";

/// From SIGCONT to a frozen engine seen gone: the resumed shim's wake-up, its kill, the kernel's
/// reaping, and our 5 ms look at /proc.
const RESUME_KILL_BOUND: Duration = Duration::from_secs(1);

/// A `lock_failed` is stamped after the failed attempt on the data directory: this much after the
/// frozen engine was seen gone it may still be one it caused.
const LOCK_FAILED_STAMP_SLACK: Duration = Duration::from_millis(50);

/// Share of runs with database outages (those run alone).
const OUTAGE_RUNS_PERCENT: u64 = 25;

// ---------------------------------------------------------------------------------------------
// A run's plan, drawn up front from its seed.

/// Which engines each of the two hosts has.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Primary and secondary alike: 1.0, 1.1 and 1.2 on both.
    Twins,
    /// One engine each, 1.0 and 1.1: every flip between them moves the work across hosts.
    Split,
    /// One host upgraded ahead of the other: 1.0 and 1.1, and 1.1 and 1.2.
    Skewed,
}

impl Layout {
    fn hosts(self) -> [Vec<&'static str>; 2] {
        match self {
            Layout::Twins => [VERSIONS.to_vec(), VERSIONS.to_vec()],
            Layout::Split => [vec![VERSIONS[0]], vec![VERSIONS[1]]],
            Layout::Skewed => [
                vec![VERSIONS[0], VERSIONS[1]],
                vec![VERSIONS[1], VERSIONS[2]],
            ],
        }
    }
}

/// Which host an op hits, decided when it runs: the interesting faults hit the holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The host whose shim has an engine now (host 0 if neither has).
    Holder,
    /// The other one.
    Other,
}

impl Target {
    fn draw(rng: &mut Rng) -> Target {
        if rng.percent(70) {
            Target::Holder
        } else {
            Target::Other
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Set the release, build one block carrying it, then let the hand-over run for a while
    /// (0 ms half the time, so flips also pile up on a hand-over still in progress).
    Flip(&'static str, u64),
    /// Build blocks.
    Build(u64),
    /// Stall finality, build `before` blocks, optionally flip the release and build `after`, then
    /// let finality jump to the head in one notification.
    FinalityJump {
        before: u64,
        flip: Option<&'static str>,
        after: u64,
    },
    /// Drop every connection to the node.
    DropConnections,
    /// SIGKILL whichever engine runs (a crash).
    CrashEngine,
    /// SIGKILL a host's shim and start it again.
    KillShim(Target),
    /// SIGUSR1 to a host's shim: stop, give the lock away, stand by.
    HandOff(Target),
    /// Let things happen for a while.
    Pause(u64),
    /// Stop PostgreSQL for `ms`, flipping the release halfway if `flip`.
    Outage { ms: u64, flip: Option<&'static str> },
    /// Reset a host's connections to the database, and refuse new ones, for `ms`.
    Sever { host: Target, ms: u64 },
    /// Silence a host's connections to the database (sockets open, no byte moves) for `ms`.
    Partition { host: Target, ms: u64 },
    /// Pause a host (SIGSTOP its shim and every child) for `ms`, longer than the lease; flip the
    /// release halfway if `flip`; on thaw, SIGCONT the engines before the shim if `engine_first`.
    Freeze {
        host: Target,
        ms: u64,
        engine_first: bool,
        flip: Option<&'static str>,
    },
}

#[derive(Debug)]
struct Plan {
    layout: Layout,
    mode: Mode,
    initial: &'static str,
    stopping: [Stopping; 3],
    ops: Vec<Op>,
    final_release: &'static str,
}

impl Plan {
    fn draw(seed: u64, index: usize) -> Plan {
        let mut rng = Rng::new(seed);
        let layout = match index % 3 {
            0 => Layout::Twins,
            1 => Layout::Split,
            _ => Layout::Skewed,
        };
        let mode = match rng.below(10) {
            0..=5 => Mode::Lease,
            6 | 7 => Mode::Advisory,
            _ => Mode::Dual,
        };
        let stopping = [(); 3].map(|_| Stopping::draw(&mut rng));
        let release = |rng: &mut Rng| {
            if rng.percent(10) {
                RELEASES[3]
            } else {
                rng.pick(&VERSIONS)
            }
        };
        let lease_ms = LEASE.as_millis() as u64;
        let initial = release(&mut rng);
        let count = rng.between(4, 9);
        let mut ops: Vec<Op> = (0..count)
            .map(|_| match rng.below(100) {
                0..=21 => {
                    let release = release(&mut rng);
                    let pause = if rng.percent(50) {
                        0
                    } else {
                        rng.between(10, 200)
                    };
                    Op::Flip(release, pause)
                }
                22..=26 => Op::Build(rng.between(1, 3)),
                27..=34 => Op::FinalityJump {
                    before: rng.between(0, 2),
                    flip: rng.percent(70).then(|| release(&mut rng)),
                    after: rng.between(1, 2),
                },
                35..=39 => Op::DropConnections,
                40..=46 => Op::CrashEngine,
                47..=54 => Op::KillShim(Target::draw(&mut rng)),
                55..=60 => Op::HandOff(Target::draw(&mut rng)),
                61..=65 => Op::Pause(rng.between(0, 300)),
                66..=75 => Op::Sever {
                    host: Target::draw(&mut rng),
                    ms: rng.between(100, 1500),
                },
                76..=82 => Op::Partition {
                    host: Target::draw(&mut rng),
                    ms: rng.between(200, 1500),
                },
                _ => Op::Freeze {
                    host: Target::draw(&mut rng),
                    ms: rng.between(lease_ms + 100, 2 * lease_ms + 200),
                    engine_first: rng.percent(50),
                    flip: rng.percent(40).then(|| release(&mut rng)),
                },
            })
            .collect();
        if rng.percent(OUTAGE_RUNS_PERCENT) {
            for _ in 0..rng.between(1, 2) {
                let at = rng.below(ops.len() as u64 + 1) as usize;
                let outage = Op::Outage {
                    ms: rng.between(200, 2500),
                    flip: rng.percent(40).then(|| release(&mut rng)),
                };
                ops.insert(at, outage);
            }
        }
        let final_release = if rng.percent(15) {
            RELEASES[3]
        } else {
            rng.pick(&VERSIONS)
        };
        Plan {
            layout,
            mode,
            initial,
            stopping,
            ops,
            final_release,
        }
    }

    fn has_outages(&self) -> bool {
        self.ops.iter().any(|op| matches!(op, Op::Outage { .. }))
    }

    /// fake-engine's flags for `version`: how it stops, and `epoch={lock_epoch}` so its events
    /// show the lock epoch it was started with.
    fn flags_of(&self, version: &str) -> Vec<String> {
        let i = VERSIONS.iter().position(|v| *v == version).unwrap();
        let mut flags = self.stopping[i].flags();
        flags.push("epoch={lock_epoch}".into());
        flags
    }
}

// ---------------------------------------------------------------------------------------------
// Sharing the database with the other runs and the other test processes

/// Runs without outages share the database; a run with outages has it alone: inside this process
/// through the read-write lock, across processes through the outage flock ([`pg::outage_guard`]).
#[derive(Default)]
struct DbAccess {
    turns: Arc<RwLock<()>>,
}

/// A run's right to use the database. Fields drop in order: the flock before the turn, so an
/// outage run waiting for its turn never waits for this process's own shared flock.
enum DbTicket {
    Shared {
        _flock: pg::PgSharedGuard,
        _turn: OwnedRwLockReadGuard<()>,
    },
    Alone {
        /// Starts the database again if the run left it stopped.
        _flock: pg::OutageGuard,
        _turn: OwnedRwLockWriteGuard<()>,
    },
}

impl DbAccess {
    async fn enter(&self, outages: bool) -> DbTicket {
        if outages {
            let turn = self.turns.clone().write_owned().await;
            let flock = tokio::task::spawn_blocking(pg::outage_guard).await.unwrap();
            DbTicket::Alone {
                _flock: flock,
                _turn: turn,
            }
        } else {
            let turn = self.turns.clone().read_owned().await;
            let flock = tokio::task::spawn_blocking(pg::pg_shared_guard)
                .await
                .unwrap();
            DbTicket::Shared {
                _flock: flock,
                _turn: turn,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running a plan

/// What a run exercised and measured, summed over runs so a passing test shows what it did.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    lease_runs: usize,
    advisory_runs: usize,
    dual_runs: usize,
    engine_starts: usize,
    /// Consecutive engine starts by different shim processes: the work moved.
    takeovers: usize,
    /// "lost the lock" lines: a holder gave up (renewal late, session gone, lease taken).
    locks_lost: usize,
    /// Of those, the ones that stopped a running engine.
    fences: usize,
    /// `lock_failed` events, every one against an engine we had frozen.
    lock_failed_while_frozen: usize,
    freezes: usize,
    /// Freezes of a shim that had an engine: the thawed shim had to kill it.
    frozen_engines: usize,
    /// Freezes during which the other host's engine came (started, or met the frozen one's lock).
    taken_over_while_frozen: usize,
    /// Slowest kill of a frozen engine after SIGCONT.
    max_resume_kill_ms: u64,
    outages: usize,
    /// Longest an engine was seen alive after the database went down.
    max_alive_into_outage_ms: u64,
    severs: usize,
    partitions: usize,
    handoffs: usize,
    shims_killed: usize,
    crashes: usize,
    engines_killed_after_grace: usize,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.lease_runs += other.lease_runs;
        self.advisory_runs += other.advisory_runs;
        self.dual_runs += other.dual_runs;
        self.engine_starts += other.engine_starts;
        self.takeovers += other.takeovers;
        self.locks_lost += other.locks_lost;
        self.fences += other.fences;
        self.lock_failed_while_frozen += other.lock_failed_while_frozen;
        self.freezes += other.freezes;
        self.frozen_engines += other.frozen_engines;
        self.taken_over_while_frozen += other.taken_over_while_frozen;
        self.max_resume_kill_ms = self.max_resume_kill_ms.max(other.max_resume_kill_ms);
        self.outages += other.outages;
        self.max_alive_into_outage_ms = self
            .max_alive_into_outage_ms
            .max(other.max_alive_into_outage_ms);
        self.severs += other.severs;
        self.partitions += other.partitions;
        self.handoffs += other.handoffs;
        self.shims_killed += other.shims_killed;
        self.crashes += other.crashes;
        self.engines_killed_after_grace += other.engines_killed_after_grace;
    }
}

/// A host of the run: its shim, what it wraps, and its own way to the database.
struct RunHost {
    versions: Vec<&'static str>,
    shim: Shim,
    proxy: TcpProxy,
}

/// Engines we froze: their pids, and from when (SIGSTOP) until when (seen gone after SIGCONT)
/// they may have held the data directory without running.
#[derive(Debug, Clone)]
struct FrozenWindow {
    pids: Vec<u32>,
    from: u128,
    until: u128,
}

struct Run<'a> {
    plan: &'a Plan,
    trace: SharedTrace,
    node: Node,
    host: Host,
    lock: PgLock,
    hosts: Vec<RunHost>,
    /// Shims SIGKILLed along the way: kept until the end for their logs (and so dropping them
    /// kills nothing early).
    retired: Vec<Shim>,
    frozen: Vec<FrozenWindow>,
    tally: Tally,
}

impl Run<'_> {
    fn spawn_shim(&self, n: usize, versions: &[&'static str], proxy: &TcpProxy) -> Shim {
        let lock_args = self.lock.args();
        let lock_args: Vec<&str> = lock_args.iter().map(String::as_str).collect();
        let mut builder = self
            .host
            .shim(&self.node)
            .lock(&proxy.url())
            .shim_args(&lock_args)
            .shim_args(&["--grace", GRACE, "--start-secs", "100ms"])
            .shim_args(&["--standby", STANDBY]);
        for version in versions {
            let flags = self.plan.flags_of(version);
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            builder = builder.engine_with(version, &flags);
        }
        let shim = builder.spawn();
        note(
            &self.trace,
            format!("  host {n}: shim pid {} {versions:?}", shim.proc.pid()),
        );
        shim
    }

    async fn do_op(&mut self, op: Op) {
        match op {
            Op::Flip(release, pause) => {
                self.node.set_release(release).await;
                self.node.new_blocks(1).await;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Op::Build(count) => {
                self.node.new_blocks(count).await;
            }
            Op::FinalityJump {
                before,
                flip,
                after,
            } => {
                self.node.stall_finality(true).await;
                if before > 0 {
                    self.node.new_blocks(before).await;
                }
                if let Some(release) = flip {
                    self.node.set_release(release).await;
                    self.node.new_blocks(after).await;
                }
                self.node.stall_finality(false).await;
            }
            Op::DropConnections => self.node.drop_connections().await,
            Op::CrashEngine => self.tally.crashes += crash_engines(&self.host, &self.trace),
            Op::KillShim(target) => self.kill_shim(self.resolve(target)).await,
            Op::HandOff(target) => {
                let n = self.resolve(target);
                note(&self.trace, format!("  SIGUSR1 to host {n}'s shim"));
                self.hosts[n].shim.proc.signal(Signal::USR1);
                self.tally.handoffs += 1;
            }
            Op::Pause(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Op::Outage { ms, flip } => self.outage(ms, flip).await,
            Op::Sever { host, ms } => {
                let host = self.resolve(host);
                note(
                    &self.trace,
                    format!("  severing host {host} from the database"),
                );
                let proxy = &self.hosts[host].proxy;
                // sever() waits (on the proxy's own thread) until every connection is closed.
                tokio::task::block_in_place(|| proxy.sever());
                self.watch_for(Duration::from_millis(ms), None).await;
                self.hosts[host].proxy.heal();
                self.tally.severs += 1;
            }
            Op::Partition { host, ms } => {
                let host = self.resolve(host);
                note(
                    &self.trace,
                    format!("  silencing host {host}'s database connections"),
                );
                self.hosts[host].proxy.freeze();
                self.watch_for(Duration::from_millis(ms), None).await;
                self.hosts[host].proxy.heal();
                self.tally.partitions += 1;
            }
            Op::Freeze {
                host,
                ms,
                engine_first,
                flip,
            } => {
                let host = self.resolve(host);
                self.freeze_host(host, ms, engine_first, flip).await
            }
        }
    }

    /// The host a target names now.
    fn resolve(&self, target: Target) -> usize {
        let holder = self
            .hosts
            .iter()
            .position(|h| !children_of(h.shim.proc.pid()).is_empty())
            .unwrap_or(0);
        match target {
            Target::Holder => holder,
            Target::Other => 1 - holder,
        }
    }

    /// Samples the engines every 20 ms for `span` (evidence for the overlap check), flipping the
    /// release halfway if `flip`; returns the sightings.
    async fn watch_for(&self, span: Duration, flip: Option<&str>) -> Vec<(u32, u128)> {
        let start = Instant::now();
        let mut flip = flip;
        let mut seen = Vec::new();
        loop {
            if let Some(release) = flip.filter(|_| start.elapsed() >= span / 2) {
                note(&self.trace, format!("  release {release} meanwhile"));
                self.node.set_release(release).await;
                self.node.new_blocks(1).await;
                flip = None;
            }
            let now = unix_nanos_now();
            seen.extend(self.host.alive().into_iter().map(|e| (e.pid, now)));
            if start.elapsed() >= span {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20).min(span - start.elapsed())).await;
        }
        record_seen(&self.trace, seen.clone());
        seen
    }

    async fn kill_shim(&mut self, n: usize) {
        let shim_pid = self.hosts[n].shim.proc.pid();
        let engines: Vec<u32> = engines_of_shim(shim_pid);
        record_seen(&self.trace, sample_alive(engines.iter().copied()));
        note(
            &self.trace,
            format!("  SIGKILL shim {n} pid {shim_pid} (its children: {engines:?})"),
        );
        self.hosts[n].shim.proc.signal(Signal::KILL);
        self.tally.shims_killed += 1;
        self.hosts[n].shim.proc.wait_exit().await;
        // Its engine dies with it (parent-death signal); every sighting until then is evidence.
        let what = format!("an engine of SIGKILLed shim {n} outlived it");
        bury(&engines, &self.trace, &what).await;
        let versions = self.hosts[n].versions.clone();
        let shim = self.spawn_shim(n, &versions, &self.hosts[n].proxy);
        seen_first_block(&shim).await;
        let old = std::mem::replace(&mut self.hosts[n].shim, shim);
        self.retired.push(old);
    }

    /// The database goes away for `ms`: once a lease has passed since, no engine may run, and
    /// none may start until it is back.
    async fn outage(&mut self, ms: u64, flip: Option<&str>) {
        let asked = Instant::now();
        pg::pg_stop().await;
        let down = unix_nanos_now();
        note(
            &self.trace,
            format!(
                "  PostgreSQL stopped ({} ms for pg_ctl stop)",
                asked.elapsed().as_millis()
            ),
        );
        let quiet_from = down + nanos(LEASE);
        let seen = self.watch_for(Duration::from_millis(ms), flip).await;
        let up_asked = unix_nanos_now();
        pg::pg_start().await;
        note(&self.trace, "  PostgreSQL started again".to_string());
        self.tally.outages += 1;
        if let Some(last) = seen.iter().map(|(_, at)| *at).max() {
            let into = last.saturating_sub(down) / 1_000_000;
            self.tally.max_alive_into_outage_ms =
                self.tally.max_alive_into_outage_ms.max(into as u64);
        }
        let late: Vec<String> = seen
            .iter()
            .filter(|(_, at)| *at >= quiet_from)
            .map(|(pid, at)| format!("pid {pid} at +{:.1} ms", ms_between(*at, down)))
            .collect();
        assert!(
            late.is_empty(),
            "engines ran more than a lease ({LEASE:?}) into a database outage: {late:?}\n{}",
            describe_events(&self.host.events())
        );
        let events = self.host.events();
        let started: Vec<&EngineEvent> = events
            .iter()
            .filter(|e| e.event == "start" && e.unix_nanos() >= quiet_from)
            .filter(|e| e.unix_nanos() <= up_asked)
            .collect();
        assert!(
            started.is_empty(),
            "an engine started while the database was down (from +{:.1} ms to +{:.1} ms):\n{}\n\
             events:\n{}",
            ms_between(quiet_from, down),
            ms_between(up_asked, down),
            describe(&started),
            describe_events(&events)
        );
    }

    /// Pauses host `n` (its shim, then every child of it) past the lease, then resumes it; the
    /// resumed shim must kill its engines within [`RESUME_KILL_BOUND`].
    async fn freeze_host(&mut self, n: usize, ms: u64, engine_first: bool, flip: Option<&str>) {
        let shim_pid = self.hosts[n].shim.proc.pid();
        let from = unix_nanos_now();
        // The shim first, and its children only once it is stopped (SIGSTOP takes effect
        // asynchronously): then it forks nothing more, and a child that has exited stays a zombie
        // its parent cannot reap, so the list stays true until the thaw.
        freeze(&[shim_pid]);
        wait_until("the host's shim to be stopped", || is_stopped(shim_pid)).await;
        // Guardians and engines alike: a host pause stops every process. A guardian the shim
        // started just before it stopped may still be starting its engine: stop what is there,
        // look again, until nothing new appears (a stopped guardian forks nothing more).
        let mut children: Vec<u32> = Vec::new();
        loop {
            let found: Vec<u32> = descendants_of(shim_pid)
                .into_iter()
                .filter(|pid| !children.contains(pid))
                .collect();
            if found.is_empty() {
                break;
            }
            signal_children(&found, Signal::STOP);
            wait_until("the host's engines to be stopped", || {
                found.iter().all(|&pid| is_stopped(pid) || is_gone(pid))
            })
            .await;
            children.extend(found);
        }
        note(
            &self.trace,
            format!("  froze host {n}: shim pid {shim_pid}, children {children:?}"),
        );
        self.tally.freezes += 1;
        // The lease the frozen holder was granted last, as the database has it. A renewal in
        // flight may still extend it, so the real expiry is this one or later.
        let frozen_lease = if self.lock.mode.uses_lease() && !children.is_empty() {
            read_lease(&self.lock.name)
                .await
                .filter(|row| row.pid == shim_pid)
        } else {
            None
        };
        self.watch_for(Duration::from_millis(ms), flip).await;

        let thawed_at = unix_nanos_now();
        if engine_first {
            signal_children(&children, Signal::CONT);
            thaw(&[shim_pid]);
        } else {
            thaw(&[shim_pid]);
            signal_children(&children, Signal::CONT);
        }
        let mut until = thawed_at;
        for &pid in &children {
            let gone_at = wait_gone_at(pid, "a frozen engine after SIGCONT").await;
            let after = ms_between(gone_at, thawed_at);
            note(
                &self.trace,
                format!("  thawed: child {pid} gone {after:.1} ms after SIGCONT"),
            );
            assert!(
                gone_at <= thawed_at + nanos(RESUME_KILL_BOUND),
                "frozen engine pid {pid} lived {after:.1} ms after SIGCONT (bound \
                 {RESUME_KILL_BOUND:?}): its shim did not fence at once on resume"
            );
            self.tally.max_resume_kill_ms =
                self.tally.max_resume_kill_ms.max(after.max(0.0) as u64);
            until = until.max(gone_at);
        }
        // No other engine may come (start, or find the directory locked) before that expiry:
        // starting one takes the lease.
        let events = self.host.events();
        let others: Vec<&EngineEvent> = events
            .iter()
            .filter(|e| e.event == "start" || e.event == "lock_failed")
            .filter(|e| !children.contains(&e.pid) && from <= e.unix_nanos())
            .collect();
        if let Some(row) = &frozen_lease {
            let early: Vec<&EngineEvent> = others
                .iter()
                .copied()
                .filter(|e| e.unix_nanos() < row.expires_at)
                .collect();
            assert!(
                early.is_empty(),
                "an engine came {:.1} ms before the lease of frozen host {n} expired \
                 (epoch {}):\n{}\nevents:\n{}",
                ms_between(row.expires_at, early[0].unix_nanos()),
                row.epoch,
                describe(&early),
                describe_events(&events)
            );
        }
        if !children.is_empty() {
            if others.iter().any(|e| e.unix_nanos() <= until) {
                self.tally.taken_over_while_frozen += 1;
            }
            self.tally.frozen_engines += 1;
            self.frozen.push(FrozenWindow {
                pids: children,
                from,
                until,
            });
        }
    }

    /// Every shim process of the run, the SIGKILLed ones included.
    fn all_shims(&self) -> impl Iterator<Item = &Shim> {
        self.hosts.iter().map(|h| &h.shim).chain(&self.retired)
    }

    /// Which shim process started each engine (an index into [`Self::all_shims`]).
    fn owners(&self) -> HashMap<u32, usize> {
        let mut owners = HashMap::new();
        for (i, shim) in self.all_shims().enumerate() {
            for pid in engines_of(shim) {
                owners.insert(pid, i);
            }
        }
        owners
    }

    /// The final checks on the whole run's events.
    fn check_events(&mut self) {
        let events = self.host.events();
        // The data directory was refused only while an engine we froze still existed.
        let slack = nanos(LOCK_FAILED_STAMP_SLACK);
        let (excused, unexcused): (Vec<&EngineEvent>, Vec<&EngineEvent>) = events
            .iter()
            .filter(|e| e.event == "lock_failed")
            .partition(|e| {
                self.frozen
                    .iter()
                    .any(|w| w.from <= e.unix_nanos() && e.unix_nanos() <= w.until + slack)
            });
        assert!(
            unexcused.is_empty(),
            "an engine found the data directory locked while no engine we froze existed:\n{}\n\
             frozen: {:?}\nevents:\n{}",
            describe(&unexcused),
            self.frozen,
            describe_events(&events)
        );
        self.tally.lock_failed_while_frozen = excused.len();

        let seen_alive = self.trace.lock().unwrap().seen_alive.clone();
        self.host.assert_lives_never_overlap(&seen_alive);

        // Starts in time order: who started them, and on which epoch.
        let owners = self.owners();
        let mut starts: Vec<&EngineEvent> = events.iter().filter(|e| e.event == "start").collect();
        starts.sort_by_key(|e| e.unix_nanos());
        self.tally.engine_starts = starts.len();
        self.tally.takeovers = starts
            .windows(2)
            .filter(|pair| owners.get(&pair[0].pid) != owners.get(&pair[1].pid))
            .count();
        if self.lock.mode.uses_lease() {
            // An engine that started after we froze it ran on a grant its shim had lost: the
            // window the epoch is handed down for. Every other start must not go back in epochs.
            let resumed = |e: &EngineEvent| {
                self.frozen
                    .iter()
                    .any(|w| w.pids.contains(&e.pid) && e.unix_nanos() >= w.from)
            };
            let checked: Vec<(&EngineEvent, u64)> = starts
                .iter()
                .filter(|e| !resumed(e))
                .map(|e| {
                    let epoch = lock_epoch(e).unwrap_or_else(|| {
                        panic!("a lease lock hands the engine its epoch: {}", e.raw)
                    });
                    (*e, epoch)
                })
                .collect();
            for pair in checked.windows(2) {
                let ((a, epoch_a), (b, epoch_b)) = (pair[0], pair[1]);
                let (owner_a, owner_b) = (owners.get(&a.pid), owners.get(&b.pid));
                let new_holder = owner_a.is_some() && owner_b.is_some() && owner_a != owner_b;
                assert!(
                    epoch_b > epoch_a || (!new_holder && epoch_b == epoch_a),
                    "engine pid {} (shim #{owner_b:?}) started on epoch {epoch_b} after engine \
                     pid {} (shim #{owner_a:?}) on epoch {epoch_a}: epochs must grow with every \
                     new holder and never go back\n{}",
                    b.pid,
                    a.pid,
                    describe_events(&events)
                );
            }
        }
    }

    fn count_logs(&mut self) {
        let (mut lost, mut fences, mut killed) = (0, 0, 0);
        for shim in self.all_shims() {
            for message in shim.messages() {
                if message.starts_with("lost the lock postgres") {
                    lost += 1;
                }
                if message.starts_with("lost the lock: ") && message.ends_with("(fencing)") {
                    fences += 1;
                }
                if message.contains("grace period: SIGKILL") {
                    killed += 1;
                }
            }
        }
        self.tally.locks_lost = lost;
        self.tally.fences = fences;
        self.tally.engines_killed_after_grace = killed;
    }
}

/// Some events, one a line, for failure messages.
fn describe(events: &[&EngineEvent]) -> String {
    let events: Vec<EngineEvent> = events.iter().map(|e| (*e).clone()).collect();
    describe_events(&events)
}

/// Sends `signal` to each of a shim's children. A child its running shim has reaped meanwhile is
/// skipped: its pid cannot have been reused that soon.
fn signal_children(children: &[u32], signal: Signal) {
    for &pid in children {
        let target = rustix::process::Pid::from_raw(pid as i32).expect("pid 0");
        match rustix::process::kill_process(target, signal) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => panic!("cannot send {signal:?} to pid {pid}: {e}"),
        }
    }
}

async fn run_plan(plan: &Plan, trace: SharedTrace, access: &DbAccess) -> Tally {
    let _db = access.enter(plan.has_outages()).await;
    let lock = PgLock {
        url: pg::pg_url(),
        mode: plan.mode,
        name: pg::unique_lock_name("chaos-pg"),
        lease: LEASE,
        renew: RENEW,
    };
    note(&trace, format!("lock {} ({} mode)", lock.name, lock.mode));
    let mut tally = Tally::default();
    match plan.mode {
        Mode::Lease => tally.lease_runs = 1,
        Mode::Advisory => tally.advisory_runs = 1,
        Mode::Dual => tally.dual_runs = 1,
    }
    let mut run = Run {
        plan,
        trace: trace.clone(),
        node: Node::start(&["--release", plan.initial]).await,
        host: Host::new(),
        lock,
        hosts: Vec::new(),
        retired: Vec::new(),
        frozen: Vec::new(),
        tally,
    };
    for (n, versions) in plan.layout.hosts().into_iter().enumerate() {
        let proxy = TcpProxy::to_pg();
        let shim = run.spawn_shim(n, &versions, &proxy);
        run.hosts.push(RunHost {
            versions,
            shim,
            proxy,
        });
    }
    for host in &run.hosts {
        seen_first_block(&host.shim).await;
    }

    for (step, op) in plan.ops.iter().enumerate() {
        note(&trace, format!("op {step}: {op:?}"));
        run.do_op(*op).await;
        observe(&run.host, &trace);
    }

    let settle_shims: Vec<SettleShim> = run
        .hosts
        .iter()
        .map(|h| SettleShim {
            versions: &h.versions,
            shim: &h.shim,
        })
        .collect();
    settle(
        &run.node,
        &run.host,
        &settle_shims,
        plan.final_release,
        &trace,
    )
    .await;

    // Stop every shim as systemd would; each exits 0 and leaves nothing running.
    for host in &run.hosts {
        host.shim.proc.signal(Signal::TERM);
    }
    for (n, host) in run.hosts.iter_mut().enumerate() {
        let status = host.shim.proc.wait_exit().await;
        assert!(status.success(), "shim {n} exited with {status} on SIGTERM");
    }
    for engine in run.host.events() {
        if engine.event == "start" {
            wait_gone(engine.pid, &format!("engine {}", engine.version)).await;
        }
    }
    run.check_events();
    run.count_logs();
    run.tally
}

// ---------------------------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_database_faults_and_paused_hosts_never_runs_two_engines() {
    // Fails (never passes) without a database.
    pg::pg_url();
    let settings = Settings::from_env("chaos-pg", "CHAOS_PG_RUNS", 40, "CHAOS_PG_JOBS", 3);
    let started = Instant::now();
    let access = Arc::new(DbAccess::default());
    let tally: Tally = run_all(&settings, Plan::draw, move |plan, trace| {
        let access = access.clone();
        async move { run_plan(&plan, trace, &access).await }
    })
    .await;
    eprintln!(
        "chaos-pg: {:.1} s; {} takeovers, {} fences ({} locks lost), {} lock_failed while frozen",
        started.elapsed().as_secs_f64(),
        tally.takeovers,
        tally.fences,
        tally.locks_lost,
        tally.lock_failed_while_frozen
    );
}

/// The plans themselves: every kind of fault is drawn, outage runs stay a minority, and the same
/// seed gives the same plan.
#[test]
fn plans_cover_every_fault_and_replay() {
    let plans: Vec<Plan> = (0..200)
        .map(|i| Plan::draw(common::chaos::run_seed(7, i), i))
        .collect();
    let any = |f: fn(&Op) -> bool| plans.iter().any(|p| p.ops.iter().any(f));
    assert!(any(|op| matches!(op, Op::Outage { .. })));
    assert!(any(|op| matches!(op, Op::Sever { .. })));
    assert!(any(|op| matches!(op, Op::Partition { .. })));
    assert!(any(|op| matches!(op, Op::Freeze { .. })));
    assert!(any(|op| matches!(op, Op::HandOff(Target::Other))));
    assert!(any(|op| matches!(op, Op::KillShim(Target::Holder))));
    let outage_runs = plans.iter().filter(|p| p.has_outages()).count();
    assert!((20..=80).contains(&outage_runs), "{outage_runs} of 200");
    for mode in [Mode::Lease, Mode::Advisory, Mode::Dual] {
        assert!(plans.iter().any(|p| p.mode == mode), "no {mode} run");
    }
    let freezes_past_the_lease = plans.iter().flat_map(|p| &p.ops).all(|op| match op {
        Op::Freeze { ms, .. } => Duration::from_millis(*ms) > LEASE,
        _ => true,
    });
    assert!(freezes_past_the_lease);
    let again = Plan::draw(common::chaos::run_seed(7, 5), 5);
    assert_eq!(format!("{again:?}"), format!("{:?}", plans[5]));
}
