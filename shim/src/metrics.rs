//! Metrics and health over plain HTTP, for Prometheus and for Kubernetes probes.
//!
//! An engine that waits for its release has no health endpoint yet, so a probe pointed at it
//! would kill a correctly waiting pod: the shim answers for it. The run loop records what it
//! observes in [`Metrics`]; a tiny HTTP/1.1 responder (no framework: read-only routes) serves
//! `GET /metrics` in the Prometheus text format and the probes `GET /livez`, `GET /readyz` and
//! `GET /health` (decided in [`probes`]).

mod probes;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::accept::AcceptLoop;
use crate::gate::Notice;
use crate::version::SemVer;

pub use probes::TURN_EVERY;
use probes::{Ages, Route};

/// What the shim knows right now; cheap to update from the run loop.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_block: Option<(u64, Instant)>,
    release: Option<SemVer>,
    running: Option<SemVer>,
    lock_held: bool,
    lock_epoch: Option<u64>,
    engine_starts: u64,
    fences: u64,
    hand_offs: u64,
    no_compatible_engine: bool,
    /// The event loop's last turn, for `/livez`.
    last_turn: Option<Instant>,
    /// Wall-clock time of the last processed block, for alerts on a stale node: Prometheus
    /// compares it with its own `time()`, which a monotonic instant could not be.
    last_block_at: Option<SystemTime>,
    engine_crashes: u64,
    engine_should_run: bool,
    /// The release at the last processed block could not be used: nothing starts or stops
    /// while it lasts, and blocks keep arriving, so no other metric shows it.
    release_unknown: bool,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn block(&self, number: u64, release: Option<SemVer>) {
        self.with(|s| {
            s.last_block = Some((number, Instant::now()));
            s.last_block_at = Some(SystemTime::now());
            s.release_unknown = release.is_none();
            if release.is_some() {
                s.release = release;
            }
        });
    }

    pub fn engine_started(&self, version: SemVer) {
        self.with(|s| {
            s.running = Some(version);
            s.engine_starts += 1;
        });
    }

    pub fn engine_exited(&self) {
        self.with(|s| s.running = None);
    }

    pub fn lock(&self, held: bool, epoch: Option<u64>) {
        self.with(|s| {
            s.lock_held = held;
            if held {
                s.lock_epoch = epoch;
            }
        });
    }

    pub fn fenced(&self) {
        self.with(|s| {
            s.fences += 1;
            s.lock_held = false;
        });
    }

    pub fn handed_off(&self) {
        self.with(|s| s.hand_offs += 1);
    }

    /// Whether the release is known and no installed engine covers it (the "install a X.Y.x
    /// engine" state): an idle shim has no other sign an alert could catch.
    pub fn no_compatible_engine(&self, missing: bool) {
        self.with(|s| s.no_compatible_engine = missing);
    }

    /// The event loop turned (it does at least every [`TURN_EVERY`]): it is not wedged.
    pub fn loop_turned(&self) {
        self.with(|s| s.last_turn = Some(Instant::now()));
    }

    /// Whether an installed engine is compatible with the last known release, so an engine should
    /// run — here, or in the instance sharing the lock that holds it. Summed over the instances
    /// sharing one lock, it tells "nobody holds the lock while an engine should run" apart from
    /// "every instance waits for an upgrade".
    pub fn engine_should_run(&self, should_run: bool) {
        self.with(|s| s.engine_should_run = should_run);
    }

    /// Counts what a gate notice says that no other metric shows: an engine's unexpected exit
    /// (a crash loop shows only as a rate of these, since a restarted engine runs again).
    pub fn notice(&self, notice: &Notice) {
        if let Notice::Crashed { .. } = notice {
            self.with(|s| s.engine_crashes += 1);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.with(|s| {
            let mut out = String::new();
            let mut gauge = |name: &str, help: &str, value: String| {
                let _ = write!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
                );
            };
            let block = s.last_block.map_or(0, |(n, _)| n);
            gauge(
                "engine_shim_last_block",
                "Last finalized block processed.",
                block.to_string(),
            );
            gauge(
                "engine_shim_engine_running",
                "1 while an engine runs.",
                u8::from(s.running.is_some()).to_string(),
            );
            gauge(
                "engine_shim_lock_held",
                "1 while this instance holds the lock.",
                u8::from(s.lock_held).to_string(),
            );
            gauge(
                "engine_shim_lock_epoch",
                "Epoch of the lock last acquired (lease locks; 0 if none).",
                s.lock_epoch.unwrap_or(0).to_string(),
            );
            gauge(
                "engine_shim_last_block_timestamp_seconds",
                "Unix time at which the last finalized block was processed (0 before the first).",
                s.last_block_at.map_or(0.0, unix_seconds).to_string(),
            );
            gauge(
                "engine_shim_engine_should_run",
                "1 while an installed engine is compatible with the release, so an engine should run (here or in the instance holding the lock).",
                u8::from(s.engine_should_run).to_string(),
            );
            gauge(
                "engine_shim_release_unknown",
                "1 while the release at the last processed block cannot be used (absent, 0.0.0, malformed): nothing starts or stops.",
                u8::from(s.release_unknown).to_string(),
            );
            gauge(
                "engine_shim_no_compatible_engine",
                "1 while the release is known and no installed engine covers it (install the next engine); 0 otherwise, also while every engine waits for an upgrade.",
                u8::from(s.no_compatible_engine).to_string(),
            );
            let mut counter = |name: &str, help: &str, value: u64| {
                let _ = write!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
                );
            };
            counter(
                "engine_shim_engine_starts_total",
                "Engines started.",
                s.engine_starts,
            );
            counter(
                "engine_shim_engine_crashes_total",
                "Engines that exited unexpectedly while the release still fitted them.",
                s.engine_crashes,
            );
            counter(
                "engine_shim_fences_total",
                "Engines stopped because the lock was lost.",
                s.fences,
            );
            counter(
                "engine_shim_hand_offs_total",
                "Completed hand-offs.",
                s.hand_offs,
            );
            let dropped = "engine_shim_log_lines_dropped_total";
            let _ = write!(
                out,
                "# HELP {dropped} Log lines dropped because the log output was blocked.\n\
                 # TYPE {dropped} counter\n{dropped} {}\n",
                crate::telemetry::dropped_lines()
            );
            let mut info = |name: &str, help: &str, version: Option<SemVer>| {
                if let Some(v) = version {
                    let _ = write!(
                        out,
                        "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{version=\"{v}\"}} 1\n"
                    );
                }
            };
            info(
                "engine_shim_release_info",
                "On-chain release last read.",
                s.release,
            );
            info(
                "engine_shim_running_engine_info",
                "Version of the running engine.",
                s.running,
            );
            out
        })
    }

    /// `(healthy, body)` for a probe route: see [`probes`] for what each one decides. `/livez`
    /// says when the loop last turned; the others say what the shim follows and runs.
    fn probe(&self, route: Route, stale_after: Duration) -> (bool, String) {
        self.with(|s| {
            let ages = Ages {
                loop_turn: s.last_turn.map(|at| at.elapsed()),
                block: s.last_block.map(|(_, at)| at.elapsed()),
            };
            let healthy = probes::healthy(route, ages, stale_after);
            let live = probes::live(ages);
            if route == Route::Livez {
                let turned = ages
                    .loop_turn
                    .map_or("null".to_string(), |age| age.as_millis().to_string());
                return (
                    healthy,
                    format!("{{\"live\":{live},\"loop_turned_ms_ago\":{turned}}}"),
                );
            }
            let following = probes::following(ages, stale_after);
            let version = |v: Option<SemVer>| v.map_or("null".to_string(), |v| format!("\"{v}\""));
            let body = format!(
                "{{\"following\":{following},\"live\":{live},\"last_block\":{},\"release\":{},\"running\":{},\"lock_held\":{}}}",
                s.last_block.map_or("null".to_string(), |(n, _)| n.to_string()),
                version(s.release),
                version(s.running),
                s.lock_held
            );
            (healthy, body)
        })
    }
}

