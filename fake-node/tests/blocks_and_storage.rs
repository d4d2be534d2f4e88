//! Blocks and storage as client libraries read them, over a real WebSocket: `chain_getBlock`,
//! `chain_subscribeAllHeads`, key listings, hashes and sizes, `state_queryStorage(At)` and
//! `state_subscribeStorage` across a batch of blocks built by one `dev_newBlock` call.

use std::time::Duration;

use engine_shim::storage_key::release_key;
use fake_node::system_storage::SystemItem;
use fake_node::{FakeNode, FakeNodeConfig, FakeNodeHandle, FaultMode, Scenario};
use jsonrpsee::core::client::{ClientT, Error as ClientError, Subscription, SubscriptionClientT};
use jsonrpsee::core::params::ArrayParams;
use jsonrpsee::rpc_params;
use jsonrpsee_ws_client::{WsClient, WsClientBuilder};
use serde_json::{json, Value};

/// Upper bound for any single await, so a broken node fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(10);

/// Keys under one made-up prefix, written by [`SCENARIO`]'s steps.
const K1: &str = "0xaaaa01";
const K2: &str = "0xaaaa02";
const K3: &str = "0xaaaa03";
const OTHER: &str = "0xbb";

/// Genesis holds K1 and K2; block 2 changes K1, block 3 undoes it, block 4 writes only OTHER,
/// block 5 deletes K2 and adds K3.
const SCENARIO: &str = r#"
release = "1.0.0"
[[step]]
at = 0
storage = [{ key = "0xaaaa01", value = "0x00" }, { key = "0xaaaa02", value = "0x0a0b" }]
[[step]]
at = 2
storage = [{ key = "0xaaaa01", value = "0x01" }]
[[step]]
at = 3
storage = [{ key = "0xaaaa01", value = "0x00" }]
[[step]]
at = 4
storage = [{ key = "0xbb", value = "0xff" }]
[[step]]
at = 5
storage = [{ key = "0xaaaa02" }, { key = "0xaaaa03", value = "0x030303" }]
"#;

async fn spawn_scripted() -> FakeNodeHandle {
    let scenario = Scenario::from_toml(SCENARIO).expect("scenario parses");
    FakeNode::spawn(FakeNodeConfig::default().with_scenario(scenario))
        .await
        .expect("fake node starts")
}

async fn connect(node: &FakeNodeHandle) -> WsClient {
    WsClientBuilder::default()
        .build(node.url())
        .await
        .expect("client connects")
}

async fn try_call(
    client: &WsClient,
    method: &str,
    params: ArrayParams,
) -> Result<Value, ClientError> {
    tokio::time::timeout(PATIENCE, client.request(method, params))
        .await
        .expect("answer in time")
}

async fn call(client: &WsClient, method: &str, params: ArrayParams) -> Value {
    try_call(client, method, params)
        .await
        .unwrap_or_else(|e| panic!("{method} failed: {e}"))
}

/// The JSON-RPC error code and message of a call that must fail.
async fn call_error(client: &WsClient, method: &str, params: ArrayParams) -> (i32, String) {
    match try_call(client, method, params).await {
        Err(ClientError::Call(error)) => (error.code(), error.message().to_string()),
        other => panic!("{method} should fail with a JSON-RPC error, got {other:?}"),
    }
}

async fn subscribe(
    client: &WsClient,
    method: &str,
    params: ArrayParams,
    unsubscribe: &str,
) -> Subscription<Value> {
    client
        .subscribe(method, params, unsubscribe)
        .await
        .unwrap_or_else(|e| panic!("{method} failed: {e}"))
}

async fn next(sub: &mut Subscription<Value>) -> Value {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("notification in time")
        .expect("subscription open")
        .expect("notification is JSON")
}

fn number(header: &Value) -> u64 {
    engine_shim::block::parse_block_number(header["number"].as_str().expect("hex number")).unwrap()
}

