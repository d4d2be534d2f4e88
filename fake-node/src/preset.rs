//! Chain identity presets: what a node says it is (`system_chain`, `system_name`,
//! `system_properties`, the runtime's `specName`/`implName` and the metadata's `SS58Prefix`).
//!
//! Tools often check which chain they talk to before doing anything (an address format, a token
//! symbol, a chain name); a preset makes fake-node pass those checks for the chain it stands in
//! for. Pure data, no I/O.

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Value};

/// A chain identity fake-node can present.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ChainPreset {
    /// fake-node's own identity: name "fake-node", Substrate's generic address format (42) and
    /// the dev-chain token (UNIT, 12 decimals).
    #[default]
    FakeNode,
    /// Chainflip mainnet (Berghain) as its nodes report it.
    Chainflip,
}

impl ChainPreset {
    /// Every preset, in the order `--help` lists them.
    pub const ALL: [ChainPreset; 2] = [ChainPreset::FakeNode, ChainPreset::Chainflip];

    /// The `--chain` value naming this preset.
    pub fn id(self) -> &'static str {
        match self {
            ChainPreset::FakeNode => "fake-node",
            ChainPreset::Chainflip => "chainflip",
        }
    }

    /// `system_chain` and `chainSpec_v1_chainName`: the chain spec's name.
    pub fn chain_name(self) -> &'static str {
        match self {
            ChainPreset::FakeNode => "fake-node",
            ChainPreset::Chainflip => "Chainflip-Berghain",
        }
    }

    /// `system_name`: the node implementation's name.
    pub fn node_name(self) -> &'static str {
        match self {
            ChainPreset::FakeNode => "fake-node",
            ChainPreset::Chainflip => "Chainflip Node",
        }
    }

    /// The runtime's `specName` (clients key their type overrides on it).
    pub fn spec_name(self) -> &'static str {
        match self {
            ChainPreset::FakeNode => "fake-node",
            ChainPreset::Chainflip => "chainflip-node",
        }
    }

    /// The runtime's `implName`.
    pub fn impl_name(self) -> &'static str {
        self.spec_name()
    }

    /// The runtime's `implVersion`.
    pub fn impl_version(self) -> u32 {
        match self {
            ChainPreset::FakeNode => 0,
            ChainPreset::Chainflip => 1,
        }
    }

    /// The runtime's `transactionVersion`.
    pub fn transaction_version(self) -> u32 {
        match self {
            ChainPreset::FakeNode => 1,
            ChainPreset::Chainflip => 13,
        }
    }

    /// The SS58 address prefix: `ss58Format` in the properties and `System::SS58Prefix` in the
    /// metadata (clients read either).
    pub fn ss58_prefix(self) -> u16 {
        match self {
            ChainPreset::FakeNode => 42,
            ChainPreset::Chainflip => 2112,
        }
    }

    /// The Rust crate a real runtime of this chain lives in: the path prefix of the runtime's own
    /// types (`RuntimeCall`, `RuntimeEvent`, ...) in the metadata.
    pub fn runtime_crate(self) -> &'static str {
        match self {
            ChainPreset::FakeNode => "fake_node_runtime",
            ChainPreset::Chainflip => "state_chain_runtime",
        }
    }

    /// `system_properties` and `chainSpec_v1_properties`.
    pub fn properties(self) -> Value {
        match self {
            ChainPreset::FakeNode => json!({
                "ss58Format": self.ss58_prefix(),
                "tokenDecimals": 12,
                "tokenSymbol": "UNIT",
            }),
            ChainPreset::Chainflip => json!({
                "ss58Format": self.ss58_prefix(),
                "tokenDecimals": 18,
                "tokenSymbol": "FLIP",
                "color": "#61CFAA",
            }),
        }
    }
}

impl fmt::Display for ChainPreset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl FromStr for ChainPreset {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        ChainPreset::ALL
            .into_iter()
            .find(|preset| preset.id() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = ChainPreset::ALL.iter().map(|p| p.id()).collect();
                format!(
                    "unknown chain preset '{text}': use one of {}",
                    known.join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_from_their_ids_and_nothing_else() {
        for preset in ChainPreset::ALL {
            assert_eq!(preset.id().parse::<ChainPreset>(), Ok(preset));
        }
        let error = "polkadot".parse::<ChainPreset>().unwrap_err();
        assert!(error.contains("fake-node, chainflip"), "{error}");
    }

    #[test]
    fn chainflip_reports_what_its_mainnet_nodes_report() {
        let cf = ChainPreset::Chainflip;
        assert_eq!(cf.chain_name(), "Chainflip-Berghain");
        assert_eq!(cf.spec_name(), "chainflip-node");
        assert_eq!(cf.properties()["ss58Format"], 2112);
        assert_eq!(cf.properties()["tokenDecimals"], 18);
        assert_eq!(cf.properties()["tokenSymbol"], "FLIP");
    }
}
