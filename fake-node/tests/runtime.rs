//! The runtime as client libraries see it, over a real WebSocket: metadata (built or loaded from
//! a file), runtime API calls, the runtime version and its subscription, the System items read
//! through storage, and the chain identity presets.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use engine_shim::version::SemVer;
use fake_node::metadata::ServedMetadata;
use fake_node::system_storage::SystemItem;
use fake_node::{ChainPreset, FakeNode, FakeNodeConfig, FakeNodeHandle, FaultMode};
use frame_metadata::{v14, RuntimeMetadata, RuntimeMetadataPrefixed};
use jsonrpsee::core::client::{ClientT, Subscription, SubscriptionClientT};
use jsonrpsee::rpc_params;
use jsonrpsee_ws_client::{WsClient, WsClientBuilder};
use parity_scale_codec::{Decode, Encode};
use serde_json::{json, Value};

/// Upper bound for any single await, so a broken node fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(10);
const BIN: &str = env!("CARGO_BIN_EXE_fake-node");

async fn spawn(config: FakeNodeConfig) -> FakeNodeHandle {
    FakeNode::spawn(config).await.expect("fake node starts")
}

async fn connect(url: &str) -> WsClient {
    WsClientBuilder::default()
        .build(url)
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

/// The JSON-RPC error (code, message) a call answers with.
async fn call_error(
    client: &WsClient,
    method: &str,
    params: jsonrpsee::core::params::ArrayParams,
) -> (i32, String) {
    let result: Result<Value, _> = tokio::time::timeout(PATIENCE, client.request(method, params))
        .await
        .expect("answer in time");
    match result {
        Err(jsonrpsee::core::ClientError::Call(e)) => (e.code(), e.message().to_string()),
        other => panic!("{method}: expected an error, got {other:?}"),
    }
}

async fn next(sub: &mut Subscription<Value>) -> Value {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("notification in time")
        .expect("subscription open")
        .expect("notification is JSON")
}

fn bytes(value: &Value) -> Vec<u8> {
    let text = value.as_str().expect("a hex string");
    hex::decode(text.strip_prefix("0x").expect("0x prefix")).expect("valid hex")
}

fn decode_metadata(raw: &[u8]) -> RuntimeMetadata {
    RuntimeMetadataPrefixed::decode(&mut &raw[..])
        .expect("metadata decodes")
        .1
}

#[tokio::test]
async fn state_get_metadata_serves_v14_naming_the_release_item_and_refuses_unknown_blocks() {
    let node = spawn(FakeNodeConfig::default()).await;
    let client = connect(&node.url()).await;
    let genesis = call(&client, "chain_getBlockHash", rpc_params![0]).await;
    let latest = call(&client, "state_getMetadata", rpc_params![]).await;
    let at_genesis = call(&client, "state_getMetadata", rpc_params![genesis]).await;
    assert_eq!(latest, at_genesis);
    let RuntimeMetadata::V14(metadata) = decode_metadata(&bytes(&latest)) else {
        panic!("state_getMetadata serves V14, as Substrate does")
    };
    let environment = metadata
        .pallets
        .iter()
        .find(|p| p.name == "Environment")
        .expect("an Environment pallet");
    let entry = &environment.storage.as_ref().unwrap().entries[0];
    assert_eq!(entry.name, "CurrentReleaseVersion");
    let v14::StorageEntryType::Plain(ty) = &entry.ty else {
        panic!("a plain storage value")
    };
    let ty = metadata.types.resolve(ty.id).unwrap();
    assert_eq!(ty.path.segments, ["cf_primitives", "SemVer"]);

    let unknown = format!("0x{}", "ab".repeat(32));
    let storage_error = call_error(
        &client,
        "state_getStorage",
        rpc_params!["0x00", unknown.clone()],
    )
    .await;
    let metadata_error = call_error(&client, "state_getMetadata", rpc_params![unknown]).await;
    assert_eq!(metadata_error, storage_error);
    assert_eq!(metadata_error.0, 4003);
    node.shutdown().await;
}

#[tokio::test]
async fn state_call_answers_the_metadata_and_core_apis_and_errs_like_a_node_otherwise() {
    let node = spawn(FakeNodeConfig::default()).await;
    let client = connect(&node.url()).await;
    let versions = call(
        &client,
        "state_call",
        rpc_params!["Metadata_metadata_versions", "0x"],
    )
    .await;
    assert_eq!(versions, "0x080e0000000f000000", "[14, 15]");
    let best = call(&client, "chain_getBlockHash", rpc_params![]).await;
    let v15 = call(
        &client,
        "state_call",
        rpc_params!["Metadata_metadata_at_version", "0x0f000000", best],
    )
    .await;
    let v15 = Option::<Vec<u8>>::decode(&mut &bytes(&v15)[..])
        .unwrap()
        .expect("V15 is served");
    let RuntimeMetadata::V15(v15) = decode_metadata(&v15) else {
        panic!("V15 asked for, V15 served")
    };
    let apis: Vec<&str> = v15.apis.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(apis, ["Core", "Metadata"]);
    let v16 = call(
        &client,
        "state_call",
        rpc_params!["Metadata_metadata_at_version", "0x10000000"],
    )
    .await;
    assert_eq!(v16, "0x00", "None for a version not served");
    let opaque = call(
        &client,
        "state_callAt",
        rpc_params!["Metadata_metadata", "0x"],
    )
    .await;
    let opaque = Vec::<u8>::decode(&mut &bytes(&opaque)[..]).unwrap();
    let direct = call(&client, "state_getMetadata", rpc_params![]).await;
    assert_eq!(opaque, bytes(&direct));

    let core = call(&client, "state_call", rpc_params!["Core_version", "0x"]).await;
    let core = bytes(&core);
    let mut input = &core[..];
    assert_eq!(String::decode(&mut input).unwrap(), "fake-node");

    assert_eq!(
        call_error(&client, "state_call", rpc_params!["Foo_bar", "0x"]).await,
        (
            4003,
            "Client error: Execution failed: Other: Exported method Foo_bar is not found".into()
        )
    );
    let (code, message) = call_error(&client, "state_call", rpc_params!["Core_version"]).await;
    assert_eq!(code, -32602);
    assert!(
        message.contains("e.g. [\"Core_version\", \"0x\"]"),
        "{message}"
    );
    node.set_fault("state_callAt", FaultMode::Error).unwrap();
    let (code, _) = call_error(&client, "state_call", rpc_params!["Core_version", "0x"]).await;
    assert_eq!(code, -32000, "faultable like every Substrate method");
    node.shutdown().await;
}

#[tokio::test]
async fn runtime_version_lists_the_answered_apis_and_its_subscription_sends_each_change_once() {
    let node = spawn(FakeNodeConfig::default()).await;
    let client = connect(&node.url()).await;
    let version = call(&client, "state_getRuntimeVersion", rpc_params![]).await;
    assert_eq!(
        version["apis"],
        json!([["0xdf6acb689907609b", 5], ["0x37e397fc7c91f5e4", 2]])
    );
    let mut sub: Subscription<Value> = client
        .subscribe(
            "chain_subscribeRuntimeVersion",
            rpc_params![],
            "chain_unsubscribeRuntimeVersion",
        )
        .await
        .expect("subscribes");
    let first = next(&mut sub).await;
    assert_eq!(first, version, "the current version first");
    node.new_blocks(3); // no change: no notification
    node.set_release(Some(SemVer::new(1, 1, 0)));
    node.new_blocks(1);
    node.new_blocks(2);
    node.set_release(Some(SemVer::new(1, 2, 0)));
    node.new_blocks(1);
    let spec = |v: &Value| v["specVersion"].as_u64().unwrap();
    let second = next(&mut sub).await;
    let third = next(&mut sub).await;
    assert_eq!([spec(&first), spec(&second), spec(&third)], [100, 101, 102]);
    assert_eq!(second["apis"], version["apis"]);
    sub.unsubscribe().await.expect("unsubscribes");

    node.set_fault("chain_subscribeRuntimeVersion", FaultMode::Error)
        .unwrap();
    let refused: Result<Subscription<Value>, _> = client
        .subscribe(
            "state_subscribeRuntimeVersion",
            rpc_params![],
            "state_unsubscribeRuntimeVersion",
        )
        .await;
    match refused {
        Err(jsonrpsee::core::ClientError::Call(e)) => assert_eq!(e.code(), -32000),
        other => panic!("a faulted subscription is rejected, got {other:?}"),
    }
    node.shutdown().await;
}

#[tokio::test]
async fn system_items_read_through_storage_as_a_runtime_wrote_them() {
    let node = spawn(FakeNodeConfig::default()).await;
    let client = connect(&node.url()).await;
    let head = node.new_blocks(5);
    let hex_key = |item: SystemItem| format!("0x{}", hex::encode(item.key()));
    let number = call(
        &client,
        "state_getStorage",
        rpc_params![hex_key(SystemItem::Number), head.to_string()],
    )
    .await;
    assert_eq!(number, "0x05000000");
    let parent = call(
        &client,
        "state_getStorage",
        rpc_params![hex_key(SystemItem::ParentHash), head.to_string()],
    )
    .await;
    assert_eq!(parent, node.hash_of(4).unwrap().to_string());
    let genesis = call(
        &client,
        "state_getStorage",
        rpc_params![hex_key(SystemItem::BlockHash(0))],
    )
    .await;
    assert_eq!(genesis, node.hash_of(0).unwrap().to_string());
    node.shutdown().await;
}

#[tokio::test]
async fn the_chainflip_preset_reports_chainflips_identity_everywhere() {
    let node = spawn(FakeNodeConfig {
        chain: ChainPreset::Chainflip,
        ..FakeNodeConfig::default()
    })
    .await;
    let client = connect(&node.url()).await;
    assert_eq!(
        call(&client, "system_chain", rpc_params![]).await,
        "Chainflip-Berghain"
    );
    assert_eq!(
        call(&client, "system_name", rpc_params![]).await,
        "Chainflip Node"
    );
    let properties = call(&client, "system_properties", rpc_params![]).await;
    assert_eq!(properties["ss58Format"], 2112);
    assert_eq!(properties["tokenDecimals"], 18);
    assert_eq!(properties["tokenSymbol"], "FLIP");
    let version = call(&client, "state_getRuntimeVersion", rpc_params![]).await;
    assert_eq!(version["specName"], "chainflip-node");
    let metadata = call(&client, "state_getMetadata", rpc_params![]).await;
    let RuntimeMetadata::V14(metadata) = decode_metadata(&bytes(&metadata)) else {
        panic!("V14")
    };
    let system = metadata
        .pallets
        .iter()
        .find(|p| p.name == "System")
        .unwrap();
    let ss58 = system
        .constants
        .iter()
        .find(|c| c.name == "SS58Prefix")
        .unwrap();
    assert_eq!(ss58.value, 2112u16.encode());
    node.shutdown().await;
}

/// Starts the binary; on success returns it with its URL, else its exit code and stderr.
fn start(args: &[&str]) -> Result<(Child, String), (Option<i32>, String)> {
    let mut child = Command::new(BIN)
        .args(["--port", "0", "--block-time", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fake-node starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("stdout readable");
    match line.strip_prefix("listening on ") {
        Some(url) => Ok((child, url.trim().to_string())),
        None => {
            let output = child.wait_with_output().expect("fake-node exits");
            Err((
                output.status.code(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ))
        }
    }
}

fn stop(mut child: Child) {
    child.kill().expect("fake-node stops");
    child.wait().expect("fake-node reaped");
}

fn temp_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fake-node-runtime-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[tokio::test]
async fn the_binary_serves_a_metadata_file_in_hex_json_or_raw_and_refuses_a_corrupt_one() {
    // Metadata other than what the node builds by default (V15 of the other preset), so the
    // answers show which one is served.
    let served = ServedMetadata::built(ChainPreset::Chainflip);
    let raw = served.at_version(15).unwrap().to_vec();
    let hex_text = format!("0x{}\n", hex::encode(&raw));
    let json_text = format!(
        r#"{{"jsonrpc":"2.0","result":"{}","id":1}}"#,
        hex_text.trim()
    );
    for (name, contents) in [
        ("metadata.scale", raw.clone()),
        ("metadata.hex", hex_text.into_bytes()),
        ("metadata.json", json_text.into_bytes()),
    ] {
        let path = temp_file(name, &contents);
        let (child, url) = start(&["--metadata", path.to_str().unwrap()]).unwrap();
        let client = connect(&url).await;
        let metadata = call(&client, "state_getMetadata", rpc_params![]).await;
        assert_eq!(bytes(&metadata), raw, "{name}");
        let versions = call(
            &client,
            "state_call",
            rpc_params!["Metadata_metadata_versions", "0x"],
        )
        .await;
        assert_eq!(versions, "0x040f000000", "{name}: only the file's version");
        let v14 = call(
            &client,
            "state_call",
            rpc_params!["Metadata_metadata_at_version", "0x0e000000"],
        )
        .await;
        assert_eq!(v14, "0x00", "{name}");
        stop(child);
    }

    let corrupt = temp_file("corrupt.scale", &raw[..raw.len() / 2]);
    let (code, stderr) = start(&["--metadata", corrupt.to_str().unwrap()]).unwrap_err();
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("cannot be decoded as runtime metadata")
            && stderr.contains("state_getMetadata"),
        "{stderr}"
    );
    let not_metadata = temp_file("notes.txt", b"hello");
    let (code, stderr) = start(&["--metadata", not_metadata.to_str().unwrap()]).unwrap_err();
    assert_eq!(code, Some(2));
    assert!(stderr.contains("\"meta\" magic"), "{stderr}");
    let (code, _) = start(&["--metadata", "/nonexistent/metadata.hex"]).unwrap_err();
    assert_eq!(code, Some(2));
}

#[tokio::test]
async fn the_binary_takes_a_chain_preset_and_refuses_an_unknown_one() {
    let (child, url) = start(&["--chain", "chainflip"]).unwrap();
    let client = connect(&url).await;
    assert_eq!(
        call(&client, "system_chain", rpc_params![]).await,
        "Chainflip-Berghain"
    );
    stop(child);
    let (code, stderr) = start(&["--chain", "polkadot"]).unwrap_err();
    assert_eq!(code, Some(2));
    assert!(stderr.contains("fake-node, chainflip"), "{stderr}");
}
