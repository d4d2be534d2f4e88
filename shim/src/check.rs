//! `engine-shim check`: one compatibility answer for scripts and CI, as an exit code.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::block::{BlockRef, BlockSelector};
use crate::probe::probe_version;
use crate::rpc::{ConnectOptions, NodeClient};
use crate::version::{Compatibility, Rule, SemVer};

/// Exit codes of `check`; scripts branch on these.
pub mod exit {
    pub const COMPATIBLE: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_YET_COMPATIBLE: u8 = 10;
    pub const NO_LONGER_COMPATIBLE: u8 = 11;
}

/// Which engine `check` asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineToCheck {
    /// A version given outright (`--engine-version`).
    Version(SemVer),
    /// A program whose `PROGRAM --version` names the version (`--engine`).
    Program(PathBuf),
}

/// Everything `check` needs, with every default filled in. It is a plain value, not the flags,
/// so the question can be asked without a command line (the flags become one in `cli`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    pub node: String,
    pub storage_key: Vec<u8>,
    pub rule: Rule,
    pub engine: EngineToCheck,
    /// The block to read at; the finalized head when `None`.
    pub at: Option<BlockSelector>,
    /// Print one JSON object instead of a sentence.
    pub json: bool,
    /// Give up on the node (and on the engine's `--version`) after this long.
    pub timeout: Duration,
}

/// The answer `check` gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub engine: SemVer,
    pub release: SemVer,
    pub block: BlockRef,
    pub compatibility: Compatibility,
}

impl Verdict {
    pub fn exit_code(&self) -> u8 {
        match self.compatibility {
            Compatibility::Compatible => exit::COMPATIBLE,
            Compatibility::NotYetCompatible => exit::NOT_YET_COMPATIBLE,
            Compatibility::NoLongerCompatible => exit::NO_LONGER_COMPATIBLE,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "engine_version": self.engine.to_string(),
            "release": self.release.to_string(),
            "block_number": self.block.number,
            "block_hash": self.block.hash.to_string(),
            "compatibility": self.compatibility.as_str(),
        })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match self.compatibility {
            Compatibility::Compatible => "is compatible with",
            Compatibility::NotYetCompatible => "is not yet compatible with",
            Compatibility::NoLongerCompatible => "is no longer compatible with",
        };
        write!(
            f,
            "engine {} {how} release {} at block #{} ({})",
            self.engine, self.release, self.block.number, self.block.hash
        )
    }
}

/// Runs the check and prints the answer; returns the process exit code.
pub async fn run(request: CheckRequest) -> u8 {
    match verdict(&request).await {
        Ok(verdict) => {
            if request.json {
                println!("{}", verdict.to_json());
            } else {
                println!("{verdict}");
            }
            verdict.exit_code()
        }
        Err(error) => {
            if request.json {
                println!("{}", json!({ "error": error }));
            }
            eprintln!("error: {error}");
            exit::ERROR
        }
    }
}

async fn verdict(request: &CheckRequest) -> Result<Verdict, String> {
    let engine = match &request.engine {
        EngineToCheck::Version(version) => *version,
        EngineToCheck::Program(path) => probe_version(path, request.timeout)
            .await
            .map_err(|e| e.to_string())?,
    };
    let options = ConnectOptions {
        ping_interval: None,
        request_timeout: request.timeout,
    };
    let client = tokio::time::timeout(
        request.timeout,
        NodeClient::connect(&request.node, &options),
    )
    .await
    .map_err(|_| {
        format!(
            "node at {} did not answer within {:?}",
            request.node, request.timeout
        )
    })?
    .map_err(|e| e.to_string())?;
    let block = resolve_block(&client, request.at).await?;
    let release = client
        .release_at(&request.storage_key, &block.hash)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("at block #{} ({}): {e}", block.number, block.hash))?;
    Ok(Verdict {
        engine,
        release,
        block,
        compatibility: request.rule.compare(engine, release),
    })
}

/// The block to read at: `--at` if given, else the finalized head of a node that is not syncing.
async fn resolve_block(client: &NodeClient, at: Option<BlockSelector>) -> Result<BlockRef, String> {
    let url = client.url().to_string();
    let hash = match at {
        Some(BlockSelector::Hash(hash)) => hash,
        Some(BlockSelector::Number(number)) => client
            .block_hash(number)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("node at {url} has no block #{number}"))?,
        None => {
            let health = client.health().await.map_err(|e| e.to_string())?;
            if health.is_syncing {
                return Err(format!(
                    "node at {url} is syncing, so its finalized head is not current; wait, or pass --at to check a given block"
                ));
            }
            client.finalized_head().await.map_err(|e| e.to_string())?
        }
    };
    let header = client
        .header(&hash)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("node at {url} does not know block {hash}"))?;
    Ok(BlockRef {
        number: header.number,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockHash;

    #[test]
    fn verdict_text_and_json_name_everything() {
        let verdict = Verdict {
            engine: SemVer::new(1, 1, 0),
            release: SemVer::new(1, 0, 0),
            block: BlockRef {
                number: 7,
                hash: BlockHash([0xab; 32]),
            },
            compatibility: Compatibility::NotYetCompatible,
        };
        assert_eq!(verdict.exit_code(), 10);
        let text = verdict.to_string();
        assert!(text.starts_with(
            "engine 1.1.0 is not yet compatible with release 1.0.0 at block #7 (0xabab"
        ));
        let json = verdict.to_json();
        assert_eq!(json["compatibility"], "not_yet_compatible");
        assert_eq!(json["block_number"], 7);
        assert_eq!(json["release"], "1.0.0");
    }
}
