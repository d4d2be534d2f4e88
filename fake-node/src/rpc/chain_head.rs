//! The new JSON-RPC spec's `chainHead_v1_*` and `chainSpec_v1_*` methods: a thin shell around
//! [`crate::chain_head::Follow`], one per follow subscription, kept in [`Follows`] under the
//! node's lock.
//!
//! Each follow subscription is a task that takes events from its machine (a batch per lock) and
//! sends them as the connection accepts them; it wakes when the chain changes, an operation has
//! events, the client unpins, or a deadline of the machine passes. Operation events are released
//! only once the response that started the operation has been queued on the connection, so a
//! client always learns an `operationId` before its events (polkadot-api drops events for an id
//! it does not know yet).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use engine_shim::block::{BlockHash, BlockRef};
use jsonrpsee::server::{PendingSubscriptionSink, RpcModule, SubscriptionSink};
use jsonrpsee::types::{ErrorObjectOwned, Params, SubscriptionId};
use jsonrpsee::ResponsePayload;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::params::{arg, args, block_hash, boolean, hex, hex_bytes, injected, invalid};
use super::substrate::{faultable, system_properties};
use super::{Inner, RpcResult, Shared};
use crate::chain_head::{Event, Follow, Limits, Query, Refusal, Started, Step};
use crate::fault::FaultMode;

/// How many events a follow task takes per lock.
const BATCH: usize = 64;

/// Follow subscriptions one connection may hold; the spec requires at least 2.
const MAX_FOLLOWS_PER_CONNECTION: usize = 4;

/// The spec's error codes.
const TOO_MANY_FOLLOWS: i32 = -32800;
const INVALID_BLOCK: i32 = -32801;
const NO_RUNTIME: i32 = -32802;
const NOT_WAITING: i32 = -32803;
const DUPLICATE_HASHES: i32 = -32804;

/// Every live follow subscription, by subscription id.
#[derive(Debug, Default)]
pub(super) struct Follows {
    subscriptions: HashMap<String, Entry>,
}

#[derive(Debug)]
struct Entry {
    connection: usize,
    follow: Follow,
    /// Wakes the subscription's task when its machine has new events outside a chain change.
    wake: Arc<Notify>,
}

impl Follows {
    fn on_connection(&self, connection: usize) -> usize {
        self.subscriptions
            .values()
            .filter(|e| e.connection == connection)
            .count()
    }
}

/// A method's answer: now, or an operation whose events follow once the answer has gone out.
enum Answer {
    Now(Value),
    Started {
        response: Value,
        subscription: String,
        operation: String,
    },
}

type Handler = fn(&mut Inner, &[Value]) -> RpcResult<Answer>;

fn limit_reached() -> Answer {
    Answer::Now(json!({ "result": "limitReached" }))
}

fn error(code: i32, message: impl Into<String>) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(code, message, None::<()>)
}

fn invalid_block(hash: &BlockHash) -> ErrorObjectOwned {
    error(
        INVALID_BLOCK,
        format!(
            "Invalid block hash: {hash} is not pinned by this follow subscription \
             (never announced, or already unpinned)"
        ),
    )
}

fn refusal(refusal: Refusal, hash: &BlockHash) -> RpcResult<Answer> {
    match refusal {
        Refusal::LimitReached => Ok(limit_reached()),
        Refusal::NotPinned => Err(invalid_block(hash)),
        Refusal::NotWaiting => Err(error(NOT_WAITING, refusal.to_string())),
    }
}

fn string_arg<'a>(args: &'a [Value], index: usize, what: &str) -> RpcResult<&'a str> {
    arg(args, index)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{what} must be a string")))
}

fn subscription_id(id: &SubscriptionId<'_>) -> String {
    match id {
        SubscriptionId::Num(n) => n.to_string(),
        SubscriptionId::Str(s) => s.to_string(),
    }
}

impl Inner {
    /// The runtime as the spec reports it in `initialized` and `newBlock`.
    fn runtime_spec_json(&self, number: u64) -> Value {
        let version = self.runtime_version(number);
        let apis: serde_json::Map<String, Value> = version
            .apis
            .iter()
            .map(|(id, v)| (hex(id), Value::from(*v)))
            .collect();
        json!({
            "type": "valid",
            "spec": {
                "specName": version.spec_name,
                "implName": version.impl_name,
                "specVersion": version.spec_version,
                "implVersion": version.impl_version,
                "transactionVersion": version.transaction_version,
                "apis": apis,
            }
        })
    }

