//! The new JSON-RPC spec (`chainHead_v1_*`, `chainSpec_v1_*`) seen from a real WebSocket client:
//! what polkadot-api and subxt rely on — the follow events in order, pinning, operations and
//! their events, the spec's error codes — and how finality stalls, jumps, slow clients and
//! dropped connections show on a follow subscription.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use engine_shim::storage_key::release_key;
use fake_node::{FakeNode, FakeNodeConfig, FakeNodeHandle, FaultMode};
use jsonrpsee::core::client::{ClientT, Error as ClientError, Subscription, SubscriptionClientT};
use jsonrpsee::core::params::ArrayParams;
use jsonrpsee::rpc_params;
use jsonrpsee_ws_client::{WsClient, WsClientBuilder};
use serde_json::{json, Value};

/// Upper bound for any single await, so a broken node fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(10);

async fn spawn() -> FakeNodeHandle {
    FakeNode::spawn(FakeNodeConfig::default())
        .await
        .expect("fake node starts")
}

async fn connect(node: &FakeNodeHandle) -> WsClient {
    WsClientBuilder::default()
        // A test reads at its own pace: the client must not drop a subscription it buffers.
        .max_buffer_capacity_per_subscription(100_000)
        .build(node.url())
        .await
        .expect("client connects")
}

async fn call(client: &WsClient, method: &str, params: ArrayParams) -> Value {
    tokio::time::timeout(PATIENCE, client.request(method, params))
        .await
        .expect("answer in time")
        .unwrap_or_else(|e| panic!("{method} failed: {e}"))
}

/// The JSON-RPC error a call answers with: code and message.
async fn call_error(client: &WsClient, method: &str, params: ArrayParams) -> (i32, String) {
    match tokio::time::timeout(PATIENCE, client.request::<Value, _>(method, params))
        .await
        .expect("answer in time")
    {
        Err(ClientError::Call(e)) => (e.code(), e.message().to_string()),
        other => panic!("{method}: expected a JSON-RPC error, got {other:?}"),
    }
}

/// A follow subscription and its id (the `followSubscription` of the other methods).
struct Follow {
    events: Subscription<Value>,
    id: String,
}

async fn follow(client: &WsClient, with_runtime: bool) -> Follow {
    let events: Subscription<Value> = client
        .subscribe(
            "chainHead_v1_follow",
            rpc_params![with_runtime],
            "chainHead_v1_unfollow",
        )
        .await
        .expect("follow accepted");
    let id = match events.kind() {
        jsonrpsee::core::client::SubscriptionKind::Subscription(id) => match id {
            jsonrpsee::types::SubscriptionId::Str(s) => s.to_string(),
            jsonrpsee::types::SubscriptionId::Num(n) => n.to_string(),
        },
        other => panic!("not a subscription: {other:?}"),
    };
    Follow { events, id }
}

impl Follow {
    async fn next(&mut self) -> Value {
        tokio::time::timeout(PATIENCE, self.events.next())
            .await
            .expect("event in time")
            .expect("subscription open")
            .expect("event is JSON")
    }

    /// The next event, which must be of type `kind`.
    async fn expect(&mut self, kind: &str) -> Value {
        let event = self.next().await;
        assert_eq!(event["event"], kind, "{event}");
        event
    }

    /// The next event of operation `id`, skipping block events.
    async fn operation_event(&mut self, id: &Value) -> Value {
        loop {
            let event = self.next().await;
            if event.get("operationId") == Some(id) {
                return event;
            }
            assert!(
                event.get("operationId").is_none(),
                "event of another operation: {event}"
            );
        }
    }
}

async fn new_block(client: &WsClient) -> String {
    call(client, "dev_newBlock", rpc_params![])
        .await
        .as_str()
        .unwrap()
        .to_string()
}

async fn hash_of(client: &WsClient, n: u64) -> String {
    call(client, "chain_getBlockHash", rpc_params![n])
        .await
        .as_str()
        .unwrap()
        .to_string()
}

