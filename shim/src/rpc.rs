//! Typed calls to a Substrate node's JSON-RPC over a WebSocket.
//!
//! [`NodeClient`] wraps one jsonrpsee WebSocket connection (built without TLS) and turns the node's
//! loosely typed JSON answers into [`Header`], [`Health`], [`BlockHash`] and raw storage bytes. Every
//! failure becomes an [`RpcError`] whose variant says what kind of trouble it is — the node cannot be
//! reached, the connection died, an answer took too long, an answer could not be read, or the node
//! refused the call — so callers can decide what to do and operators read the fix in the message.
//!
//! A client is good for one connection only: once it is lost every later call fails with
//! [`RpcError::Disconnected`] and the caller builds a new client (jsonrpsee's `RestartNeeded`).

use std::fmt;
use std::time::Duration;

use jsonrpsee::core::client::{
    ClientT, Error as ClientError, Subscription, SubscriptionClientT, SubscriptionCloseReason,
};
use jsonrpsee::core::params::ArrayParams;
use jsonrpsee::rpc_params;
use jsonrpsee_ws_client::{PingConfig, RpcService, RpcServiceBuilder, WsClient, WsClientBuilder};
use serde_json::Value;

use crate::block::{parse_block_number, BlockHash};
use crate::version::{decode_release, ReleaseError, SemVer};

/// How a [`NodeClient`] connects and how long it waits for answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Interval between WebSocket pings. jsonrpsee sends none by default, and without them a
    /// half-open connection (peer gone without a FIN) is never noticed. `None` turns them off.
    pub ping_interval: Option<Duration>,
    /// Longest wait for the connection handshake and for each answer.
    pub request_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            ping_interval: Some(Duration::from_secs(30)),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a call to the node failed. Each message names the likely fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// No connection could be made at all.
    #[error("node at {url} is unreachable: {detail} (is the node running and --node right?)")]
    Unreachable { url: String, detail: String },
    /// The connection was made but has since been lost; this client is finished and a new one is
    /// needed.
    #[error(
        "connection to the node at {url} was lost: {detail} (did the node restart or the \
         network drop? a new connection is needed)"
    )]
    Disconnected { url: String, detail: String },
    /// The node did not answer in time.
    #[error(
        "node at {url} did not answer {method} within {} (is the node overloaded or hung?)",
        humantime::format_duration(*.after)
    )]
    Timeout {
        url: String,
        method: String,
        after: Duration,
    },
    /// The node answered something that is not what a Substrate node sends.
    #[error(
        "node answered {method} with something unexpected: {detail} (is --node a Substrate node?)"
    )]
    Malformed { method: String, detail: String },
    /// The node answered with a JSON-RPC error.
    #[error("node refused {method}: {message} (does the node serve this method to this client?)")]
    Call { method: String, message: String },
}

/// The node's own view of its health (`system_health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub peers: u64,
    /// While a node syncs, its finalized head is far behind the chain: nothing read from it is
    /// current, so nothing should be decided on it.
    pub is_syncing: bool,
    pub should_have_peers: bool,
}

/// The parts of a block header the shim uses. A header does not carry its own hash: ask
/// [`NodeClient::block_hash`] for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub number: u64,
    pub parent_hash: BlockHash,
}

/// Reads a header as nodes send it: `number` is hex, zero-padded or not.
pub fn parse_header(value: &Value) -> Result<Header, String> {
    let field = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("header has no string field '{name}': {}", snippet(value)))
    };
    let number = parse_block_number(field("number")?)?;
    let parent_hash = field("parentHash")?.parse()?;
    Ok(Header {
        number,
        parent_hash,
    })
}

/// Reads a `system_health` answer.
pub fn parse_health(value: &Value) -> Result<Health, String> {
    let missing =
        |name: &str, kind: &str| format!("health has no {kind} field '{name}': {}", snippet(value));
    Ok(Health {
        peers: value
            .get("peers")
            .and_then(Value::as_u64)
            .ok_or_else(|| missing("peers", "integer"))?,
        is_syncing: value
            .get("isSyncing")
            .and_then(Value::as_bool)
            .ok_or_else(|| missing("isSyncing", "boolean"))?,
        should_have_peers: value
            .get("shouldHavePeers")
            .and_then(Value::as_bool)
            .ok_or_else(|| missing("shouldHavePeers", "boolean"))?,
    })
}