    fn event_json(&self, event: &Event, with_runtime: bool) -> Value {
        let hashes = |blocks: &[BlockRef]| -> Vec<String> {
            blocks.iter().map(|b| b.hash.to_string()).collect()
        };
        match event {
            Event::Initialized { finalized } => {
                let mut value = json!({
                    "event": "initialized",
                    "finalizedBlockHashes": hashes(finalized),
                });
                if with_runtime {
                    let last = finalized.last().expect("initialized names a block").number;
                    value["finalizedBlockRuntime"] = self.runtime_spec_json(last);
                }
                value
            }
            Event::NewBlock {
                block,
                parent,
                new_runtime,
            } => {
                let mut value = json!({
                    "event": "newBlock",
                    "blockHash": block.hash.to_string(),
                    "parentBlockHash": parent.to_string(),
                });
                if with_runtime {
                    value["newRuntime"] = if *new_runtime {
                        self.runtime_spec_json(block.number)
                    } else {
                        Value::Null
                    };
                }
                value
            }
            Event::BestBlockChanged { best } => {
                json!({ "event": "bestBlockChanged", "bestBlockHash": best.hash.to_string() })
            }
            Event::Finalized { finalized, pruned } => json!({
                "event": "finalized",
                "finalizedBlockHashes": hashes(finalized),
                "prunedBlockHashes": pruned.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
            Event::Operation { id, step } => step_json(id, step),
            Event::Stop => json!({ "event": "stop" }),
        }
    }

    /// Up to [`BATCH`] events of subscription `id` as JSON, `stop` last if it comes (empty when
    /// the subscription is up to date), and when to look again if the client does not unpin;
    /// `None` when the subscription is gone. Taking `stop` removes the
    /// subscription, so later calls on it answer as for an unknown one.
    fn next_follow_events(&mut self, id: &str) -> Option<(VecDeque<Outgoing>, Option<Instant>)> {
        let now = Instant::now();
        let Inner { node, follows, .. } = self;
        let entry = follows.subscriptions.get_mut(id)?;
        let with_runtime = entry.follow.with_runtime();
        let events: Vec<Event> = std::iter::from_fn(|| entry.follow.next_event(node.chain(), now))
            .take(BATCH)
            .collect();
        let deadline = entry.follow.deadline();
        if events.last() == Some(&Event::Stop) {
            follows.subscriptions.remove(id);
        }
        let mode = self.node.fault("chainHead_v1_follow");
        let outgoing = events
            .iter()
            .map(|event| {
                let mut json = self.event_json(event, with_runtime);
                if matches!(mode, FaultMode::Garbage | FaultMode::NonHex) {
                    json = mode.corrupt(json);
                }
                let json = serde_json::value::to_raw_value(&json).expect("event JSON serializes");
                match event {
                    Event::Stop => Outgoing::Stop(json),
                    _ => Outgoing::Event(json),
                }
            })
            .collect();
        Some((outgoing, deadline))
    }
}

/// An event ready to send.
enum Outgoing {
    Event(Box<RawValue>),
    /// The last event of the subscription.
    Stop(Box<RawValue>),
}

fn step_json(id: &str, step: &Step) -> Value {
    match step {
        Step::BodyDone(extrinsics) => json!({
            "event": "operationBodyDone",
            "operationId": id,
            "value": extrinsics.iter().map(|x| hex(x)).collect::<Vec<_>>(),
        }),
        Step::CallDone(output) => {
            json!({ "event": "operationCallDone", "operationId": id, "output": hex(output) })
        }
        Step::StorageItems(items) => {
            let items: Vec<Value> = items
                .iter()
                .map(|item| {
                    let mut value = json!({ "key": hex(&item.key) });
                    value[item.kind.field()] = hex(&item.data).into();
                    value
                })
                .collect();
            json!({ "event": "operationStorageItems", "operationId": id, "items": items })
        }
        Step::WaitingForContinue => {
            json!({ "event": "operationWaitingForContinue", "operationId": id })
        }
        Step::StorageDone => json!({ "event": "operationStorageDone", "operationId": id }),
        Step::Error(message) => {
            json!({ "event": "operationError", "operationId": id, "error": message })
        }
    }
}

/// Serves one `chainHead_v1_follow` subscription until it stops, the client unfollows or the
/// connection goes.
async fn follow(shared: Arc<Shared>, params: Params<'static>, pending: PendingSubscriptionSink) {
    const METHOD: &str = "chainHead_v1_follow";
    if shared.fault_after_hang(METHOD).await == FaultMode::Error {
        pending.reject(injected(&shared, METHOD)).await;
        return;
    }
    let with_runtime = match args(&params).and_then(|a| boolean(&a, METHOD)) {
        Ok(with_runtime) => with_runtime,
        Err(e) => return pending.reject(e).await,
    };
    let connection = pending.connection_id().0;
    if shared.lock().follows.on_connection(connection) >= MAX_FOLLOWS_PER_CONNECTION {
        let message = format!(
            "Maximum number of chainHead_follow has been reached: at most \
             {MAX_FOLLOWS_PER_CONNECTION} per connection; unfollow one first"
        );
        return pending.reject(error(TOO_MANY_FOLLOWS, message)).await;
    }
    // The subscription starts from the chain as it is now, before the client learns its id: a
    // block built once the client has the id is always announced as a new block.
    let id = subscription_id(&pending.subscription_id());
    let wake = Arc::new(Notify::new());
    let limits = Limits::default();
    {
        let mut inner = shared.lock();
        let follow = Follow::new(inner.node.chain(), with_runtime, limits);
        let entry = Entry {
            connection,
            follow,
            wake: Arc::clone(&wake),
        };
        inner.follows.subscriptions.insert(id.clone(), entry);
    }
    let Ok(sink) = pending.accept().await else {
        shared.lock().follows.subscriptions.remove(&id);
        return;
    };
    send_events(&shared, &sink, &id, &wake, limits).await;
    shared.lock().follows.subscriptions.remove(&id);
}

/// Sends the subscription's events as the client takes them. An event the client has not taken
/// within the grace stops the subscription (its `stop` is then sent whenever the client reads).
async fn send_events(
    shared: &Shared,
    sink: &SubscriptionSink,
    id: &str,
    wake: &Notify,
    limits: Limits,
) {
    let mut changed = shared.changed.subscribe();
    let mut unsent: VecDeque<Outgoing> = VecDeque::new();
    let mut deadline = None;
    loop {
        if unsent.is_empty() {
            changed.borrow_and_update();
            match shared.lock().next_follow_events(id) {
                None => return,
                Some((events, next_deadline)) => (unsent, deadline) = (events, next_deadline),
            }
        }
        let Some(next) = unsent.front() else {
            let unpin_deadline = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                woke = changed.changed() => if woke.is_err() { return },
                _ = wake.notified() => {}
                _ = unpin_deadline => {}
                _ = sink.closed() => return,
            }
            continue;
        };
        let message = match next {
            Outgoing::Stop(json) => {
                // The client may read again later: it then finds `stop` after what was on its way.
                tokio::select! {
                    _ = sink.send(json.clone()) => {}
                    _ = sink.closed() => {}
                }
                return;
            }
            Outgoing::Event(json) => json.clone(),
        };
        let waiting_since = Instant::now();
        tokio::select! {
            sent = sink.send(message) => {
                if sent.is_err() {
                    return;
                }
                unsent.pop_front();
            }
            _ = tokio::time::sleep(limits.slow_client_grace) => {
                let mut inner = shared.lock();
                if let Some(entry) = inner.follows.subscriptions.get_mut(id) {
                    if entry.follow.check_slow_client(waiting_since, Instant::now()) {
                        tracing::info!(subscription = id, "chainHead follow stopped: the client takes no events");
                        unsent.clear();
                    }
                }
            }
            _ = sink.closed() => return,
        }
    }
}

fn header(inner: &mut Inner, args: &[Value]) -> RpcResult<Answer> {
    let subscription = string_arg(args, 0, "followSubscription")?;
    let hash = block_hash(
        arg(args, 1)
            .ok_or_else(|| invalid("chainHead_v1_header takes [followSubscription, hash]"))?,
    )?;
    let chain = inner.node.chain();
    let Some(entry) = inner.follows.subscriptions.get(subscription) else {
        return Ok(Answer::Now(Value::Null));
    };
    let number = entry
        .follow
        .pinned_number(chain, &hash)
        .ok_or_else(|| invalid_block(&hash))?;
    let header = chain.header(number).expect("pinned blocks exist");
    Ok(Answer::Now(hex(&header.encode()).into()))
}

/// Starts an operation of `cost` slots on the subscription and block in `args[0..2]`, with the
/// events `steps` computes from the block number and the number of items taken.
fn operation(
    inner: &mut Inner,
    args: &[Value],
    method: &str,
    cost: usize,
    steps: impl FnOnce(&Inner, u64, usize) -> Vec<Step>,
) -> RpcResult<Answer> {
    let subscription = string_arg(args, 0, "followSubscription")?;
    let hash = block_hash(
        arg(args, 1)
            .ok_or_else(|| invalid(format!("{method} takes [followSubscription, hash, …]")))?,
    )?;
    let Inner { node, follows, .. } = &mut *inner;
    let Some(entry) = follows.subscriptions.get_mut(subscription) else {
        return Ok(limit_reached());
    };
    let (Started { id, discarded }, number) =
        match entry.follow.start_operation(node.chain(), &hash, cost) {
            Ok(started) => started,
            Err(r) => return refusal(r, &hash),
        };
    let steps = steps(inner, number, cost - discarded);
    let entry = inner
        .follows
        .subscriptions
        .get_mut(subscription)
        .expect("entry still there");
    entry.follow.respond(&id, steps);
    let mut response = json!({ "result": "started", "operationId": id });
    if method == "chainHead_v1_storage" {
        response["discardedItems"] = discarded.into();
    }
    Ok(Answer::Started {
        response,
        subscription: subscription.to_string(),
        operation: id,
    })
}

fn body(inner: &mut Inner, args: &[Value]) -> RpcResult<Answer> {
    // fake-node's blocks carry no extrinsics.
    operation(inner, args, "chainHead_v1_body", 1, |_, _, _| {
        vec![Step::BodyDone(Vec::new())]
    })
}

fn call(inner: &mut Inner, args: &[Value]) -> RpcResult<Answer> {
    let usage = "chainHead_v1_call takes [followSubscription, hash, function, callParameters]";
    let subscription = string_arg(args, 0, "followSubscription")?;
    let hash = block_hash(arg(args, 1).ok_or_else(|| invalid(usage))?)?;
    let function = string_arg(args, 2, "function")?.to_string();
    let parameters = match arg(args, 3) {
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(value) => hex_bytes(value, "callParameters")?,
        None => return Err(invalid(usage)),
    };
    if let Some(entry) = inner.follows.subscriptions.get(subscription) {
        let pinned = entry.follow.pinned_number(inner.node.chain(), &hash);
        if pinned.is_none() {
            return Err(invalid_block(&hash));
        }
        if !entry.follow.with_runtime() {
            return Err(error(
                NO_RUNTIME,
                "The `chainHead_follow` subscription was started with `withRuntime` set to \
                 `false`; follow with [true] to make runtime calls",
            ));
        }
    }
    operation(
        inner,
        args,
        "chainHead_v1_call",
        1,
        move |inner, number, _| {
            vec![match inner.runtime_call(number, &function, &parameters) {
                Ok(output) => Step::CallDone(output),
                Err(e) => Step::Error(e.to_string()),
            }]
        },
    )
}

fn storage(inner: &mut Inner, args: &[Value]) -> RpcResult<Answer> {
    let usage =
        "chainHead_v1_storage takes [followSubscription, hash, [{\"key\", \"type\"}, …], childTrie]";
    let items = arg(args, 2)
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(usage))?;
    let queries = items
        .iter()
        .map(|item| {
            let key = item
                .get("key")
                .ok_or_else(|| invalid(format!("storage item {item} has no key; {usage}")))?;
            let kind = item
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("storage item {item} has no type; {usage}")))?;
            Ok(Query {
                key: hex_bytes(key, "storage key")?,
                kind: kind.parse().map_err(invalid)?,
            })
        })
        .collect::<RpcResult<Vec<_>>>()?;
    let child_trie = match arg(args, 3) {
        None => false,
        Some(value) => {
            hex_bytes(value, "childTrie")?;
            true
        }
    };
    let page = Limits::default().storage_page;
    operation(
        inner,
        args,
        "chainHead_v1_storage",
        queries.len(),
        move |inner, number, taken| {
            crate::chain_head::query::answer(
                inner.node.chain(),
                number,
                &queries[..taken],
                child_trie,
                page,
            )
        },
    )
}

