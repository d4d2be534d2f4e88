#![doc = concat!(
    "A deterministic mock Substrate chain, as a library and as the `fake-node` binary.\n\n",
    "Start one in-process with [`FakeNode::spawn`] and drive it through the returned ",
    "[`FakeNodeHandle`] (the same operations as the control RPC methods), or run the binary and ",
    "use the RPC. The layers: [`chain`] (blocks, storage, finality; pure), [`node`] (chain + ",
    "scripted steps + flags; pure), [`scenario`] (TOML scripts), [`fault`] (injected faults), ",
    "[`preset`] (chain identities), [`metadata`] and [`runtime`] (what clients decode and call; ",
    "pure), [`system_storage`] (System items computed per block), and ",
    "a JSON-RPC shell around them.\n\n",
    "# Reference\n\n```text\n",
    include_str!("reference.txt"),
    "```\n"
)]

pub mod chain;
pub mod chain_head;
pub mod double;
pub mod fault;
pub mod metadata;
mod net;
pub mod node;
pub mod preset;
mod rpc;
pub mod runtime;
pub mod scenario;
pub mod storage_query;
pub mod system_storage;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use engine_shim::block::{BlockHash, BlockRef};
use engine_shim::version::SemVer;
use jsonrpsee::server::{RandomStringIdProvider, ServerConfig, ServerHandle};
use tokio::task::JoinHandle;

pub use chain::{Header, StorageChange};
pub use fault::FaultMode;
pub use node::Status;
pub use preset::ChainPreset;
pub use rpc::{MAX_BLOCKS_PER_CALL, NODE_NAME};
pub use scenario::{Scenario, Step};

use crate::net::Connections;
use crate::node::{Genesis, NodeState};
use crate::rpc::Shared;

/// The reference text shown by `fake-node --help`: methods, control API, scenario format.
pub const REFERENCE: &str = include_str!("reference.txt");

/// Messages queued per connection before a subscription waits for the client.
const MESSAGE_BUFFER: u32 = 128;

/// How to start a node. The defaults suit tests: loopback, any free port, release 1.0.0, manual
/// blocks (`block_time` zero), no finality lag, no script.
#[derive(Clone, Debug)]
pub struct FakeNodeConfig {
    pub host: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    /// The genesis release; `None` leaves the release key without a value.
    pub release: Option<SemVer>,
    /// Time between automatically built blocks; zero means blocks only on request.
    pub block_time: Duration,
    pub finality_lag: u64,
    /// Scripted steps (from a scenario).
    pub steps: Vec<Step>,
    /// The chain identity to present (`--chain`).
    pub chain: ChainPreset,
    /// A real chain's metadata to serve instead of fake-node's own (`--metadata`); load it with
    /// [`metadata::parse_file`] or [`metadata::ServedMetadata::from_scale`].
    pub metadata: Option<metadata::ServedMetadata>,
}

impl Default for FakeNodeConfig {
    fn default() -> Self {
        FakeNodeConfig {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            release: Some(SemVer::new(1, 0, 0)),
            block_time: Duration::ZERO,
            finality_lag: 0,
            steps: Vec::new(),
            chain: ChainPreset::default(),
            metadata: None,
        }
    }
}

impl FakeNodeConfig {
    /// Takes the scenario's steps, and its release, block time, finality lag and chain preset where
    /// it sets them.
    pub fn with_scenario(mut self, scenario: Scenario) -> Self {
        if let Some(release) = scenario.release {
            self.release = release;
        }
        if let Some(block_time) = scenario.block_time {
            self.block_time = block_time;
        }
        if let Some(lag) = scenario.finality_lag {
            self.finality_lag = lag;
        }
        if let Some(chain) = scenario.chain {
            self.chain = chain;
        }
        self.steps = scenario.steps;
        self
    }
}

/// Starts fake nodes.
#[derive(Debug)]
pub struct FakeNode;

impl FakeNode {
    /// Binds the port (with `SO_REUSEADDR`, so a restart on the same port works at once), builds
    /// genesis and starts serving and, if `block_time` is non-zero, building blocks.
    pub async fn spawn(config: FakeNodeConfig) -> anyhow::Result<FakeNodeHandle> {
        let addr = SocketAddr::new(config.host, config.port);
        let listener = net::bind(addr).with_context(|| {
            format!("cannot listen on {addr}; is something else using the port? (--port 0 picks a free one)")
        })?;
        let addr = listener.local_addr()?;
        let conns = Arc::new(Connections::default());
        let node = NodeState::new(Genesis {
            release: config.release,
            finality_lag: config.finality_lag,
            steps: config.steps,
            preset: config.chain,
            metadata: config.metadata.map(Arc::new),
        });
        let shared = Arc::new(Shared::new(node, Arc::clone(&conns)));
        let methods = rpc::module(Arc::clone(&shared));
        let server_config = ServerConfig::builder()
            .set_id_provider(RandomStringIdProvider::new(16))
            .max_connections(10_000)
            // Subscriptions resume from their cursor into the chain, so a small per-connection
            // buffer costs no notifications; it only bounds memory when clients are slow.
            .set_message_buffer_capacity(MESSAGE_BUFFER)
            .build();
        let (stop, server) = jsonrpsee::server::stop_channel();
        let mut tasks = vec![tokio::spawn(net::serve(
            listener,
            server_config,
            methods.into(),
            stop,
            conns,
        ))];
        if !config.block_time.is_zero() {
            tasks.push(tokio::spawn(produce(
                Arc::clone(&shared),
                config.block_time,
            )));
        }
        tracing::info!(%addr, block_time = ?config.block_time, "fake-node serving");
        Ok(FakeNodeHandle {
            shared,
            addr,
            server: Some(server),
            tasks,
        })
    }
}