/// Reads an answer that is either `null` or a block hash.
pub fn parse_optional_hash(value: &Value) -> Result<Option<BlockHash>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => text.parse().map(Some),
        other => Err(format!(
            "expected a block hash or null, got {}",
            snippet(other)
        )),
    }
}

/// Reads a `state_getStorage` answer: `null` (absent) or `0x`-prefixed hex bytes.
pub fn parse_storage(value: &Value) -> Result<Option<Vec<u8>>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => {
            let digits = text
                .strip_prefix("0x")
                .ok_or_else(|| format!("storage value '{}' must start with 0x", clip(text)))?;
            hex::decode(digits)
                .map(Some)
                .map_err(|_| format!("storage value '{}' is not hex", clip(text)))
        }
        other => Err(format!(
            "expected hex bytes or null, got {}",
            snippet(other)
        )),
    }
}

/// A short, single-line rendering of an answer for error messages.
fn snippet(value: &Value) -> String {
    clip(&value.to_string()).to_owned()
}

fn clip(text: &str) -> &str {
    const MAX: usize = 120;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// One WebSocket connection to a node.
pub struct NodeClient {
    client: WsClient<RpcService>,
    url: String,
    request_timeout: Duration,
}

impl fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeClient")
            .field("url", &self.url)
            .finish()
    }
}

impl NodeClient {
    /// Opens the WebSocket. Fails with [`RpcError::Unreachable`] if the handshake does not succeed
    /// within the request timeout.
    pub async fn connect(url: &str, opts: &ConnectOptions) -> Result<Self, RpcError> {
        let mut builder = WsClientBuilder::new()
            .request_timeout(opts.request_timeout)
            .connection_timeout(opts.request_timeout)
            // The default middleware only logs every request at trace level; catch-up sends
            // thousands of requests per second, so skip it.
            .set_rpc_middleware(RpcServiceBuilder::new());
        if let Some(interval) = opts.ping_interval {
            // jsonrpsee counts a missed pong against `inactive_limit` once and then closes; two
            // intervals leave room for one slow pong without tolerating a dead peer for long.
            builder = builder.enable_ws_ping(
                PingConfig::new()
                    .ping_interval(interval)
                    .inactive_limit(interval * 2)
                    .max_failures(1),
            );
        }
        let client = builder
            .build(url)
            .await
            .map_err(|err| RpcError::Unreachable {
                url: url.to_owned(),
                detail: err.to_string(),
            })?;
        Ok(NodeClient {
            client,
            url: url.to_owned(),
            request_timeout: opts.request_timeout,
        })
    }

    /// The address this client was built for, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `system_health`.
    pub async fn health(&self) -> Result<Health, RpcError> {
        const METHOD: &str = "system_health";
        let answer = self.call(METHOD, rpc_params![]).await?;
        parse_health(&answer).map_err(|detail| malformed(METHOD, detail))
    }

    /// `chain_getBlockHash(number)`: the hash of block `number` on the node's best chain, `None` if
    /// the node has no such block. For finalized numbers that is the finalized block.
    pub async fn block_hash(&self, number: u64) -> Result<Option<BlockHash>, RpcError> {
        const METHOD: &str = "chain_getBlockHash";
        let answer = self.call(METHOD, rpc_params![number]).await?;
        parse_optional_hash(&answer).map_err(|detail| malformed(METHOD, detail))
    }

    /// `chain_getHeader(hash)`, `None` if the node does not know the block.
    pub async fn header(&self, hash: &BlockHash) -> Result<Option<Header>, RpcError> {
        const METHOD: &str = "chain_getHeader";
        let answer = self.call(METHOD, rpc_params![hash.to_string()]).await?;
        if answer.is_null() {
            return Ok(None);
        }
        parse_header(&answer)
            .map(Some)
            .map_err(|detail| malformed(METHOD, detail))
    }

