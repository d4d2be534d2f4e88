//! The storage methods beyond `state_getStorage`: key listings, hashes and sizes, changes over
//! blocks, and the storage subscription, with Substrate's parameters, defaults and errors. The
//! answers themselves are decided in [`crate::storage_query`].

use std::sync::Arc;

use jsonrpsee::server::RpcModule;
use jsonrpsee::types::ErrorObjectOwned;
use serde_json::value::RawValue;
use serde_json::Value;

use super::heads::{follow, Feed, BATCH};
use super::params::{arg, args, block_hash, hex, hex_bytes, invalid, state_block};
use super::substrate::faultable;
use super::{Inner, RpcResult, Shared};
use crate::chain::Chain;
use crate::storage_query::{self, ChangeSet, StorageWatch, Watched, MAX_KEYS_PER_PAGE};

/// Substrate's `state` error for a block range it cannot resolve (unknown block, `from` after `to`).
const INVALID_BLOCK_RANGE: i32 = 4001;
/// Substrate's `state` error for a `count` above [`MAX_KEYS_PER_PAGE`].
const INVALID_COUNT: i32 = 4002;

fn key(args: &[Value], index: usize, usage: &str) -> RpcResult<Vec<u8>> {
    let value = arg(args, index).ok_or_else(|| invalid(usage))?;
    hex_bytes(value, "storage key")
}

/// A list of storage keys (hex strings).
pub(super) fn key_list(value: &Value, usage: &str) -> RpcResult<Vec<Vec<u8>>> {
    value
        .as_array()
        .ok_or_else(|| invalid(usage))?
        .iter()
        .map(|key| hex_bytes(key, "storage key"))
        .collect()
}

/// Substrate's message for an unresolvable range: both ends and the reason.
fn range_error(from: String, to: String, details: &str) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(
        INVALID_BLOCK_RANGE,
        format!("Cannot resolve a block range ['{from:?}' ... '{to:?}]. {details}"),
        None::<()>,
    )
}

/// The blocks `from..=to` of `state_queryStorage` (`to` defaults to the best block), or
/// Substrate's error for an unknown block or a reversed range.
fn block_range(chain: &Chain, from: &Value, to: Option<&Value>) -> RpcResult<(u64, u64)> {
    let from_hash = block_hash(from)?;
    let to_hash = match to {
        Some(to) => block_hash(to)?,
        None => chain.best().hash,
    };
    let unknown = |hash| {
        range_error(
            from_hash.to_string(),
            format!("Some({to_hash})"),
            &format!("UnknownBlock: Header was not found in the database: {hash}"),
        )
    };
    let from_number = chain
        .number_of(&from_hash)
        .ok_or_else(|| unknown(from_hash))?;
    let to_number = chain.number_of(&to_hash).ok_or_else(|| unknown(to_hash))?;
    if from_number > to_number {
        return Err(range_error(
            format!("{from_number} ({from_hash})"),
            format!("{to_number} ({to_hash})"),
            "from number > to number",
        ));
    }
    Ok((from_number, to_number))
}

fn change_sets(sets: Vec<ChangeSet>) -> Value {
    Value::Array(sets.iter().map(ChangeSet::to_json).collect())
}

/// `state_getKeysPaged(prefix | null, count, [startKey], [at])`.
pub(super) fn state_get_keys_paged(inner: &mut Inner, args: &[Value]) -> RpcResult {
    let usage = "state_getKeysPaged takes (prefix | null, count, [startKey], [blockHash])";
    let prefix = match arg(args, 0) {
        None => Vec::new(),
        Some(prefix) => hex_bytes(prefix, "key prefix")?,
    };
    let count = arg(args, 1)
        .ok_or_else(|| invalid(format!("{usage}: count is missing")))?
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            invalid(format!(
                "{usage}: count must be an integer from 0 to 4294967295"
            ))
        })?;
    if count > MAX_KEYS_PER_PAGE {
        return Err(ErrorObjectOwned::owned(
            INVALID_COUNT,
            format!("count exceeds maximum value. value: {count}, max: {MAX_KEYS_PER_PAGE}"),
            None::<()>,
        ));
    }
    let start = arg(args, 2)
        .map(|start| hex_bytes(start, "start key"))
        .transpose()?;
    let chain = inner.node.chain();
    let number = state_block(chain, arg(args, 3))?;
    let keys = storage_query::keys(chain, number, &prefix, start.as_deref(), count as usize);
    Ok(keys.iter().map(|k| hex(k)).collect::<Vec<_>>().into())
}

/// `state_getKeys(prefix, [at])`: every key with the prefix (Substrate still serves it, though
/// deprecated in favour of the paged call).
pub(super) fn state_get_keys(inner: &mut Inner, args: &[Value]) -> RpcResult {
    let prefix = key(args, 0, "state_getKeys takes (prefix, [blockHash])")?;
    let chain = inner.node.chain();
    let number = state_block(chain, arg(args, 1))?;
    let keys = storage_query::keys(chain, number, &prefix, None, usize::MAX);
    Ok(keys.iter().map(|k| hex(k)).collect::<Vec<_>>().into())
}

/// `state_getStorageHash(key, [at])`: blake2-256 of the value, or `null`.
pub(super) fn state_get_storage_hash(inner: &mut Inner, args: &[Value]) -> RpcResult {
    let key = key(args, 0, "state_getStorageHash takes (key, [blockHash])")?;
    let chain = inner.node.chain();
    let number = state_block(chain, arg(args, 1))?;
    Ok(storage_query::hash(chain, number, &key).map_or(Value::Null, |h| hex(&h).into()))
}