/// Seconds since the Unix epoch, with millisecond precision (Prometheus' `time()` has the same).
fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_millis() as f64 / 1000.0)
}

/// The longest request head read (request line and headers); probes send about 100 bytes.
pub const MAX_HEAD: usize = 8 * 1024;

/// How long a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/metrics`, `/livez`, `/readyz` and `/health` on `addr` until the runtime stops. The accept loop outlives any
/// accept error (see [`crate::accept`]), so a probe never restarts a healthy shim because the
/// server once ran out of file descriptors.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stale_after: Duration,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let mut accepts = AcceptLoop::new(format!("metrics server on {bound}"));
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    accepts.accepted();
                    tokio::spawn(respond(stream, metrics.clone(), stale_after));
                }
                Err(e) => accepts.failed(&e).await,
            }
        }
    });
    Ok(bound)
}

/// Why no request head could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum BadHead {
    TooLarge,
    TimedOut,
    /// The client went away (or the connection failed) first: nobody to answer.
    Gone,
}

/// Reads a request head (up to the blank line) of at most `max` bytes within `timeout`. Never
/// buffers more than `max` bytes, whatever the client sends.
pub async fn read_head(
    read: &mut (impl AsyncRead + Unpin),
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, BadHead> {
    let work = async {
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let room = (max - head.len()).min(chunk.len());
            if room == 0 {
                return Err(BadHead::TooLarge);
            }
            let n = match read.read(&mut chunk[..room]).await {
                Ok(0) | Err(_) => return Err(BadHead::Gone),
                Ok(n) => n,
            };
            let searched_from = head.len().saturating_sub(3);
            head.extend_from_slice(&chunk[..n]);
            if end_of_head(&head[searched_from..]) {
                return Ok(head);
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(BadHead::TimedOut))
}

/// True if `bytes` hold the blank line that ends a request head (CRLF, or bare LF as some tools send).
fn end_of_head(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| w == b"\r\n\r\n") || bytes.windows(2).any(|w| w == b"\n\n")
}

async fn respond(mut stream: TcpStream, metrics: Arc<Metrics>, stale_after: Duration) {
    let (status, kind, body) = match read_head(&mut stream, MAX_HEAD, READ_TIMEOUT).await {
        Err(BadHead::Gone) => return,
        Err(BadHead::TooLarge) => (
            "431 Request Header Fields Too Large",
            "text/plain",
            format!("request head longer than {MAX_HEAD} bytes\n"),
        ),
        Err(BadHead::TimedOut) => (
            "408 Request Timeout",
            "text/plain",
            format!(
                "no complete request head within {}\n",
                humantime::format_duration(READ_TIMEOUT)
            ),
        ),
        Ok(head) => {
            let line = String::from_utf8_lossy(&head);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                path => match Route::from_path(path).map(|r| metrics.probe(r, stale_after)) {
                    Some((true, body)) => ("200 OK", "application/json", body),
                    Some((false, body)) => ("503 Service Unavailable", "application/json", body),
                    None => (
                        "404 Not Found",
                        "text/plain",
                        "try /metrics, /livez, /readyz or /health\n".to_string(),
                    ),
                },
            }
        }
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_lock_epoch_and_versions() {
        let metrics = Metrics::default();
        metrics.block(42, Some(SemVer::new(1, 1, 0)));
        metrics.lock(true, Some(7));
        metrics.engine_started(SemVer::new(1, 1, 3));
        let text = metrics.render();
        assert!(text.contains("engine_shim_last_block 42\n"), "{text}");
        assert!(text.contains("engine_shim_lock_epoch 7\n"), "{text}");
        assert!(
            text.contains("engine_shim_running_engine_info{version=\"1.1.3\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("engine_shim_release_info{version=\"1.1.0\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn renders_the_no_compatible_engine_gauge() {
        let metrics = Metrics::default();
        let gauge = |metrics: &Metrics| {
            metrics
                .render()
                .lines()
                .find_map(|l| l.strip_prefix("engine_shim_no_compatible_engine "))
                .map(str::to_string)
        };
        assert_eq!(gauge(&metrics).as_deref(), Some("0"));
        metrics.no_compatible_engine(true);
        assert_eq!(gauge(&metrics).as_deref(), Some("1"));
        metrics.no_compatible_engine(false);
        assert_eq!(gauge(&metrics).as_deref(), Some("0"));
        assert!(metrics
            .render()
            .contains("# TYPE engine_shim_no_compatible_engine gauge\n"));
    }

    #[test]
    fn counts_crashes_and_says_whether_an_engine_should_run() {
        let metrics = Metrics::default();
        let read = |name: &str| value(&metrics.render(), name);
        assert_eq!(read("engine_shim_engine_crashes_total"), Some("0".into()));
        assert_eq!(read("engine_shim_engine_should_run"), Some("0".into()));
        metrics.notice(&Notice::StandbyOver);
        assert_eq!(read("engine_shim_engine_crashes_total"), Some("0".into()));
        metrics.notice(&Notice::Crashed {
            engine: crate::covers::Covers::new(vec![SemVer::new(1, 0, 0)]).unwrap(),
            status: "exit status: 3".into(),
            uptime: Duration::from_secs(2),
            restart_in: Duration::from_secs(1),
            unconfirmed: None,
        });
        assert_eq!(read("engine_shim_engine_crashes_total"), Some("1".into()));
        metrics.engine_should_run(true);
        assert_eq!(read("engine_shim_engine_should_run"), Some("1".into()));
        for counter in [
            "engine_shim_engine_starts_total",
            "engine_shim_engine_crashes_total",
            "engine_shim_fences_total",
            "engine_shim_hand_offs_total",
        ] {
            assert!(
                metrics
                    .render()
                    .contains(&format!("# TYPE {counter} counter\n")),
                "{counter}"
            );
        }
    }

    #[test]
    fn an_unusable_release_shows_until_a_usable_one_is_read() {
        let metrics = Metrics::default();
        let unknown = || value(&metrics.render(), "engine_shim_release_unknown");
        assert_eq!(unknown().as_deref(), Some("0"));
        metrics.block(1, Some(SemVer::new(1, 0, 0)));
        metrics.block(2, None);
        assert_eq!(unknown().as_deref(), Some("1"));
        // The last release read stays visible meanwhile.
        assert!(metrics
            .render()
            .contains("engine_shim_release_info{version=\"1.0.0\"} 1"));
        metrics.block(3, Some(SemVer::new(1, 0, 0)));
        assert_eq!(unknown().as_deref(), Some("0"));
    }

    #[test]
    fn the_last_block_timestamp_is_wall_clock_seconds() {
        let metrics = Metrics::default();
        let stamp = || {
            value(
                &metrics.render(),
                "engine_shim_last_block_timestamp_seconds",
            )
            .unwrap()
            .parse::<f64>()
            .unwrap()
        };
        assert_eq!(stamp(), 0.0);
        let before = unix_seconds(SystemTime::now());
        metrics.block(3, None);
        let after = unix_seconds(SystemTime::now());
        assert!(
            (before..=after).contains(&stamp()),
            "{before} {} {after}",
            stamp()
        );
    }

    /// The value of the unlabelled sample `name`.
    fn value(text: &str, name: &str) -> Option<String> {
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::to_string)
    }

    #[test]
    fn renders_the_dropped_log_lines_counter() {
        let text = Metrics::default().render();
        assert!(
            text.contains("# TYPE engine_shim_log_lines_dropped_total counter\n"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l
                .strip_prefix("engine_shim_log_lines_dropped_total ")
                .is_some_and(|n| n.parse::<u64>().is_ok())),
            "{text}"
        );
    }

    #[test]
    fn health_needs_recent_blocks() {
        let metrics = Metrics::default();
        let health = |stale_after| metrics.probe(Route::Health, stale_after);
        assert!(!health(Duration::from_secs(60)).0);
        metrics.block(1, None);
        let (healthy, body) = health(Duration::from_secs(60));
        assert!(healthy, "{body}");
        assert!(body.contains("\"last_block\":1"), "{body}");
        assert!(!health(Duration::ZERO).0);
    }

    /// GET `path` from the server at `addr`: the whole answer.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn a_wedged_loop_fails_livez_and_readyz_over_http() {
        let metrics = Arc::new(Metrics::default());
        metrics.block(5, Some(SemVer::new(1, 0, 0)));
        metrics.loop_turned();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let livez = get(addr, "/livez").await;
        assert!(livez.starts_with("HTTP/1.1 200 OK"), "{livez}");
        assert!(livez.contains("\"live\":true"), "{livez}");
        let readyz = get(addr, "/readyz").await;
        assert!(readyz.starts_with("HTTP/1.1 200 OK"), "{readyz}");

        // The loop's last turn lies a whole bound back, as if it had been stuck since.
        metrics.with(|s| s.last_turn = Instant::now().checked_sub(probes::LIVE_WITHIN));
        metrics.block(6, None);
        let livez = get(addr, "/livez").await;
        assert!(livez.starts_with("HTTP/1.1 503"), "{livez}");
        assert!(livez.contains("\"live\":false"), "{livez}");
        let readyz = get(addr, "/readyz").await;
        assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
        assert!(readyz.contains("\"following\":true"), "{readyz}");
        let health = get(addr, "/health").await;
        assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    }

    #[tokio::test]
    async fn serves_metrics_and_health_over_http() {
        let metrics = Arc::new(Metrics::default());
        metrics.block(5, Some(SemVer::new(1, 0, 0)));
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            metrics,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        for (path, expect) in [
            ("/metrics", "engine_shim_last_block 5"),
            ("/health", "HTTP/1.1 200 OK"),
            ("/readyz", "HTTP/1.1 200 OK"),
            ("/livez", "HTTP/1.1 200 OK"),
            ("/nope", "HTTP/1.1 404"),
        ] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            assert!(answer.contains(expect), "{path}: {answer}");
        }
    }

    #[tokio::test]
    async fn a_request_head_is_bounded_in_size_and_time() {
        let head = |bytes: &'static [u8]| async move {
            let mut read = bytes;
            read_head(&mut read, 32, Duration::from_secs(5)).await
        };
        assert!(head(b"GET /health HTTP/1.1\r\n\r\n").await.is_ok());
        assert!(head(b"GET /health\n\n").await.is_ok());
        assert_eq!(head(b"GET /health HTTP/1.1\r\n").await, Err(BadHead::Gone));
        assert_eq!(
            head(b"GET /health HTTP/1.1\r\nX-Padding: aaaaaaaaaaaaaa\r\n\r\n").await,
            Err(BadHead::TooLarge)
        );
        let (_client, mut server) = tokio::io::duplex(64);
        let slow = read_head(&mut server, 32, Duration::from_millis(50)).await;
        assert_eq!(slow, Err(BadHead::TimedOut));
    }

    #[tokio::test]
    async fn a_huge_or_slow_client_does_not_keep_others_from_being_served() {
        let metrics = Arc::new(Metrics::default());
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            metrics,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let _slow = TcpStream::connect(addr).await.unwrap();
        let mut huge = TcpStream::connect(addr).await.unwrap();
        let _ = huge.write_all(&vec![b'a'; 64 * 1024]).await;
        // The shim answers 431 and closes; with the rest of the request unread, TCP may turn the
        // close into a reset that overtakes the answer, so only the closing is certain.
        let mut answer = Vec::new();
        let closed = huge.read_to_end(&mut answer).await;
        assert!(
            closed.is_err() || answer.starts_with(b"HTTP/1.1 431"),
            "{closed:?} {answer:?}"
        );
        let mut other = TcpStream::connect(addr).await.unwrap();
        other
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        other.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    }
}
