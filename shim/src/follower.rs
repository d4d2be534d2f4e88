//! The follower: every finalized block, in order, with the release read at it.
//!
//! It owns the connection to the node and hides its failures: whatever happens on the wire, the
//! receiver sees one [`FollowerEvent::Block`] per finalized block, strictly in order, never skipped
//! and never repeated, interleaved with events that say why blocks stopped arriving for a while
//! (disconnected, syncing, node behind, another chain). It knows nothing about engines.
//!
//! Finality never goes backwards here. The follower is the one place that knows which blocks were
//! processed and which node answers, so it owns both decisions about the node's claims:
//! - a finalized head at or below the last processed block (a replica a few blocks behind after a
//!   reconnect, a replayed notification) is stale news: nothing is sent for it, a calm
//!   [`FollowerEvent::Behind`] says so, and following resumes with the block after the last
//!   processed one once the node passes it ([`plan`]);
//! - a node on another chain (another genesis hash, or another hash at the last processed number)
//!   is never followed: [`FollowerEvent::WrongChain`] is reported, the connection is dropped and
//!   retried with back-off, and following resumes only when a node serves the followed chain
//!   again ([`check_chain`]). The genesis is compared on every connection; the last processed
//!   block as soon as the node has finalized it (a node behind cannot be asked about it yet).
//!
//! How it works, per connection:
//! 1. connect, subscribe to finalized heads; the node answers with its current finalized head;
//! 2. on each notification, ask `system_health`; while the node syncs, process nothing;
//! 3. otherwise fetch every block from the last processed one up to the head (finality may jump
//!    several blocks at once), pipelined: hash by number, then the release at that hash;
//! 4. no notification for `stale_after` (a subscription can hang server-side without closing) or
//!    any RPC failure ⇒ drop the connection, wait a capped exponential back-off, start again and
//!    resume after the last processed block.
//!
//! The decisions that need no I/O — which blocks to fetch, how long to back off — are plain
//! functions and types at the top of this file.

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::backoff::Backoff;
use crate::block::{BlockHash, BlockRef};
use crate::defaults;
use crate::pace::Pacer;
use crate::rpc::{ConnectOptions, Header, NodeClient, RpcError};
use crate::storage_key::release_key;
use crate::version::{ReleaseError, SemVer};

/// How many block reads are in flight at once during catch-up. One round trip at a time caps the
/// rate at 1/RTT; a bounded window keeps the node busy without flooding it, and `buffered` keeps
/// the answers in block order.
const PIPELINE_DEPTH: usize = 64;

/// Where to follow and how patiently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerConfig {
    /// Node WebSocket address, e.g. `ws://127.0.0.1:9944`.
    pub url: String,
    /// Raw storage key of the release value.
    pub storage_key: Vec<u8>,
    /// No new finalized head for this long ⇒ reconnect.
    pub stale_after: Duration,
    /// WebSocket ping interval (finds half-open connections).
    pub ping_interval: Duration,
    /// Longest wait for any single answer from the node.
    pub request_timeout: Duration,
    /// First reconnect delay; doubles on each failure in a row.
    pub backoff_initial: Duration,
    /// Upper bound for the reconnect delay.
    pub backoff_max: Duration,
    /// How often to ask a syncing node whether it has finished.
    pub syncing_poll: Duration,
    /// How often the "node is behind" line may repeat while the node stays behind.
    pub behind_log_every: Duration,
}

impl FollowerConfig {
    /// The settings `engine-shim run` uses when no flag is given ([`crate::defaults`]).
    pub fn new(url: impl Into<String>, storage_key: Vec<u8>) -> Self {
        FollowerConfig::with(
            url,
            storage_key,
            defaults::STALE_AFTER,
            defaults::RECONNECT_MAX,
            defaults::WAIT_LOG_EVERY,
        )
    }

    /// The settings for the flags that reach the follower; everything else from
    /// [`crate::defaults::follower`]. The ping interval never exceeds `stale_after`, so a
    /// half-open connection is found before the staleness timer would give up on it.
    pub fn with(
        url: impl Into<String>,
        storage_key: Vec<u8>,
        stale_after: Duration,
        reconnect_max: Duration,
        wait_log_every: Duration,
    ) -> Self {
        FollowerConfig {
            url: url.into(),
            storage_key,
            stale_after,
            ping_interval: defaults::follower::PING_INTERVAL_MAX.min(stale_after),
            request_timeout: defaults::follower::REQUEST_TIMEOUT,
            backoff_initial: defaults::follower::RECONNECT_FIRST,
            backoff_max: reconnect_max,
            syncing_poll: defaults::follower::SYNCING_POLL,
            behind_log_every: wait_log_every,
        }
    }
}