fn hash_of(node: &FakeNodeHandle, number: u64) -> String {
    node.hash_of(number).expect("block exists").to_string()
}

const UNKNOWN_HASH: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";

#[tokio::test]
async fn get_block_has_the_header_no_extrinsics_and_no_justifications() {
    let node = spawn_scripted().await;
    let client = connect(&node).await;
    call(&client, "dev_newBlock", rpc_params![json!({"count": 3})]).await;
    let second = hash_of(&node, 2);
    let block = call(&client, "chain_getBlock", rpc_params![&second]).await;
    assert_eq!(
        block,
        json!({
            "block": {
                "header": call(&client, "chain_getHeader", rpc_params![&second]).await,
                "extrinsics": [],
            },
            "justifications": null,
        })
    );
    // No hash (or null) means the best block.
    let best = call(&client, "chain_getBlock", rpc_params![]).await;
    assert_eq!(number(&best["block"]["header"]), 3);
    let best_null = call(&client, "chain_getBlock", rpc_params![Value::Null]).await;
    assert_eq!(best_null, best);
    // An unknown hash is null, not an error and not a made-up block; a malformed one is refused.
    assert_eq!(
        call(&client, "chain_getBlock", rpc_params![UNKNOWN_HASH]).await,
        Value::Null
    );
    let (code, message) = call_error(&client, "chain_getBlock", rpc_params!["0x12"]).await;
    assert_eq!(code, -32602, "{message}");
    node.shutdown().await;
}

#[tokio::test]
async fn all_heads_start_with_the_best_block_and_report_every_block_of_a_batch() {
    let node = spawn_scripted().await;
    let client = connect(&node).await;
    call(&client, "dev_newBlock", rpc_params![json!({"count": 2})]).await;
    let mut heads = subscribe(
        &client,
        "chain_subscribeAllHeads",
        rpc_params![],
        "chain_unsubscribeAllHeads",
    )
    .await;
    assert_eq!(
        number(&next(&mut heads).await),
        2,
        "the current best head comes first"
    );
    call(&client, "dev_newBlock", rpc_params![json!({"count": 5})]).await;
    for expected in 3..=7 {
        let header = next(&mut heads).await;
        assert_eq!(number(&header), expected);
        assert_eq!(header["parentHash"], json!(hash_of(&node, expected - 1)));
    }
    heads.unsubscribe().await.expect("unsubscribes");
    node.shutdown().await;
}

#[tokio::test]
async fn keys_are_listed_in_order_page_by_page_at_the_block_asked() {
    let node = spawn_scripted().await;
    let client = connect(&node).await;
    call(&client, "dev_newBlock", rpc_params![json!({"count": 5})]).await;
    let keys = |v: Value| -> Vec<String> { serde_json::from_value(v).expect("a list of keys") };
    // Best block (#5): K1 and K3 (K2 was deleted), in key order.
    let page = call(&client, "state_getKeysPaged", rpc_params!["0xaaaa", 1]).await;
    assert_eq!(keys(page), [K1]);
    let page = call(&client, "state_getKeysPaged", rpc_params!["0xaaaa", 10, K1]).await;
    assert_eq!(
        keys(page),
        [K3],
        "paging goes on strictly after the start key"
    );
    let page = call(&client, "state_getKeysPaged", rpc_params!["0xaaaa", 10, K3]).await;
    assert_eq!(keys(page), Vec::<String>::new());
    // At genesis: K1 and K2. The alias and the unpaged call answer the same.
    let genesis = hash_of(&node, 0);
    let page = call(
        &client,
        "state_getKeysPagedAt",
        rpc_params!["0xaaaa", 10, Value::Null, &genesis],
    )
    .await;
    assert_eq!(keys(page), [K1, K2]);
    let all = call(&client, "state_getKeys", rpc_params!["0xaaaa", &genesis]).await;
    assert_eq!(keys(all), [K1, K2]);
    // No prefix lists everything, the release key included.
    let everything = keys(
        call(
            &client,
            "state_getKeysPaged",
            rpc_params![Value::Null, 1000],
        )
        .await,
    );
    let release = format!("0x{}", hex::encode(release_key()));
    assert!(everything.contains(&release), "{everything:?}");
    assert!(
        everything.windows(2).all(|w| w[0] < w[1]),
        "sorted: {everything:?}"
    );
    // Substrate's bounds and errors.
    let (code, message) = call_error(&client, "state_getKeysPaged", rpc_params!["0x", 1001]).await;
    assert_eq!(
        (code, message.as_str()),
        (4002, "count exceeds maximum value. value: 1001, max: 1000")
    );
    let (code, _) = call_error(&client, "state_getKeysPaged", rpc_params!["0x"]).await;
    assert_eq!(code, -32602, "count is required");
    let (code, message) = call_error(
        &client,
        "state_getKeysPaged",
        rpc_params!["0x", 10, Value::Null, UNKNOWN_HASH],
    )
    .await;
    assert_eq!(code, 4003, "{message}");
    node.shutdown().await;
}

