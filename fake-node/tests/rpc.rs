//! The fake node seen from a real WebSocket client, in-process: what a follower of the chain
//! relies on (stable hashes, old values at old blocks, finalized-first subscriptions, jumps) and
//! the faults tests inject (garbage, errors, hangs, dropped connections).

use std::time::Duration;

use engine_shim::storage_key::release_key;
use engine_shim::version::SemVer;
use fake_node::{FakeNode, FakeNodeConfig, FakeNodeHandle, FaultMode, Scenario};
use jsonrpsee::core::client::{ClientT, Subscription, SubscriptionClientT, SubscriptionKind};
use jsonrpsee::rpc_params;
use jsonrpsee::types::SubscriptionId;
use jsonrpsee_ws_client::{WsClient, WsClientBuilder};
use serde_json::{json, Value};

/// Upper bound for any single await, so a broken node fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(10);

fn release_key_hex() -> String {
    format!("0x{}", hex::encode(release_key()))
}

async fn spawn(config: FakeNodeConfig) -> FakeNodeHandle {
    FakeNode::spawn(config).await.expect("fake node starts")
}

async fn connect(node: &FakeNodeHandle) -> WsClient {
    WsClientBuilder::default()
        .build(node.url())
        .await
        .expect("client connects")
}

async fn call(
    client: &WsClient,
    method: &str,
    params: jsonrpsee::core::params::ArrayParams,
) -> Value {
    tokio::time::timeout(PATIENCE, client.request(method, params))
        .await
        .expect("answer in time")
        .unwrap_or_else(|e| panic!("{method} failed: {e}"))
}

async fn subscribe(client: &WsClient, method: &str, unsubscribe: &str) -> Subscription<Value> {
    client
        .subscribe(method, rpc_params![], unsubscribe)
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

#[tokio::test]
async fn same_scenario_gives_the_same_hashes_on_every_run() {
    let scenario = Scenario::from_toml(include_str!("../scenarios/upgrade.toml")).unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        // Manual blocks: the scenario's timer is replaced, its steps still fire.
        let node = spawn(FakeNodeConfig {
            block_time: Duration::ZERO,
            ..FakeNodeConfig::default().with_scenario(scenario.clone())
        })
        .await;
        let client = connect(&node).await;
        let head = call(&client, "dev_newBlock", rpc_params![json!({"count": 30})]).await;
        let mut hashes = Vec::new();
        for n in 0..=30u64 {
            hashes.push(call(&client, "chain_getBlockHash", rpc_params![n]).await);
        }
        assert_eq!(hashes[30], head);
        runs.push(hashes);
        node.shutdown().await;
    }
    assert_eq!(runs[0], runs[1]);
}

#[tokio::test]
async fn old_blocks_keep_their_old_values() {
    let node = spawn(FakeNodeConfig::default()).await;
    let client = connect(&node).await;
    let genesis = call(&client, "chain_getBlockHash", rpc_params![0]).await;
    call(&client, "fake_setRelease", rpc_params!["1.1.0"]).await;
    // Applies from the next block, not the current one.
    let before = call(&client, "state_getStorage", rpc_params![release_key_hex()]).await;
    assert_eq!(before, json!("0x010000"));
    let upgrade = call(&client, "dev_newBlock", rpc_params![]).await;
    let key = release_key_hex();
    assert_eq!(
        call(&client, "state_getStorage", rpc_params![&key, &upgrade]).await,
        json!("0x010100")
    );
    assert_eq!(
        call(&client, "state_getStorageAt", rpc_params![&key, &genesis]).await,
        json!("0x010000")
    );
    // Raw values (here a malformed 2-byte release) and removal.
    call(
        &client,
        "dev_setStorage",
        rpc_params![json!([[&key, "0x0102"]])],
    )
    .await;
    let malformed = call(&client, "dev_newBlock", rpc_params![]).await;
    call(
        &client,
        "dev_setStorage",
        rpc_params![json!([[&key, null]])],
    )
    .await;
    let removed = call(&client, "dev_newBlock", rpc_params![]).await;
    assert_eq!(
        call(&client, "state_getStorage", rpc_params![&key, &malformed]).await,
        json!("0x0102")
    );
    assert_eq!(
        call(&client, "state_getStorage", rpc_params![&key, &removed]).await,
        Value::Null
    );
    // The runtime version moved with each change of the release.
    let v0 = call(&client, "state_getRuntimeVersion", rpc_params![&genesis]).await;
    let v1 = call(&client, "state_getRuntimeVersion", rpc_params![&upgrade]).await;
    assert_eq!(
        v1["specVersion"].as_u64(),
        v0["specVersion"].as_u64().map(|v| v + 1)
    );
    node.shutdown().await;
}

