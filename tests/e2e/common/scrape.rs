//! Reading a shim's `/metrics`, for stories whose state shows nowhere else (an idle shim logs its
//! "install a X.Y.x engine" line calmly, not per block; the gauge says it at every moment).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Shim, TIMEOUT};

/// How often a sample is read again while waiting (a gauge has no change notification).
const POLL: Duration = Duration::from_millis(20);

/// The `ADDR` of the shim's `serving /metrics and /health on http://ADDR` line (it was started with
/// `--metrics-listen 127.0.0.1:0`).
pub async fn metrics_addr(shim: &Shim) -> String {
    let (_, serving) = shim
        .wait_message(0, &["serving /metrics and /health on http://"])
        .await;
    let message = serving.message();
    message
        .rsplit("http://")
        .next()
        .unwrap_or_else(|| panic!("no address in {message:?}"))
        .trim_end_matches('/')
        .to_string()
}

/// One `GET /metrics`: the Prometheus text.
pub async fn scrape(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the metrics server {addr}: {e}"));
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: shim\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

/// The value of the unlabelled sample `name` in a scrape.
pub fn sample(text: &str, name: &str) -> Option<String> {
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(str::to_string)
}

/// Waits until the sample `name` reads `value`; panics with the last scrape on the safety-net
/// timeout.
pub async fn wait_sample(addr: &str, name: &str, value: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = scrape(addr).await;
        if sample(&text, name).as_deref() == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never read {value} within {TIMEOUT:?}; last scrape:\n{text}"
        );
        tokio::time::sleep(POLL).await;
    }
}