impl Default for FollowerConfig {
    /// A local node and the Chainflip release key.
    fn default() -> Self {
        FollowerConfig::new(defaults::NODE, release_key())
    }
}

/// What the follower reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowerEvent {
    /// A connection is up; `finalized` is the node's finalized head at that moment.
    Connected { url: String, finalized: BlockRef },
    /// The node reports `isSyncing`: no block is processed until it stops. Sent once when a
    /// syncing episode starts (again after a reconnect), not on every poll.
    Syncing { url: String },
    /// The next finalized block. Exactly one per block, strictly in order, gaps filled. A release
    /// that cannot be used (absent, 0.0.0, wrong length) is reported here, not treated as a fault.
    Block {
        block: BlockRef,
        release: Result<SemVer, ReleaseError>,
    },
    /// The connection is gone (lost, stale, or the node answered badly); retrying after `retry_in`.
    Disconnected { reason: String, retry_in: Duration },
    /// The node's finalized head is at or below the last processed block (a replica behind, a
    /// replayed notification): nothing is processed until the node passes `last_processed`. Sent
    /// when the episode starts, then at most every `behind_log_every` while it lasts.
    Behind {
        url: String,
        last_processed: u64,
        node_finalized: u64,
    },
    /// The node serves another chain than the one followed so far: none of its blocks is
    /// processed. A [`FollowerEvent::Disconnected`] follows, and the node is asked again after
    /// the back-off.
    WrongChain {
        url: String,
        mismatch: ChainMismatch,
    },
}

/// How a node showed it serves another chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainMismatch {
    /// Its genesis hash is not the one of the chain followed so far.
    Genesis {
        followed: BlockHash,
        node: BlockHash,
    },
    /// Its block at a number already processed has another hash (`node` is `None` when it has no
    /// block there at all although it finalized past it).
    Block {
        followed: BlockRef,
        node: Option<BlockHash>,
    },
}

impl fmt::Display for ChainMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainMismatch::Genesis { followed, node } => {
                write!(
                    f,
                    "its genesis is {node}, the followed chain's is {followed}"
                )
            }
            ChainMismatch::Block {
                followed,
                node: Some(node),
            } => write!(
                f,
                "its block #{} is {node}, already processed as {}",
                followed.number, followed.hash
            ),
            ChainMismatch::Block {
                followed,
                node: None,
            } => write!(
                f,
                "it has no block #{}, already processed as {}",
                followed.number, followed.hash
            ),
        }
    }
}

/// Whether the node's block where the followed chain has `followed` is the same block.
pub fn check_chain(followed: BlockRef, node: Option<BlockHash>) -> Result<(), ChainMismatch> {
    match node {
        Some(hash) if hash == followed.hash => Ok(()),
        Some(node) if followed.number == 0 => Err(ChainMismatch::Genesis {
            followed: followed.hash,
            node,
        }),
        node => Err(ChainMismatch::Block { followed, node }),
    }
}

/// Which blocks to fetch after learning of a new finalized head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Fetch and report these blocks, in order.
    Fetch(RangeInclusive<u64>),
    /// The head is the last processed block: nothing new.
    UpToDate,
    /// The head is behind what was processed: stale news, act on nothing until the node passes
    /// `last_processed`.
    Behind {
        last_processed: u64,
        node_finalized: u64,
    },
}

/// Decides what to fetch given the last processed block (`None` before the first) and the node's
/// finalized head.
///
/// The very first block is the current finalized head, not genesis: what matters is the release
/// now, and replaying history would only delay the first decision. After that, finality only
/// moves forward: a lower head never makes a block be processed twice.
pub fn plan(last_processed: Option<u64>, finalized: u64) -> Plan {
    match last_processed {
        None => Plan::Fetch(finalized..=finalized),
        Some(last) if finalized > last => Plan::Fetch(last + 1..=finalized),
        Some(last) if finalized == last => Plan::UpToDate,
        Some(last) => Plan::Behind {
            last_processed: last,
            node_finalized: finalized,
        },
    }
}