#[tokio::test]
async fn storage_hash_and_size_of_values_and_maps() {
    let node = spawn_scripted().await;
    let client = connect(&node).await;
    let hash = call(&client, "state_getStorageHash", rpc_params![K2]).await;
    let expected = fake_node::chain::blake2_256(&[0x0a, 0x0b]);
    assert_eq!(hash, json!(format!("0x{}", hex::encode(expected))));
    assert_eq!(
        call(&client, "state_getStorageHash", rpc_params![K3]).await,
        Value::Null
    );
    assert_eq!(
        call(&client, "state_getStorageSize", rpc_params![K2]).await,
        json!(2)
    );
    // A prefix with no value of its own sizes the whole map under it.
    assert_eq!(
        call(&client, "state_getStorageSize", rpc_params!["0xaaaa"]).await,
        json!(3)
    );
    assert_eq!(
        call(&client, "state_getStorageSize", rpc_params![OTHER]).await,
        Value::Null
    );
    call(&client, "dev_newBlock", rpc_params![json!({"count": 5})]).await;
    let genesis = hash_of(&node, 0);
    assert_eq!(
        call(&client, "state_getStorageSizeAt", rpc_params![K3, &genesis]).await,
        Value::Null
    );
    assert_eq!(
        call(&client, "state_getStorageSize", rpc_params![K3]).await,
        json!(3)
    );
    assert_eq!(
        call(&client, "state_getStorageHashAt", rpc_params![K2, &genesis]).await,
        hash
    );
    let (code, _) = call_error(
        &client,
        "state_getStorageSize",
        rpc_params![K1, UNKNOWN_HASH],
    )
    .await;
    assert_eq!(code, 4003);
    node.shutdown().await;
}

