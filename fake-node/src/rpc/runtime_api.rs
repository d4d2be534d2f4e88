//! The runtime as clients reach it over RPC: `state_getMetadata`, `state_call` and the runtime
//! version subscription. The answers themselves are decided in [`crate::runtime`] and
//! [`crate::metadata`]; this is the shell that reads parameters and sends notifications.

use std::sync::Arc;

use jsonrpsee::server::{PendingSubscriptionSink, RpcModule};
use jsonrpsee::types::ErrorObjectOwned;
use serde_json::Value;

use super::params::{arg, hex, hex_bytes, injected, invalid, state_block};
use super::substrate::faultable;
use super::{Inner, RpcResult, Shared, STATE_CLIENT_ERROR};
use crate::fault::FaultMode;
use crate::runtime::{CallError, RuntimeVersion};

/// The canonical name of the runtime version subscription (faults are keyed by it).
const SUBSCRIBE_RUNTIME_VERSION: &str = "state_subscribeRuntimeVersion";

/// A runtime call's failure as a node reports it: a state client error.
fn call_failed(error: CallError) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(
        STATE_CLIENT_ERROR,
        format!("Client error: {error}"),
        None::<()>,
    )
}

fn state_get_metadata(inner: &mut Inner, args: &[Value]) -> RpcResult {
    state_block(inner.node.chain(), arg(args, 0))?;
    Ok(hex(inner.node.metadata().default_metadata()).into())
}

fn state_call(inner: &mut Inner, args: &[Value]) -> RpcResult {
    let usage = "state_call takes a runtime API method name and its SCALE-encoded arguments as \
                 hex, e.g. [\"Core_version\", \"0x\"], and optionally a block hash";
    let method = arg(args, 0)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(usage))?;
    let data = hex_bytes(arg(args, 1).ok_or_else(|| invalid(usage))?, "call data")?;
    let number = state_block(inner.node.chain(), arg(args, 2))?;
    let result = inner
        .runtime_call(number, method, &data)
        .map_err(call_failed)?;
    Ok(hex(&result).into())
}

impl Inner {
    /// The runtime version at the best block, and that block's number (the subscription's cursor).
    fn best_runtime_version(&self) -> (RuntimeVersion, u64) {
        let best = self.node.chain().best().number;
        (self.runtime_version(best), best)
    }

    /// Every runtime version change on the best chain after block `cursor`, compared with
    /// `last` (the version sent last), advancing both: one entry per block whose runtime differs
    /// from its predecessor's, as a node reports each imported best block that changed it.
    fn runtime_version_changes(
        &self,
        cursor: &mut u64,
        last: &mut RuntimeVersion,
    ) -> Vec<RuntimeVersion> {
        let chain = self.node.chain();
        let best = chain.best().number;
        let mut changes = Vec::new();
        for number in *cursor + 1..=best {
            if chain.spec_version_at(number) != Some(last.spec_version) {
                *last = self.runtime_version(number);
                changes.push(last.clone());
            }
        }
        *cursor = best;
        changes
    }
}

/// Serves one runtime version subscription: the best block's version first, then each change.
async fn follow_runtime_version(shared: Arc<Shared>, pending: PendingSubscriptionSink) {
    let method = SUBSCRIBE_RUNTIME_VERSION;
    if shared.fault_after_hang(method).await == FaultMode::Error {
        pending.reject(injected(&shared, method)).await;
        return;
    }
    let Ok(sink) = pending.accept().await else {
        return;
    };
    let mut changed = shared.changed.subscribe();
    let (first, mut cursor) = shared.lock().best_runtime_version();
    let mut last = first.clone();
    let mut batch = vec![first];
    loop {
        let mode = shared.lock().node.fault(method);
        for version in batch {
            let message = serde_json::value::to_raw_value(&mode.corrupt(version.to_json()))
                .expect("runtime version serializes");
            if sink.send(message).await.is_err() {
                return;
            }
        }
        changed.borrow_and_update();
        batch = shared
            .lock()
            .runtime_version_changes(&mut cursor, &mut last);
        while batch.is_empty() {
            tokio::select! {
                woke = changed.changed() => if woke.is_err() { return },
                _ = sink.closed() => return,
            }
            batch = shared
                .lock()
                .runtime_version_changes(&mut cursor, &mut last);
        }
    }
}

/// Registers `state_getMetadata`, `state_call` and the runtime version subscription.
pub(super) fn register(module: &mut RpcModule<Shared>) {
    faultable(module, "state_getMetadata", &[], state_get_metadata);
    faultable(module, "state_call", &["state_callAt"], state_call);
    let ok = "subscription names are unique";
    module
        .register_subscription(
            SUBSCRIBE_RUNTIME_VERSION,
            "state_runtimeVersion",
            "state_unsubscribeRuntimeVersion",
            |_, pending, shared, _| follow_runtime_version(shared, pending),
        )
        .expect(ok);
    for (alias, existing) in [
        ("chain_subscribeRuntimeVersion", SUBSCRIBE_RUNTIME_VERSION),
        (
            "chain_unsubscribeRuntimeVersion",
            "state_unsubscribeRuntimeVersion",
        ),
    ] {
        module.register_alias(alias, existing).expect(ok);
    }
}
