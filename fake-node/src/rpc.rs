//! The JSON-RPC surface: Substrate methods with real-node semantics, the control methods, and the
//! head subscriptions.
//!
//! All state sits behind one mutex in [`Shared`]; handlers hold it only for a few map lookups and
//! never across an `await`. Every change wakes the subscription tasks through a `watch` channel.
//! Each subscription keeps a cursor into the chain (new heads: the next block number; finalized
//! heads: the next finality move) and sends everything past it, so a slow client delays only
//! itself, nothing is dropped, and nothing is buffered beyond what the chain already holds.
//! Recent header JSON is cached, so a hundred subscribers cost one serialization per block.

use std::sync::{Arc, Mutex, MutexGuard};

use engine_shim::block::{BlockHash, BlockRef};
use engine_shim::version::SemVer;
use jsonrpsee::server::{ConnectionId, Extensions, PendingSubscriptionSink, RpcModule};
use jsonrpsee::types::{ErrorObjectOwned, Params};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::chain::{Chain, StorageChange};
use crate::fault::FaultMode;
use crate::net::Connections;
use crate::node::{Built, NodeState};
use crate::scenario::{parse_hex, parse_release};

/// Name reported by `system_name`, `system_chain` and the runtime's `specName`.
pub const NODE_NAME: &str = "fake-node";
/// The most blocks a single `dev_newBlock` call may build.
pub const MAX_BLOCKS_PER_CALL: u64 = 1_000_000;

const INVALID_PARAMS: i32 = -32602;
const INJECTED_FAULT: i32 = -32000;
/// Substrate's `state` error code for client errors such as an unknown block.
const STATE_CLIENT_ERROR: i32 = 4003;
/// How many notifications a subscription task takes per lock.
const BATCH: usize = 64;

type RpcResult<T = Value> = Result<T, ErrorObjectOwned>;

/// State shared by the RPC handlers, the block timer and the library handle.
#[derive(Debug)]
pub struct Shared {
    inner: Mutex<Inner>,
    changed: watch::Sender<()>,
    pub(crate) conns: Arc<Connections>,
}

#[derive(Debug)]
struct Inner {
    node: NodeState,
    headers: HeaderCache,
    methods: Vec<&'static str>,
}

