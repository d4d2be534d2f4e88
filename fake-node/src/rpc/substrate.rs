//! The Substrate methods a node answers (system, chain, state), each open to injected faults.

use jsonrpsee::server::RpcModule;
use serde_json::{json, Value};

use super::params::{
    arg, args, block_hash, block_number, hex, hex_bytes, injected, invalid, state_block,
};
use super::{Inner, RpcResult, Shared};
use crate::fault::FaultMode;
use jsonrpsee::types::ErrorObjectOwned;

pub(super) type Handler = fn(&mut Inner, &[Value]) -> RpcResult;

/// Registers a Substrate method (and its aliases) so that faults apply to it.
pub(super) fn faultable(
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

pub(super) fn system_health(inner: &mut Inner, _: &[Value]) -> RpcResult {
    let syncing = inner.node.is_syncing();
    Ok(json!({ "peers": 3, "isSyncing": syncing, "shouldHavePeers": true }))
}

pub(super) fn system_properties(inner: &mut Inner, _: &[Value]) -> RpcResult {
    Ok(inner.node.preset().properties())
}

pub(super) fn rpc_methods(inner: &mut Inner, _: &[Value]) -> RpcResult {
    Ok(json!({ "methods": inner.methods }))
}

pub(super) fn chain_get_block_hash(inner: &mut Inner, args: &[Value]) -> RpcResult {
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

pub(super) fn chain_get_header(inner: &mut Inner, args: &[Value]) -> RpcResult {
    let chain = inner.node.chain();
    let number = match arg(args, 0) {
        None => Some(chain.best().number),
        Some(value) => chain.number_of(&block_hash(value)?),
    };
    Ok(number
        .and_then(|n| chain.header(n))
        .map_or(Value::Null, |h| h.to_json()))
}

pub(super) fn chain_get_finalized_head(inner: &mut Inner, _: &[Value]) -> RpcResult {
    Ok(inner.node.chain().finalized().hash.to_string().into())
}

pub(super) fn state_get_storage(inner: &mut Inner, args: &[Value]) -> RpcResult {
    let key = hex_bytes(
        arg(args, 0).ok_or_else(|| invalid("state_getStorage takes a storage key"))?,
        "storage key",
    )?;
    let chain = inner.node.chain();
    let number = state_block(chain, arg(args, 1))?;
    let value = chain.storage_at(number, &key).flatten();
    Ok(value.map_or(Value::Null, |v| hex(&v).into()))
}

pub(super) fn state_get_runtime_version(inner: &mut Inner, args: &[Value]) -> RpcResult {
    let chain = inner.node.chain();
    let number = state_block(chain, arg(args, 0))?;
    Ok(inner.runtime_version(number).to_json())
}

/// Registers the Substrate request methods and their aliases.
pub(super) fn register(module: &mut RpcModule<Shared>) {
    faultable(module, "system_health", &[], system_health);
    faultable(module, "system_chain", &[], |inner, _| {
        Ok(inner.node.preset().chain_name().into())
    });
    faultable(module, "system_name", &[], |inner, _| {
        Ok(inner.node.preset().node_name().into())
    });
    faultable(module, "system_version", &[], |_, _| {
        Ok(env!("CARGO_PKG_VERSION").into())
    });
    faultable(module, "system_properties", &[], system_properties);
    faultable(module, "rpc_methods", &[], rpc_methods);
    faultable(
        module,
        "chain_getBlockHash",
        &["chain_getHead"],
        chain_get_block_hash,
    );
    faultable(module, "chain_getHeader", &[], chain_get_header);
    faultable(
        module,
        "chain_getFinalizedHead",
        &["chain_getFinalisedHead"],
        chain_get_finalized_head,
    );
    faultable(
        module,
        "state_getStorage",
        &["state_getStorageAt"],
        state_get_storage,
    );
    faultable(
        module,
        "state_getRuntimeVersion",
        &["chain_getRuntimeVersion"],
        state_get_runtime_version,
    );
}
