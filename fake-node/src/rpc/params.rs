//! Reading JSON-RPC parameters the way Substrate nodes accept them, and the errors they answer.

use engine_shim::block::BlockHash;
use jsonrpsee::types::{ErrorObjectOwned, Params};
use serde_json::Value;

use super::{RpcResult, Shared, INJECTED_FAULT, INVALID_PARAMS, STATE_CLIENT_ERROR};
use crate::chain::Chain;
use crate::scenario::parse_hex;

pub(super) fn invalid(message: impl Into<String>) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(INVALID_PARAMS, message, None::<()>)
}

/// The error of an `error` fault: the message the test chose, or one naming the fault.
pub(super) fn injected(shared: &Shared, method: &str) -> ErrorObjectOwned {
    let message = shared.lock().node.fault_message(method).unwrap_or_else(|| {
        format!("injected fault: {method} answers with an error (clear it with fake_setFault)")
    });
    ErrorObjectOwned::owned(INJECTED_FAULT, message, None::<()>)
}

pub(super) fn unknown_block(hash: &BlockHash) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(
        STATE_CLIENT_ERROR,
        format!("Client error: UnknownBlock: State already discarded for {hash}"),
        None::<()>,
    )
}

/// Positional arguments, whatever the caller sent: no params ⇒ none, an array ⇒ its items,
/// a named-params object ⇒ that object as the single argument (chopsticks' `{"count": n}` style).
pub(super) fn args(params: &Params) -> RpcResult<Vec<Value>> {
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
pub(super) fn arg(args: &[Value], index: usize) -> Option<&Value> {
    args.get(index).filter(|v| !v.is_null())
}

/// A block number given as a JSON integer or a `0x` hex string.
pub(super) fn block_number(value: &Value) -> RpcResult<u64> {
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

pub(super) fn block_hash(value: &Value) -> RpcResult<BlockHash> {
    value
        .as_str()
        .ok_or_else(|| invalid(format!("block hash must be a 0x hex string, got {value}")))?
        .parse()
        .map_err(invalid)
}

pub(super) fn hex_bytes(value: &Value, what: &str) -> RpcResult<Vec<u8>> {
    let text = value
        .as_str()
        .ok_or_else(|| invalid(format!("{what} must be a 0x hex string, got {value}")))?;
    parse_hex(text).map_err(|e| invalid(format!("{what}: {e}")))
}

pub(super) fn boolean(args: &[Value], what: &str) -> RpcResult<bool> {
    arg(args, 0)
        .and_then(Value::as_bool)
        .ok_or_else(|| invalid(format!("{what} takes one boolean, e.g. [true]")))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// The block a state query is about: the given hash (which must exist) or the best block.
pub(super) fn state_block(chain: &Chain, at: Option<&Value>) -> RpcResult<u64> {
    match at {
        None => Ok(chain.best().number),
        Some(value) => {
            let hash = block_hash(value)?;
            chain.number_of(&hash).ok_or_else(|| unknown_block(&hash))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