impl Shared {
    pub fn new(node: NodeState, conns: Arc<Connections>) -> Self {
        Shared {
            inner: Mutex::new(Inner {
                node,
                headers: HeaderCache::default(),
                methods: Vec::new(),
            }),
            changed: watch::Sender::new(()),
            conns,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every mutation is one call),
        // so keep serving rather than poisoning every later request.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the node.
    pub fn read<R>(&self, f: impl FnOnce(&NodeState) -> R) -> R {
        f(&self.lock().node)
    }

    /// Changes the node and wakes every subscription.
    pub fn update<R>(&self, f: impl FnOnce(&mut NodeState) -> R) -> R {
        let result = f(&mut self.lock().node);
        self.changed.send_replace(());
        result
    }

    /// Builds blocks and carries out any scripted connection drop, sparing `spare` (the calling
    /// connection) so it still receives its answer.
    pub fn new_blocks(&self, count: u64, spare: Option<usize>) -> BlockRef {
        let built: Built = self.update(|node| node.new_blocks(count));
        for (at, action) in &built.fired {
            tracing::info!(block = at, ?action, "scenario step fired");
        }
        tracing::debug!(best = built.head.number, hash = %built.head.hash, "built blocks");
        if built.drop_connections {
            let dropped = self.conns.drop_all(spare);
            tracing::info!(dropped, "dropped client connections");
        }
        built.head
    }

    /// Drops every client connection except `spare`; returns how many were dropped.
    pub fn drop_connections(&self, spare: Option<usize>) -> usize {
        let dropped = self.conns.drop_all(spare);
        tracing::info!(dropped, "dropped client connections");
        dropped
    }

    /// Waits while `method` is faulted with [`FaultMode::Hang`], then returns its fault mode.
    async fn fault_after_hang(&self, method: &str) -> FaultMode {
        let mut changed = self.changed.subscribe();
        loop {
            let mode = self.lock().node.fault(method);
            if mode != FaultMode::Hang {
                return mode;
            }
            if changed.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// Header JSON shared by every subscription: a direct-mapped cache (slot = number mod size), so
/// subscribers that lag each other by up to `SLOTS` blocks still share one serialization per block,
/// in bounded memory and without any per-block work over the whole chain.
#[derive(Debug, Default)]
struct HeaderCache {
    slots: Vec<Option<(u64, Box<RawValue>)>>,
}

impl HeaderCache {
    const SLOTS: usize = 2048;

    fn get(&mut self, chain: &Chain, number: u64) -> Option<Box<RawValue>> {
        if self.slots.is_empty() {
            self.slots.resize(Self::SLOTS, None);
        }
        let slot = &mut self.slots[(number % Self::SLOTS as u64) as usize];
        match slot {
            Some((cached, json)) if *cached == number => Some(json.clone()),
            _ => {
                let json = header_json(chain, number)?;
                *slot = Some((number, json.clone()));
                Some(json)
            }
        }
    }
}

fn header_json(chain: &Chain, number: u64) -> Option<Box<RawValue>> {
    let header = chain.header(number)?;
    Some(serde_json::value::to_raw_value(&header.to_json()).expect("header JSON serializes"))
}

fn invalid(message: impl Into<String>) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(INVALID_PARAMS, message, None::<()>)
}

/// The error of an `error` fault: the message the test chose, or one naming the fault.
fn injected(shared: &Shared, method: &str) -> ErrorObjectOwned {
    let message = shared.lock().node.fault_message(method).unwrap_or_else(|| {
        format!("injected fault: {method} answers with an error (clear it with fake_setFault)")
    });
    ErrorObjectOwned::owned(INJECTED_FAULT, message, None::<()>)
}

fn unknown_block(hash: &BlockHash) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(
        STATE_CLIENT_ERROR,
        format!("Client error: UnknownBlock: State already discarded for {hash}"),
        None::<()>,
    )
}

/// Positional arguments, whatever the caller sent: no params ⇒ none, an array ⇒ its items,
/// a named-params object ⇒ that object as the single argument (chopsticks' `{"count": n}` style).
fn args(params: &Params) -> RpcResult<Vec<Value>> {
    if params.as_str().is_none() {
        return Ok(Vec::new());
    }
    Ok(match params.parse::<Value>()? {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => vec![other],
    })
}

/// The argument at `index`, with JSON `null` read as absent.
fn arg(args: &[Value], index: usize) -> Option<&Value> {
    args.get(index).filter(|v| !v.is_null())
}

/// A block number given as a JSON integer or a `0x` hex string.
fn block_number(value: &Value) -> RpcResult<u64> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| invalid(format!("block number {n} is not a non-negative integer"))),
        Value::String(s) => engine_shim::block::parse_block_number(s).map_err(invalid),
        other => Err(invalid(format!(
            "block number must be an integer or 0x hex string, got {other}"
        ))),
    }
}

fn block_hash(value: &Value) -> RpcResult<BlockHash> {
    value
        .as_str()
        .ok_or_else(|| invalid(format!("block hash must be a 0x hex string, got {value}")))?
        .parse()
        .map_err(invalid)
}

fn hex_bytes(value: &Value, what: &str) -> RpcResult<Vec<u8>> {
    let text = value
        .as_str()
        .ok_or_else(|| invalid(format!("{what} must be a 0x hex string, got {value}")))?;
    parse_hex(text).map_err(|e| invalid(format!("{what}: {e}")))
}

fn boolean(args: &[Value], what: &str) -> RpcResult<bool> {
    arg(args, 0)
        .and_then(Value::as_bool)
        .ok_or_else(|| invalid(format!("{what} takes one boolean, e.g. [true]")))
}

