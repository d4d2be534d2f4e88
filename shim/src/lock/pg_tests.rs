//! The PostgreSQL lock's stories on a real database.
//!
//! They need `ENGINE_SHIM_TEST_PG_URL` (a superuser URL; `scripts/test` starts a throwaway cluster
//! and sets it) and fail without it: a lock test that passes without a database proves nothing.
//! Every test uses its own lock name, so they run in parallel against one database. Durations are
//! short (a lease of one or two seconds) to keep the suite quick; what each test asserts about
//! time is read from the database's clock or the boot-time clock, never assumed from a sleep.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::watch;
use tokio_postgres::NoTls;

use super::*;

/// A guard against a hung test, not a synchronisation: every wait below ends on an event.
const PATIENCE: Duration = Duration::from_secs(30);

const MS: fn(u64) -> Duration = Duration::from_millis;

fn pg_url() -> String {
    std::env::var("ENGINE_SHIM_TEST_PG_URL")
        .expect("set ENGINE_SHIM_TEST_PG_URL; scripts/test starts a cluster")
}

/// A lock name no other test (and no earlier run against the same database) uses.
fn unique_name(label: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "test-{label}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn options(mode: LockMode, name: &str, lease: Duration, renew: Duration) -> PgOptions {
    PgOptions {
        mode,
        name: name.to_string(),
        lease,
        renew,
        password: None,
    }
}

fn pg_lock_at(url: &str, options: &PgOptions) -> Lock {
    Lock::new(LockSpec::parse_with(url, options).unwrap())
}

fn pg_lock(options: &PgOptions) -> Lock {
    pg_lock_at(&pg_url(), options)
}

/// Holder information with a made-up pid, so each side of a test is recognisable.
fn me(pid: u32, version: &str) -> HolderInfo {
    HolderInfo {
        pid,
        host: "test-host".into(),
        engine_version: version.into(),
        since_unix_ms: 0,
        epoch: None,
        expires_at: None,
    }
}

fn channel() -> (UnboundedSender<LockEvent>, UnboundedReceiver<LockEvent>) {
    mpsc::unbounded_channel()
}

/// The next event; `None` once the `Lock` dropped its sender.
async fn next(events: &mut UnboundedReceiver<LockEvent>) -> Option<LockEvent> {
    tokio::time::timeout(PATIENCE, events.recv())
        .await
        .expect("no lock event in time")
}

/// Acquires and waits for the grant, passing over `Waiting`s; returns the epoch and the channel
/// (on which a `Lost` would come).
async fn granted(lock: &mut Lock, me: HolderInfo) -> (Option<u64>, UnboundedReceiver<LockEvent>) {
    let (tx, mut rx) = channel();
    lock.acquire(me, tx);
    loop {
        match next(&mut rx).await {
            Some(LockEvent::Waiting { .. }) => continue,
            Some(LockEvent::Granted { epoch }) => {
                assert!(lock.is_held());
                return (epoch, rx);
            }
            other => panic!("expected Granted, got {other:?}"),
        }
    }
}

/// The first `Waiting` that names a holder, passing over `holder: None` (database not yet seen).
async fn waiting_for(events: &mut UnboundedReceiver<LockEvent>) -> HolderInfo {
    loop {
        match next(events).await {
            Some(LockEvent::Waiting {
                holder: Some(holder),
            }) => return holder,
            Some(LockEvent::Waiting { holder: None }) => continue,
            other => panic!("expected Waiting, got {other:?}"),
        }
    }
}

/// A plain connection for looking at the database the way an operator would.
async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg_url(), NoTls)
        .await
        .expect("cannot connect to ENGINE_SHIM_TEST_PG_URL");
    tokio::spawn(connection);
    client
}