#[tokio::test]
async fn query_storage_reports_values_then_changes_and_refuses_bad_ranges() {
    let node = spawn_scripted().await;
    let client = connect(&node).await;
    call(&client, "dev_newBlock", rpc_params![json!({"count": 6})]).await;
    let h = |n| hash_of(&node, n);
    // At one block: every key asked for, absent ones as null, in the order asked.
    let at = call(
        &client,
        "state_queryStorageAt",
        rpc_params![[K3, K2, K1], h(1)],
    )
    .await;
    assert_eq!(
        at,
        json!([{ "block": h(1), "changes": [[K3, null], [K2, "0x0a0b"], [K1, "0x00"]] }])
    );
    let best = call(&client, "state_queryStorageAt", rpc_params![[K1]]).await;
    assert_eq!(best, json!([{ "block": h(6), "changes": [[K1, "0x00"]] }]));
    assert_eq!(
        call(
            &client,
            "state_queryStorageAt",
            rpc_params![Vec::<String>::new()]
        )
        .await,
        json!([])
    );
    // Over a range: everything at `from`, then only what differs from the block before.
    let range = call(
        &client,
        "state_queryStorage",
        rpc_params![[K1, K2], h(1), h(6)],
    )
    .await;
    assert_eq!(
        range,
        json!([
            { "block": h(1), "changes": [[K1, "0x00"], [K2, "0x0a0b"]] },
            { "block": h(2), "changes": [[K1, "0x01"]] },
            { "block": h(3), "changes": [[K1, "0x00"]] },
            { "block": h(5), "changes": [[K2, null]] },
        ])
    );
    let to_best = call(&client, "state_queryStorage", rpc_params![[K1, K2], h(1)]).await;
    assert_eq!(to_best, range, "`to` defaults to the best block");
    let (code, message) =
        call_error(&client, "state_queryStorage", rpc_params![[K1], h(4), h(2)]).await;
    assert_eq!(code, 4001);
    assert!(message.ends_with("from number > to number"), "{message}");
    let (code, message) = call_error(
        &client,
        "state_queryStorageAt",
        rpc_params![[K1], UNKNOWN_HASH],
    )
    .await;
    assert_eq!(code, 4001);
    assert!(message.contains(UNKNOWN_HASH), "{message}");
    node.shutdown().await;
}

#[tokio::test]
async fn subscribe_storage_sends_current_values_then_each_block_that_wrote_a_watched_key() {
    let node = spawn_scripted().await;
    let client = connect(&node).await;
    call(&client, "dev_newBlock", rpc_params![]).await;
    let mut watch = subscribe(
        &client,
        "state_subscribeStorage",
        rpc_params![[K1, K3]],
        "state_unsubscribeStorage",
    )
    .await;
    assert_eq!(
        next(&mut watch).await,
        json!({ "block": hash_of(&node, 1), "changes": [[K1, "0x00"], [K3, null]] }),
        "current values at the best block first"
    );
    // One call builds blocks 2–5: K1 set at #2 and undone at #3, nothing watched at #4, K3 at #5.
    call(&client, "dev_newBlock", rpc_params![json!({"count": 4})]).await;
    assert_eq!(
        next(&mut watch).await,
        json!({ "block": hash_of(&node, 2), "changes": [[K1, "0x01"]] })
    );
    assert_eq!(
        next(&mut watch).await,
        json!({ "block": hash_of(&node, 3), "changes": [[K1, "0x00"]] })
    );
    assert_eq!(
        next(&mut watch).await,
        json!({ "block": hash_of(&node, 5), "changes": [[K3, "0x030303"]] })
    );
    // A write of the value a key already has is still a write, as on a real node.
    call(
        &client,
        "dev_setStorage",
        rpc_params![json!([[K1, "0x00"]])],
    )
    .await;
    call(&client, "dev_newBlock", rpc_params![]).await;
    assert_eq!(
        next(&mut watch).await,
        json!({ "block": hash_of(&node, 6), "changes": [[K1, "0x00"]] })
    );
    watch.unsubscribe().await.expect("unsubscribes");
    node.shutdown().await;
}