fn hex(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// The block a state query is about: the given hash (which must exist) or the best block.
fn state_block(chain: &Chain, at: Option<&Value>) -> RpcResult<u64> {
    match at {
        None => Ok(chain.best().number),
        Some(value) => {
            let hash = block_hash(value)?;
            chain.number_of(&hash).ok_or_else(|| unknown_block(&hash))
        }
    }
}

type Handler = fn(&mut Inner, &[Value]) -> RpcResult;

/// Registers a Substrate method (and its aliases) so that faults apply to it.
fn faultable(
    module: &mut RpcModule<Shared>,
    name: &'static str,
    aliases: &[&'static str],
    handler: Handler,
) {
    module
        .register_async_method(name, move |params, shared, _| async move {
            match shared.fault_after_hang(name).await {
                FaultMode::Error => Err(injected(&shared, name)),
                mode => {
                    let args = args(&params)?;
                    let result = handler(&mut shared.lock(), &args)?;
                    Ok::<_, ErrorObjectOwned>(mode.corrupt(result))
                }
            }
        })
        .expect("method names are unique");
    for alias in aliases {
        module
            .register_alias(alias, name)
            .expect("aliases are unique");
    }
}

fn system_health(inner: &mut Inner, _: &[Value]) -> RpcResult {
    let syncing = inner.node.is_syncing();
    Ok(json!({ "peers": 3, "isSyncing": syncing, "shouldHavePeers": true }))
}

fn system_properties(_: &mut Inner, _: &[Value]) -> RpcResult {
    // Chainflip's values.
    Ok(json!({ "ss58Format": 2112, "tokenDecimals": 18, "tokenSymbol": "FLIP" }))
}

fn rpc_methods(inner: &mut Inner, _: &[Value]) -> RpcResult {
    Ok(json!({ "methods": inner.methods }))
}

fn chain_get_block_hash(inner: &mut Inner, args: &[Value]) -> RpcResult {
    let chain = inner.node.chain();
    let one = |value: &Value| -> RpcResult {
        let number = block_number(value)?;
        Ok(chain
            .hash_of(number)
            .map_or(Value::Null, |h| h.to_string().into()))
    };
    match arg(args, 0) {
        None => Ok(chain.best().hash.to_string().into()),
        Some(Value::Array(list)) => list
            .iter()
            .map(one)
            .collect::<RpcResult<Vec<_>>>()
            .map(Value::from),
        Some(value) => one(value),
    }
}

fn chain_get_header(inner: &mut Inner, args: &[Value]) -> RpcResult {
    let chain = inner.node.chain();
    let number = match arg(args, 0) {
        None => Some(chain.best().number),
        Some(value) => chain.number_of(&block_hash(value)?),
    };
    Ok(number
        .and_then(|n| chain.header(n))
        .map_or(Value::Null, |h| h.to_json()))
}

fn chain_get_finalized_head(inner: &mut Inner, _: &[Value]) -> RpcResult {
    Ok(inner.node.chain().finalized().hash.to_string().into())
}

fn state_get_storage(inner: &mut Inner, args: &[Value]) -> RpcResult {
    let key = hex_bytes(
        arg(args, 0).ok_or_else(|| invalid("state_getStorage takes a storage key"))?,
        "storage key",
    )?;
    let chain = inner.node.chain();
    let number = state_block(chain, arg(args, 1))?;
    let value = chain.storage_at(number, &key).flatten();
    Ok(value.map_or(Value::Null, |v| hex(v).into()))
}

fn state_get_runtime_version(inner: &mut Inner, args: &[Value]) -> RpcResult {
    let chain = inner.node.chain();
    let number = state_block(chain, arg(args, 0))?;
    let spec_version = chain.spec_version_at(number).expect("block exists");
    Ok(json!({
        "specName": NODE_NAME,
        "implName": NODE_NAME,
        "authoringVersion": 1,
        "specVersion": spec_version,
        "implVersion": 0,
        "apis": [],
        "transactionVersion": 1,
        "stateVersion": 1,
    }))
}

/// Which head stream a subscription follows.
#[derive(Clone, Copy, Debug)]
enum Heads {
    New,
    Finalized,
}

impl Inner {
    /// The head sent first on subscribe, and the cursor just past it.
    fn first_head(&mut self, heads: Heads) -> (Box<RawValue>, u64) {
        let chain = self.node.chain();
        let (number, cursor) = match heads {
            Heads::New => (chain.best().number, chain.best().number + 1),
            Heads::Finalized => (
                chain.finalized().number,
                chain.finality_moves().len() as u64,
            ),
        };
        let json = self.headers.get(chain, number).expect("head exists");
        (json, cursor)
    }

    /// Up to [`BATCH`] headers past `cursor`, advancing it.
    fn next_heads(&mut self, heads: Heads, cursor: &mut u64) -> Vec<Box<RawValue>> {
        let chain = self.node.chain();
        let numbers: Vec<u64> = match heads {
            Heads::New => (*cursor..=chain.best().number).take(BATCH).collect(),
            Heads::Finalized => chain
                .finality_moves()
                .iter()
                .skip(*cursor as usize)
                .take(BATCH)
                .copied()
                .collect(),
        };
        *cursor = match heads {
            Heads::New => numbers.last().map_or(*cursor, |n| n + 1),
            Heads::Finalized => *cursor + numbers.len() as u64,
        };
        numbers
            .into_iter()
            .map(|n| self.headers.get(chain, n).expect("head exists"))
            .collect()
    }
}

/// Serves one head subscription: the current head first, then every later one, until the client
/// unsubscribes or goes away.
async fn follow(shared: Arc<Shared>, pending: PendingSubscriptionSink, heads: Heads, method: &str) {
    if shared.fault_after_hang(method).await == FaultMode::Error {
        pending.reject(injected(&shared, method)).await;
        return;
    }
    let Ok(sink) = pending.accept().await else {
        return;
    };
    let mut changed = shared.changed.subscribe();
    let (first, mut cursor) = shared.lock().first_head(heads);
    let mut batch = vec![first];
    loop {
        let mode = shared.lock().node.fault(method);
        for json in batch {
            let message = match mode {
                FaultMode::Garbage | FaultMode::NonHex => serde_json::value::to_raw_value(
                    &mode.corrupt(Value::Object(Default::default())),
                )
                .expect("garbage serializes"),
                _ => json,
            };
            if sink.send(message).await.is_err() {
                return;
            }
        }
        changed.borrow_and_update();
        batch = shared.lock().next_heads(heads, &mut cursor);
        if batch.is_empty() {
            tokio::select! {
                woke = changed.changed() => if woke.is_err() { return },
                _ = sink.closed() => return,
            }
            batch = shared.lock().next_heads(heads, &mut cursor);
        }
    }
}

/// The `dev_newBlock` argument: `{"count": n}` or `{"to": number}`; absent ⇒ one block.
fn blocks_to_build(best: u64, args: &[Value]) -> RpcResult<u64> {
    let Some(options) = arg(args, 0) else {
        return Ok(1);
    };
    let options = options
        .as_object()
        .ok_or_else(|| invalid("dev_newBlock takes {\"count\": n} or {\"to\": number}"))?;
    if let Some(field) = options.keys().find(|k| *k != "count" && *k != "to") {
        return Err(invalid(format!(
            "dev_newBlock: option '{field}' is not supported by fake-node (use count or to)"
        )));
    }
    let count = match (options.get("count"), options.get("to")) {
        (Some(_), Some(_)) => return Err(invalid("dev_newBlock: give count or to, not both")),
        (Some(count), None) => block_number(count)?,
        (None, Some(to)) => {
            let to = block_number(to)?;
            to.checked_sub(best)
                .ok_or_else(|| invalid(format!("dev_newBlock: block #{to} already exists")))?
        }
        (None, None) => 1,
    };
    if count > MAX_BLOCKS_PER_CALL {
        return Err(invalid(format!(
            "dev_newBlock: {count} blocks is more than {MAX_BLOCKS_PER_CALL} per call; split it"
        )));
    }
    Ok(count)
}

/// The `dev_setStorage` argument: a list of `[key, value | null]` pairs, passed either as the
/// first argument or as the whole params array.
fn storage_changes(args: &[Value]) -> RpcResult<Vec<StorageChange>> {
    let usage = "dev_setStorage takes [[key, value | null], …] (hex strings)";
    let pairs: &[Value] = match args.first() {
        Some(Value::Array(first)) if first.iter().all(Value::is_array) => {
            if arg(args, 1).is_some() {
                return Err(invalid(
                    "dev_setStorage: fake-node applies changes to the next block; omit the block hash",
                ));
            }
            first
        }
        Some(Value::Array(_)) => args,
        _ => return Err(invalid(usage)),
    };
    pairs
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([key, value]) => {
                let key = hex_bytes(key, "storage key")?;
                if key.is_empty() {
                    return Err(invalid("storage key must not be empty"));
                }
                let value = match value {
                    Value::Null => None,
                    value => Some(hex_bytes(value, "storage value")?),
                };
                Ok((key, value))
            }
            _ => Err(invalid(usage)),
        })
        .collect()
}