/// The lease row as the database sees it: (epoch, expires_at, acquired_at, expires_at − now()).
async fn lease_row(db: &tokio_postgres::Client, name: &str) -> (i64, SystemTime, SystemTime, f64) {
    let row = db
        .query_one(
            "SELECT epoch, expires_at, acquired_at,
                    extract(epoch FROM expires_at - now())::float8
             FROM engine_shim_lease WHERE name = $1",
            &[&name],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// Terminates the server session of the shim that named itself after `holder`.
async fn terminate_session_of(db: &tokio_postgres::Client, holder: &HolderInfo) {
    let name = advisory::app_name(holder);
    let row = db
        .query_one(
            "SELECT count(*), bool_and(pg_terminate_backend(pid))
             FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap();
    let (count, all): (i64, Option<bool>) = (row.get(0), row.get(1));
    assert_eq!((count, all), (1, Some(true)), "session {name}");
}

/// The pid of the server session holding the advisory lock of `name`, as `pg_locks` says.
async fn advisory_holder_backend(db: &tokio_postgres::Client, name: &str) -> Option<i32> {
    let key = advisory::key(name) as u64;
    let (classid, objid) = ((key >> 32) as u32, key as u32);
    db.query_opt(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND classid = $1 AND objid = $2 AND objsubid = 1",
        &[&classid, &objid],
    )
    .await
    .unwrap()
    .map(|row| row.get(0))
}

#[tokio::test]
async fn lease_waiter_names_the_holder_and_takes_over_right_after_a_clean_release() {
    let name = unique_name("lease-release");
    let opts = options(LockMode::Lease, &name, MS(5000), MS(250));
    let (mut first, mut second) = (pg_lock(&opts), pg_lock(&opts));

    let (epoch, _first_events) = granted(&mut first, me(101, "1.0.0")).await;
    let first_epoch = epoch.expect("a lease has an epoch");

    let (tx, mut second_events) = channel();
    second.acquire(me(202, "1.1.0"), tx);
    let holder = waiting_for(&mut second_events).await;
    assert_eq!(
        (
            holder.pid,
            holder.host.as_str(),
            holder.engine_version.as_str()
        ),
        (101, "test-host", "1.0.0")
    );
    assert_eq!(holder.epoch, Some(first_epoch));
    assert!(holder.expires_at.is_some());
    assert!(holder.to_string().contains(&format!("epoch {first_epoch}")));
    assert!(!second.is_held());

    // A clean release ends the lease at once: the waiter need not wait out 5 s.
    first.release();
    assert!(!first.is_held());
    let released = std::time::Instant::now();
    assert!(first.settle(PATIENCE).await);
    loop {
        match next(&mut second_events).await {
            Some(LockEvent::Granted { epoch }) => {
                assert_eq!(epoch, Some(first_epoch + 1), "a new holder, a new epoch");
                break;
            }
            Some(LockEvent::Waiting { .. }) => continue,
            other => panic!("expected Granted, got {other:?}"),
        }
    }
    assert!(
        released.elapsed() < MS(2500),
        "took {:?}",
        released.elapsed()
    );

    // And back: every change of holder moves the epoch on.
    let (tx, mut first_events) = channel();
    first.acquire(me(101, "1.0.0"), tx);
    assert_eq!(
        waiting_for(&mut first_events).await.epoch,
        Some(first_epoch + 1)
    );
    second.release();
    loop {
        match next(&mut first_events).await {
            Some(LockEvent::Granted { epoch }) => {
                assert_eq!(epoch, Some(first_epoch + 2));
                break;
            }
            Some(LockEvent::Waiting { .. }) => continue,
            other => panic!("expected Granted, got {other:?}"),
        }
    }
    let db = admin().await;
    assert_eq!(lease_row(&db, &name).await.0 as u64, first_epoch + 2);
}

#[tokio::test]
async fn dropping_a_held_lock_gives_it_back_without_waiting_out_the_lease() {
    let name = unique_name("lease-drop");
    let opts = options(LockMode::Dual, &name, MS(10_000), MS(250));
    let mut holder = pg_lock(&opts);
    granted(&mut holder, me(151, "1.0.0")).await;
    let mut waiter = pg_lock(&opts);
    let (tx, mut events) = channel();
    waiter.acquire(me(152, "1.1.0"), tx);
    waiting_for(&mut events).await;

    drop(holder);
    let dropped = std::time::Instant::now();
    loop {
        match next(&mut events).await {
            Some(LockEvent::Granted { .. }) => break,
            Some(LockEvent::Waiting { .. }) => continue,
            other => panic!("expected Granted, got {other:?}"),
        }
    }
    assert!(dropped.elapsed() < MS(5000), "took {:?}", dropped.elapsed());
}

#[tokio::test]
async fn the_same_holder_keeps_its_epoch_when_it_takes_the_lock_again() {
    let name = unique_name("lease-same-holder");
    let opts = options(LockMode::Lease, &name, MS(2000), MS(500));
    let mut lock = pg_lock(&opts);
    let (epoch, _events) = granted(&mut lock, me(1, "1.0.0")).await;
    lock.release();
    assert!(lock.settle(PATIENCE).await);
    let (again, _events) = granted(&mut lock, me(1, "1.0.0")).await;
    assert_eq!(again, epoch);
}

#[tokio::test]
async fn a_vanished_holder_is_taken_over_only_once_its_lease_expired_by_the_database_clock() {
    let name = unique_name("lease-vanished");
    let opts = options(LockMode::Lease, &name, MS(2000), MS(500));
    let db = admin().await;
    let mut holder = pg_lock(&opts);
    let (epoch, _holder_events) = granted(&mut holder, me(301, "1.0.0")).await;

    // Killed: no release, no more renewals. The row says until when it is the holder's.
    holder.abandon().await;
    let (_, last_expiry, _, _) = lease_row(&db, &name).await;

    let mut taker = pg_lock(&opts);
    let (tx, mut events) = channel();
    taker.acquire(me(302, "1.1.0"), tx);
    let seen = waiting_for(&mut events).await;
    assert_eq!((seen.pid, seen.epoch), (301, epoch));
    let taken = loop {
        match next(&mut events).await {
            Some(LockEvent::Granted { epoch }) => break epoch,
            Some(LockEvent::Waiting { .. }) => continue,
            other => panic!("expected Granted, got {other:?}"),
        }
    };
    assert_eq!(taken, epoch.map(|e| e + 1));
    // The database took the row over at a moment past the dead holder's last expiry: a full
    // lease after its last renewal, by the database's own clock.
    let (_, _, acquired_at, _) = lease_row(&db, &name).await;
    assert!(
        acquired_at > last_expiry,
        "taken at {acquired_at:?}, lease ran until {last_expiry:?}"
    );
}

/// A TCP proxy in front of the database whose link can be cut like a network failure: no data
/// passes any more, in either direction, but no connection is closed (so nothing is noticed
/// except through timeouts), and new connections hang.
///
/// It can also *stall* the connections open at a moment: what they carry waits in the proxy, and
/// arrives late (in order) once resumed, while newer connections pass.
struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    /// Connections numbered up to this one are stalled (0: none).
    stalled_upto: watch::Sender<u64>,
    opened: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(false);
        let cut_rx = cut.subscribe();
        let (stalled_upto, _) = watch::channel(0);
        let stall_rx = stalled_upto.subscribe();
        let opened = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = Arc::clone(&opened);
        tokio::spawn(async move {
            let mut parked = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                let number = counter.fetch_add(1, Ordering::SeqCst) + 1;
                if *cut_rx.borrow() {
                    parked.push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let stall = (number, stall_rx.clone());
                tokio::spawn(pipe(
                    client_read,
                    server_write,
                    cut_rx.clone(),
                    stall.clone(),
                ));
                tokio::spawn(pipe(server_read, client_write, cut_rx.clone(), stall));
            }
        });
        Proxy {
            addr,
            cut,
            stalled_upto,
            opened,
        }
    }

    /// Holds back what the connections open now carry, until [`Proxy::resume`].
    fn stall_open_connections(&self) {
        self.stalled_upto
            .send_replace(self.opened.load(Ordering::SeqCst));
    }

    fn resume(&self) {
        self.stalled_upto.send_replace(0);
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// `url` with its host and port replaced by the proxy's.
    fn url_for(&self, url: &str) -> String {
        let config: tokio_postgres::Config = url.parse().unwrap();
        format!(
            "postgres://{}@{}/{}",
            config.get_user().unwrap(),
            self.addr,
            config.get_dbname().unwrap_or("postgres")
        )
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
    (number, mut stalled_upto): (u64, watch::Receiver<u64>),
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if stalled_upto.wait_for(|upto| number > *upto).await.is_err() {
            return;
        }
        tokio::select! {
            changed = cut.changed() => {
                if changed.is_err() {
                    return;
                }
                if *cut.borrow_and_update() {
                    // Keep both sockets open and silent until the test ends.
                    std::future::pending::<()>().await;
                }
            }
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}

fn database_addr() -> SocketAddr {
    let config: tokio_postgres::Config = pg_url().parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("the test database must be reached over TCP, not {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let ip = if host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        host
    };
    format!("{ip}:{port}").parse().unwrap()
}

#[tokio::test]
async fn a_holder_cut_off_from_the_database_fences_before_its_lease_can_expire() {
    let name = unique_name("lease-cut");
    let (lease, renew) = (MS(2000), MS(500));
    let opts = options(LockMode::Lease, &name, lease, renew);
    let proxy = Proxy::start(database_addr()).await;
    let db = admin().await;
    let mut holder = pg_lock_at(&proxy.url_for(&pg_url()), &opts);
    let (epoch, mut holder_events) = granted(&mut holder, me(401, "1.0.0")).await;

    let mut taker = pg_lock(&opts);
    let (tx, mut taker_events) = channel();
    taker.acquire(me(402, "1.1.0"), tx);
    assert_eq!(waiting_for(&mut taker_events).await.pid, 401);

    proxy.cut();
    let kill_by = match next(&mut holder_events).await {
        Some(LockEvent::Lost { reason, kill_by }) => {
            assert!(reason.contains("no renewal succeeded"), "{reason}");
            kill_by
        }
        other => panic!("expected Lost, got {other:?}"),
    };
    assert!(!holder.is_held());
    // The database still has the lease running, for longer than the holder has left to kill
    // its engine, by at least one renew. (Read the database first: both only shrink.)
    let (_, _, _, db_left) = lease_row(&db, &name).await;
    let kill_left = kill_by.remaining();
    assert!(kill_left <= lease - renew, "{kill_left:?}");
    assert!(
        kill_left + renew <= Duration::from_secs_f64(db_left.max(0.0)),
        "kill within {kill_left:?}, the database keeps the lease {db_left}s more"
    );

    // The taker gets it only after the holder's kill deadline, with the next epoch.
    loop {
        match next(&mut taker_events).await {
            Some(LockEvent::Granted { epoch: taken }) => {
                assert_eq!(taken, epoch.map(|e| e + 1));
                break;
            }
            Some(LockEvent::Waiting { .. }) => continue,
            other => panic!("expected Granted, got {other:?}"),
        }
    }
    assert!(BootInstant::now() > kill_by);
    // Nothing more for the lost grant.
    drop(holder);
    assert_eq!(next(&mut holder_events).await, None);
}

/// A shim gives the lock back (its old engine is gone) while its database connection stalls, so
/// the release goes unanswered; its next engine, of another version, asks for the lock at once,
/// renaming the session stalls too, and a new session takes the lease. When the stalled release
/// lands, it ends that lease: the shim must not be holding a usable grant on it then.
#[tokio::test]
async fn a_release_that_lands_late_never_ends_a_lease_the_holder_is_using() {
    let name = unique_name("lease-late-release");
    let (lease, renew) = (MS(6000), MS(1500));
    let opts = options(LockMode::Lease, &name, lease, renew);
    let proxy = Proxy::start(database_addr()).await;
    let db = admin().await;
    let mut holder = pg_lock_at(&proxy.url_for(&pg_url()), &opts);
    let (_, _old_events) = granted(&mut holder, me(501, "1.0.0")).await;

    proxy.stall_open_connections();
    holder.release();
    // The release runs out of time: the worker is done with it, unsure whether it landed.
    assert!(holder.settle(PATIENCE).await);
    let (_, expiry_before, _, _) = lease_row(&db, &name).await;
    let (tx, mut events) = channel();
    holder.acquire(me(501, "1.1.0"), tx);
    // A new session takes the lease again: its expiry moves on.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while lease_row(&db, &name).await.1 <= expiry_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease was never taken again"
        );
        tokio::time::sleep(MS(20)).await;
    }
    // Now the stalled release lands and ends that lease.
    proxy.resume();
    while lease_row(&db, &name).await.3 > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled release never landed"
        );
        tokio::time::sleep(MS(20)).await;
    }
    let granted = std::iter::from_fn(|| events.try_recv().ok())
        .any(|event| matches!(event, LockEvent::Granted { .. }));
    assert!(
        !(granted && holder.is_held() && holder.usable()),
        "the holder uses a grant on a lease the database has ended: another shim may take it"
    );
}

