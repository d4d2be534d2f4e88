//! fake-node: start-up time, blocks per second delivered to 100 finalized-head subscribers, and RSS.
//!
//! Blocks are delivered twice: built with one `dev_newBlock` call each (a test driving the chain
//! block by block), then with one `dev_newBlock({"count": n})` call (a test fast-forwarding). Both
//! wait until every subscriber has received every block as its own notification, in order. Each
//! line also gives fake-node's own CPU time, which is what the node would need on an idle machine
//! (the subscribers here are 100 real jsonrpsee clients sharing the same cores).

#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)] // the end-to-end harness: each bench uses its own subset
mod common;
mod support;

use std::time::{Duration, Instant};

use common::Node;
use jsonrpsee::core::client::{Subscription, SubscriptionClientT};
use jsonrpsee::rpc_params;
use jsonrpsee_ws_client::WsClientBuilder;
use serde::Deserialize;

const SUBSCRIBERS: usize = 100;

/// The one field a subscriber here reads from each header.
#[derive(Deserialize)]
struct Numbered {
    number: String,
}

/// How the blocks of one round are built.
#[derive(Clone, Copy)]
enum Building {
    OneCallPerBlock,
    OneCall,
}

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
        support::report_latency(
            "fake-node start-up (spawn → listening line)",
            &startup,
            "none",
        );

        let node = Node::start(&["--release", "1.0.0"]).await;
        println!(
            "fake-node RSS at start: {:.1} MB",
            support::rss_kb(node.proc.pid()) as f64 / 1024.0
        );
        let mut clients = Vec::new();
        let mut subscriptions: Vec<Subscription<Numbered>> = Vec::new();
        for _ in 0..SUBSCRIBERS {
            // A jsonrpsee client drops a subscription whose unread notifications exceed its
            // buffer; a batch of `blocks` blocks arrives faster than 100 clients on 2 cores read.
            let client = WsClientBuilder::default()
                .max_buffer_capacity_per_subscription(blocks as usize + 64)
                .build(&node.url)
                .await
                .expect("subscriber connects");
            let mut sub = client
                .subscribe(
                    "chain_subscribeFinalizedHeads",
                    rpc_params![],
                    "chain_unsubscribeFinalizedHeads",
                )
                .await
                .expect("subscribe");
            next_number(&mut sub).await; // genesis, sent on subscribe
            clients.push(client);
            subscriptions.push(sub);
        }
        let mut best = 0;
        for building in [Building::OneCallPerBlock, Building::OneCall] {
            subscriptions = deliver(&node, subscriptions, best, blocks, building).await;
            best += blocks;
        }
        println!(
            "fake-node RSS with {SUBSCRIBERS} subscribers after {best} blocks: {:.1} MB",
            support::rss_kb(node.proc.pid()) as f64 / 1024.0
        );
        drop(clients);
    });
}

async fn next_number(sub: &mut Subscription<Numbered>) -> u64 {
    let header = tokio::time::timeout(Duration::from_secs(60), sub.next())
        .await
        .expect("subscriber went quiet")
        .expect("subscription closed")
        .expect("bad notification");
    u64::from_str_radix(header.number.trim_start_matches("0x"), 16).expect("hex number")
}

/// Builds `blocks` blocks on top of `best` and waits until every subscriber has received each of
/// them, in order; prints the rate and fake-node's CPU time. Returns the subscriptions.
async fn deliver(
    node: &Node,
    subscriptions: Vec<Subscription<Numbered>>,
    best: u64,
    blocks: u64,
    building: Building,
) -> Vec<Subscription<Numbered>> {
    let last = best + blocks;
    // Receivers run while the blocks are built, as real subscribers do.
    let receivers: Vec<_> = subscriptions
        .into_iter()
        .map(|mut sub| {
            tokio::spawn(async move {
                for expected in best + 1..=last {
                    assert_eq!(
                        next_number(&mut sub).await,
                        expected,
                        "every block, in order"
                    );
                }
                sub
            })
        })
        .collect();
    let cpu_before = support::cpu_time(node.proc.pid());
    let own_cpu_before = support::cpu_time(std::process::id());
    let began = Instant::now();
    match building {
        Building::OneCallPerBlock => {
            for _ in 0..blocks {
                node.new_blocks(1).await;
            }
        }
        Building::OneCall => {
            node.new_blocks(blocks).await;
        }
    }
    let mut subscriptions = Vec::new();
    for receiver in receivers {
        subscriptions.push(receiver.await.expect("subscriber task"));
    }
    let elapsed = began.elapsed();
    let cpu = support::cpu_time(node.proc.pid()) - cpu_before;
    let subscribers_cpu = support::cpu_time(std::process::id()) - own_cpu_before;
    let how = match building {
        Building::OneCallPerBlock => "one dev_newBlock call each",
        Building::OneCall => "one dev_newBlock({\"count\": n}) call",
    };
    println!(
        "fake-node: {blocks} blocks, {how}, delivered to {SUBSCRIBERS} subscribers in {:.3} s = {:.0} blocks/s (fake-node CPU {:.2} s = {:.0} blocks per CPU-second; the subscribers' CPU {:.2} s)",
        elapsed.as_secs_f64(),
        blocks as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64(),
        blocks as f64 / cpu.as_secs_f64().max(0.001),
        subscribers_cpu.as_secs_f64(),
    );
    subscriptions
}
