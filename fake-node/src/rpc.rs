//! The JSON-RPC surface: Substrate methods with real-node semantics, the control methods, and the
//! head subscriptions.
//!
//! All state sits behind one mutex in [`Shared`]; handlers hold it only for a few map lookups and
//! never across an `await`. Every change wakes the subscription tasks through a `watch` channel.
//! The modules: [`params`] reads parameters and builds errors, [`substrate`] answers the node's
//! request methods, [`heads`] serves the head subscriptions, [`control`] the `dev_*`/`fake_*`
//! methods, [`runtime_api`] the metadata, runtime calls and runtime version subscription.

mod blocks;
mod chain_head;
mod control;
mod heads;
mod params;
mod runtime_api;
mod storage;
mod substrate;

use std::sync::{Arc, Mutex, MutexGuard};

use engine_shim::block::BlockRef;
use jsonrpsee::server::RpcModule;
use jsonrpsee::types::ErrorObjectOwned;
use serde_json::Value;
use tokio::sync::watch;

use crate::fault::FaultMode;
use crate::net::Connections;
use crate::node::{Built, NodeState};
use crate::runtime::{self, CallError, RuntimeVersion};
use heads::HeaderCache;

/// Name reported by `system_name`, `system_chain` and the runtime's `specName` under the default
/// chain preset.
pub const NODE_NAME: &str = "fake-node";
/// The most blocks a single `dev_newBlock` call may build.
pub const MAX_BLOCKS_PER_CALL: u64 = 1_000_000;

const INVALID_PARAMS: i32 = -32602;
const INJECTED_FAULT: i32 = -32000;
/// Substrate's `state` error code for client errors such as an unknown block.
const STATE_CLIENT_ERROR: i32 = 4003;

type RpcResult<T = Value> = Result<T, ErrorObjectOwned>;

/// State shared by the RPC handlers, the block timer and the library handle.
#[derive(Debug)]
pub struct Shared {
    inner: Mutex<Inner>,
    changed: watch::Sender<()>,
    pub(crate) conns: Arc<Connections>,
}

#[derive(Debug)]
struct Inner {
    node: NodeState,
    headers: HeaderCache,
    methods: Vec<&'static str>,
    follows: chain_head::Follows,
}

impl Shared {
    pub fn new(node: NodeState, conns: Arc<Connections>) -> Self {
        Shared {
            inner: Mutex::new(Inner {
                node,
                headers: HeaderCache::default(),
                methods: Vec::new(),
                follows: chain_head::Follows::default(),
            }),
            changed: watch::Sender::new(()),
            conns,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every mutation is one call),
        // so keep serving rather than poisoning every later request.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the node.
    pub fn read<R>(&self, f: impl FnOnce(&NodeState) -> R) -> R {
        f(&self.lock().node)
    }

    /// Changes the node and wakes every subscription.
    pub fn update<R>(&self, f: impl FnOnce(&mut NodeState) -> R) -> R {
        let result = f(&mut self.lock().node);
        self.changed.send_replace(());
        result
    }

    /// Builds blocks and carries out any scripted connection drop, sparing `spare` (the calling
    /// connection) so it still receives its answer.
    pub fn new_blocks(&self, count: u64, spare: Option<usize>) -> BlockRef {
        let built: Built = self.update(|node| node.new_blocks(count));
        for (at, action) in &built.fired {
            tracing::info!(block = at, ?action, "scenario step fired");
        }
        tracing::debug!(best = built.head.number, hash = %built.head.hash, "built blocks");
        if built.drop_connections {
            let dropped = self.conns.drop_all(spare);
            tracing::info!(dropped, "dropped client connections");
        }
        built.head
    }

    /// Drops every client connection except `spare`; returns how many were dropped.
    pub fn drop_connections(&self, spare: Option<usize>) -> usize {
        let dropped = self.conns.drop_all(spare);
        tracing::info!(dropped, "dropped client connections");
        dropped
    }

    /// Waits while `method` is faulted with [`FaultMode::Hang`], then returns its fault mode.
    async fn fault_after_hang(&self, method: &str) -> FaultMode {
        let mut changed = self.changed.subscribe();
        loop {
            let mode = self.lock().node.fault(method);
            if mode != FaultMode::Hang {
                return mode;
            }
            if changed.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

impl Inner {
    /// The runtime version at block `number`, which must exist.
    fn runtime_version(&self, number: u64) -> RuntimeVersion {
        let spec_version = self
            .node
            .chain()
            .spec_version_at(number)
            .expect("block exists");
        let preset = self.node.preset();
        RuntimeVersion {
            spec_name: preset.spec_name().into(),
            impl_name: preset.impl_name().into(),
            authoring_version: 1,
            spec_version,
            impl_version: preset.impl_version(),
            apis: runtime::answered_apis(),
            transaction_version: preset.transaction_version(),
            state_version: 1,
        }
    }

    /// Answers a runtime API call at block `number`, which must exist.
    fn runtime_call(&self, number: u64, method: &str, args: &[u8]) -> Result<Vec<u8>, CallError> {
        let version = self.runtime_version(number);
        let runtime = runtime::Runtime {
            version: &version,
            metadata: self.node.metadata(),
        };
        runtime::call(runtime, method, args)
    }
}

/// Builds the RPC module: every Substrate, control and subscription method.
pub fn module(shared: Arc<Shared>) -> RpcModule<Shared> {
    let mut module = RpcModule::from_arc(Arc::clone(&shared));
    substrate::register(&mut module);
    blocks::register(&mut module);
    storage::register(&mut module);
    heads::register(&mut module);
    chain_head::register(&mut module);
    control::register(&mut module);
    runtime_api::register(&mut module);

    let mut names: Vec<&'static str> = module.method_names().collect();
    names.sort_unstable();
    shared.lock().methods = names;
    module
}