fn caller(extensions: &Extensions) -> Option<usize> {
    extensions.get::<ConnectionId>().map(|id| id.0)
}

/// Registers the control methods: chopsticks' `dev_*` and fake-node's `fake_*`.
fn register_control(module: &mut RpcModule<Shared>) {
    let ok = "method names are unique";
    module
        .register_method("dev_newBlock", |params, shared, ext| -> RpcResult {
            let best = shared.read(|node| node.chain().best().number);
            let count = blocks_to_build(best, &args(&params)?)?;
            Ok(shared
                .new_blocks(count, caller(ext))
                .hash
                .to_string()
                .into())
        })
        .expect(ok);
    module
        .register_method("dev_setStorage", |params, shared, _| -> RpcResult {
            let changes = storage_changes(&args(&params)?)?;
            tracing::info!(
                changes = changes.len(),
                "storage changes queued for the next block"
            );
            Ok(shared
                .update(|node| {
                    node.set_storage(changes);
                    node.chain().best().hash
                })
                .to_string()
                .into())
        })
        .expect(ok);
    module
        .register_method("fake_setRelease", |params, shared, _| -> RpcResult {
            let args = args(&params)?;
            let release: Option<SemVer> = match arg(&args, 0) {
                None => None,
                Some(Value::String(text)) => parse_release(text).map_err(invalid)?,
                Some(other) => {
                    return Err(invalid(format!(
                        "fake_setRelease takes \"X.Y.Z\" or null, got {other}"
                    )))
                }
            };
            tracing::info!(release = ?release.map(|r| r.to_string()), "release set for the next block");
            Ok(shared
                .update(|node| {
                    node.set_release(release);
                    node.chain().best().hash
                })
                .to_string()
                .into())
        })
        .expect(ok);
    module
        .register_method("fake_setFinalityLag", |params, shared, _| -> RpcResult {
            let args = args(&params)?;
            let lag = arg(&args, 0)
                .and_then(Value::as_u64)
                .ok_or_else(|| invalid("fake_setFinalityLag takes one non-negative integer"))?;
            shared.update(|node| node.set_finality_lag(lag));
            Ok(finalized_hash(shared))
        })
        .expect(ok);
    module
        .register_method("fake_stallFinality", |params, shared, _| -> RpcResult {
            let stalled = boolean(&args(&params)?, "fake_stallFinality")?;
            tracing::info!(stalled, "finality stall set");
            shared.update(|node| node.stall_finality(stalled));
            Ok(finalized_hash(shared))
        })
        .expect(ok);
    module
        .register_method("fake_finalize", |params, shared, _| -> RpcResult {
            let args = args(&params)?;
            let number = block_number(
                arg(&args, 0).ok_or_else(|| invalid("fake_finalize takes a block number"))?,
            )?;
            shared
                .update(|node| node.finalize(number))
                .map_err(|e| invalid(e.to_string()))?;
            Ok(finalized_hash(shared))
        })
        .expect(ok);
    module
        .register_method("fake_setSyncing", |params, shared, _| -> RpcResult {
            let syncing = boolean(&args(&params)?, "fake_setSyncing")?;
            tracing::info!(syncing, "syncing flag set");
            shared.update(|node| node.set_syncing(syncing));
            Ok(syncing.into())
        })
        .expect(ok);
    module
        .register_method("fake_setFault", |params, shared, _| -> RpcResult {
            let args = args(&params)?;
            let usage = "fake_setFault takes {\"method\": NAME, \"mode\": \"garbage\"|\"non_hex\"|\"error\"|\"hang\"|\"none\", \"message\": TEXT (optional, for error)}";
            let (method, mode, message) = match (arg(&args, 0), arg(&args, 1)) {
                (Some(Value::Object(o)), None) => (o.get("method"), o.get("mode"), o.get("message")),
                (Some(method), Some(mode)) => (Some(method), Some(mode), None),
                _ => return Err(invalid(usage)),
            };
            let message = match message {
                None | Some(Value::Null) => None,
                Some(Value::String(text)) => Some(text.clone()),
                Some(_) => return Err(invalid(usage)),
            };
            let (Some(method), Some(mode)) = (
                method.and_then(Value::as_str),
                mode.and_then(Value::as_str),
            ) else {
                return Err(invalid(usage));
            };
            let mode: FaultMode = mode.parse().map_err(|e: crate::fault::FaultError| invalid(e.to_string()))?;
            shared
                .update(|node| node.set_fault_with_message(method, mode, message))
                .map_err(|e| invalid(e.to_string()))?;
            tracing::info!(method, %mode, "fault set");
            Ok(serde_json::to_value(shared.read(|node| node.status().faults)).expect("faults serialize"))
        })
        .expect(ok);
    module
        .register_method("fake_dropConnections", |_, shared, ext| -> RpcResult {
            Ok(shared.drop_connections(caller(ext)).into())
        })
        .expect(ok);
    module
        .register_method("fake_status", |_, shared, _| -> RpcResult {
            Ok(serde_json::to_value(shared.read(NodeState::status)).expect("status serializes"))
        })
        .expect(ok);
}