/// Builds one block every `every`, on a schedule that does not drift with build time.
async fn produce(shared: Arc<Shared>, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        shared.new_blocks(1, None);
    }
}

/// A running node. Control methods act at once (no RPC round trip) and mirror the RPC control
/// methods. Dropping the handle stops the node without waiting; prefer [`FakeNodeHandle::shutdown`].
#[derive(Debug)]
pub struct FakeNodeHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Option<ServerHandle>,
    tasks: Vec<JoinHandle<()>>,
}

impl FakeNodeHandle {
    /// `ws://HOST:PORT`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Builds `count` blocks (firing scripted steps) and returns the new best hash.
    pub fn new_blocks(&self, count: u64) -> BlockHash {
        self.shared.new_blocks(count, None).hash
    }

    /// Sets (or with `None` removes) the release from the next block on.
    pub fn set_release(&self, release: Option<SemVer>) {
        self.shared.update(|node| node.set_release(release));
    }

    /// Queues raw storage changes for the next block (e.g. a malformed release value).
    pub fn set_storage(&self, changes: Vec<StorageChange>) {
        self.shared.update(|node| node.set_storage(changes));
    }

    pub fn set_finality_lag(&self, lag: u64) {
        self.shared.update(|node| node.set_finality_lag(lag));
    }

    /// Stalls finality, or resumes it with a single jump to `best − lag`.
    pub fn stall_finality(&self, stalled: bool) {
        self.shared.update(|node| node.stall_finality(stalled));
    }

    /// Finalizes up to block `number` now (even while stalled); returns the finalized block.
    pub fn finalize(&self, number: u64) -> anyhow::Result<BlockRef> {
        self.shared.update(|node| node.finalize(number))?;
        Ok(self.finalized())
    }

    pub fn set_syncing(&self, syncing: bool) {
        self.shared.update(|node| node.set_syncing(syncing));
    }

    /// Makes a Substrate method (or alias) misbehave; [`FaultMode::None`] clears it.
    pub fn set_fault(&self, method: &str, mode: FaultMode) -> anyhow::Result<()> {
        Ok(self.shared.update(|node| node.set_fault(method, mode))?)
    }

    /// Drops every client connection abruptly; returns how many were dropped.
    pub fn drop_connections(&self) -> usize {
        self.shared.drop_connections(None)
    }

    /// How many client connections are open.
    pub fn connections(&self) -> usize {
        self.shared.conns.count()
    }

    pub fn best(&self) -> BlockRef {
        self.shared.read(|node| node.chain().best())
    }

    pub fn finalized(&self) -> BlockRef {
        self.shared.read(|node| node.chain().finalized())
    }

    pub fn hash_of(&self, number: u64) -> Option<BlockHash> {
        self.shared.read(|node| node.chain().hash_of(number))
    }

    pub fn header(&self, number: u64) -> Option<Header> {
        self.shared.read(|node| node.chain().header(number))
    }

    /// The value under `key` at block `hash`: `None` if the block is unknown.
    pub fn storage_at(&self, hash: &BlockHash, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.shared.read(|node| {
            let number = node.chain().number_of(hash)?;
            node.chain()
                .storage_at(number, key)
                .map(|value| value.map(std::borrow::Cow::into_owned))
        })
    }

    pub fn status(&self) -> Status {
        self.shared.read(NodeState::status)
    }

    /// Stops serving and building, closes every connection and frees the port.
    pub async fn shutdown(mut self) {
        let server = self.begin_stop();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await; // aborted: this only waits until the listener is closed
        }
        self.shared.conns.drop_all(None);
        if let Some(server) = server {
            // Connections end as soon as they see their sockets shut; do not wait forever on a
            // connection stuck in a hung call.
            let _ = tokio::time::timeout(Duration::from_secs(5), server.stopped()).await;
        }
        tracing::info!(addr = %self.addr, "fake-node stopped");
    }

    fn begin_stop(&mut self) -> Option<ServerHandle> {
        let server = self.server.take();
        if let Some(server) = &server {
            let _ = server.stop();
        }
        for task in &self.tasks {
            task.abort();
        }
        server
    }
}

impl Drop for FakeNodeHandle {
    fn drop(&mut self) {
        if self.begin_stop().is_some() {
            self.shared.conns.drop_all(None);
        }
    }
}
