//! A real PostgreSQL for the end-to-end tests: the throwaway cluster `scripts/test` starts with
//! `scripts/pg-cluster` and announces through `ENGINE_SHIM_TEST_PG_*`; database outages (stop and
//! start that cluster); and a TCP proxy between a shim and the database for network cuts.
//!
//! - A test that needs PostgreSQL fails when the environment is missing ([`pg_url`] panics with the
//!   fix): it never passes without a database.
//! - Every test binary shares the one cluster, and tests run in parallel. A test that uses the
//!   database holds [`pg_shared_guard`] for its whole life; a test that stops the database holds
//!   [`outage_guard`] instead (an exclusive flock on the same file), so an outage never hits another
//!   test mid-test. Never take both in one test: the exclusive lock would wait for your own shared
//!   one forever.
//! - Tests share the database, not locks: each uses its own [`unique_lock_name`].
//!
//! By hand (as root; drop `runuser -u …` as another user):
//!
//! ```text
//! eval "$(scripts/pg-cluster start /tmp/pg)"
//! cargo test --test e2e pg_infra::
//! runuser -u "$ENGINE_SHIM_TEST_PG_USER" -- "$ENGINE_SHIM_TEST_PG_BIN/pg_ctl" \
//!     -D "$ENGINE_SHIM_TEST_PG_DIR/data" -w -t 60 stop -m fast        # what pg_stop() runs
//! runuser -u "$ENGINE_SHIM_TEST_PG_USER" -- "$ENGINE_SHIM_TEST_PG_BIN/pg_ctl" \
//!     -D "$ENGINE_SHIM_TEST_PG_DIR/data" -l "$ENGINE_SHIM_TEST_PG_DIR/postgres.log" -w -t 60 start
//! scripts/pg-cluster stop /tmp/pg
//! ```

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::TIMEOUT;

/// Superuser URL, trusted (no password).
pub const URL_VAR: &str = "ENGINE_SHIM_TEST_PG_URL";
/// URL of the role `shim`, which needs [`PG_PASSWORD`] (not in the URL).
pub const PASSWORD_URL_VAR: &str = "ENGINE_SHIM_TEST_PG_PASSWORD_URL";
pub const PORT_VAR: &str = "ENGINE_SHIM_TEST_PG_PORT";
/// The cluster's directory: `data/` (PGDATA), `postgres.log`, `outage.lock`, the unix socket.
pub const DIR_VAR: &str = "ENGINE_SHIM_TEST_PG_DIR";
/// The server's bin directory (`pg_ctl`, `pg_isready`, `psql`).
pub const BIN_VAR: &str = "ENGINE_SHIM_TEST_PG_BIN";
/// The OS user the server runs as (not root: PostgreSQL refuses to).
pub const USER_VAR: &str = "ENGINE_SHIM_TEST_PG_USER";

/// Password of the role in [`pg_password_url`] (scram-sha-256 over TCP).
pub const PG_PASSWORD: &str = "shim-secret";

/// How long `pg_ctl` may take to start or stop the cluster.
const PG_CTL_WAIT_S: &str = "60";

// ---------------------------------------------------------------------------------------------
// Environment

/// The panic message for a missing `ENGINE_SHIM_TEST_PG_*` variable.
pub fn missing_env_message(var: &str) -> String {
    format!("{var} is not set: run the tests through scripts/test, which starts PostgreSQL")
}

/// The value of `var`; panics with the fix when it is missing. Without any of the environment, the
/// message names the URL, the variable everyone knows.
fn required_env(var: &str) -> String {
    if var != URL_VAR {
        required_env(URL_VAR);
    }
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!("{}", missing_env_message(var)),
    }
}

/// `postgres://postgres@127.0.0.1:PORT/postgres` (superuser, no password needed).
pub fn pg_url() -> String {
    required_env(URL_VAR)
}

/// `postgres://shim@127.0.0.1:PORT/shimdb`: connecting needs [`PG_PASSWORD`].
pub fn pg_password_url() -> String {
    required_env(PASSWORD_URL_VAR)
}

pub fn pg_port() -> u16 {
    let port = required_env(PORT_VAR);
    port.parse()
        .unwrap_or_else(|_| panic!("{PORT_VAR}={port} is not a port number"))
}

/// The cluster's loopback address (what [`TcpProxy::to_pg`] forwards to).
pub fn pg_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], pg_port()))
}

pub fn pg_dir() -> PathBuf {
    PathBuf::from(required_env(DIR_VAR))
}

/// Path of a PostgreSQL program (`psql`, `pg_isready`, `pg_ctl`) of the cluster's version.
pub fn pg_bin(program: &str) -> PathBuf {
    PathBuf::from(required_env(BIN_VAR)).join(program)
}