#[tokio::test]
async fn unknown_blocks_give_null_or_an_error_never_data() {
    let node = spawn(FakeNodeConfig::default()).await;
    let client = connect(&node).await;
    let nowhere = format!("0x{}", "ab".repeat(32));
    assert_eq!(
        call(&client, "chain_getBlockHash", rpc_params![5]).await,
        Value::Null
    );
    assert_eq!(
        call(&client, "chain_getBlockHash", rpc_params!["0x5"]).await,
        Value::Null
    );
    assert_eq!(
        call(&client, "chain_getHeader", rpc_params![&nowhere]).await,
        Value::Null
    );
    let err = client
        .request::<Value, _>("state_getStorage", rpc_params![release_key_hex(), &nowhere])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownBlock"), "{err}");
    let err = client
        .request::<Value, _>("chain_getHeader", rpc_params!["0x1234"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("32 bytes"), "{err}");
    node.shutdown().await;
}

#[tokio::test]
async fn standard_methods_answer_like_a_node() {
    let node = spawn(FakeNodeConfig::default()).await;
    let client = connect(&node).await;
    let health = call(&client, "system_health", rpc_params![]).await;
    assert_eq!(health["isSyncing"], false);
    assert!(health["peers"].is_u64() && health["shouldHavePeers"].is_boolean());
    node.set_syncing(true);
    assert_eq!(
        call(&client, "system_health", rpc_params![]).await["isSyncing"],
        true
    );
    assert_eq!(
        call(&client, "system_chain", rpc_params![]).await,
        "fake-node"
    );
    assert!(call(&client, "system_properties", rpc_params![])
        .await
        .is_object());
    let methods = call(&client, "rpc_methods", rpc_params![]).await;
    let methods: Vec<&str> = methods["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for expected in [
        "chain_subscribeFinalisedHeads",
        "chain_unsubscribeFinalizedHeads",
        "state_getStorageAt",
        "dev_newBlock",
        "fake_setFault",
        "rpc_methods",
    ] {
        assert!(
            methods.contains(&expected),
            "{expected} missing from {methods:?}"
        );
    }
    let header = call(&client, "chain_getHeader", rpc_params![]).await;
    assert_eq!(header["number"], "0x0");
    assert_eq!(header["digest"], json!({"logs": []}));
    node.new_blocks(26);
    let header = call(&client, "chain_getHeader", rpc_params![]).await;
    assert_eq!(header["number"], "0x1a");
    let hash = call(&client, "chain_getBlockHash", rpc_params![]).await;
    assert_eq!(hash, json!(node.best().hash.to_string()));
    assert_eq!(
        call(&client, "chain_getFinalisedHead", rpc_params![]).await,
        json!(node.finalized().hash.to_string())
    );
    node.shutdown().await;
}

#[tokio::test]
async fn finalized_subscription_sends_the_current_head_first_then_jumps() {
    let node = spawn(FakeNodeConfig {
        finality_lag: 1,
        ..FakeNodeConfig::default()
    })
    .await;
    node.new_blocks(4);
    let client = connect(&node).await;
    let mut finalized = subscribe(
        &client,
        "chain_subscribeFinalizedHeads",
        "chain_unsubscribeFinalizedHeads",
    )
    .await;
    match finalized.kind() {
        SubscriptionKind::Subscription(SubscriptionId::Str(id)) => assert!(!id.is_empty()),
        other => panic!("subscription ids must be strings, got {other:?}"),
    }
    assert_eq!(number(&next(&mut finalized).await), 3);

    node.new_blocks(1);
    assert_eq!(number(&next(&mut finalized).await), 4);

    call(&client, "fake_stallFinality", rpc_params![true]).await;
    node.new_blocks(5);
    assert_eq!(node.finalized().number, 4);
    call(&client, "fake_stallFinality", rpc_params![false]).await;
    // One notification for the jump from #4 to #9: the blocks in between are skipped.
    let jumped = next(&mut finalized).await;
    assert_eq!(number(&jumped), 9);
    let hash = call(&client, "chain_getBlockHash", rpc_params![9]).await;
    assert_eq!(
        call(&client, "chain_getHeader", rpc_params![hash]).await,
        jumped
    );
    node.new_blocks(1);
    assert_eq!(number(&next(&mut finalized).await), 10);

    // Explicit finalization and a smaller lag also move finality.
    call(&client, "fake_stallFinality", rpc_params![true]).await;
    node.new_blocks(3); // best #14
    call(&client, "fake_finalize", rpc_params![12]).await;
    assert_eq!(number(&next(&mut finalized).await), 12);
    call(&client, "fake_stallFinality", rpc_params![false]).await;
    assert_eq!(number(&next(&mut finalized).await), 13);
    call(&client, "fake_setFinalityLag", rpc_params![0]).await;
    assert_eq!(number(&next(&mut finalized).await), 14);
    node.shutdown().await;
}

#[tokio::test]
async fn new_heads_come_one_by_one_and_british_aliases_work() {
    let node = spawn(FakeNodeConfig::default()).await;
    let client = connect(&node).await;
    let mut heads = subscribe(
        &client,
        "chain_subscribeNewHeads",
        "chain_unsubscribeNewHeads",
    )
    .await;
    let mut british = subscribe(
        &client,
        "chain_subscribeFinalisedHeads",
        "chain_unsubscribeFinalisedHeads",
    )
    .await;
    assert_eq!(number(&next(&mut heads).await), 0);
    assert_eq!(number(&next(&mut british).await), 0);
    call(&client, "dev_newBlock", rpc_params![json!({"count": 600})]).await;
    for expected in 1..=600 {
        assert_eq!(number(&next(&mut heads).await), expected);
        assert_eq!(number(&next(&mut british).await), expected);
    }
    heads.unsubscribe().await.unwrap();
    british.unsubscribe().await.unwrap();
    node.shutdown().await;
}

#[tokio::test]
async fn faults_garbage_errors_and_hangs() {
    let node = spawn(FakeNodeConfig::default()).await;
    let client = connect(&node).await;
    let key = release_key_hex();

    call(
        &client,
        "fake_setFault",
        rpc_params![json!({"method": "state_getStorageAt", "mode": "garbage"})],
    )
    .await;
    assert_eq!(
        call(&client, "state_getStorage", rpc_params![&key]).await,
        json!(42)
    );
    node.set_fault("state_getStorage", FaultMode::NonHex)
        .unwrap();
    assert_eq!(
        call(&client, "state_getStorage", rpc_params![&key]).await,
        json!("0xnot-hex")
    );
    call(
        &client,
        "fake_setFault",
        rpc_params!["state_getStorage", "none"],
    )
    .await;
    assert_eq!(
        call(&client, "state_getStorage", rpc_params![&key]).await,
        json!("0x010000")
    );

    node.set_fault("chain_subscribeFinalizedHeads", FaultMode::Error)
        .unwrap();
    let refused = client
        .subscribe::<Value, _>(
            "chain_subscribeFinalisedHeads",
            rpc_params![],
            "chain_unsubscribeFinalisedHeads",
        )
        .await;
    assert!(refused.is_err());
    node.set_fault("chain_subscribeFinalizedHeads", FaultMode::Garbage)
        .unwrap();
    let mut finalized = subscribe(
        &client,
        "chain_subscribeFinalizedHeads",
        "chain_unsubscribeFinalizedHeads",
    )
    .await;
    assert_eq!(next(&mut finalized).await, json!("garbage"));
    node.set_fault("chain_subscribeFinalizedHeads", FaultMode::None)
        .unwrap();
    node.new_blocks(1);
    assert_eq!(number(&next(&mut finalized).await), 1);

    // A hung call answers once the fault is cleared.
    node.set_fault("system_health", FaultMode::Hang).unwrap();
    let hung = client.request::<Value, _>("system_health", rpc_params![]);
    tokio::pin!(hung);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut hung)
            .await
            .is_err(),
        "a hung method must not answer"
    );
    node.set_fault("system_health", FaultMode::None).unwrap();
    let health = tokio::time::timeout(PATIENCE, hung).await.unwrap().unwrap();
    assert_eq!(health["isSyncing"], false);

    let err = client
        .request::<Value, _>("fake_setFault", rpc_params!["dev_newBlock", "error"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot be faulted"), "{err}");
    node.shutdown().await;
}

#[tokio::test]
async fn dropped_connections_end_subscriptions_and_the_node_serves_on() {
    let node = spawn(FakeNodeConfig::default()).await;
    let follower = connect(&node).await;
    let control = connect(&node).await;
    let mut finalized = subscribe(
        &follower,
        "chain_subscribeFinalizedHeads",
        "chain_unsubscribeFinalizedHeads",
    )
    .await;
    next(&mut finalized).await;
    // The caller of fake_dropConnections keeps its own connection and gets the count.
    assert_eq!(
        call(&control, "fake_dropConnections", rpc_params![]).await,
        json!(1)
    );
    let ended = tokio::time::timeout(PATIENCE, finalized.next())
        .await
        .unwrap();
    assert!(ended.is_none(), "subscription must end, got {ended:?}");
    assert!(follower
        .request::<Value, _>("system_health", rpc_params![])
        .await
        .is_err());
    assert_eq!(
        call(&control, "system_chain", rpc_params![]).await,
        "fake-node"
    );

    // A fresh client follows on; then the library handle drops everyone.
    let again = connect(&node).await;
    let mut finalized = subscribe(
        &again,
        "chain_subscribeFinalizedHeads",
        "chain_unsubscribeFinalizedHeads",
    )
    .await;
    node.new_blocks(2);
    assert_eq!(number(&next(&mut finalized).await), 0);
    assert_eq!(number(&next(&mut finalized).await), 1);
    assert_eq!(node.drop_connections(), 2);
    assert!(tokio::time::timeout(PATIENCE, control.on_disconnect())
        .await
        .is_ok());
    node.shutdown().await;
}

#[tokio::test]
async fn scripted_drop_spares_the_dev_new_block_caller() {
    let scenario = Scenario::from_toml("[[step]]\nat = 2\ndrop_connections = true\n").unwrap();
    let node = spawn(FakeNodeConfig::default().with_scenario(scenario)).await;
    let follower = connect(&node).await;
    let control = connect(&node).await;
    let head = call(&control, "dev_newBlock", rpc_params![json!({"count": 3})]).await;
    assert_eq!(head, json!(node.best().hash.to_string()));
    assert!(tokio::time::timeout(PATIENCE, follower.on_disconnect())
        .await
        .is_ok());
    assert_eq!(
        call(&control, "fake_status", rpc_params![]).await["best"]["number"],
        3
    );
    node.shutdown().await;
}

#[tokio::test]
async fn restarts_on_the_same_port_right_after_shutdown() {
    let node = spawn(FakeNodeConfig::default()).await;
    let port = node.port();
    let client = connect(&node).await;
    let mut finalized = subscribe(
        &client,
        "chain_subscribeFinalizedHeads",
        "chain_unsubscribeFinalizedHeads",
    )
    .await;
    next(&mut finalized).await;
    node.shutdown().await;
    assert!(tokio::time::timeout(PATIENCE, finalized.next())
        .await
        .unwrap()
        .is_none());

    let node = spawn(FakeNodeConfig {
        port,
        release: Some(SemVer::new(2, 0, 0)),
        ..FakeNodeConfig::default()
    })
    .await;
    let client = connect(&node).await;
    assert_eq!(
        call(&client, "state_getStorage", rpc_params![release_key_hex()]).await,
        json!("0x020000")
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_node_without_a_release_has_no_value() {
    let node = spawn(FakeNodeConfig {
        release: None,
        ..FakeNodeConfig::default()
    })
    .await;
    let client = connect(&node).await;
    assert_eq!(
        call(&client, "state_getStorage", rpc_params![release_key_hex()]).await,
        Value::Null
    );
    let status = call(&client, "fake_status", rpc_params![]).await;
    assert_eq!(status["release"], Value::Null);
    assert_eq!(status["releaseRaw"], Value::Null);
    node.shutdown().await;
}

#[tokio::test]
async fn timed_blocks_arrive_by_themselves() {
    let node = spawn(FakeNodeConfig {
        block_time: Duration::from_millis(20),
        ..FakeNodeConfig::default()
    })
    .await;
    let client = connect(&node).await;
    let mut heads = subscribe(
        &client,
        "chain_subscribeNewHeads",
        "chain_unsubscribeNewHeads",
    )
    .await;
    let first = number(&next(&mut heads).await);
    assert_eq!(number(&next(&mut heads).await), first + 1);
    assert_eq!(number(&next(&mut heads).await), first + 2);
    node.shutdown().await;
}
