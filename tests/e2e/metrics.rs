//! Prometheus metrics and the health endpoint, as a monitoring system and a Kubernetes probe see them.

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
        metrics.contains("engine_shim_release_info{version=\"1.0.0\"} 1"),
        "{metrics}"
    );
    let health = get(&addr, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    assert!(health.contains("\"running\":\"1.0.0\""), "{health}");

    // No longer compatible: the engine stops, the lock goes back, and the metrics say so.
    node.set_release("1.1.0").await;
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
}