pub fn pg_os_user() -> String {
    required_env(USER_VAR)
}

/// A lock name no other test (of this run or an earlier one on the same database) uses:
/// `<test, lowercased, at most 32 of [a-z0-9-]>-<pid>-<counter>-<time>`, at most 63 characters.
pub fn unique_lock_name(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let slug: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock before 1970")
        .as_nanos();
    format!(
        "{slug}-{}-{}-{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos as u32
    )
}

/// `url` with its host and port replaced by `addr` (user, database and parameters kept):
/// `postgres://u@127.0.0.1:5432/db` → `postgres://u@ADDR/db`.
pub fn url_via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("{url} is not a postgres:// URL"));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let userinfo = authority
        .rfind('@')
        .map(|at| &authority[..=at])
        .unwrap_or("");
    format!("{scheme}://{userinfo}{addr}{tail}")
}

// ---------------------------------------------------------------------------------------------
// Sharing the cluster between tests

/// Number of [`OutageGuard`]s alive in this process; [`pg_stop`] insists on one.
static OUTAGES_HELD: AtomicUsize = AtomicUsize::new(0);

fn open_guard_file() -> File {
    let path = pg_dir().join("outage.lock");
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

/// Held by a test that uses the database, for the whole test: outages wait until it drops.
pub struct PgSharedGuard {
    _file: File,
}

/// Takes the shared side of the outage flock (blocks while an outage test runs).
pub fn pg_shared_guard() -> PgSharedGuard {
    let file = open_guard_file();
    file.lock_shared()
        .expect("cannot take the shared PostgreSQL test lock");
    PgSharedGuard { _file: file }
}

/// Held by a test that stops the database: no other test uses it meanwhile. Dropping it starts
/// the cluster again if the test left it stopped (even when the test failed), then lets the
/// others in.
pub struct OutageGuard {
    _file: File,
}

/// Takes the exclusive side of the outage flock: blocks until every test holding
/// [`pg_shared_guard`] (in any process) has finished.
pub fn outage_guard() -> OutageGuard {
    let file = open_guard_file();
    file.lock()
        .expect("cannot take the exclusive PostgreSQL test lock");
    OUTAGES_HELD.fetch_add(1, Ordering::SeqCst);
    OutageGuard { _file: file }
}

impl Drop for OutageGuard {
    fn drop(&mut self) {
        if !pg_running() {
            match pg_ctl_start().output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "could not restart PostgreSQL after an outage test: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("could not restart PostgreSQL after an outage test: {e}"),
            }
        }
        OUTAGES_HELD.fetch_sub(1, Ordering::SeqCst);
        // The flock goes with the file, after the cluster is back.
    }
}

// ---------------------------------------------------------------------------------------------
// Stopping and starting the cluster

/// A server program run as the cluster's OS user, from the cluster's directory: through `runuser`
/// when we are root (PostgreSQL refuses to run as root), directly otherwise.
fn server_command(program: &str) -> Command {
    let program = pg_bin(program);
    let mut command = if rustix::process::geteuid().is_root() {
        let mut command = Command::new("runuser");
        command.arg("-u").arg(pg_os_user()).arg("--").arg(program);
        command
    } else {
        Command::new(program)
    };
    command.current_dir(pg_dir()).stdin(Stdio::null());
    command
}

fn pg_ctl(action: &str) -> Command {
    let mut command = server_command("pg_ctl");
    command
        .arg("-D")
        .arg(pg_dir().join("data"))
        .args(["-w", "-t", PG_CTL_WAIT_S, action]);
    command
}

fn pg_ctl_start() -> Command {
    let mut command = pg_ctl("start");
    command.arg("-l").arg(pg_dir().join("postgres.log"));
    command
}

fn pg_ctl_stop() -> Command {
    let mut command = pg_ctl("stop");
    command.args(["-m", "fast"]);
    command
}

/// True if the cluster's postmaster runs (`pg_ctl status`), whether or not it accepts connections.
pub fn pg_running() -> bool {
    let status = pg_ctl("status")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("cannot run pg_ctl status");
    status.success()
}

