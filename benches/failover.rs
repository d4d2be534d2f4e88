//! Failover and hand-off across instances, and what holding a PostgreSQL lock costs the database.
//!
//! - failover after SIGKILL: a primary runs the engine, a secondary waits; the primary's shim is
//!   SIGKILLed (clock read just before the signal) → the secondary's engine `start` event. Then the
//!   killed instance is started again (it waits) and the roles swap. For the file lock, the
//!   PostgreSQL advisory lock, the lease and both (dual). Targets: file ≤ 0.1 s, advisory ≤ 1.5 s,
//!   lease ≤ lease + renew.
//! - clean hand-off: `engine-shim handoff --control-socket` to the holder (clock read just before
//!   it is run) → the other instance's engine `start` event; back and forth. Target ≤ 0.5 s.
//! - renew cost: one holder (then a holder and a waiter) per lock mode, each mode in a database
//!   of its own, at the default lease 5 s / renew 1 s; the database's transactions and updated
//!   rows per second in that database (`pg_stat_database`) over a window.
//!
//! The failover and hand-off series run with the tests' lease 2 s / renew 400 ms. Needs the test
//! cluster's environment (`scripts/pg-cluster`; `scripts/test` exports it before the benches).

#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)] // the end-to-end harness: each bench uses its own subset
mod common;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use common::failover::{hand_off, millis, Mode, PgLock};
use common::pg::{self, pg_query};
use common::{unix_nanos_now, Host, HostShimBuilder, Node, Shim};
use rustix::process::Signal;

/// How long a handed-off instance asks for no lock.
const STANDBY: &str = "1500ms";

/// The lock an instance is given.
#[derive(Debug, Clone, Copy)]
enum Backend {
    File,
    Pg(Mode),
}

impl Backend {
    fn name(self) -> String {
        match self {
            Backend::File => "file lock".into(),
            Backend::Pg(mode) => format!("PostgreSQL {mode}"),
        }
    }
}

/// A pair of instances on one host, sharing one lock.
struct Pair {
    lock: Option<PgLock>,
    host: Host,
    node: Node,
    /// Instances killed so far: kept, because dropping a `Shim` kills every engine of its version.
    dead: Vec<Shim>,
    next_id: usize,
}

impl Pair {
    async fn new(backend: Backend) -> Pair {
        let lock = match backend {
            Backend::File => None,
            Backend::Pg(mode) => Some(PgLock::new(&format!("bench-failover-{mode}"), mode)),
        };
        Pair {
            lock,
            host: Host::new(),
            node: Node::start(&["--release", "1.0.0"]).await,
            dead: Vec::new(),
            next_id: 0,
        }
    }

    /// A new instance listening on its own control socket. After a hand-off it stands by for
    /// [`STANDBY`]: longer than the other instance's poll (renew) and the advisory settling, or it
    /// could take its own lock back before the other one looks.
    fn spawn(&mut self) -> (Shim, PathBuf) {
        self.next_id += 1;
        let socket = self.host.dir.path().join(format!("i{}.sock", self.next_id));
        let builder: HostShimBuilder = match &self.lock {
            None => self
                .host
                .shim(&self.node)
                .engine("1.0.0")
                .shim_args(&["--grace", "2s"]),
            Some(lock) => lock.instance(&self.host, &self.node, "1.0.0"),
        };
        let socket_arg = socket.display().to_string();
        let shim = builder
            .shim_args(&["--control-socket", &socket_arg, "--standby", STANDBY])
            .spawn();
        (shim, socket)
    }

    fn starts(&self) -> usize {
        self.host
            .events()
            .iter()
            .filter(|e| e.event == "start")
            .count()
    }
}

/// Waits a pseudo-random part of one renew interval (the clock's nanoseconds), so that what
/// follows falls at a random phase of the instances' renewals and polls: the loops would otherwise
/// act right after a waiter's look, and measure one phase only.
async fn random_phase() {
    let renew = common::failover::RENEW.as_nanos();
    tokio::time::sleep(Duration::from_nanos((unix_nanos_now() % renew) as u64)).await;
}

