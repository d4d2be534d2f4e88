//! Prometheus metrics and the health endpoint, as a monitoring system and a Kubernetes probe see them.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::scrape::{metrics_addr, sample, scrape, wait_sample};
use crate::common::{Node, Shim};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: &str, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: shim\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_follow_the_engine_and_the_lock() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let shim = Shim::builder(&node, "1.0.0")
        .shim_args(&["--metrics-listen", "127.0.0.1:0"])
        .spawn();
    let (_, line) = shim
        .wait_message(0, &["serving /metrics and /health on http://"])
        .await;
    let addr = line.message().rsplit("http://").next().unwrap().to_string();
    shim.wait_event("start", 1).await;
    shim.wait_message(0, &["started (pid"]).await;

    let metrics = get(&addr, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(
        metrics.contains("engine_shim_engine_running 1"),
        "{metrics}"
    );
    assert!(metrics.contains("engine_shim_lock_held 1"), "{metrics}");
    assert!(
        metrics.contains("engine_shim_engine_should_run 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("engine_shim_release_info{version=\"1.0.0\"} 1"),
        "{metrics}"
    );
    let health = get(&addr, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    assert!(health.contains("\"running\":\"1.0.0\""), "{health}");

    // No longer compatible: the engine stops, the lock goes back, and the metrics say so.
    node.set_release("1.1.0").await;
    let before = unix_seconds();
    node.new_blocks(1).await;
    shim.wait_event("stop", 1).await;
    shim.wait_message(0, &["released the lock"]).await;
    let metrics = get(&addr, "/metrics").await;
    assert!(
        metrics.contains("engine_shim_engine_running 0"),
        "{metrics}"
    );
    assert!(metrics.contains("engine_shim_lock_held 0"), "{metrics}");
    assert!(metrics.contains("engine_shim_last_block 1"), "{metrics}");
    // Nothing installed fits 1.1.0: no engine should run anywhere sharing the lock.
    assert!(
        metrics.contains("engine_shim_engine_should_run 0"),
        "{metrics}"
    );
    // Block #1 was processed after `before` and before this scrape, by the wall clock that
    // Prometheus' `time()` compares it with.
    let stamp: f64 = sample(&metrics, "engine_shim_last_block_timestamp_seconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no last block timestamp in {metrics}"));
    assert!(
        (before..=unix_seconds()).contains(&stamp),
        "timestamp {stamp} not after {before} and before now; {metrics}"
    );
}

fn unix_seconds() -> f64 {
    // Whole milliseconds, as the shim renders them, so `before` is never above the stamp.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    now.as_millis() as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_crash_counts_and_the_engine_still_should_run() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let shim = Shim::builder(&node, "1.0.0")
        .shim_args(&["--metrics-listen", "127.0.0.1:0"])
        .engine_args(&["--crash-after", "100ms"])
        .spawn();
    let addr = metrics_addr(&shim).await;
    wait_sample(&addr, "engine_shim_engine_crashes_total", "0").await;
    shim.wait_message(0, &["exited unexpectedly"]).await;
    // The shim counts a crash before it logs it; the engine restarts and may crash again
    // meanwhile, so the count is at least 1.
    let text = scrape(&addr).await;
    let crashes: u64 = sample(&text, "engine_shim_engine_crashes_total")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no crash counter in {text}"));
    assert!(crashes >= 1, "the crash was logged but not counted: {text}");
    assert!(text.contains("engine_shim_engine_should_run 1"), "{text}");
    assert!(text.contains("# TYPE engine_shim_engine_crashes_total counter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_release_value_shows_while_it_lasts() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let shim = Shim::builder(&node, "1.0.0")
        .shim_args(&["--metrics-listen", "127.0.0.1:0"])
        .spawn();
    let addr = metrics_addr(&shim).await;
    shim.wait_message(0, &["started (pid"]).await;
    wait_sample(&addr, "engine_shim_release_unknown", "0").await;

    // Two bytes where SCALE SemVer has three: the shim cannot use the release.
    node.set_release_value(Some("0x0102")).await;
    node.new_blocks(1).await;
    shim.wait_message(0, &["cannot use the release at block #1"])
        .await;
    let text = scrape(&addr).await;
    assert_eq!(
        sample(&text, "engine_shim_release_unknown").as_deref(),
        Some("1"),
        "{text}"
    );
    assert!(
        text.contains("engine_shim_engine_running 1"),
        "the engine keeps running: {text}"
    );

    node.set_release("1.0.0").await;
    node.new_blocks(1).await;
    wait_sample(&addr, "engine_shim_release_unknown", "0").await;
}
