//! One question to the node, beside the follower: which release is at the latest finalized head?
//!
//! The gate asks it when an engine exits on its own ([`crate::gate::Action::CheckHead`]): the
//! engine may have left at an upgrade block the follower has not delivered yet, and only the
//! node's present tells an upgrade from a crash. It uses a connection of its own, so the
//! follower's "every block, in order" stream is never disturbed, and it is bounded in time, so a
//! node that hangs gives an answer too (an error) and the gate never waits forever.

use std::time::Duration;

use crate::block::BlockRef;
use crate::rpc::{ConnectOptions, NodeClient};
use crate::version::SemVer;

/// Reads the release at the node's finalized head: `chain_getFinalizedHead`, `chain_getHeader`,
/// `state_getStorage(key, hash)`. Any failure (node unreachable, unknown block, a release that
/// cannot be used) is one message naming it, all within `timeout`.
pub async fn release_at_finalized_head(
    url: &str,
    key: &[u8],
    timeout: Duration,
) -> Result<(BlockRef, SemVer), String> {
    match tokio::time::timeout(timeout, read(url, key, timeout)).await {
        Ok(answer) => answer,
        Err(_) => Err(format!(
            "node at {url} did not answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

async fn read(url: &str, key: &[u8], timeout: Duration) -> Result<(BlockRef, SemVer), String> {
    let options = ConnectOptions {
        ping_interval: None,
        request_timeout: timeout,
    };
    let client = NodeClient::connect(url, &options)
        .await
        .map_err(|e| e.to_string())?;
    let hash = client.finalized_head().await.map_err(|e| e.to_string())?;
    let header = client
        .header(&hash)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("node at {url} does not know its own finalized head {hash}"))?;
    let block = BlockRef {
        number: header.number,
        hash,
    };
    let release = client
        .release_at(key, &hash)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("at block #{} ({hash}): {e}", block.number))?;
    Ok((block, release))
}