fn finalized_hash(shared: &Shared) -> Value {
    shared
        .read(|node| node.chain().finalized().hash)
        .to_string()
        .into()
}

/// Builds the RPC module: every Substrate, control and subscription method.
pub fn module(shared: Arc<Shared>) -> RpcModule<Shared> {
    let mut module = RpcModule::from_arc(Arc::clone(&shared));
    faultable(&mut module, "system_health", &[], system_health);
    faultable(
        &mut module,
        "system_chain",
        &[],
        |_, _| Ok(NODE_NAME.into()),
    );
    faultable(&mut module, "system_name", &[], |_, _| Ok(NODE_NAME.into()));
    faultable(&mut module, "system_version", &[], |_, _| {
        Ok(env!("CARGO_PKG_VERSION").into())
    });
    faultable(&mut module, "system_properties", &[], system_properties);
    faultable(&mut module, "rpc_methods", &[], rpc_methods);
    faultable(
        &mut module,
        "chain_getBlockHash",
        &["chain_getHead"],
        chain_get_block_hash,
    );
    faultable(&mut module, "chain_getHeader", &[], chain_get_header);
    faultable(
        &mut module,
        "chain_getFinalizedHead",
        &["chain_getFinalisedHead"],
        chain_get_finalized_head,
    );
    faultable(
        &mut module,
        "state_getStorage",
        &["state_getStorageAt"],
        state_get_storage,
    );
    faultable(
        &mut module,
        "state_getRuntimeVersion",
        &["chain_getRuntimeVersion"],
        state_get_runtime_version,
    );

    let ok = "subscription names are unique";
    module
        .register_subscription(
            "chain_subscribeFinalizedHeads",
            "chain_finalizedHead",
            "chain_unsubscribeFinalizedHeads",
            |_, pending, shared, _| {
                follow(
                    shared,
                    pending,
                    Heads::Finalized,
                    "chain_subscribeFinalizedHeads",
                )
            },
        )
        .expect(ok);
    module
        .register_subscription(
            "chain_subscribeNewHeads",
            "chain_newHead",
            "chain_unsubscribeNewHeads",
            |_, pending, shared, _| follow(shared, pending, Heads::New, "chain_subscribeNewHeads"),
        )
        .expect(ok);
    for (alias, existing) in [
        (
            "chain_subscribeFinalisedHeads",
            "chain_subscribeFinalizedHeads",
        ),
        (
            "chain_unsubscribeFinalisedHeads",
            "chain_unsubscribeFinalizedHeads",
        ),
        ("chain_subscribeNewHead", "chain_subscribeNewHeads"),
        ("chain_unsubscribeNewHead", "chain_unsubscribeNewHeads"),
        ("subscribe_newHead", "chain_subscribeNewHeads"),
        ("unsubscribe_newHead", "chain_unsubscribeNewHeads"),
    ] {
        module.register_alias(alias, existing).expect(ok);
    }

    register_control(&mut module);

    let mut names: Vec<&'static str> = module.method_names().collect();
    names.sort_unstable();
    shared.lock().methods = names;
    module
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_block_options() {
        assert_eq!(blocks_to_build(5, &[]), Ok(1));
        assert_eq!(blocks_to_build(5, &[json!({"count": 3})]), Ok(3));
        assert_eq!(blocks_to_build(5, &[json!({"count": "0x10"})]), Ok(16));
        assert_eq!(blocks_to_build(5, &[json!({"to": 9})]), Ok(4));
        assert!(blocks_to_build(5, &[json!({"to": 4})]).is_err());
        assert!(blocks_to_build(5, &[json!({"count": 1, "to": 9})]).is_err());
        assert!(blocks_to_build(5, &[json!({"transactions": []})]).is_err());
        assert!(blocks_to_build(5, &[json!({"count": MAX_BLOCKS_PER_CALL + 1})]).is_err());
    }

    #[test]
    fn storage_changes_in_both_shapes() {
        let nested = [json!([["0x01", "0x0a"], ["0x02", null]])];
        let flat = [json!(["0x01", "0x0a"]), json!(["0x02", null])];
        let expected = vec![(vec![1], Some(vec![10])), (vec![2], None)];
        assert_eq!(storage_changes(&nested).unwrap(), expected);
        assert_eq!(storage_changes(&flat).unwrap(), expected);
        assert!(storage_changes(&[json!([["0xzz", "0x00"]])]).is_err());
        assert!(storage_changes(&[json!([["0x01"]])]).is_err());
        assert!(storage_changes(&[json!([["0x01", "0x00"]]), json!("0xabcd")]).is_err());
        assert!(storage_changes(&[]).is_err());
    }

    #[test]
    fn block_numbers_as_int_or_hex() {
        assert_eq!(block_number(&json!(26)), Ok(26));
        assert_eq!(block_number(&json!("0x1a")), Ok(26));
        assert_eq!(block_number(&json!("0x0000001a")), Ok(26));
        assert!(block_number(&json!(-1)).is_err());
        assert!(block_number(&json!("26")).is_err());
        assert!(block_number(&json!(true)).is_err());
    }
}
