//! The PostgreSQL test harness itself (tests/e2e/common/pg.rs) on the real test cluster: the proxy
//! forwards, severs and freezes; the cluster stops and starts; the password role needs its
//! password; a missing environment fails loudly.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use crate::common::pg::{self, psql, TcpProxy};
use crate::common::TIMEOUT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `psql -c SQL` succeeds and prints `expected`.
async fn assert_query(url: &str, sql: &str, password: Option<&str>, expected: &str) {
    let out = psql(url, sql, password).await;
    assert!(
        out.status.success(),
        "psql {url} -c {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);
}

/// `psql -c SQL` fails; returns its error output.
async fn assert_query_fails(url: &str, sql: &str, password: Option<&str>) -> String {
    let out = psql(url, sql, password).await;
    assert!(
        !out.status.success(),
        "psql {url} -c {sql:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The smallest PostgreSQL exchange: an SSLRequest, which the server answers with one byte
/// (`N`: no TLS) before any authentication.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

async fn raw_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    stream.set_nodelay(true).unwrap();
    stream
}

/// A fresh connection's SSLRequest answer; a reset may already fail the connect.
async fn fresh_ssl_request(addr: SocketAddr) -> std::io::Result<u8> {
    let mut stream = TcpStream::connect(addr).await?;
    ssl_request(&mut stream).await
}

async fn ssl_request(stream: &mut TcpStream) -> std::io::Result<u8> {
    stream.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8; 1];
    match stream.read(&mut answer).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(answer[0]),
    }
}

#[tokio::test]
async fn proxy_forwards_severs_and_heals() {
    let _pg = pg::pg_shared_guard();
    let proxy = TcpProxy::to_pg();
    assert_eq!(pg::url_via(&pg::pg_url(), proxy.addr()), proxy.url());

    let mut stream = raw_connect(proxy.addr()).await;
    assert_eq!(ssl_request(&mut stream).await.unwrap(), b'N');
    assert_query(&proxy.url(), "select 41 + 1", None, "42").await;

    proxy.sever();
    assert_eq!(proxy.connections(), 0);
    // The open connection was reset, not closed politely.
    let mut buf = [0u8; 1];
    let read = stream.read(&mut buf).await;
    assert_eq!(
        read.as_ref().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionReset),
        "expected a reset, got {read:?}"
    );
    // New connections are reset too.
    let fresh = fresh_ssl_request(proxy.addr()).await;
    assert!(fresh.is_err(), "{fresh:?}");
    assert_query_fails(&proxy.url(), "select 1", None).await;

    proxy.heal();
    assert_query(&proxy.url(), "select 41 + 1", None, "42").await;
    let mut stream = raw_connect(proxy.addr()).await;
    assert_eq!(ssl_request(&mut stream).await.unwrap(), b'N');
}

#[tokio::test]
async fn proxy_freeze_holds_bytes_until_heal() {
    let _pg = pg::pg_shared_guard();
    let proxy = TcpProxy::to_pg();
    let mut stream = raw_connect(proxy.addr()).await;
    assert_eq!(ssl_request(&mut stream).await.unwrap(), b'N');
    drop(stream);

    let mut stream = raw_connect(proxy.addr()).await;
    proxy.freeze();
    stream.write_all(&SSL_REQUEST).await.unwrap();
    let mut answer = [0u8; 1];
    // Nothing comes back while frozen, and the socket stays open (no error, no end of stream).
    let silent = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut answer)).await;
    assert!(silent.is_err(), "a frozen proxy answered: {silent:?}");
    // Only a timeout notices a silent partition: psql's connect_timeout here.
    let url = format!("{}?connect_timeout=1", proxy.url());
    assert_query_fails(&url, "select 1", None).await;

    proxy.heal();
    let n = tokio::time::timeout(TIMEOUT, stream.read(&mut answer))
        .await
        .expect("the held request was not answered after heal")
        .unwrap();
    assert_eq!((n, answer[0]), (1, b'N'));
    assert_query(&proxy.url(), "select 'healed'", None, "healed").await;
}

#[tokio::test]
async fn password_role_needs_its_password() {
    let _pg = pg::pg_shared_guard();
    let url = pg::pg_password_url();
    assert_query(
        &url,
        "select current_user || '@' || current_database()",
        Some(pg::PG_PASSWORD),
        "shim@shimdb",
    )
    .await;
    let error = assert_query_fails(&url, "select 1", None).await;
    assert!(error.contains("password"), "unexpected error: {error}");
    let error = assert_query_fails(&url, "select 1", Some("wrong")).await;
    assert!(
        error.contains("password authentication failed"),
        "unexpected error: {error}"
    );
    // Through the proxy too.
    let proxy = TcpProxy::to_pg();
    assert_query(
        &proxy.url_of(&url),
        "select current_user",
        Some(pg::PG_PASSWORD),
        "shim",
    )
    .await;
}