    /// `chain_getFinalizedHead`.
    pub async fn finalized_head(&self) -> Result<BlockHash, RpcError> {
        const METHOD: &str = "chain_getFinalizedHead";
        let answer = self.call(METHOD, rpc_params![]).await?;
        parse_optional_hash(&answer)
            .and_then(|hash| hash.ok_or_else(|| "expected a block hash, got null".to_owned()))
            .map_err(|detail| malformed(METHOD, detail))
    }

    /// `state_getStorage(key, at)`: the raw value, `None` if absent at that block.
    pub async fn storage(&self, key: &[u8], at: &BlockHash) -> Result<Option<Vec<u8>>, RpcError> {
        const METHOD: &str = "state_getStorage";
        let params = rpc_params![format!("0x{}", hex::encode(key)), at.to_string()];
        let answer = self.call(METHOD, params).await?;
        parse_storage(&answer).map_err(|detail| malformed(METHOD, detail))
    }

    /// The release stored under `key` at block `at`. The outer error is the node's; the inner one
    /// is the value's (absent, 0.0.0, wrong length), which is a fact about the chain, not a fault.
    pub async fn release_at(
        &self,
        key: &[u8],
        at: &BlockHash,
    ) -> Result<Result<SemVer, ReleaseError>, RpcError> {
        let value = self.storage(key, at).await?;
        Ok(decode_release(value.as_deref()))
    }

    /// `chain_subscribeFinalizedHeads`. The node sends its current finalized head first, then each
    /// new one; finality may jump, so numbers can skip.
    pub async fn subscribe_finalized_heads(&self) -> Result<HeadStream, RpcError> {
        const METHOD: &str = "chain_subscribeFinalizedHeads";
        let subscription = self
            .client
            .subscribe(METHOD, rpc_params![], "chain_unsubscribeFinalizedHeads")
            .await
            .map_err(|err| self.map_error(METHOD, err))?;
        Ok(HeadStream {
            subscription,
            url: self.url.clone(),
            finished: false,
        })
    }

    /// Completes once the connection is gone (at once if it already is), with the reason.
    pub async fn closed(&self) -> RpcError {
        let err = self.client.on_disconnect().await;
        self.map_error("connection", err)
    }

    async fn call(&self, method: &'static str, params: ArrayParams) -> Result<Value, RpcError> {
        self.client
            .request(method, params)
            .await
            .map_err(|err| self.map_error(method, err))
    }

    fn map_error(&self, method: &str, err: ClientError) -> RpcError {
        classify(&self.url, method, self.request_timeout, err)
    }
}

/// Sorts jsonrpsee's errors into the kinds callers act on.
fn classify(url: &str, method: &str, timeout: Duration, err: ClientError) -> RpcError {
    let disconnected = |detail: String| RpcError::Disconnected {
        url: url.to_owned(),
        detail,
    };
    match err {
        ClientError::Call(object) => RpcError::Call {
            method: method.to_owned(),
            message: format!("{} (code {})", object.message(), object.code()),
        },
        ClientError::RequestTimeout => RpcError::Timeout {
            url: url.to_owned(),
            method: method.to_owned(),
            after: timeout,
        },
        ClientError::Transport(inner) => disconnected(inner.to_string()),
        ClientError::RestartNeeded(inner) => disconnected(inner.to_string()),
        ClientError::ServiceDisconnect => disconnected("the client's connection task ended".into()),
        ClientError::ParseError(inner) => malformed(method, inner.to_string()),
        other => malformed(method, other.to_string()),
    }
}

fn malformed(method: &str, detail: String) -> RpcError {
    RpcError::Malformed {
        method: method.to_owned(),
        detail,
    }
}

/// Finalized heads as the node announces them.
pub struct HeadStream {
    subscription: Subscription<Value>,
    url: String,
    finished: bool,
}

impl fmt::Debug for HeadStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadStream")
            .field("url", &self.url)
            .field("finished", &self.finished)
            .finish()
    }
}