/// Follows finalized blocks on `config.url` and sends [`FollowerEvent`]s until the receiver is
/// dropped. Never returns an error: node trouble is reported as events and retried.
pub async fn follow(config: FollowerConfig, events: mpsc::Sender<FollowerEvent>) {
    let mut follower = Follower {
        backoff: Backoff::new(config.backoff_initial, config.backoff_max),
        behind_line: Pacer::every(config.behind_log_every),
        config,
        events,
        genesis: None,
        last_processed: None,
        processed_on_this_connection: false,
        last_verified: false,
    };
    follower.run().await;
}

/// Why a connection ended.
enum Interrupt {
    /// Nobody listens any more: stop following.
    ReceiverGone,
    /// The connection is unusable; the reason is for the operator.
    Lost(String),
}

impl From<RpcError> for Interrupt {
    fn from(err: RpcError) -> Self {
        Interrupt::Lost(err.to_string())
    }
}

struct Follower {
    config: FollowerConfig,
    events: mpsc::Sender<FollowerEvent>,
    backoff: Backoff,
    /// The genesis hash of the chain followed, learnt on the first connection.
    genesis: Option<BlockHash>,
    /// The last block sent out; the resume point across connections.
    last_processed: Option<BlockRef>,
    processed_on_this_connection: bool,
    /// Whether this connection's node has shown it holds `last_processed` (see [`check_chain`]).
    last_verified: bool,
    /// When the "node is behind" line may repeat; reset when an episode ends, so the next
    /// episode is reported at once.
    behind_line: Pacer<Instant>,
}

impl Follower {
    async fn run(&mut self) {
        loop {
            self.processed_on_this_connection = false;
            self.last_verified = false;
            self.behind_line.reset();
            let reason = match self.connection().await {
                Interrupt::ReceiverGone => return,
                Interrupt::Lost(reason) => reason,
            };
            if self.processed_on_this_connection {
                self.backoff.reset();
            }
            let retry_in = self.backoff.next_delay();
            if self
                .send(FollowerEvent::Disconnected { reason, retry_in })
                .await
                .is_err()
            {
                return;
            }
            tokio::select! {
                _ = sleep(retry_in) => {}
                _ = self.events.closed() => return,
            }
        }
    }

    /// One connection's life; returns only when it ends.
    async fn connection(&mut self) -> Interrupt {
        let options = ConnectOptions {
            ping_interval: Some(self.config.ping_interval),
            request_timeout: self.config.request_timeout,
        };
        let connect = async {
            let client = NodeClient::connect(&self.config.url, &options).await?;
            let heads = client.subscribe_finalized_heads().await?;
            Ok::<_, RpcError>((client, heads))
        };
        let (client, mut heads) = tokio::select! {
            connected = connect => match connected {
                Ok(pair) => pair,
                Err(err) => return err.into(),
            },
            _ = self.events.closed() => return Interrupt::ReceiverGone,
        };

        let stale_after = self.config.stale_after;

        // The node sends its current finalized head first.
        let first = tokio::select! {
            head = heads.next() => match head {
                Some(Ok(head)) => head,
                Some(Err(err)) => return err.into(),
                None => return connection_gone(&client).await,
            },
            _ = sleep(stale_after) => return stale(&self.config.url, stale_after),
            _ = self.events.closed() => return Interrupt::ReceiverGone,
        };
        let finalized = match client.block_hash(first.number).await {
            Ok(Some(hash)) => BlockRef {
                number: first.number,
                hash,
            },
            Ok(None) => return missing_block(first.number),
            Err(err) => return err.into(),
        };
        let connected = FollowerEvent::Connected {
            url: self.config.url.clone(),
            finalized,
        };
        if self.send(connected).await.is_err() {
            return Interrupt::ReceiverGone;
        }
        if let Err(interrupt) = self.check_genesis(&client).await {
            return interrupt;
        }

        let mut syncing = false;
        let mut target = first;
        if let Err(interrupt) = self.on_head(&client, target, &mut syncing).await {
            return interrupt;
        }
        // Measured from the moment the follower is ready for the next head, so a long catch-up
        // does not count as silence from the node.
        let mut stale_at = Instant::now() + stale_after;
        loop {
            tokio::select! {
                biased;
                _ = self.events.closed() => return Interrupt::ReceiverGone,
                head = heads.next() => {
                    target = match next_head(head, &client).await {
                        Ok(head) => head,
                        Err(interrupt) => return interrupt,
                    };
                    // Notifications that queued up meanwhile only move the target: one health
                    // check and one catch-up cover them all.
                    while let Some(head) = heads.next().now_or_never() {
                        target = match next_head(head, &client).await {
                            Ok(head) => head,
                            Err(interrupt) => return interrupt,
                        };
                    }
                    if let Err(interrupt) = self.on_head(&client, target, &mut syncing).await {
                        return interrupt;
                    }
                    stale_at = Instant::now() + stale_after;
                }
                _ = sleep(self.config.syncing_poll), if syncing => {
                    if let Err(interrupt) = self.on_head(&client, target, &mut syncing).await {
                        return interrupt;
                    }
                    // A syncing node may finalize nothing for a long time; the health answers show
                    // the connection is alive, so silence only counts once syncing is over.
                    stale_at = Instant::now() + stale_after;
                }
                _ = sleep_until(stale_at) => return stale(&self.config.url, stale_after),
            }
        }
    }