#[tokio::test]
async fn cluster_stops_and_starts_on_the_same_port() {
    let _outage = pg::outage_guard();
    assert!(pg::pg_isready().await, "the test cluster is not ready");
    let proxy = TcpProxy::to_pg();
    let mut stream = raw_connect(proxy.addr()).await;
    assert_eq!(ssl_request(&mut stream).await.unwrap(), b'N');

    pg::pg_stop().await;
    assert!(!pg::pg_running());
    assert!(!pg::pg_isready().await, "pg_isready after pg_stop");
    assert_query_fails(&pg::pg_url(), "select 1", None).await;
    // The proxy's upstream connection ended with the server; a new one is refused, then reset.
    let fresh = fresh_ssl_request(proxy.addr()).await;
    assert!(fresh.is_err(), "{fresh:?}");
    pg::pg_stop().await; // idempotent

    pg::pg_start().await;
    assert!(pg::pg_isready().await, "pg_isready after pg_start");
    assert_query(&pg::pg_url(), "select 'back'", None, "back").await;
    assert_query(&proxy.url(), "select 'back'", None, "back").await;
    pg::pg_start().await; // idempotent
    assert_eq!(pg::pg_query("select 1, 'two'").await, "1|two");
}

#[tokio::test]
async fn outage_guard_restarts_a_cluster_left_stopped() {
    {
        let _outage = pg::outage_guard();
        pg::pg_stop().await;
        assert!(!pg::pg_running());
    }
    let _pg = pg::pg_shared_guard();
    assert!(pg::pg_running());
    assert!(pg::pg_isready().await);
}

#[tokio::test]
#[should_panic(expected = "take outage_guard() before stopping PostgreSQL")]
async fn stopping_without_the_outage_guard_is_refused() {
    // Holding the shared side, no outage guard can be alive here, in this process or another.
    let _pg = pg::pg_shared_guard();
    pg::pg_stop().await;
}

#[test]
fn lock_names_are_unique_and_tame() {
    let a = pg::unique_lock_name("failover::Kill -9 the primary, twice over and over again");
    let b = pg::unique_lock_name("failover::Kill -9 the primary, twice over and over again");
    assert_ne!(a, b);
    assert!(a.len() <= 63, "{a}");
    assert!(
        a.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "{a}"
    );
    assert!(a.starts_with("failover--kill--9-the-primary--t"), "{a}");
}

#[test]
fn urls_are_rewritten_to_the_proxy() {
    let addr: SocketAddr = "127.0.0.1:4242".parse().unwrap();
    assert_eq!(
        pg::url_via("postgres://postgres@127.0.0.1:5432/postgres", addr),
        "postgres://postgres@127.0.0.1:4242/postgres"
    );
    assert_eq!(
        pg::url_via("postgresql://u:p@db.example:5432/x?sslmode=disable", addr),
        "postgresql://u:p@127.0.0.1:4242/x?sslmode=disable"
    );
    assert_eq!(
        pg::url_via("postgres://localhost", addr),
        "postgres://127.0.0.1:4242"
    );
}

/// Name of the test [`missing_url_fails_loudly`] runs in a child process.
const CHILD: &str = "pg_infra::child_pg_url_without_env";
/// Set in the child only, so the ignored test does nothing when run by hand.
const CHILD_MARK: &str = "ENGINE_SHIM_TEST_PG_INFRA_CHILD";

#[test]
#[ignore = "run in a child process by missing_url_fails_loudly"]
fn child_pg_url_without_env() {
    if std::env::var_os(CHILD_MARK).is_some() {
        let url = pg::pg_url();
        panic!("pg_url() returned {url} without {}", pg::URL_VAR);
    }
}

#[test]
fn missing_url_fails_loudly() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            CHILD,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_remove(pg::URL_VAR)
        .env(CHILD_MARK, "1")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "the child passed:\n{text}");
    assert!(
        text.contains(
            "ENGINE_SHIM_TEST_PG_URL is not set: run the tests through scripts/test, which starts PostgreSQL"
        ),
        "the child failed for another reason:\n{text}"
    );
    assert!(text.contains("1 failed"), "{text}");
}
