//! fake-node: start-up time, blocks per second delivered to 100 finalized-head subscribers, and RSS.
//!
//! Blocks are delivered twice: built with one `dev_newBlock` call each (a test driving the chain
//! block by block), then with one `dev_newBlock({"count": n})` call (a test fast-forwarding). Both
//! wait until every subscriber has received every block as its own notification, in order. Each
//! line also gives fake-node's own CPU time, which is what the node would need on an idle machine.
//!
//! Each round runs twice: with 100 jsonrpsee clients (what a test suite's clients cost), and with
//! 100 lean subscribers ([`lean_subscriber`]) that check every frame but parse only the header
//! number, so the wall-clock rate is the node's own rather than its clients'.

#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)] // the end-to-end harness: each bench uses its own subset
mod common;
mod lean_subscriber;
mod support;

use std::time::{Duration, Instant};

use common::Node;
use jsonrpsee::core::client::{Subscription, SubscriptionClientT};
use jsonrpsee::rpc_params;
use jsonrpsee_ws_client::WsClientBuilder;
use lean_subscriber::LeanSubscriber;
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

/// Which client a round's subscribers use.
#[derive(Clone, Copy)]
enum Client {
    Jsonrpsee,
    Lean,
}

/// One finalized-head subscription of either client.
enum Subscriber {
    Jsonrpsee(Subscription<Numbered>),
    Lean(LeanSubscriber),
}

impl Subscriber {
    async fn next_number(&mut self) -> u64 {
        let next = async {
            match self {
                Subscriber::Jsonrpsee(sub) => next_number(sub).await,
                Subscriber::Lean(sub) => sub.next_number().await.expect("lean subscriber"),
            }
        };
        tokio::time::timeout(Duration::from_secs(60), next)
            .await
            .expect("subscriber went quiet")
    }
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
        let mut best = 0;
        for client in [Client::Jsonrpsee, Client::Lean] {
            let (subscriptions, clients) = subscribe(&node, client, blocks, best).await;
            let mut subscriptions = subscriptions;
            for building in [Building::OneCallPerBlock, Building::OneCall] {
                subscriptions = deliver(&node, subscriptions, best, blocks, building, client).await;
                best += blocks;
            }
            drop(subscriptions);
            drop(clients);
        }
        println!(
            "fake-node RSS after {best} blocks, {SUBSCRIBERS} subscribers per round: {:.1} MB",
            support::rss_kb(node.proc.pid()) as f64 / 1024.0
        );
    });
}

/// Opens `SUBSCRIBERS` finalized-head subscriptions of `client` and reads the head each gets on
/// subscribe (`best`). Returns them and the jsonrpsee clients to keep alive.
async fn subscribe(
    node: &Node,
    client: Client,
    blocks: u64,
    best: u64,
) -> (Vec<Subscriber>, Vec<jsonrpsee_ws_client::WsClient>) {
    let mut clients = Vec::new();
    let mut subscriptions = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut subscriber = match client {
            Client::Jsonrpsee => {
                // A jsonrpsee client drops a subscription whose unread notifications exceed its
                // buffer; a batch of `blocks` blocks arrives faster than 100 clients on 2 cores
                // read.
                let ws = WsClientBuilder::default()
                    .max_buffer_capacity_per_subscription(blocks as usize + 64)
                    .build(&node.url)
                    .await
                    .expect("subscriber connects");
                let sub = ws
                    .subscribe(
                        "chain_subscribeFinalizedHeads",
                        rpc_params![],
                        "chain_unsubscribeFinalizedHeads",
                    )
                    .await
                    .expect("subscribe");
                clients.push(ws);
                Subscriber::Jsonrpsee(sub)
            }
            Client::Lean => {
                let (sub, first) = LeanSubscriber::subscribe(&node.url)
                    .await
                    .expect("lean subscriber connects");
                assert_eq!(first, best, "the finalized head on subscribe");
                subscriptions.push(Subscriber::Lean(sub));
                continue;
            }
        };
        assert_eq!(
            subscriber.next_number().await,
            best,
            "the finalized head on subscribe"
        );
        subscriptions.push(subscriber);
    }
    (subscriptions, clients)
}

async fn next_number(sub: &mut Subscription<Numbered>) -> u64 {
    let header = sub
        .next()
        .await
        .expect("subscription closed")
        .expect("bad notification");
    u64::from_str_radix(header.number.trim_start_matches("0x"), 16).expect("hex number")
}

/// Builds `blocks` blocks on top of `best` and waits until every subscriber has received each of
/// them, in order; prints the rate and fake-node's CPU time. Returns the subscriptions.
async fn deliver(
    node: &Node,
    subscriptions: Vec<Subscriber>,
    best: u64,
    blocks: u64,
    building: Building,
    client: Client,
) -> Vec<Subscriber> {
    let last = best + blocks;
    // Receivers run while the blocks are built, as real subscribers do.
    let receivers: Vec<_> = subscriptions
        .into_iter()
        .map(|mut sub| {
            tokio::spawn(async move {
                for expected in best + 1..=last {
                    assert_eq!(sub.next_number().await, expected, "every block, in order");
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
    let clients = match client {
        Client::Jsonrpsee => "jsonrpsee",
        Client::Lean => "lean",
    };
    println!(
        "fake-node: {blocks} blocks, {how}, delivered to {SUBSCRIBERS} {clients} subscribers in {:.3} s = {:.0} blocks/s (fake-node CPU {:.2} s = {:.0} blocks per CPU-second; the subscribers' CPU {:.2} s)",
        elapsed.as_secs_f64(),
        blocks as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64(),
        blocks as f64 / cpu.as_secs_f64().max(0.001),
        subscribers_cpu.as_secs_f64(),
    );
    subscriptions
}
