//! fake-node: start-up time, blocks per second with 100 finalized-head subscribers, and RSS.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::Node;
use jsonrpsee::core::client::{Subscription, SubscriptionClientT};
use jsonrpsee::rpc_params;
use jsonrpsee_ws_client::WsClientBuilder;
use serde_json::Value;

const SUBSCRIBERS: usize = 100;

fn main() {
    let starts = support::iterations(20, 3);
    let blocks = support::iterations(2_000, 100) as u64;
    support::runtime().block_on(async {
        let mut startup = Vec::new();
        for _ in 0..starts {
            let begun = Instant::now();
            let node = Node::start(&["--release", "1.0.0"]).await;
            startup.push(begun.elapsed());
            drop(node);
        }
        support::report_latency("fake-node start-up (spawn → listening line)", &startup, "none");

        let node = Node::start(&["--release", "1.0.0"]).await;
        let mut clients = Vec::new();
        let mut subscriptions: Vec<Subscription<Value>> = Vec::new();
        for _ in 0..SUBSCRIBERS {
            let client = WsClientBuilder::default()
                .build(&node.url)
                .await
                .expect("subscriber connects");
            let sub = client
                .subscribe(
                    "chain_subscribeFinalizedHeads",
                    rpc_params![],
                    "chain_unsubscribeFinalizedHeads",
                )
                .await
                .expect("subscribe");
            clients.push(client);
            subscriptions.push(sub);
        }
        let receivers = subscriptions.into_iter().map(|mut sub| {
            tokio::spawn(async move {
                loop {
                    let header = tokio::time::timeout(Duration::from_secs(60), sub.next())
                        .await
                        .expect("subscriber went quiet")
                        .expect("subscription closed")
                        .expect("bad notification");
                    let number = header["number"].as_str().expect("hex number");
                    if u64::from_str_radix(number.trim_start_matches("0x"), 16).unwrap() == blocks {
                        return;
                    }
                }
            })
        });
        // Receivers run while the blocks are built, as real subscribers do (a client that stops
        // reading lets its subscription buffer overflow and is dropped).
        let receivers: Vec<_> = receivers.collect();
        let began = Instant::now();
        for _ in 0..blocks {
            node.new_blocks(1).await;
        }
        for receiver in receivers {
            receiver.await.expect("subscriber task");
        }
        let elapsed = began.elapsed();
        println!(
            "fake-node: {blocks} blocks, one dev_newBlock call each, delivered to {SUBSCRIBERS} subscribers in {:.3} s = {:.0} blocks/s",
            elapsed.as_secs_f64(),
            blocks as f64 / elapsed.as_secs_f64()
        );
        println!(
            "fake-node RSS with {SUBSCRIBERS} subscribers after {blocks} blocks: {:.1} MB",
            support::rss_kb(node.proc.pid()) as f64 / 1024.0
        );
        drop(clients);
    });
}