    /// A new finalized head (or a syncing re-poll): check health, then catch up unless syncing.
    async fn on_head(
        &mut self,
        client: &NodeClient,
        head: Header,
        syncing: &mut bool,
    ) -> Result<(), Interrupt> {
        let health = client.health().await?;
        if health.is_syncing {
            if !*syncing {
                *syncing = true;
                let event = FollowerEvent::Syncing {
                    url: self.config.url.clone(),
                };
                self.send(event).await?;
            }
            return Ok(());
        }
        *syncing = false;
        let range = match plan(self.last_processed.map(|b| b.number), head.number) {
            Plan::UpToDate => return Ok(()),
            Plan::Fetch(range) => range,
            Plan::Behind {
                last_processed,
                node_finalized,
            } => {
                if self.behind_line.due(Instant::now()) {
                    let event = FollowerEvent::Behind {
                        url: self.config.url.clone(),
                        last_processed,
                        node_finalized,
                    };
                    self.send(event).await?;
                }
                return Ok(());
            }
        };
        self.behind_line.reset();
        self.check_last_processed(client).await?;
        self.catch_up(client, range).await
    }

    /// Compares the node's genesis with the followed chain's (learnt on the first connection).
    async fn check_genesis(&mut self, client: &NodeClient) -> Result<(), Interrupt> {
        let node = client.block_hash(0).await?;
        let Some(followed) = self.genesis else {
            self.genesis = Some(node.ok_or_else(|| missing_block(0))?);
            return Ok(());
        };
        let followed = BlockRef {
            number: 0,
            hash: followed,
        };
        self.verdict(check_chain(followed, node)).await
    }

    /// Before the first block from this connection: the node must hold the last processed block,
    /// or it is on another chain (asked only once it has finalized past that block).
    async fn check_last_processed(&mut self, client: &NodeClient) -> Result<(), Interrupt> {
        let Some(last) = self.last_processed.filter(|_| !self.last_verified) else {
            return Ok(());
        };
        let node = client.block_hash(last.number).await?;
        self.verdict(check_chain(last, node)).await?;
        self.last_verified = true;
        Ok(())
    }

    /// Reports a mismatch and ends the connection; nothing of that chain is processed.
    async fn verdict(&mut self, check: Result<(), ChainMismatch>) -> Result<(), Interrupt> {
        let Err(mismatch) = check else { return Ok(()) };
        let reason = format!(
            "the node at {} serves another chain ({mismatch})",
            self.config.url
        );
        let event = FollowerEvent::WrongChain {
            url: self.config.url.clone(),
            mismatch,
        };
        self.send(event).await?;
        Err(Interrupt::Lost(reason))
    }

    /// Fetches and reports `range` in order, with bounded concurrency.
    async fn catch_up(
        &mut self,
        client: &NodeClient,
        range: RangeInclusive<u64>,
    ) -> Result<(), Interrupt> {
        let key = self.config.storage_key.as_slice();
        let mut blocks = futures_util::stream::iter(range)
            .map(|number| read_block(client, key, number))
            .buffered(PIPELINE_DEPTH);
        while let Some(read) = blocks.next().await {
            let (block, release) = read?;
            self.events
                .send(FollowerEvent::Block { block, release })
                .await
                .map_err(|_| Interrupt::ReceiverGone)?;
            self.last_processed = Some(block);
            self.last_verified = true;
            self.processed_on_this_connection = true;
        }
        Ok(())
    }