/// `state_getStorageSize(key, [at])`: the value's length (or a whole map's), or `null`.
pub(super) fn state_get_storage_size(inner: &mut Inner, args: &[Value]) -> RpcResult {
    let key = key(args, 0, "state_getStorageSize takes (key, [blockHash])")?;
    let chain = inner.node.chain();
    let number = state_block(chain, arg(args, 1))?;
    Ok(storage_query::size(chain, number, &key).map_or(Value::Null, Value::from))
}

/// `state_queryStorageAt(keys, [at])`: one change set holding every key's value at the block
/// (none for an empty key list).
pub(super) fn state_query_storage_at(inner: &mut Inner, args: &[Value]) -> RpcResult {
    let usage = "state_queryStorageAt takes ([key, …], [blockHash])";
    let keys = key_list(arg(args, 0).ok_or_else(|| invalid(usage))?, usage)?;
    let chain = inner.node.chain();
    let at = arg(args, 1).cloned();
    let at = at.unwrap_or_else(|| chain.best().hash.to_string().into());
    let (from, to) = block_range(chain, &at, Some(&at))?;
    Ok(change_sets(storage_query::query(chain, from, to, &keys)))
}

/// `state_queryStorage(keys, from, [to])`: every key's value at `from`, then the changes in each
/// later block up to `to` (default: best).
pub(super) fn state_query_storage(inner: &mut Inner, args: &[Value]) -> RpcResult {
    let usage = "state_queryStorage takes ([key, …], fromBlockHash, [toBlockHash])";
    let keys = key_list(arg(args, 0).ok_or_else(|| invalid(usage))?, usage)?;
    let from = arg(args, 1).ok_or_else(|| invalid(format!("{usage}: fromBlockHash is missing")))?;
    let chain = inner.node.chain();
    let (from, to) = block_range(chain, from, arg(args, 2))?;
    Ok(change_sets(storage_query::query(chain, from, to, &keys)))
}

/// What `state_subscribeStorage` watches: no argument (or `null`) means every key.
pub(super) fn watched(args: &[Value]) -> RpcResult<Watched> {
    match arg(args, 0) {
        None => Ok(Watched::All),
        Some(keys) => Ok(Watched::Keys(key_list(
            keys,
            "state_subscribeStorage takes ([key, …]) or no argument for every key",
        )?)),
    }
}

/// A storage subscription: the watched keys' current values at acceptance, then one change set
/// per block that wrote a watched key.
struct StorageFeed {
    watched: Watched,
    watch: Option<StorageWatch>,
}

fn raw(set: &ChangeSet) -> Arc<RawValue> {
    serde_json::value::to_raw_value(&set.to_json())
        .expect("change set serializes")
        .into()
}

impl Feed for StorageFeed {
    fn first(&mut self, inner: &mut Inner) -> Vec<Arc<RawValue>> {
        let (watch, initial) = StorageWatch::start(
            inner.node.chain(),
            std::mem::replace(&mut self.watched, Watched::All),
        );
        self.watch = Some(watch);
        initial.iter().map(raw).collect()
    }

    fn next(&mut self, inner: &mut Inner, out: &mut Vec<Arc<RawValue>>) -> bool {
        let watch = self.watch.as_mut().expect("first() ran");
        let advanced = watch.advance(inner.node.chain(), BATCH as u64);
        out.extend(advanced.sets.iter().map(raw));
        advanced.caught_up
    }
}

/// Registers the storage methods, their aliases and the storage subscription.
pub(super) fn register(module: &mut RpcModule<Shared>) {
    faultable(
        module,
        "state_getKeysPaged",
        &["state_getKeysPagedAt"],
        state_get_keys_paged,
    );
    faultable(module, "state_getKeys", &[], state_get_keys);
    faultable(
        module,
        "state_getStorageHash",
        &["state_getStorageHashAt"],
        state_get_storage_hash,
    );
    faultable(
        module,
        "state_getStorageSize",
        &["state_getStorageSizeAt"],
        state_get_storage_size,
    );
    faultable(module, "state_queryStorageAt", &[], state_query_storage_at);
    faultable(module, "state_queryStorage", &[], state_query_storage);
    module
        .register_subscription(
            "state_subscribeStorage",
            "state_storage",
            "state_unsubscribeStorage",
            |params, pending, shared, _| async move {
                let watched = match args(&params).and_then(|args| watched(&args)) {
                    Ok(watched) => watched,
                    Err(error) => {
                        pending.reject(error).await;
                        return;
                    }
                };
                let feed = StorageFeed {
                    watched,
                    watch: None,
                };
                follow(shared, pending, "state_subscribeStorage", feed).await
            },
        )
        .expect("subscription names are unique");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subscribe_storage_arguments() {
        assert_eq!(watched(&[]), Ok(Watched::All));
        assert_eq!(watched(&[Value::Null]), Ok(Watched::All));
        assert_eq!(
            watched(&[json!(["0x01", "0x0203"])]),
            Ok(Watched::Keys(vec![vec![1], vec![2, 3]]))
        );
        assert_eq!(watched(&[json!([])]), Ok(Watched::Keys(vec![])));
        assert!(watched(&[json!("0x01")]).is_err());
        assert!(watched(&[json!(["0xzz"])]).is_err());
    }

    #[test]
    fn range_errors_read_like_substrate() {
        let error = range_error(
            "1 (0xab)".into(),
            "0 (0xcd)".into(),
            "from number > to number",
        );
        assert_eq!(error.code(), INVALID_BLOCK_RANGE);
        assert_eq!(
            error.message(),
            r#"Cannot resolve a block range ['"1 (0xab)"' ... '"0 (0xcd)"]. from number > to number"#
        );
    }
}