fn continue_(inner: &mut Inner, args: &[Value]) -> RpcResult<Answer> {
    let subscription = string_arg(args, 0, "followSubscription")?;
    let operation = string_arg(args, 1, "operationId")?;
    if let Some(entry) = inner.follows.subscriptions.get_mut(subscription) {
        entry
            .follow
            .continue_operation(operation)
            .map_err(|r| error(NOT_WAITING, r.to_string()))?;
        entry.wake.notify_one();
    }
    Ok(Answer::Now(Value::Null))
}

fn stop_operation(inner: &mut Inner, args: &[Value]) -> RpcResult<Answer> {
    let subscription = string_arg(args, 0, "followSubscription")?;
    let operation = string_arg(args, 1, "operationId")?;
    if let Some(entry) = inner.follows.subscriptions.get_mut(subscription) {
        entry.follow.stop_operation(operation);
    }
    Ok(Answer::Now(Value::Null))
}

fn unpin(inner: &mut Inner, args: &[Value]) -> RpcResult<Answer> {
    let usage = "chainHead_v1_unpin takes [followSubscription, hash | [hash, …]]";
    let subscription = string_arg(args, 0, "followSubscription")?;
    let hashes = match arg(args, 1) {
        Some(Value::Array(list)) => list.iter().map(block_hash).collect::<RpcResult<Vec<_>>>()?,
        Some(value) => vec![block_hash(value)?],
        None => return Err(invalid(usage)),
    };
    let mut seen = HashSet::new();
    if let Some(duplicate) = hashes.iter().find(|h| !seen.insert(**h)) {
        return Err(error(
            DUPLICATE_HASHES,
            format!("Received duplicate hashes for the `chainHead_unpin` method: {duplicate}"),
        ));
    }
    let chain = inner.node.chain();
    if let Some(entry) = inner.follows.subscriptions.get_mut(subscription) {
        entry.follow.unpin(chain, &hashes).map_err(|_| {
            let missing = hashes
                .iter()
                .find(|h| entry.follow.pinned_number(chain, h).is_none())
                .expect("a hash is not pinned");
            invalid_block(missing)
        })?;
        // Finality may have waited for these unpins.
        entry.wake.notify_one();
    }
    Ok(Answer::Now(Value::Null))
}