fn hashes(event: &Value, field: &str) -> Vec<String> {
    event[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} is a list: {event}"))
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn follow_without_runtime_reports_finalized_blocks_then_each_new_block() {
    let node = spawn().await;
    let client = connect(&node).await;
    call(&client, "dev_newBlock", rpc_params![json!({"count": 3})]).await;
    let mut sub = follow(&client, false).await;

    let init = sub.expect("initialized").await;
    let mut genesis_to_3 = Vec::new();
    for n in 0..=3 {
        genesis_to_3.push(hash_of(&client, n).await);
    }
    assert_eq!(hashes(&init, "finalizedBlockHashes"), genesis_to_3);
    assert!(init.get("finalizedBlockRuntime").is_none(), "{init}");

    let h4 = new_block(&client).await;
    let block = sub.expect("newBlock").await;
    assert_eq!(block["blockHash"], h4.as_str());
    assert_eq!(block["parentBlockHash"], genesis_to_3[3].as_str());
    assert!(block.get("newRuntime").is_none(), "{block}");
    assert_eq!(
        sub.expect("bestBlockChanged").await["bestBlockHash"],
        h4.as_str()
    );
    let finalized = sub.expect("finalized").await;
    assert_eq!(hashes(&finalized, "finalizedBlockHashes"), vec![h4]);
    assert_eq!(finalized["prunedBlockHashes"], json!([]));
    node.shutdown().await;
}

#[tokio::test]
async fn follow_with_runtime_reports_the_runtime_and_each_upgrade() {
    let node = spawn().await;
    let client = connect(&node).await;
    let mut sub = follow(&client, true).await;
    let init = sub.expect("initialized").await;
    let runtime = &init["finalizedBlockRuntime"];
    assert_eq!(runtime["type"], "valid", "{init}");
    assert_eq!(runtime["spec"]["specName"], "fake-node");
    assert_eq!(runtime["spec"]["specVersion"], 100);
    assert!(runtime["spec"]["apis"].is_object(), "{runtime}");
    assert!(runtime["spec"]["transactionVersion"].is_u64());

    call(&client, "fake_setRelease", rpc_params!["1.1.0"]).await;
    new_block(&client).await;
    let upgraded = sub.expect("newBlock").await;
    assert_eq!(
        upgraded["newRuntime"]["spec"]["specVersion"], 101,
        "{upgraded}"
    );
    sub.expect("bestBlockChanged").await;
    sub.expect("finalized").await;
    new_block(&client).await;
    let same = sub.expect("newBlock").await;
    assert_eq!(same["newRuntime"], Value::Null, "{same}");
    node.shutdown().await;
}

#[tokio::test]
async fn non_finalized_blocks_are_announced_after_initialized_then_the_best_once() {
    let node = spawn().await;
    let client = connect(&node).await;
    node.set_finality_lag(2);
    call(&client, "dev_newBlock", rpc_params![json!({"count": 5})]).await;
    let mut sub = follow(&client, false).await;
    let init = sub.expect("initialized").await;
    assert_eq!(
        hashes(&init, "finalizedBlockHashes").last().unwrap(),
        &hash_of(&client, 3).await
    );
    assert_eq!(
        sub.expect("newBlock").await["blockHash"],
        hash_of(&client, 4).await
    );
    assert_eq!(
        sub.expect("newBlock").await["blockHash"],
        hash_of(&client, 5).await
    );
    assert_eq!(
        sub.expect("bestBlockChanged").await["bestBlockHash"],
        hash_of(&client, 5).await
    );
    let h6 = new_block(&client).await;
    assert_eq!(sub.expect("newBlock").await["blockHash"], h6.as_str());
    sub.expect("bestBlockChanged").await;
    assert_eq!(
        hashes(&sub.expect("finalized").await, "finalizedBlockHashes"),
        vec![hash_of(&client, 4).await]
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_finality_stall_sends_no_finalized_and_the_jump_lists_every_block_in_order() {
    let node = spawn().await;
    let client = connect(&node).await;
    let mut sub = follow(&client, false).await;
    sub.expect("initialized").await;
    call(&client, "fake_stallFinality", rpc_params![true]).await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(new_block(&client).await);
        assert_eq!(
            sub.expect("newBlock").await["blockHash"],
            stalled.last().unwrap().as_str()
        );
        sub.expect("bestBlockChanged").await;
    }
    call(&client, "fake_stallFinality", rpc_params![false]).await;
    // The next event is the jump: nothing was finalized while finality stalled.
    let jump = sub.expect("finalized").await;
    assert_eq!(hashes(&jump, "finalizedBlockHashes"), stalled);
    node.shutdown().await;
}

#[tokio::test]
async fn header_body_call_and_storage_answer_for_pinned_blocks() {
    let node = spawn().await;
    let client = connect(&node).await;
    let mut sub = follow(&client, true).await;
    let init = sub.expect("initialized").await;
    let genesis = hashes(&init, "finalizedBlockHashes")[0].clone();
    let id = sub.id.clone();

    let header = call(&client, "chainHead_v1_header", rpc_params![&id, &genesis]).await;
    let bytes = hex::decode(header.as_str().unwrap().trim_start_matches("0x")).unwrap();
    assert_eq!(bytes, node.header(0).unwrap().encode());

    let body = call(&client, "chainHead_v1_body", rpc_params![&id, &genesis]).await;
    assert_eq!(body["result"], "started", "{body}");
    let done = sub.operation_event(&body["operationId"]).await;
    assert_eq!(
        done,
        json!({"event": "operationBodyDone", "operationId": body["operationId"], "value": []})
    );

    let started = call(
        &client,
        "chainHead_v1_call",
        rpc_params![&id, &genesis, "Core_version", "0x"],
    )
    .await;
    let done = sub.operation_event(&started["operationId"]).await;
    assert_eq!(done["event"], "operationCallDone", "{done}");
    // SCALE: specName first, a compact length (9 << 2) then "fake-node".
    assert!(
        done["output"]
            .as_str()
            .unwrap()
            .starts_with(&format!("0x24{}", hex::encode("fake-node"))),
        "{done}"
    );
    let started = call(
        &client,
        "chainHead_v1_call",
        rpc_params![&id, &genesis, "Nothing_here", ""],
    )
    .await;
    let failed = sub.operation_event(&started["operationId"]).await;
    assert_eq!(failed["event"], "operationError", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("Nothing_here"),
        "{failed}"
    );

    let key = format!("0x{}", hex::encode(release_key()));
    let started = call(
        &client,
        "chainHead_v1_storage",
        rpc_params![
            &id,
            &genesis,
            json!([{"key": key, "type": "value"}, {"key": "0x00", "type": "hash"}]),
            Value::Null
        ],
    )
    .await;
    assert_eq!(started["discardedItems"], 0, "{started}");
    let items = sub.operation_event(&started["operationId"]).await;
    assert_eq!(items["event"], "operationStorageItems", "{items}");
    assert_eq!(items["items"], json!([{"key": key, "value": "0x010000"}]));
    assert_eq!(
        sub.operation_event(&started["operationId"]).await["event"],
        "operationStorageDone"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn descendants_come_in_pages_resumed_by_continue() {
    let node = spawn().await;
    let client = connect(&node).await;
    let pairs: Vec<Value> = (0u8..7)
        .map(|i| json!([format!("0xbeef{i:02x}"), "0x01"]))
        .collect();
    call(&client, "dev_setStorage", rpc_params![pairs]).await;
    let hash = new_block(&client).await;
    let mut sub = follow(&client, false).await;
    sub.expect("initialized").await;
    let id = sub.id.clone();
    let started = call(
        &client,
        "chainHead_v1_storage",
        rpc_params![
            &id,
            &hash,
            json!([{"key": "0xbeef", "type": "descendantsValues"}]),
            Value::Null
        ],
    )
    .await;
    let op = started["operationId"].clone();
    let first = sub.operation_event(&op).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 5, "{first}");
    assert_eq!(
        sub.operation_event(&op).await["event"],
        "operationWaitingForContinue"
    );
    assert_eq!(
        call(
            &client,
            "chainHead_v1_continue",
            rpc_params![&id, "no-such-operation"]
        )
        .await,
        Value::Null
    );
    call(&client, "chainHead_v1_continue", rpc_params![&id, &op]).await;
    let second = sub.operation_event(&op).await;
    assert_eq!(second["items"].as_array().unwrap().len(), 2, "{second}");
    assert_eq!(
        sub.operation_event(&op).await["event"],
        "operationStorageDone"
    );
    // The operation is over: continuing it again has no effect.
    assert_eq!(
        call(&client, "chainHead_v1_continue", rpc_params![&id, &op]).await,
        Value::Null
    );
    node.shutdown().await;
}

#[tokio::test]
async fn unpinned_and_unknown_blocks_answer_the_spec_errors() {
    let node = spawn().await;
    let client = connect(&node).await;
    let mut sub = follow(&client, false).await;
    sub.expect("initialized").await;
    let id = sub.id.clone();
    let h1 = new_block(&client).await;
    let genesis = hash_of(&client, 0).await;
    let nowhere = format!("0x{}", "ab".repeat(32));

    let (code, message) =
        call_error(&client, "chainHead_v1_header", rpc_params![&id, &nowhere]).await;
    assert_eq!(code, -32801, "{message}");
    assert!(message.contains("Invalid block hash"), "{message}");
    for method in [
        "chainHead_v1_body",
        "chainHead_v1_call",
        "chainHead_v1_storage",
    ] {
        let params = match method {
            "chainHead_v1_call" => rpc_params![&id, &nowhere, "Core_version", "0x"],
            "chainHead_v1_storage" => rpc_params![
                &id,
                &nowhere,
                json!([{"key": "0x00", "type": "value"}]),
                Value::Null
            ],
            _ => rpc_params![&id, &nowhere],
        };
        assert_eq!(
            call_error(&client, method, params).await.0,
            -32801,
            "{method}"
        );
    }
    // Runtime calls need a subscription that follows the runtime.
    let (code, message) = call_error(
        &client,
        "chainHead_v1_call",
        rpc_params![&id, &genesis, "Core_version", "0x"],
    )
    .await;
    assert_eq!(code, -32802, "{message}");

    // Unpinning is all or nothing, once per block, and rejects duplicates.
    let (code, _) = call_error(
        &client,
        "chainHead_v1_unpin",
        rpc_params![&id, json!([&genesis, &nowhere])],
    )
    .await;
    assert_eq!(code, -32801);
    let (code, _) = call_error(
        &client,
        "chainHead_v1_unpin",
        rpc_params![&id, json!([&genesis, &genesis])],
    )
    .await;
    assert_eq!(code, -32804);
    call(&client, "chainHead_v1_header", rpc_params![&id, &genesis]).await;
    assert_eq!(
        call(&client, "chainHead_v1_unpin", rpc_params![&id, &genesis]).await,
        Value::Null
    );
    assert_eq!(
        call_error(&client, "chainHead_v1_header", rpc_params![&id, &genesis])
            .await
            .0,
        -32801
    );
    assert_eq!(
        call_error(&client, "chainHead_v1_unpin", rpc_params![&id, &genesis])
            .await
            .0,
        -32801
    );
    assert_eq!(
        call(
            &client,
            "chainHead_v1_unpin",
            rpc_params![&id, json!([&h1])]
        )
        .await,
        Value::Null
    );

    // Bad parameters are -32602 with a message naming the shape.
    let (code, message) =
        call_error(&client, "chainHead_v1_header", rpc_params![&id, "0x12"]).await;
    assert_eq!(code, -32602, "{message}");
    let (code, message) = call_error(
        &client,
        "chainHead_v1_storage",
        rpc_params![
            &id,
            &genesis,
            json!([{"key": "0x00", "type": "values"}]),
            Value::Null
        ],
    )
    .await;
    assert_eq!(code, -32602);
    assert!(message.contains("descendantsValues"), "{message}");
    let (code, message) = call_error(&client, "chainHead_v1_follow", rpc_params!["yes"]).await;
    assert_eq!(code, -32602, "{message}");
    node.shutdown().await;
}

#[tokio::test]
async fn an_unknown_or_ended_subscription_gets_null_or_limit_reached() {
    let node = spawn().await;
    let client = connect(&node).await;
    let mut sub = follow(&client, true).await;
    sub.expect("initialized").await;
    let id = sub.id.clone();
    let genesis = hash_of(&client, 0).await;
    sub.events.unsubscribe().await.expect("unfollow");
    for id in [id.as_str(), "no-such-subscription"] {
        assert_eq!(
            call(&client, "chainHead_v1_header", rpc_params![id, &genesis]).await,
            Value::Null
        );
        assert_eq!(
            call(&client, "chainHead_v1_body", rpc_params![id, &genesis]).await,
            json!({"result": "limitReached"})
        );
        assert_eq!(
            call(
                &client,
                "chainHead_v1_call",
                rpc_params![id, &genesis, "Core_version", "0x"]
            )
            .await,
            json!({"result": "limitReached"})
        );
        assert_eq!(
            call(&client, "chainHead_v1_unpin", rpc_params![id, &genesis]).await,
            Value::Null
        );
        assert_eq!(
            call(&client, "chainHead_v1_stopOperation", rpc_params![id, "0"]).await,
            Value::Null
        );
    }
    node.shutdown().await;
}

#[tokio::test]
async fn operations_beyond_the_limit_are_discarded_or_refused_until_one_ends() {
    let node = spawn().await;
    let client = connect(&node).await;
    let pairs: Vec<Value> = (0u8..7)
        .map(|i| json!([format!("0xbeef{i:02x}"), "0x01"]))
        .collect();
    call(&client, "dev_setStorage", rpc_params![pairs]).await;
    let hash = new_block(&client).await;
    let mut sub = follow(&client, false).await;
    sub.expect("initialized").await;
    let id = sub.id.clone();
    // 20 paged items: 16 are taken (the spec's minimum), 4 discarded, and they stay in flight
    // while the operation waits for continue.
    let items: Vec<Value> = (0..20)
        .map(|_| json!({"key": "0xbeef", "type": "descendantsHashes"}))
        .collect();
    let started = call(
        &client,
        "chainHead_v1_storage",
        rpc_params![&id, &hash, items, Value::Null],
    )
    .await;
    assert_eq!(started["discardedItems"], 4, "{started}");
    let op = started["operationId"].clone();
    assert_eq!(
        call(&client, "chainHead_v1_body", rpc_params![&id, &hash]).await,
        json!({"result": "limitReached"})
    );
    call(&client, "chainHead_v1_stopOperation", rpc_params![&id, &op]).await;
    let body = call(&client, "chainHead_v1_body", rpc_params![&id, &hash]).await;
    assert_eq!(body["result"], "started", "{body}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_connection_may_hold_four_follow_subscriptions() {
    let node = spawn().await;
    let client = connect(&node).await;
    let mut subs = Vec::new();
    for _ in 0..4 {
        subs.push(follow(&client, false).await);
    }
    let err = client
        .subscribe::<Value, _>(
            "chainHead_v1_follow",
            rpc_params![false],
            "chainHead_v1_unfollow",
        )
        .await
        .unwrap_err();
    match err {
        ClientError::Call(e) => assert_eq!(e.code(), -32800, "{e}"),
        other => panic!("expected -32800, got {other:?}"),
    }
    // Another connection has its own allowance.
    let other = connect(&node).await;
    follow(&other, false).await.expect("initialized").await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_ends_the_follow_subscription() {
    let node = spawn().await;
    let client = connect(&node).await;
    let mut sub = follow(&client, false).await;
    sub.expect("initialized").await;
    assert_eq!(node.drop_connections(), 1);
    let end = tokio::time::timeout(PATIENCE, sub.events.next())
        .await
        .expect("ends in time");
    assert!(end.is_none(), "{end:?}");
    let client = connect(&node).await;
    follow(&client, false).await.expect("initialized").await;
    node.shutdown().await;
}

#[tokio::test]
async fn faults_apply_to_the_new_methods() {
    let node = spawn().await;
    let client = connect(&node).await;
    node.set_fault("chainHead_v1_follow", FaultMode::Error)
        .unwrap();
    let err = client
        .subscribe::<Value, _>(
            "chainHead_v1_follow",
            rpc_params![false],
            "chainHead_v1_unfollow",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Call(e) if e.code() == -32000),
        "{err:?}"
    );
    node.set_fault("chainHead_v1_follow", FaultMode::Garbage)
        .unwrap();
    let mut sub = follow(&client, false).await;
    assert_eq!(sub.next().await, json!("garbage"));
    node.set_fault("chainHead_v1_follow", FaultMode::None)
        .unwrap();
    node.set_fault("chainSpec_v1_genesisHash", FaultMode::NonHex)
        .unwrap();
    assert_eq!(
        call(&client, "chainSpec_v1_genesisHash", rpc_params![]).await,
        json!("0xnot-hex")
    );
    node.set_fault("chainHead_v1_header", FaultMode::Error)
        .unwrap();
    let (code, _) = call_error(
        &client,
        "chainHead_v1_header",
        rpc_params![&sub.id, hash_of(&client, 0).await],
    )
    .await;
    assert_eq!(code, -32000);
    node.shutdown().await;
}

#[tokio::test]
async fn chain_spec_names_the_same_chain_as_system() {
    let node = spawn().await;
    let client = connect(&node).await;
    assert_eq!(
        call(&client, "chainSpec_v1_chainName", rpc_params![]).await,
        call(&client, "system_chain", rpc_params![]).await
    );
    assert_eq!(
        call(&client, "chainSpec_v1_genesisHash", rpc_params![]).await,
        hash_of(&client, 0).await
    );
    assert_eq!(
        call(&client, "chainSpec_v1_properties", rpc_params![]).await,
        call(&client, "system_properties", rpc_params![]).await
    );
    let methods = call(&client, "rpc_methods", rpc_params![]).await;
    for method in [
        "chainHead_v1_follow",
        "chainHead_v1_unfollow",
        "chainHead_v1_storage",
        "chainSpec_v1_chainName",
    ] {
        assert!(
            methods["methods"]
                .as_array()
                .unwrap()
                .contains(&json!(method)),
            "{method}"
        );
    }
    node.shutdown().await;
}

/// A bare WebSocket client that reads only when told to, so the node sees a client that stops
/// reading (jsonrpsee's client always reads, and closes a subscription it cannot buffer).
struct RawWs(TcpStream);

impl RawWs {
    fn connect(node: &FakeNodeHandle) -> RawWs {
        let mut stream = TcpStream::connect(node.addr()).expect("tcp connects");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            node.addr()
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("handshake answer");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        RawWs(stream)
    }

    /// Sends one masked text frame.
    fn send(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.0.write_all(&frame).unwrap();
    }

    /// Reads one (unmasked, unfragmented) server frame as text.
    fn read(&mut self) -> String {
        let mut head = [0u8; 2];
        self.0.read_exact(&mut head).expect("frame header");
        let len = match head[1] & 0x7f {
            126 => {
                let mut n = [0u8; 2];
                self.0.read_exact(&mut n).unwrap();
                u16::from_be_bytes(n) as usize
            }
            127 => {
                let mut n = [0u8; 8];
                self.0.read_exact(&mut n).unwrap();
                u64::from_be_bytes(n) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0; len];
        self.0.read_exact(&mut payload).unwrap();
        String::from_utf8(payload).expect("text frame")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_stop_instead_of_unbounded_buffering() {
    let node = spawn().await;
    let client = connect(&node).await;
    let mut raw = RawWs::connect(&node);
    raw.send(r#"{"jsonrpc":"2.0","id":1,"method":"chainHead_v1_follow","params":[false]}"#);
    let answer: Value = serde_json::from_str(&raw.read()).unwrap();
    let id = answer["result"]
        .as_str()
        .expect("subscription id")
        .to_string();
    let genesis = hash_of(&client, 0).await;
    // Far more events than the connection and the socket buffers hold; the client reads none.
    call(
        &client,
        "dev_newBlock",
        rpc_params![json!({"count": 50_000})],
    )
    .await;
    // The node gives up on the subscription after its grace: calls on it then answer as for an
    // unknown subscription. There is no event to await here (the client is not reading), so poll.
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    while call(&client, "chainHead_v1_header", rpc_params![&id, &genesis]).await != Value::Null {
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscription never stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // When the client reads again it finds what was already on its way, then `stop`, and the
    // blocks after the gap are never sent.
    let last = tokio::task::spawn_blocking(move || {
        let mut events = 0u64;
        loop {
            let frame: Value = serde_json::from_str(&raw.read()).unwrap();
            let event = frame["params"]["result"].clone();
            if event["event"] == "stop" {
                return (events, event);
            }
            events += 1;
        }
    })
    .await
    .unwrap();
    assert!(last.0 < 100_000, "stopped after {} events", last.0);
    node.shutdown().await;
}

#[tokio::test]
async fn a_client_that_unpins_follows_a_bulk_build_past_the_pin_limit() {
    let node = spawn().await;
    let client = connect(&node).await;
    let mut sub = follow(&client, false).await;
    let init = sub.expect("initialized").await;
    call(
        &client,
        "chainHead_v1_unpin",
        rpc_params![&sub.id, init["finalizedBlockHashes"].clone()],
    )
    .await;
    // More finalized blocks than a subscription may keep pinned, all at once.
    let head = call(&client, "dev_newBlock", rpc_params![json!({"count": 1000})]).await;
    let mut finalized = Vec::new();
    while finalized.last() != Some(&head) {
        let event = sub.next().await;
        assert_ne!(
            event["event"],
            "stop",
            "stopped after {} finalized",
            finalized.len()
        );
        if event["event"] == "finalized" {
            let hashes = event["finalizedBlockHashes"].clone();
            call(
                &client,
                "chainHead_v1_unpin",
                rpc_params![&sub.id, hashes.clone()],
            )
            .await;
            finalized.extend(hashes.as_array().unwrap().iter().cloned());
        }
    }
    assert_eq!(finalized.len(), 1000);
    node.shutdown().await;
}