async fn run_pg_ctl(what: &str, command: Command) {
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let output = tokio::time::timeout(TIMEOUT * 3, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what}: pg_ctl did not finish"))
        .unwrap_or_else(|e| panic!("{what}: cannot run pg_ctl: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}\nlast lines of the server log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        server_log_tail(30)
    );
}

/// The last `n` lines of the cluster's log, for failure messages.
pub fn server_log_tail(n: usize) -> String {
    let path = pg_dir().join("postgres.log");
    let log = std::fs::read_to_string(&path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Stops the shared cluster (`pg_ctl stop -m fast`: connections are cut, the server exits). Hold
/// an [`outage_guard`]. A no-op if it is already stopped.
pub async fn pg_stop() {
    assert!(
        OUTAGES_HELD.load(Ordering::SeqCst) > 0,
        "take outage_guard() before stopping PostgreSQL: other tests share the cluster"
    );
    if pg_running() {
        run_pg_ctl("stopping PostgreSQL", pg_ctl_stop()).await;
    }
}

/// Starts the shared cluster again, on the same port; returns once it accepts connections. A no-op
/// if it runs.
pub async fn pg_start() {
    if !pg_running() {
        run_pg_ctl("starting PostgreSQL", pg_ctl_start()).await;
    }
}

/// True if the cluster accepts connections on its TCP port now (`pg_isready`).
pub async fn pg_isready() -> bool {
    let mut command = tokio::process::Command::new(pg_bin("pg_isready"));
    command
        .args(["-q", "-U", "postgres", "-h", "127.0.0.1", "-t", "5", "-p"])
        .arg(pg_port().to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
        .status()
        .await
        .expect("cannot run pg_isready")
        .success()
}

/// Runs `psql URL -c SQL` to completion: unaligned tuples only, stop on the first error, never a
/// password prompt or `~/.pgpass`; `password` goes in PGPASSWORD.
pub async fn psql(url: &str, sql: &str, password: Option<&str>) -> std::process::Output {
    let mut command = tokio::process::Command::new(pg_bin("psql"));
    command
        .args(["-XwqtA", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .arg(url)
        .env("PGPASSFILE", "/nonexistent/pgpass")
        .env("PGCONNECT_TIMEOUT", "5")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    tokio::time::timeout(TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("psql {url} -c {sql:?} did not finish within {TIMEOUT:?}"))
        .expect("cannot run psql")
}

/// Runs `sql` as the superuser on the test cluster; returns what it printed (rows one a line,
/// columns separated by `|`). Panics with psql's error if it fails.
pub async fn pg_query(sql: &str) -> String {
    let out = psql(&pg_url(), sql, None).await;
    assert!(
        out.status.success(),
        "psql -c {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

// ---------------------------------------------------------------------------------------------
// TCP proxy

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Forward both ways.
    Open,
    /// Forward nothing, keep every socket open (new connections wait too).
    Frozen,
    /// Reset every connection, reset new ones at once.
    Severed,
}

struct Shared {
    mode: watch::Sender<Mode>,
    /// Accepted connections whose sockets are still open.
    open: Mutex<usize>,
    closed: Condvar,
}

/// Counts one accepted connection until it drops.
struct Open(Arc<Shared>);

impl Open {
    fn new(shared: &Arc<Shared>) -> Open {
        *shared.open.lock().unwrap() += 1;
        Open(shared.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        *self.0.open.lock().unwrap() -= 1;
        self.0.closed.notify_all();
    }
}

/// A loopback TCP proxy to the database that a test can cut: put it between a shim and
/// PostgreSQL (`--lock` with [`TcpProxy::url`]) to simulate the network failing.
///
/// It runs on its own runtime thread, so it keeps forwarding while the test blocks (a
/// `std::process::Command`, a flock) or runs a single-threaded runtime. TCP_NODELAY is set on
/// every socket.
///
/// - [`TcpProxy::sever`]: every connection is reset (RST, both sides) and new ones are reset at
///   once, like a peer that is gone; it returns once every connection is closed.
/// - [`TcpProxy::freeze`]: no byte moves either way but every socket stays open, like a silent
///   partition. Only timeouts in the application see it: the proxy's own kernel still ACKs what
///   arrives and answers TCP keepalive probes, so keepalives (client's or server's) do not fire.
/// - [`TcpProxy::heal`]: forward again (held bytes flow; severed connections stay dead).
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TcpProxy {
    /// A proxy on 127.0.0.1 (a port the kernel picks) forwarding to the test cluster.
    pub fn to_pg() -> TcpProxy {
        TcpProxy::start(pg_addr())
    }

    /// A proxy on 127.0.0.1 (a port the kernel picks) forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> TcpProxy {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind the proxy's port");
        listener
            .set_nonblocking(true)
            .expect("cannot make the proxy's listener non-blocking");
        let addr = listener
            .local_addr()
            .expect("proxy listener has no address");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tcp-proxy")
            .enable_io()
            .enable_time()
            .build()
            .expect("cannot start the proxy's runtime");
        let shared = Arc::new(Shared {
            mode: watch::channel(Mode::Open).0,
            open: Mutex::new(0),
            closed: Condvar::new(),
        });
        runtime.spawn(accept_loop(listener, upstream, shared.clone()));
        TcpProxy {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The test cluster's superuser URL ([`pg_url`]) through this proxy.
    pub fn url(&self) -> String {
        url_via(&pg_url(), self.addr)
    }

    /// Any postgres URL (e.g. [`pg_password_url`]) through this proxy.
    pub fn url_of(&self, url: &str) -> String {
        url_via(url, self.addr)
    }

    /// Resets every connection and every new one until [`Self::heal`]; returns once every
    /// connection is closed.
    pub fn sever(&self) {
        self.shared.mode.send_replace(Mode::Severed);
        let closed = self.wait_all_closed();
        assert!(
            closed,
            "the proxy's connections did not close within {TIMEOUT:?} of sever()"
        );
    }

    /// Stops forwarding bytes (both ways, new connections too) while keeping every socket open.
    pub fn freeze(&self) {
        self.shared.mode.send_replace(Mode::Frozen);
    }

    /// Forwards again, after [`Self::sever`] or [`Self::freeze`].
    pub fn heal(&self) {
        self.shared.mode.send_replace(Mode::Open);
    }

    /// Number of client connections the proxy holds open now.
    pub fn connections(&self) -> usize {
        *self.shared.open.lock().unwrap()
    }

    fn wait_all_closed(&self) -> bool {
        let open = self.shared.open.lock().unwrap();
        let (open, wait) = self
            .shared
            .closed
            .wait_timeout_while(open, TIMEOUT, |open| *open > 0)
            .unwrap();
        drop(open);
        !wait.timed_out()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // A proxy that goes away cuts its connections like a sever; never block a test for long.
        self.shared.mode.send_replace(Mode::Severed);
        self.wait_all_closed();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A connection was cut (sever, or a reset or error on either side): reset both sides.
#[derive(Debug)]
struct Cut;

async fn accept_loop(listener: std::net::TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    let listener = TcpListener::from_std(listener).expect("cannot register the proxy listener");
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of descriptors or an aborted handshake: nothing to wait for but time.
                eprintln!("tcp proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Counted before the mode is read, so a sever() either sees this connection or this
        // loop sees the sever.
        let open = Open::new(&shared);
        if *shared.mode.borrow() == Mode::Severed {
            reset(&client);
            drop(client);
            drop(open);
            continue;
        }
        let _ = client.set_nodelay(true);
        tokio::spawn(connection(client, upstream, shared.mode.subscribe(), open));
    }
}

/// Serves one accepted connection; `open` counts it until both its sockets are closed.
async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    open: Open,
) {
    serve(client, upstream, mode).await;
    drop(open);
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    if wait_open(&mut mode).await.is_err() {
        reset(&client);
        return;
    }
    let connected = tokio::select! {
        connected = TcpStream::connect(upstream) => connected.ok(),
        _ = until_severed(&mut mode) => None,
    };
    let Some(mut server) = connected else {
        reset(&client);
        return;
    };
    let _ = server.set_nodelay(true);
    let result = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        tokio::try_join!(
            forward(client_read, server_write, mode.clone()),
            forward(server_read, client_write, mode.clone()),
        )
    };
    if result.is_err() {
        reset(&client);
        reset(&server);
    }
}

/// Makes the socket's close (when it drops) an abortive one: RST, unsent data discarded.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Copies `from` to `to` while the proxy is open; passes an end of stream on as a half close.
async fn forward(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut mode: watch::Receiver<Mode>,
) -> Result<(), Cut> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // While frozen nothing is read, so the bytes wait in the kernel like in a dead link.
        wait_open(&mut mode).await?;
        let n = tokio::select! {
            read = from.read(&mut buf) => read.map_err(|_| Cut)?,
            _ = until_not_open(&mut mode) => continue,
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        // Bytes read just before a freeze are held until the heal.
        wait_open(&mut mode).await?;
        tokio::select! {
            written = to.write_all(&buf[..n]) => written.map_err(|_| Cut)?,
            _ = until_severed(&mut mode) => return Err(Cut),
        }
    }
}

/// Waits while frozen; `Err` once severed (or the proxy is gone).
async fn wait_open(mode: &mut watch::Receiver<Mode>) -> Result<(), Cut> {
    match mode.wait_for(|mode| *mode != Mode::Frozen).await {
        Ok(mode) if *mode == Mode::Open => Ok(()),
        _ => Err(Cut),
    }
}

async fn until_not_open(mode: &mut watch::Receiver<Mode>) {
    let _ = mode.wait_for(|mode| *mode != Mode::Open).await;
}

async fn until_severed(mode: &mut watch::Receiver<Mode>) {
    let _ = mode.wait_for(|mode| *mode == Mode::Severed).await;
}