#[tokio::test]
async fn subscribe_storage_without_keys_reports_every_write_and_no_initial_values() {
    let node = spawn_scripted().await;
    let client = connect(&node).await;
    let mut everything = subscribe(
        &client,
        "state_subscribeStorage",
        rpc_params![],
        "state_unsubscribeStorage",
    )
    .await;
    call(&client, "dev_newBlock", rpc_params![json!({"count": 5})]).await;
    // Every block writes System::Number, ParentHash and its parent's BlockHash entry, as a runtime
    // does; block 1 writes nothing else.
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next(&mut everything).await);
    }
    let blocks: Vec<Value> = (1..=5).map(|n| json!(hash_of(&node, n))).collect();
    assert_eq!(
        seen.iter().map(|n| n["block"].clone()).collect::<Vec<_>>(),
        blocks
    );
    let number_key = format!("0x{}", hex::encode(SystemItem::Number.key()));
    for notification in &seen {
        let changes = notification["changes"].as_array().expect("a list");
        assert!(
            changes.iter().any(|c| c[0] == json!(number_key)),
            "{notification}"
        );
    }
    let stored = |notification: &Value| -> Value {
        notification["changes"]
            .as_array()
            .expect("a list")
            .iter()
            .filter(|change| {
                let key =
                    hex::decode(change[0].as_str().unwrap().trim_start_matches("0x")).unwrap();
                SystemItem::from_key(&key).is_none()
            })
            .cloned()
            .collect()
    };
    assert_eq!(stored(&seen[0]), json!([]));
    assert_eq!(stored(&seen[3]), json!([[OTHER, "0xff"]]));
    assert_eq!(stored(&seen[4]), json!([[K2, null], [K3, "0x030303"]]));
    let (code, _) = match client
        .subscribe::<Value, _>(
            "state_subscribeStorage",
            rpc_params!["0x01"],
            "state_unsubscribeStorage",
        )
        .await
    {
        Err(ClientError::Call(error)) => (error.code(), error.message().to_string()),
        other => panic!("a key that is not in a list must be refused, got {other:?}"),
    };
    assert_eq!(code, -32602);
    node.shutdown().await;
}

#[tokio::test]
async fn code_changes_with_the_runtime_and_new_methods_are_listed_and_faultable() {
    let node = spawn_scripted().await;
    let client = connect(&node).await;
    // fake-node has no Wasm runtime: `:code` holds a stand-in that says so and changes with the
    // runtime, so clients that tell runtimes apart by its hash see each upgrade.
    let code_key = format!("0x{}", hex::encode(b":code"));
    let code = call(&client, "state_getStorage", rpc_params![&code_key]).await;
    let text = hex::decode(code.as_str().unwrap().trim_start_matches("0x")).unwrap();
    assert!(String::from_utf8(text).unwrap().contains("not Wasm"));
    let hash_before = call(&client, "state_getStorageHash", rpc_params![&code_key]).await;
    call(&client, "fake_setRelease", rpc_params!["9.9.9"]).await;
    call(&client, "dev_newBlock", rpc_params![]).await;
    let hash_after = call(&client, "state_getStorageHash", rpc_params![&code_key]).await;
    assert_ne!(hash_before, hash_after, "a new runtime has new code");
    let methods = call(&client, "rpc_methods", rpc_params![]).await;
    for method in [
        "chain_getBlock",
        "chain_subscribeAllHeads",
        "chain_unsubscribeAllHeads",
        "state_getKeys",
        "state_getKeysPaged",
        "state_getKeysPagedAt",
        "state_getStorageHash",
        "state_getStorageSize",
        "state_queryStorage",
        "state_queryStorageAt",
        "state_subscribeStorage",
        "state_unsubscribeStorage",
    ] {
        assert!(
            methods["methods"]
                .as_array()
                .unwrap()
                .contains(&json!(method)),
            "rpc_methods lacks {method}"
        );
    }
    node.set_fault("chain_getBlock", FaultMode::Error).unwrap();
    let (code, _) = call_error(&client, "chain_getBlock", rpc_params![]).await;
    assert_eq!(code, -32000);
    node.set_fault("state_getKeysPagedAt", FaultMode::Garbage)
        .unwrap();
    assert_eq!(
        call(&client, "state_getKeysPaged", rpc_params!["0x", 10]).await,
        json!("garbage")
    );
    node.set_fault("state_subscribeStorage", FaultMode::Error)
        .unwrap();
    assert!(client
        .subscribe::<Value, _>(
            "state_subscribeStorage",
            rpc_params![[K1]],
            "state_unsubscribeStorage"
        )
        .await
        .is_err());
    node.shutdown().await;
}