/// `rounds` failovers after SIGKILL of the holder's shim.
async fn failover_after_kill(backend: Backend, rounds: usize) -> Vec<Duration> {
    let mut pair = Pair::new(backend).await;
    let (mut holder, _) = pair.spawn();
    pair.host.wait_event("start", "1.0.0", 1).await;
    let (mut waiter, _) = pair.spawn();
    waiter.wait_message(0, &["waiting for the lock"]).await;
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        // A host dies at any moment between two renewals, not just after the waiter's last look.
        random_phase().await;
        let starts = pair.starts();
        let killed_at = unix_nanos_now();
        holder.proc.signal(Signal::KILL);
        let start = pair.host.wait_event("start", "1.0.0", starts + 1).await;
        holder.proc.wait_exit().await;
        samples.push(Duration::from_nanos(
            (start.unix_nanos().saturating_sub(killed_at)) as u64,
        ));
        pair.dead.push(holder);
        holder = waiter;
        (waiter, _) = pair.spawn();
        waiter.wait_message(0, &["waiting for the lock"]).await;
    }
    pair.host.assert_no_lock_failed();
    pair.host.assert_lives_never_overlap(&[]);
    drop((waiter, holder));
    samples
}

/// `rounds` clean hand-offs, back and forth between two instances.
async fn clean_hand_off(backend: Backend, rounds: usize) -> Vec<Duration> {
    let mut pair = Pair::new(backend).await;
    let (a, a_socket) = pair.spawn();
    pair.host.wait_event("start", "1.0.0", 1).await;
    let (b, b_socket) = pair.spawn();
    b.wait_message(0, &["waiting for the lock"]).await;
    let instances = [(a, a_socket), (b, b_socket)];
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (from, socket) = &instances[round % 2];
        let starts = pair.starts();
        let mark = from.mark();
        let socket = socket.display().to_string();
        // The operator asks at any moment of the waiter's polling, not just after its first look.
        random_phase().await;
        let asked_at = unix_nanos_now();
        let (code, answer) = hand_off(&["--control-socket", &socket]).await;
        assert_eq!(code, 0, "{answer}");
        let start = pair.host.wait_event("start", "1.0.0", starts + 1).await;
        samples.push(Duration::from_nanos(
            (start.unix_nanos().saturating_sub(asked_at)) as u64,
        ));
        // The handed-off instance competes again after its stand-by: wait until it waits.
        let (over, _) = from
            .wait_message(mark, &["stand-by after the hand-off is over"])
            .await;
        from.wait_message(over, &["waiting for the lock"]).await;
    }
    pair.host.assert_no_lock_failed();
    pair.host.assert_lives_never_overlap(&[]);
    drop(instances);
    samples
}

/// The database's counters for one database.
#[derive(Debug, Clone, Copy)]
struct DbCounters {
    xacts: u64,
    tup_updated: u64,
}

async fn db_counters(db: &str) -> DbCounters {
    let row = pg_query(&format!(
        "SELECT xact_commit + xact_rollback, tup_updated FROM pg_stat_database WHERE datname = '{db}'"
    ))
    .await;
    let mut fields = row.split('|').map(|f| f.parse::<u64>().unwrap_or(0));
    DbCounters {
        xacts: fields.next().unwrap_or(0),
        tup_updated: fields.next().unwrap_or(0),
    }
}

