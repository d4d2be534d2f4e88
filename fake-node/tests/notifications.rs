//! Head notifications under load, seen from real WebSocket clients: several subscribers to every
//! head stream, blocks built in one large batch (many notification batches per subscription),
//! each subscriber gets every head, in order, as the header the node serves for that block.

use std::time::Duration;

use fake_node::{FakeNode, FakeNodeConfig};
use jsonrpsee::core::client::{ClientT, Subscription, SubscriptionClientT};
use jsonrpsee::rpc_params;
use jsonrpsee_ws_client::{WsClient, WsClientBuilder};
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