#[tokio::test]
async fn a_lease_outlives_its_session_the_holder_reconnects_and_renews() {
    let name = unique_name("lease-reconnect");
    let opts = options(LockMode::Lease, &name, MS(2000), MS(250));
    let db = admin().await;
    let mut holder = pg_lock(&opts);
    let who = me(501, "1.0.0");
    let (_epoch, mut events) = granted(&mut holder, who.clone()).await;
    let (_, before, _, _) = lease_row(&db, &name).await;

    terminate_session_of(&db, &who).await;
    // Renewals go on over a new session: the expiry moves past a full lease from before.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, expiry, _, _) = lease_row(&db, &name).await;
        if expiry > before + MS(2000) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease was not renewed"
        );
        tokio::time::sleep(MS(100)).await;
    }
    assert!(holder.is_held());
    assert!(events.try_recv().is_err(), "no Lost");
}

#[tokio::test]
async fn advisory_waiter_is_granted_when_the_holders_session_is_terminated() {
    let name = unique_name("advisory-terminate");
    let opts = options(LockMode::Advisory, &name, MS(2000), MS(250));
    let db = admin().await;
    let mut holder = pg_lock(&opts);
    let (epoch, mut holder_events) = granted(&mut holder, me(601, "1.0.0")).await;
    assert_eq!(epoch, None, "an advisory lock has no epoch");
    let backend = advisory_holder_backend(&db, &name)
        .await
        .expect("the advisory lock is in pg_locks");

    let mut waiter = pg_lock(&opts);
    let (tx, mut waiter_events) = channel();
    waiter.acquire(me(602, "1.1.0"), tx);
    let seen = waiting_for(&mut waiter_events).await;
    assert_eq!(
        (seen.pid, seen.engine_version.as_str(), seen.host.as_str()),
        (601, "1.0.0", "test-host")
    );

    let terminated: bool = db
        .query_one("SELECT pg_terminate_backend($1)", &[&backend])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    // The holder hears its session end at once, and must kill its engine at once.
    match next(&mut holder_events).await {
        Some(LockEvent::Lost { reason, kill_by }) => {
            assert!(reason.contains("session"), "{reason}");
            assert_eq!(kill_by.remaining(), Duration::ZERO);
        }
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(!holder.is_held());
    loop {
        match next(&mut waiter_events).await {
            Some(LockEvent::Granted { epoch }) => {
                assert_eq!(epoch, None);
                break;
            }
            Some(LockEvent::Waiting { .. }) => continue,
            other => panic!("expected Granted, got {other:?}"),
        }
    }
    let now_holding = advisory_holder_backend(&db, &name).await;
    assert!(now_holding.is_some_and(|pid| pid != backend));

    // A clean release unlocks: nothing is left in pg_locks.
    waiter.release();
    assert!(waiter.settle(PATIENCE).await);
    assert_eq!(advisory_holder_backend(&db, &name).await, None);
}

#[tokio::test]
async fn dual_needs_the_advisory_lock_and_the_lease_and_is_lost_with_either() {
    let name = unique_name("dual");
    let opts = options(LockMode::Dual, &name, MS(2000), MS(250));
    let db = admin().await;
    let mut first = pg_lock(&opts);
    let (epoch, _first_events) = granted(&mut first, me(701, "1.0.0")).await;
    let epoch = epoch.expect("dual has the lease's epoch");
    assert!(advisory_holder_backend(&db, &name).await.is_some());

    let mut second = pg_lock(&opts);
    let (tx, mut second_events) = channel();
    second.acquire(me(702, "1.1.0"), tx);
    // The lease row names the holder, with its epoch.
    let seen = waiting_for(&mut second_events).await;
    assert_eq!((seen.pid, seen.epoch), (701, Some(epoch)));

    // The first holder dies: its session (and advisory lock) goes at once, but its lease runs
    // on, so the second holds the advisory lock and still waits for the lease.
    first.abandon().await;
    let (_, last_expiry, _, _) = lease_row(&db, &name).await;
    let got = loop {
        match next(&mut second_events).await {
            Some(LockEvent::Granted { epoch }) => break epoch,
            Some(LockEvent::Waiting { .. }) => continue,
            other => panic!("expected Granted, got {other:?}"),
        }
    };
    assert_eq!(got, Some(epoch + 1));
    let (_, _, acquired_at, _) = lease_row(&db, &name).await;
    assert!(acquired_at > last_expiry);

    // Losing the advisory session loses the dual lock, at once.
    let backend = advisory_holder_backend(&db, &name).await.unwrap();
    db.query_one("SELECT pg_terminate_backend($1)", &[&backend])
        .await
        .unwrap();
    match next(&mut second_events).await {
        Some(LockEvent::Lost { kill_by, .. }) => assert_eq!(kill_by.remaining(), Duration::ZERO),
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(!second.is_held());
}

/// A whole-process pause (SIGSTOP, a VM freeze), as seen from inside: nothing in the process
/// runs for longer than the lease. The lock worker's thread and the runtime's one thread are both
/// blocked, so the worker, its timer, its connection and the shell are all frozen, as they would be.
#[tokio::test(flavor = "current_thread")]
async fn a_holder_frozen_past_its_lease_reports_the_loss_first_thing_on_waking() {
    let name = unique_name("lease-frozen");
    let (lease, renew) = (MS(1000), MS(250));
    let opts = options(LockMode::Lease, &name, lease, renew);
    let mut holder = pg_lock(&opts);
    let (_epoch, mut events) = granted(&mut holder, me(801, "1.0.0")).await;

    let pause = lease + MS(500);
    holder.worker.as_ref().expect("a worker").freeze_for(pause);
    std::thread::sleep(pause);

    match next(&mut events).await {
        Some(LockEvent::Lost { reason, kill_by }) => {
            assert_eq!(
                kill_by.remaining(),
                Duration::ZERO,
                "the deadline passed while frozen"
            );
            assert!(reason.contains("no renewal succeeded"), "{reason}");
        }
        other => panic!("expected Lost before anything else, got {other:?}"),
    }
    assert!(!holder.is_held());
    // A later acquisition starts afresh.
    let (again, _events) = granted(&mut holder, me(801, "1.0.0")).await;
    assert!(again.is_some());
}

#[tokio::test]
async fn a_cancelled_waiter_sends_nothing_more_and_gives_back_what_it_got() {
    let name = unique_name("lease-cancel");
    let opts = options(LockMode::Dual, &name, MS(2000), MS(250));
    let db = admin().await;
    let mut holder = pg_lock(&opts);
    let (_epoch, _holder_events) = granted(&mut holder, me(901, "1.0.0")).await;

    let mut waiter = pg_lock(&opts);
    let (tx, mut cancelled) = channel();
    waiter.acquire(me(902, "1.1.0"), tx);
    waiting_for(&mut cancelled).await;
    waiter.cancel();
    assert_eq!(next(&mut cancelled).await, None);
    assert!(waiter.settle(PATIENCE).await);

    // The lock is free for a third once the holder lets go: the cancelled waiter took nothing.
    holder.release();
    assert!(holder.settle(PATIENCE).await);
    let mut third = pg_lock(&opts);
    granted(&mut third, me(903, "1.2.0")).await;
    assert!(!waiter.is_held());
    let backend = advisory_holder_backend(&db, &name).await;
    assert!(backend.is_some());
}

#[tokio::test]
async fn a_cancel_after_the_grant_was_sent_keeps_the_lock_so_the_grant_stays_true() {
    let name = unique_name("lease-cancel-late");
    let opts = options(LockMode::Lease, &name, MS(2000), MS(250));
    let mut lock = pg_lock(&opts);
    let (tx, mut events) = channel();
    lock.acquire(me(1001, "1.0.0"), tx);
    // Wait until the grant is sent (is_held turns true with it), without receiving it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !lock.is_held() {
        assert!(tokio::time::Instant::now() < deadline, "never granted");
        tokio::time::sleep(MS(10)).await;
    }
    lock.cancel();
    assert!(lock.is_held());
    assert!(matches!(
        next(&mut events).await,
        Some(LockEvent::Granted { epoch: Some(_) })
    ));
}

#[tokio::test]
async fn an_unreachable_database_means_waiting_never_a_grant() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://nobody@127.0.0.1:{port}/nothing");
    let opts = options(
        LockMode::Lease,
        &unique_name("unreachable"),
        MS(1000),
        MS(100),
    );
    let mut lock = pg_lock_at(&url, &opts);
    let (tx, mut events) = channel();
    lock.acquire(me(1101, "1.0.0"), tx);
    assert_eq!(
        next(&mut events).await,
        Some(LockEvent::Waiting { holder: None })
    );
    // Retrying with back-off, quietly: the same "unknown holder" is not reported again.
    assert!(
        tokio::time::timeout(MS(1500), events.recv()).await.is_err(),
        "nothing more while the database stays away"
    );
    assert!(!lock.is_held());
    lock.cancel();
    assert_eq!(next(&mut events).await, None);
}

