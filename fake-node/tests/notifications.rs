//! Head notifications under load, seen from real WebSocket clients: several subscribers to every
//! head stream, blocks built in one large batch (many notification batches per subscription),
//! each subscriber gets every head, in order, as the header the node serves for that block.
//!
//! The node writes notifications into each connection itself, between jsonrpsee's own messages;
//! these tests check what a client could notice of that: answers and notifications mixed on one
//! connection, unsubscribing and subscribing again, and a subscriber that stops reading.

#[path = "../../benches/lean_subscriber.rs"]
#[allow(dead_code)] // shared with the benchmark, which uses all of it
mod lean_subscriber;

use std::time::Duration;

use fake_node::{FakeNode, FakeNodeConfig};
use jsonrpsee::core::client::{ClientT, Subscription, SubscriptionClientT};
use jsonrpsee::rpc_params;
use jsonrpsee_ws_client::{WsClient, WsClientBuilder};
use lean_subscriber::LeanSubscriber;
use serde_json::Value;

/// Upper bound for any single await, so a broken node fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(30);
/// Blocks built at once: several times the number of notifications sent per lock.
const BLOCKS: u64 = 300;

async fn next(sub: &mut Subscription<Value>) -> Value {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("notification in time")
        .expect("subscription open")
        .expect("notification is JSON")
}

fn number(header: &Value) -> u64 {
    let hex = header["number"].as_str().expect("number is a string");
    u64::from_str_radix(hex.trim_start_matches("0x"), 16).expect("number is hex")
}

#[tokio::test]
async fn every_subscriber_gets_every_head_of_a_batch_in_order() {
    let node = FakeNode::spawn(FakeNodeConfig::default())
        .await
        .expect("fake node starts");
    let streams = [
        (
            "chain_subscribeFinalizedHeads",
            "chain_unsubscribeFinalizedHeads",
        ),
        ("chain_subscribeNewHeads", "chain_unsubscribeNewHeads"),
        ("chain_subscribeAllHeads", "chain_unsubscribeAllHeads"),
    ];
    let mut clients: Vec<WsClient> = Vec::new();
    let mut subscriptions = Vec::new();
    for _ in 0..3 {
        let client = WsClientBuilder::default()
            .build(node.url())
            .await
            .expect("client connects");
        for (subscribe, unsubscribe) in streams {
            let mut sub: Subscription<Value> = client
                .subscribe(subscribe, rpc_params![], unsubscribe)
                .await
                .unwrap_or_else(|e| panic!("{subscribe} failed: {e}"));
            assert_eq!(
                number(&next(&mut sub).await),
                0,
                "{subscribe}: genesis first"
            );
            subscriptions.push((subscribe, sub));
        }
        clients.push(client);
    }
    node.new_blocks(BLOCKS);
    let mut headers = Vec::new();
    for n in 0..=BLOCKS {
        let hash: Value = clients[0]
            .request("chain_getBlockHash", rpc_params![n])
            .await
            .expect("block hash");
        let header: Value = clients[0]
            .request("chain_getHeader", rpc_params![hash])
            .await
            .expect("header");
        headers.push(header);
    }
    for (method, sub) in &mut subscriptions {
        for expected in 1..=BLOCKS {
            let header = next(sub).await;
            assert_eq!(
                header, headers[expected as usize],
                "{method}: block {expected}, in order"
            );
        }
    }
    node.shutdown().await;
}

async fn finalized_heads(client: &WsClient) -> Subscription<Value> {
    client
        .subscribe(
            "chain_subscribeFinalizedHeads",
            rpc_params![],
            "chain_unsubscribeFinalizedHeads",
        )
        .await
        .expect("subscribes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_and_notifications_share_a_connection_without_mixing() {
    const ROUNDS: u64 = 200;
    const PER_ROUND: u64 = 10;
    let node = FakeNode::spawn(FakeNodeConfig::default())
        .await
        .expect("fake node starts");
    let client = WsClientBuilder::default()
        .max_buffer_capacity_per_subscription((ROUNDS * PER_ROUND) as usize + 64)
        .build(node.url())
        .await
        .expect("client connects");
    let mut heads = finalized_heads(&client).await;
    assert_eq!(number(&next(&mut heads).await), 0, "genesis first");
    let reader = tokio::spawn(async move {
        for expected in 1..=ROUNDS * PER_ROUND {
            assert_eq!(
                number(&next(&mut heads).await),
                expected,
                "every head, in order"
            );
        }
        heads
    });
    // Blocks land while the same connection carries answers: each answer must arrive whole and
    // match, however the notifications fall around it.
    for round in 1..=ROUNDS {
        node.new_blocks(PER_ROUND);
        let n = round * PER_ROUND;
        let hash: Value = tokio::time::timeout(
            PATIENCE,
            client.request("chain_getBlockHash", rpc_params![n]),
        )
        .await
        .expect("answer in time")
        .expect("block hash");
        assert_eq!(hash, Value::String(node.hash_of(n).unwrap().to_string()));
    }
    tokio::time::timeout(PATIENCE, reader)
        .await
        .expect("every notification in time")
        .expect("reader");
    node.shutdown().await;
}

#[tokio::test]
async fn after_unsubscribing_a_new_subscription_starts_at_the_finalized_head() {
    let node = FakeNode::spawn(FakeNodeConfig::default())
        .await
        .expect("fake node starts");
    let client = WsClientBuilder::default()
        .build(node.url())
        .await
        .expect("client connects");
    let mut heads = finalized_heads(&client).await;
    assert_eq!(number(&next(&mut heads).await), 0);
    node.new_blocks(5);
    for expected in 1..=5 {
        assert_eq!(number(&next(&mut heads).await), expected);
    }
    heads.unsubscribe().await.expect("unsubscribes");
    node.new_blocks(100);
    let mut again = finalized_heads(&client).await;
    assert_eq!(
        number(&next(&mut again).await),
        105,
        "the finalized head first"
    );
    node.new_blocks(3);
    for expected in 106..=108 {
        assert_eq!(number(&next(&mut again).await), expected);
    }
    let chain: Value = client
        .request("system_chain", rpc_params![])
        .await
        .expect("the connection still answers");
    assert!(chain.is_string());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_delays_only_itself_and_misses_nothing() {
    // Several megabytes of notifications: more than the node's write buffer and the kernel's
    // socket buffers hold for a client that does not read.
    const MANY: u64 = 20_000;
    let node = FakeNode::spawn(FakeNodeConfig::default())
        .await
        .expect("fake node starts");
    let (mut stalled, first) = LeanSubscriber::subscribe(&node.url())
        .await
        .expect("the stalled subscriber connects");
    assert_eq!(first, 0);
    let client = WsClientBuilder::default()
        .max_buffer_capacity_per_subscription(MANY as usize + 64)
        .build(node.url())
        .await
        .expect("client connects");
    let mut reading = finalized_heads(&client).await;
    assert_eq!(number(&next(&mut reading).await), 0);
    node.new_blocks(MANY);
    for expected in 1..=MANY {
        assert_eq!(
            number(&next(&mut reading).await),
            expected,
            "the reading subscriber"
        );
    }
    for expected in 1..=MANY {
        let got = tokio::time::timeout(PATIENCE, stalled.next_number())
            .await
            .expect("notification in time")
            .expect("a chain_finalizedHead notification for its subscription");
        assert_eq!(got, expected, "the stalled subscriber, once it reads again");
    }
    node.shutdown().await;
}