/// Registers a `chainHead_v1_*` request method, open to injected faults. Operations' events are
/// released once the response is on the connection.
fn chain_head_method(module: &mut RpcModule<Shared>, name: &'static str, handler: Handler) {
    module
        .register_async_method(name, move |params, shared, _| async move {
            let mode = shared.fault_after_hang(name).await;
            if mode == FaultMode::Error {
                return ResponsePayload::error(injected(&shared, name));
            }
            let answer = args(&params).and_then(|args| handler(&mut shared.lock(), &args));
            match answer {
                Err(e) => ResponsePayload::error(e),
                Ok(Answer::Now(value)) => ResponsePayload::success(mode.corrupt(value)),
                Ok(Answer::Started {
                    response,
                    subscription,
                    operation,
                }) => {
                    let (payload, sent) =
                        ResponsePayload::success(mode.corrupt(response)).notify_on_completion();
                    tokio::spawn(async move {
                        if sent.await.is_ok() {
                            let mut inner = shared.lock();
                            if let Some(entry) = inner.follows.subscriptions.get_mut(&subscription)
                            {
                                entry.follow.release(&operation);
                                entry.wake.notify_one();
                            }
                        }
                    });
                    payload
                }
            }
        })
        .expect("method names are unique");
}

/// Registers `chainHead_v1_*` and `chainSpec_v1_*`.
pub(super) fn register(module: &mut RpcModule<Shared>) {
    module
        .register_subscription(
            "chainHead_v1_follow",
            "chainHead_v1_followEvent",
            "chainHead_v1_unfollow",
            |params, pending, shared, _| follow(shared, params, pending),
        )
        .expect("subscription names are unique");
    chain_head_method(module, "chainHead_v1_header", header);
    chain_head_method(module, "chainHead_v1_body", body);
    chain_head_method(module, "chainHead_v1_call", call);
    chain_head_method(module, "chainHead_v1_storage", storage);
    chain_head_method(module, "chainHead_v1_continue", continue_);
    chain_head_method(module, "chainHead_v1_stopOperation", stop_operation);
    chain_head_method(module, "chainHead_v1_unpin", unpin);
    // The same identity as system_chain and system_properties.
    faultable(module, "chainSpec_v1_chainName", &[], |inner, _| {
        Ok(inner.node.preset().chain_name().into())
    });
    faultable(module, "chainSpec_v1_genesisHash", &[], |inner, _| {
        Ok(inner
            .node
            .chain()
            .hash_of(0)
            .expect("genesis exists")
            .to_string()
            .into())
    });
    faultable(module, "chainSpec_v1_properties", &[], system_properties);
}