#[tokio::test]
async fn a_missing_database_fails_naming_the_fix() {
    let config: tokio_postgres::Config = pg_url().parse().unwrap();
    let url = format!(
        "postgres://{}@{}/engine_shim_no_such_database",
        config.get_user().unwrap(),
        database_addr()
    );
    let opts = options(LockMode::Lease, &unique_name("no-db"), MS(2000), MS(500));
    let mut lock = pg_lock_at(&url, &opts);
    let (tx, mut events) = channel();
    lock.acquire(me(1201, "1.0.0"), tx);
    match next(&mut events).await {
        Some(LockEvent::Failed { error }) => {
            assert!(error.contains("create the database"), "{error}")
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(next(&mut events).await, None);
}

/// The password travels only through the options (from the environment or a file), and a wrong
/// one is refused naming where it comes from, without showing it.
#[tokio::test]
async fn the_password_comes_from_the_options_and_is_never_shown() {
    let url = std::env::var("ENGINE_SHIM_TEST_PG_PASSWORD_URL").expect(
        "set ENGINE_SHIM_TEST_PG_PASSWORD_URL (a role with password shim-secret); scripts/test \
         starts a cluster",
    );
    let name = unique_name("password");
    let mut opts = options(LockMode::Lease, &name, MS(2000), MS(500));

    opts.password = Some(Password::new("not-the-password"));
    let mut wrong = pg_lock_at(&url, &opts);
    let (tx, mut events) = channel();
    wrong.acquire(me(1301, "1.0.0"), tx);
    match next(&mut events).await {
        Some(LockEvent::Failed { error }) => {
            assert!(error.contains(PASSWORD_ENV), "{error}");
            assert!(!error.contains("not-the-password"), "{error}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }

    opts.password = None;
    let mut none = pg_lock_at(&url, &opts);
    let (tx, mut events) = channel();
    none.acquire(me(1302, "1.0.0"), tx);
    match next(&mut events).await {
        Some(LockEvent::Failed { error }) => assert!(error.contains(PASSWORD_ENV), "{error}"),
        other => panic!("expected Failed, got {other:?}"),
    }

    opts.password = Some(Password::new("shim-secret"));
    let mut right = pg_lock_at(&url, &opts);
    let (epoch, _events) = granted(&mut right, me(1303, "1.0.0")).await;
    assert!(epoch.is_some());
    assert!(!right.spec().to_string().contains("shim-secret"));
}

#[test]
fn a_postgres_lock_outside_a_runtime_fails_instead_of_hanging() {
    let opts = options(LockMode::Lease, "x", MS(2000), MS(500));
    let mut lock = pg_lock_at("postgres://nobody@127.0.0.1:1/x", &opts);
    let (tx, mut events) = channel();
    lock.acquire(me(1, "1.0.0"), tx);
    match events.try_recv() {
        Ok(LockEvent::Failed { error }) => assert!(error.contains("tokio runtime"), "{error}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(!lock.is_held());
}

/// The shim's runtime is busy for seconds (a worker thread blocked in a slow file read on a
/// loaded host) just as the database stops answering: the lock must still fence at its renew
/// deadline, in time to kill the engine before the database can let anyone else in. The test's
/// runtime has one thread and this test blocks it; the proxy runs on it too, so nothing reaches
/// the database meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn a_holder_fences_on_time_while_the_shims_runtime_is_blocked() {
    let name = unique_name("lease-busy");
    let (lease, renew) = (MS(2000), MS(500));
    let opts = options(LockMode::Lease, &name, lease, renew);
    let proxy = Proxy::start(database_addr()).await;
    let mut holder = pg_lock_at(&proxy.url_for(&pg_url()), &opts);
    let (_epoch, mut events) = granted(&mut holder, me(901, "1.0.0")).await;

    proxy.cut();
    // Blocks this runtime's only thread until the loss arrives (or, without it, for far longer
    // than the lease): the lock's worker must not need this thread to fence.
    let blocked_from = std::time::Instant::now();
    let lost = loop {
        match events.try_recv() {
            Ok(event) => break Some(event),
            Err(_) if blocked_from.elapsed() > MS(20_000) => break None,
            Err(_) => std::thread::sleep(MS(10)),
        }
    };
    match lost {
        Some(LockEvent::Lost { reason, kill_by }) => {
            assert!(reason.contains("no renewal succeeded"), "{reason}");
            assert!(
                kill_by.remaining() > Duration::ZERO,
                "the loss came after its kill deadline: {reason}"
            );
        }
        other => panic!(
            "expected Lost while the shim's runtime was blocked, got {other:?} after {:?}",
            blocked_from.elapsed()
        ),
    }
    assert!(!holder.is_held());
}

#[tokio::test]
async fn a_holder_keeps_renewing_a_short_lease() {
    let name = unique_name("lease-short");
    let opts = options(LockMode::Lease, &name, MS(1000), MS(200));
    let mut holder = pg_lock(&opts);
    let (_, mut events) = granted(&mut holder, me(601, "1.0.0")).await;
    let quiet = tokio::time::timeout(MS(3000), events.recv()).await;
    assert!(quiet.is_err(), "{quiet:?}");
    assert!(holder.is_held() && holder.usable());
}

/// The dead man's switch: an engine attached to a held database lock has its kill deadline armed
/// at once (by the lock, not by any handling of a loss), and a clean release disarms it.
#[tokio::test]
async fn an_attached_engine_is_armed_while_the_lock_is_held_and_disarmed_by_its_release() {
    use crate::deadline_kill::{testing::watched_sleep, LeaseLink};
    let name = unique_name("deadman");
    let mut lock = pg_lock(&options(LockMode::Lease, &name, MS(2000), MS(400)));
    let (_sleeper, watch) = watched_sleep();
    // Nothing held: nothing to arm.
    lock.attach(LeaseLink::new(Arc::clone(&watch)));
    assert!(!watch.is_armed());
    let (_, _events) = granted(&mut lock, me(1, "1.0.0")).await;
    lock.attach(LeaseLink::new(Arc::clone(&watch)));
    assert!(
        watch.is_armed(),
        "the lock's kill deadline is armed at once"
    );
    lock.release();
    assert!(!watch.is_armed(), "a clean release disarms it");
    assert!(lock.settle(PATIENCE).await);
}