/// Creates database `db` on the test cluster unless it exists; returns its superuser URL.
async fn bench_database(db: &str) -> String {
    let exists = pg_query(&format!("SELECT 1 FROM pg_database WHERE datname = '{db}'")).await;
    if exists.is_empty() {
        pg_query(&format!("CREATE DATABASE {db}")).await;
    }
    let url = pg::pg_url();
    let (server, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{server}/{db}")
}

/// Per-second rates of each database's counters over `window`.
async fn rates(dbs: &[String], window: Duration) -> Vec<(f64, f64)> {
    let mut before = Vec::new();
    for db in dbs {
        before.push(db_counters(db).await);
    }
    tokio::time::sleep(window).await;
    let mut out = Vec::new();
    for (db, before) in dbs.iter().zip(before) {
        let after = db_counters(db).await;
        let secs = window.as_secs_f64();
        out.push((
            (after.xacts - before.xacts) as f64 / secs,
            (after.tup_updated - before.tup_updated) as f64 / secs,
        ));
    }
    out
}

/// What one holder, and one waiter, cost the database per second, for each mode at the defaults.
async fn renew_cost(window: Duration) {
    let modes = [Mode::Lease, Mode::Advisory, Mode::Dual];
    let node = Node::start(&["--release", "1.0.0"]).await;
    let mut dbs = Vec::new();
    let mut locks = Vec::new();
    for mode in modes {
        let db = format!("engine_shim_bench_{mode}");
        let url = bench_database(&db).await;
        dbs.push(db);
        let mut lock = PgLock::new(&format!("bench-renew-{mode}"), mode).via(&url);
        lock.lease = Duration::from_secs(5);
        lock.renew = Duration::from_secs(1);
        locks.push(lock);
    }
    // Statistics reach pg_stat_database when a backend goes idle, at most once a second: let the
    // start-up's queries land before the window opens.
    let settle = Duration::from_millis(2500);
    let hosts: Vec<Host> = modes.iter().map(|_| Host::new()).collect();
    let mut holders = Vec::new();
    for (lock, host) in locks.iter().zip(&hosts) {
        holders.push(lock.instance(host, &node, "1.0.0").spawn());
    }
    for host in &hosts {
        host.wait_event("start", "1.0.0", 1).await;
    }
    tokio::time::sleep(settle).await;
    let holder_rates = rates(&dbs, window).await;
    let mut waiters = Vec::new();
    for (lock, host) in locks.iter().zip(&hosts) {
        waiters.push(lock.instance(host, &node, "1.0.0").spawn());
    }
    for waiter in &waiters {
        waiter.wait_message(0, &["waiting for the lock"]).await;
    }
    tokio::time::sleep(settle).await;
    let both_rates = rates(&dbs, window).await;
    for (i, mode) in modes.iter().enumerate() {
        let (holder_xacts, holder_updates) = holder_rates[i];
        let (both_xacts, _) = both_rates[i];
        println!(
            "renew cost, PostgreSQL {mode} (lease {}, renew {}): one holder {holder_xacts:.2} \
             transactions/s ({holder_updates:.2} rows updated/s); a waiting instance adds \
             {:.2} transactions/s ({:.0} s window)",
            millis(locks[i].lease),
            millis(locks[i].renew),
            both_xacts - holder_xacts,
            window.as_secs_f64()
        );
    }
    drop((waiters, holders));
}

fn main() {
    let rounds = support::iterations(10, 2);
    let window = if support::quick() {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(20)
    };
    support::runtime().block_on(async {
        let _pg = pg::pg_shared_guard();
        let lease = common::failover::LEASE;
        let renew = common::failover::RENEW;
        for (backend, target) in [
            (Backend::File, "≤ 100 ms".to_string()),
            (Backend::Pg(Mode::Advisory), "≤ 1.5 s".to_string()),
            (
                Backend::Pg(Mode::Lease),
                format!("≤ lease + renew = {} ms", (lease + renew).as_millis()),
            ),
            (
                Backend::Pg(Mode::Dual),
                format!("≤ lease + renew = {} ms", (lease + renew).as_millis()),
            ),
        ] {
            let samples = failover_after_kill(backend, rounds).await;
            support::report_latency(
                &format!(
                    "failover after SIGKILL, {} (lease {}, renew {}; kill → secondary's engine started)",
                    backend.name(),
                    millis(lease),
                    millis(renew)
                ),
                &samples,
                &target,
            );
        }
        for backend in [
            Backend::File,
            Backend::Pg(Mode::Lease),
            Backend::Pg(Mode::Advisory),
            Backend::Pg(Mode::Dual),
        ] {
            let samples = clean_hand_off(backend, rounds).await;
            support::report_latency(
                &format!(
                    "clean hand-off, {} (renew {}; `engine-shim handoff` run → other engine started)",
                    backend.name(),
                    millis(renew)
                ),
                &samples,
                "≤ 500 ms",
            );
        }
        renew_cost(window).await;
    });
}
