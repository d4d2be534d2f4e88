//! The control methods: chopsticks' `dev_*` and fake-node's `fake_*`.

use jsonrpsee::server::{ConnectionId, Extensions, RpcModule};
use serde_json::Value;

use super::params::{arg, args, block_number, boolean, hex_bytes, invalid};
use super::{RpcResult, Shared, MAX_BLOCKS_PER_CALL};
use crate::chain::StorageChange;
use crate::fault::FaultMode;
use crate::node::NodeState;
use crate::scenario::parse_release;
use engine_shim::version::SemVer;

/// The `dev_newBlock` argument: `{"count": n}` or `{"to": number}`; absent ⇒ one block.
pub(super) fn blocks_to_build(best: u64, args: &[Value]) -> RpcResult<u64> {
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
pub(super) fn storage_changes(args: &[Value]) -> RpcResult<Vec<StorageChange>> {
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

pub(super) fn caller(extensions: &Extensions) -> Option<usize> {
    extensions.get::<ConnectionId>().map(|id| id.0)
}

/// Registers the control methods: chopsticks' `dev_*` and fake-node's `fake_*`.
pub(super) fn register(module: &mut RpcModule<Shared>) {
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

pub(super) fn finalized_hash(shared: &Shared) -> Value {
    shared
        .read(|node| node.chain().finalized().hash)
        .to_string()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