    async fn send(&self, event: FollowerEvent) -> Result<(), Interrupt> {
        self.events
            .send(event)
            .await
            .map_err(|_| Interrupt::ReceiverGone)
    }
}

/// One block of the catch-up: its hash by number, then the release at that hash.
async fn read_block(
    client: &NodeClient,
    key: &[u8],
    number: u64,
) -> Result<(BlockRef, Result<SemVer, ReleaseError>), Interrupt> {
    let hash = client
        .block_hash(number)
        .await?
        .ok_or_else(|| missing_block(number))?;
    let release = client.release_at(key, &hash).await?;
    Ok((BlockRef { number, hash }, release))
}

async fn next_head(
    head: Option<Result<Header, RpcError>>,
    client: &NodeClient,
) -> Result<Header, Interrupt> {
    match head {
        Some(Ok(head)) => Ok(head),
        Some(Err(err)) => Err(err.into()),
        None => Err(connection_gone(client).await),
    }
}

/// The head stream ended: the connection is gone. Ask the client why (ping timeout, reset, …) so
/// the operator sees the cause rather than just "closed".
async fn connection_gone(client: &NodeClient) -> Interrupt {
    match timeout(Duration::from_secs(1), client.closed()).await {
        Ok(err) => err.into(),
        Err(_) => Interrupt::Lost(format!(
            "the node at {} ended the finalized-head subscription",
            client.url()
        )),
    }
}

fn stale(url: &str, after: Duration) -> Interrupt {
    Interrupt::Lost(format!(
        "no finalized head from the node at {url} for {} (finality stalled or the subscription \
         hung)",
        humantime::format_duration(after)
    ))
}

fn missing_block(number: u64) -> Interrupt {
    Interrupt::Lost(format!(
        "node reported block #{number} as finalized but has no hash for it"
    ))
}

/// Against a real WebSocket server standing in for a node.
#[cfg(test)]
mod node_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_block_is_the_current_finalized_head() {
        assert_eq!(plan(None, 1234), Plan::Fetch(1234..=1234));
        assert_eq!(plan(None, 0), Plan::Fetch(0..=0));
    }

    #[test]
    fn gaps_are_filled_from_the_block_after_the_last_processed() {
        assert_eq!(plan(Some(10), 11), Plan::Fetch(11..=11));
        assert_eq!(plan(Some(10), 15), Plan::Fetch(11..=15));
    }

    #[test]
    fn a_head_already_processed_needs_nothing() {
        assert_eq!(plan(Some(10), 10), Plan::UpToDate);
    }

    #[test]
    fn a_head_behind_the_last_processed_is_stale_news() {
        assert_eq!(
            plan(Some(10), 3),
            Plan::Behind {
                last_processed: 10,
                node_finalized: 3
            }
        );
        // Once the node passes the last processed block, the next one is the block after it.
        assert_eq!(plan(Some(10), 12), Plan::Fetch(11..=12));
    }

    fn block(number: u64, byte: u8) -> BlockRef {
        BlockRef {
            number,
            hash: BlockHash([byte; 32]),
        }
    }

    #[test]
    fn the_same_block_is_the_same_chain() {
        assert_eq!(check_chain(block(0, 1), Some(BlockHash([1; 32]))), Ok(()));
        assert_eq!(check_chain(block(9, 1), Some(BlockHash([1; 32]))), Ok(()));
    }

    #[test]
    fn another_genesis_or_another_block_is_another_chain() {
        let mismatch = check_chain(block(0, 1), Some(BlockHash([2; 32]))).unwrap_err();
        assert_eq!(
            mismatch,
            ChainMismatch::Genesis {
                followed: BlockHash([1; 32]),
                node: BlockHash([2; 32])
            }
        );
        assert!(mismatch.to_string().starts_with("its genesis is 0x0202"));
        let mismatch = check_chain(block(9, 1), Some(BlockHash([2; 32]))).unwrap_err();
        assert!(mismatch.to_string().starts_with("its block #9 is 0x0202"));
        let mismatch = check_chain(block(9, 1), None).unwrap_err();
        assert!(mismatch.to_string().starts_with("it has no block #9"));
    }
}
