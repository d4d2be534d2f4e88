//! Whole blocks: `chain_getBlock`.
//!
//! fake-node's blocks carry no extrinsics and no justifications (a real node stores GRANDPA
//! justifications for only a few blocks, so `null` is what clients usually see).

use jsonrpsee::server::RpcModule;
use serde_json::{json, Value};

use super::params::{arg, block_hash};
use super::substrate::faultable;
use super::{Inner, RpcResult, Shared};

/// `chain_getBlock([hash])`: the block with that hash, or the best block without one; `null` for
/// an unknown hash, as on Substrate.
pub(super) fn chain_get_block(inner: &mut Inner, args: &[Value]) -> RpcResult {
    let chain = inner.node.chain();
    let number = match arg(args, 0) {
        None => Some(chain.best().number),
        Some(value) => chain.number_of(&block_hash(value)?),
    };
    Ok(number
        .and_then(|n| chain.header(n))
        .map_or(Value::Null, |header| {
            json!({
                "block": { "header": header.to_json(), "extrinsics": [] },
                "justifications": null,
            })
        }))
}

/// Registers the block methods.
pub(super) fn register(module: &mut RpcModule<Shared>) {
    faultable(module, "chain_getBlock", &[], chain_get_block);
}
