//! The runtime as clients see it: its version (with the runtime APIs it answers) and the runtime
//! API calls (`state_call`, `chainHead_v1_call`), decided here with no I/O.
//!
//! A real node executes its Wasm runtime for these; fake-node answers the calls it knows directly,
//! and lists exactly those in [`RuntimeVersion::apis`], so a client never sees an API advertised
//! that then fails.

use parity_scale_codec::Encode;
use serde_json::{json, Value};

/// What `state_getRuntimeVersion` reports, and `Core_version` encodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeVersion {
    pub spec_name: String,
    pub impl_name: String,
    pub authoring_version: u32,
    pub spec_version: u32,
    pub impl_version: u32,
    /// Runtime APIs: blake2-64 of the API's trait name, and its version.
    pub apis: Vec<([u8; 8], u32)>,
    pub transaction_version: u32,
    pub state_version: u8,
}

impl RuntimeVersion {
    /// The JSON shape of `state_getRuntimeVersion`: API ids as `0x` hex, versions as numbers.
    pub fn to_json(&self) -> Value {
        let apis: Vec<Value> = self
            .apis
            .iter()
            .map(|(id, version)| json!([format!("0x{}", hex::encode(id)), version]))
            .collect();
        json!({
            "specName": self.spec_name,
            "implName": self.impl_name,
            "authoringVersion": self.authoring_version,
            "specVersion": self.spec_version,
            "implVersion": self.impl_version,
            "apis": apis,
            "transactionVersion": self.transaction_version,
            "stateVersion": self.state_version,
        })
    }

    /// The SCALE encoding `Core_version` returns (sp_version's field order).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.spec_name.encode_to(&mut out);
        self.impl_name.encode_to(&mut out);
        self.authoring_version.encode_to(&mut out);
        self.spec_version.encode_to(&mut out);
        self.impl_version.encode_to(&mut out);
        self.apis.encode_to(&mut out);
        self.transaction_version.encode_to(&mut out);
        self.state_version.encode_to(&mut out);
        out
    }
}

/// Why a runtime API call has no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("Execution failed: Other: Exported method {0} is not found")]
    UnknownMethod(String),
    #[error("Execution failed: {method}: could not decode the arguments: {reason}")]
    BadArguments { method: String, reason: String },
}

/// Answers the runtime API call `method` with SCALE-encoded `args`, for a runtime at `version`.
pub fn call(version: &RuntimeVersion, method: &str, args: &[u8]) -> Result<Vec<u8>, CallError> {
    match method {
        "Core_version" => {
            if !args.is_empty() {
                return Err(CallError::BadArguments {
                    method: method.into(),
                    reason: format!("takes no arguments, got {} bytes", args.len()),
                });
            }
            Ok(version.encode())
        }
        other => Err(CallError::UnknownMethod(other.into())),
    }
}
