//! `/livez` and `/readyz` as Kubernetes probes see them: a stalled node makes the shim unready
//! (no finalized blocks, so it cannot know which engine is right) but never dead, so a liveness
//! probe does not restart a healthy pod and stop its running engine for the node's trouble.
//!
//! A wedged event loop (the one case where `/livez` fails) has no honest way to be caused from
//! outside a real process; it is covered by the unit tests of `metrics::probes` and by
//! `metrics::tests::a_wedged_loop_fails_livez_and_readyz_over_http`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::scrape::metrics_addr;
use crate::common::{Node, Shim, TIMEOUT};

/// How often a probe is asked again while waiting for its answer to change (like a kubelet does).
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// One probe: the status code and the body.
async fn probe(addr: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: shim\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

/// Asks `path` until it answers `code`; panics with the last answer on the safety-net timeout.
async fn wait_probe(addr: &str, path: &str, code: u16) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (got, body) = probe(addr, path).await;
        if got == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {code} within {TIMEOUT:?}; last: {got} {body}"
        );
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_fails_readyz_while_livez_stays_200() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let shim = Shim::builder(&node, "1.0.0")
        .shim_args(&["--metrics-listen", "127.0.0.1:0", "--stale-after", "1s"])
        .spawn();
    let addr = metrics_addr(&shim).await;
    let engine = shim.wait_event("start", 1).await;
    node.new_blocks(1).await;
    let ready = wait_probe(&addr, "/readyz", 200).await;
    assert!(ready.contains("\"following\":true"), "{ready}");
    assert!(ready.contains("\"running\":\"1.0.0\""), "{ready}");
    let (code, live) = probe(&addr, "/livez").await;
    assert_eq!(code, 200, "{live}");

    // Finality stalls: blocks are built, none is finalized. Past --stale-after the shim cannot
    // vouch for the engine any more (unready, /health too) but its own loop still turns.
    node.stall_finality(true).await;
    node.new_blocks(3).await;
    let unready = wait_probe(&addr, "/readyz", 503).await;
    assert!(unready.contains("\"following\":false"), "{unready}");
    assert!(unready.contains("\"live\":true"), "{unready}");
    let (code, health) = probe(&addr, "/health").await;
    assert_eq!(code, 503, "/health keeps its meaning: {health}");
    // The staleness timer reconnects to the node meanwhile; the loop keeps turning through it.
    shim.wait_message(0, &["lost the node"]).await;
    let (code, live) = probe(&addr, "/livez").await;
    assert_eq!(code, 200, "a stalled node must not fail liveness: {live}");
    assert!(live.contains("\"live\":true"), "{live}");
    // Live because the loop keeps turning with no block to handle, not because it never started.
    assert!(
        !live.contains("\"loop_turned_ms_ago\":null"),
        "the event loop reports its turns: {live}"
    );
    // Nothing was restarted or stopped for the node's trouble.
    assert_eq!(shim.engine_events().len(), 1, "{:?}", shim.engine_events());
    assert!(
        !crate::common::is_gone(engine.pid),
        "the engine must keep running"
    );

    // Finality resumes: ready again, the same engine still running.
    node.stall_finality(false).await;
    node.new_blocks(1).await;
    let ready = wait_probe(&addr, "/readyz", 200).await;
    assert!(ready.contains("\"running\":\"1.0.0\""), "{ready}");
    let (code, live) = probe(&addr, "/livez").await;
    assert_eq!(code, 200, "{live}");
    assert_eq!(shim.engine_events().len(), 1, "{:?}", shim.engine_events());
}