impl HeadStream {
    /// The next finalized head. `None` means the connection is gone: build a new client.
    ///
    /// If the node's notifications were not read fast enough, jsonrpsee drops the subscription;
    /// that comes back once as [`RpcError::Disconnected`], then `None`. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Header, RpcError>> {
        if self.finished {
            return None;
        }
        match self.subscription.next().await {
            Some(Ok(value)) => Some(
                parse_header(&value).map_err(|detail| malformed("chain_finalizedHead", detail)),
            ),
            Some(Err(err)) => Some(Err(malformed("chain_finalizedHead", err.to_string()))),
            None => {
                self.finished = true;
                match self.subscription.close_reason() {
                    Some(SubscriptionCloseReason::Lagged) => Some(Err(RpcError::Disconnected {
                        url: self.url.clone(),
                        detail: "finalized-head notifications were not read fast enough and the \
                                 subscription was dropped"
                            .into(),
                    })),
                    _ => None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hash_hex(byte: u8) -> String {
        format!("0x{}", hex::encode([byte; 32]))
    }

    #[test]
    fn header_numbers_padded_or_not() {
        for number in ["0x1a", "0x0000001a"] {
            let header = parse_header(&json!({
                "number": number,
                "parentHash": hash_hex(7),
                "stateRoot": hash_hex(1),
                "extrinsicsRoot": hash_hex(2),
                "digest": {"logs": []},
            }))
            .unwrap();
            assert_eq!(header.number, 26);
            assert_eq!(header.parent_hash, BlockHash([7; 32]));
        }
    }

    #[test]
    fn garbage_headers_are_rejected_with_the_reason() {
        let cases = [
            (json!({"number": 26, "parentHash": hash_hex(7)}), "number"),
            (json!({"number": "26", "parentHash": hash_hex(7)}), "0x"),
            (
                json!({"number": "0xzz", "parentHash": hash_hex(7)}),
                "not hex",
            ),
            (json!({"number": "0x1a"}), "parentHash"),
            (json!({"number": "0x1a", "parentHash": "0x12"}), "32 bytes"),
            (json!("garbage"), "number"),
            (json!(null), "number"),
        ];
        for (value, needle) in cases {
            let err = parse_header(&value).unwrap_err();
            assert!(err.contains(needle), "{value}: {err}");
        }
    }

    #[test]
    fn health_answers() {
        let health =
            parse_health(&json!({"peers": 3, "isSyncing": true, "shouldHavePeers": false}))
                .unwrap();
        assert_eq!(
            health,
            Health {
                peers: 3,
                is_syncing: true,
                should_have_peers: false
            }
        );
        let err = parse_health(&json!({"peers": 3, "shouldHavePeers": true})).unwrap_err();
        assert!(err.contains("isSyncing"), "{err}");
    }

    #[test]
    fn storage_answers() {
        assert_eq!(parse_storage(&json!(null)).unwrap(), None);
        assert_eq!(
            parse_storage(&json!("0x010100")).unwrap(),
            Some(vec![1, 1, 0])
        );
        assert_eq!(parse_storage(&json!("0x")).unwrap(), Some(vec![]));
        assert!(parse_storage(&json!("010100")).unwrap_err().contains("0x"));
        assert!(parse_storage(&json!("0x0g"))
            .unwrap_err()
            .contains("not hex"));
        assert!(parse_storage(&json!(5)).is_err());
    }

    #[test]
    fn hash_answers() {
        assert_eq!(parse_optional_hash(&json!(null)).unwrap(), None);
        assert_eq!(
            parse_optional_hash(&json!(hash_hex(9))).unwrap(),
            Some(BlockHash([9; 32]))
        );
        assert!(parse_optional_hash(&json!(["x"])).is_err());
    }

    #[test]
    fn long_answers_are_clipped_in_messages() {
        let err = parse_header(&json!({"junk": "x".repeat(1000)})).unwrap_err();
        assert!(err.len() < 250, "{err}");
    }

    #[test]
    fn messages_name_the_fix() {
        let err = RpcError::Unreachable {
            url: "ws://127.0.0.1:1".into(),
            detail: "connection refused".into(),
        };
        assert_eq!(
            err.to_string(),
            "node at ws://127.0.0.1:1 is unreachable: connection refused \
             (is the node running and --node right?)"
        );
        let err = RpcError::Timeout {
            url: "ws://n".into(),
            method: "system_health".into(),
            after: Duration::from_secs(30),
        };
        assert!(err.to_string().contains("within 30s"), "{err}");
    }
}
