//! Metrics and health over plain HTTP, for Prometheus and for Kubernetes probes.
//!
//! An engine that waits for its release has no health endpoint yet, so a probe pointed at it
//! would kill a correctly waiting pod: the shim answers for it. The run loop records what it
//! observes in [`Metrics`]; a tiny HTTP/1.1 responder (no framework: two read-only routes)
//! serves `GET /metrics` in the Prometheus text format and `GET /health`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::version::SemVer;

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
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn block(&self, number: u64, release: Option<SemVer>) {
        self.with(|s| {
            s.last_block = Some((number, Instant::now()));
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
                "engine_shim_engine_starts_total",
                "Engines started.",
                s.engine_starts.to_string(),
            );
            gauge(
                "engine_shim_fences_total",
                "Engines stopped because the lock was lost.",
                s.fences.to_string(),
            );
            gauge(
                "engine_shim_hand_offs_total",
                "Completed hand-offs.",
                s.hand_offs.to_string(),
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

    /// `(healthy, body)`: healthy while finalized blocks keep arriving within `stale_after`.
    pub fn health(&self, stale_after: Duration) -> (bool, String) {
        self.with(|s| {
            let fresh = s
                .last_block
                .is_some_and(|(_, at)| at.elapsed() < stale_after);
            let version = |v: Option<SemVer>| v.map_or("null".to_string(), |v| format!("\"{v}\""));
            let body = format!(
                "{{\"following\":{fresh},\"last_block\":{},\"release\":{},\"running\":{},\"lock_held\":{}}}",
                s.last_block.map_or("null".to_string(), |(n, _)| n.to_string()),
                version(s.release),
                version(s.running),
                s.lock_held
            );
            (fresh, body)
        })
    }
}

/// Serves `/metrics` and `/health` on `addr` until the runtime stops.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stale_after: Duration,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(respond(stream, metrics.clone(), stale_after));
        }
    });
    Ok(bound)
}

async fn respond(mut stream: TcpStream, metrics: Arc<Metrics>, stale_after: Duration) {
    let mut request = [0u8; 1024];
    let Ok(Ok(read)) =
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await
    else {
        return;
    };
    let line = String::from_utf8_lossy(&request[..read]);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, kind, body) = match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        "/health" => match metrics.health(stale_after) {
            (true, body) => ("200 OK", "application/json", body),
            (false, body) => ("503 Service Unavailable", "application/json", body),
        },
        _ => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /health\n".to_string(),
        ),
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
        assert!(!metrics.health(Duration::from_secs(60)).0);
        metrics.block(1, None);
        let (healthy, body) = metrics.health(Duration::from_secs(60));
        assert!(healthy, "{body}");
        assert!(body.contains("\"last_block\":1"), "{body}");
        assert!(!metrics.health(Duration::ZERO).0);
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
}
