//! The runtime as clients see it: its version (with the runtime APIs it answers) and the runtime
//! API calls (`state_call`, `chainHead_v1_call`), decided here with no I/O.
//!
//! A real node executes its Wasm runtime for these; fake-node answers the calls it knows directly,
//! and lists exactly those in [`RuntimeVersion::apis`], so a client never sees an API advertised
//! that then fails.

use blake2::digest::consts::U8;
use blake2::{Blake2b, Digest};
use parity_scale_codec::{Decode, Encode};
use serde_json::{json, Value};

use crate::metadata::ServedMetadata;

/// The runtime APIs fake-node answers, with the versions current Substrate runtimes report
/// (`Core` 5, `Metadata` 2: the version that added `metadata_at_version` and
/// `metadata_versions`).
pub const ANSWERED_APIS: [(&str, u32); 2] = [("Core", 5), ("Metadata", 2)];

/// A runtime API's id in `RuntimeVersion::apis`: blake2-64 of its trait name.
pub fn api_id(name: &str) -> [u8; 8] {
    Blake2b::<U8>::digest(name.as_bytes()).into()
}

/// [`ANSWERED_APIS`] as `RuntimeVersion::apis` lists them.
pub fn answered_apis() -> Vec<([u8; 8], u32)> {
    ANSWERED_APIS
        .iter()
        .map(|&(name, version)| (api_id(name), version))
        .collect()
}

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
            // Substrate renamed the field to systemVersion and still sends the old name too.
            "systemVersion": self.state_version,
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

/// The runtime a call runs against: its version and the metadata it serves.
#[derive(Clone, Copy, Debug)]
pub struct Runtime<'a> {
    pub version: &'a RuntimeVersion,
    pub metadata: &'a ServedMetadata,
}

/// Answers the runtime API call `method` with SCALE-encoded `args`.
pub fn call(runtime: Runtime<'_>, method: &str, args: &[u8]) -> Result<Vec<u8>, CallError> {
    match method {
        "Core_version" => {
            no_arguments(method, args)?;
            Ok(runtime.version.encode())
        }
        // `OpaqueMetadata` is a `Vec<u8>`: the prefixed metadata behind a length.
        "Metadata_metadata" => {
            no_arguments(method, args)?;
            Ok(runtime.metadata.default_metadata().encode())
        }
        "Metadata_metadata_at_version" => {
            let version = u32::decode(&mut &args[..])
                .ok()
                .filter(|_| args.len() == 4)
                .ok_or_else(|| CallError::BadArguments {
                    method: method.into(),
                    reason: format!(
                        "takes one u32 (4 bytes, little-endian), got {} bytes",
                        args.len()
                    ),
                })?;
            Ok(runtime.metadata.at_version(version).encode())
        }
        "Metadata_metadata_versions" => {
            no_arguments(method, args)?;
            Ok(runtime.metadata.versions().encode())
        }
        other => Err(CallError::UnknownMethod(other.into())),
    }
}

fn no_arguments(method: &str, args: &[u8]) -> Result<(), CallError> {
    if args.is_empty() {
        return Ok(());
    }
    Err(CallError::BadArguments {
        method: method.into(),
        reason: format!("takes no arguments, got {} bytes", args.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preset::ChainPreset;

    fn version() -> RuntimeVersion {
        RuntimeVersion {
            spec_name: "chainflip-node".into(),
            impl_name: "chainflip-node".into(),
            authoring_version: 1,
            spec_version: 101,
            impl_version: 1,
            apis: answered_apis(),
            transaction_version: 13,
            state_version: 1,
        }
    }

    #[test]
    fn api_ids_are_blake2_64_of_the_trait_names() {
        // The ids every Substrate runtime reports for these two APIs.
        assert_eq!(hex::encode(api_id("Core")), "df6acb689907609b");
        assert_eq!(hex::encode(api_id("Metadata")), "37e397fc7c91f5e4");
        let json = version().to_json();
        assert_eq!(
            json["apis"],
            json!([["0xdf6acb689907609b", 5], ["0x37e397fc7c91f5e4", 2]])
        );
        assert_eq!(json["systemVersion"], json["stateVersion"]);
    }

    /// `sp_version::RuntimeVersion`'s SCALE layout, decoded field by field.
    #[derive(Decode, Debug, PartialEq)]
    struct Decoded {
        spec_name: String,
        impl_name: String,
        authoring_version: u32,
        spec_version: u32,
        impl_version: u32,
        apis: Vec<([u8; 8], u32)>,
        transaction_version: u32,
        system_version: u8,
    }

    #[test]
    fn core_version_round_trips() {
        let metadata = ServedMetadata::built(ChainPreset::Chainflip);
        let version = version();
        let runtime = Runtime {
            version: &version,
            metadata: &metadata,
        };
        let bytes = call(runtime, "Core_version", &[]).unwrap();
        let decoded = Decoded::decode(&mut &bytes[..]).unwrap();
        assert_eq!(decoded.spec_name, "chainflip-node");
        assert_eq!(decoded.spec_version, 101);
        assert_eq!(decoded.apis, answered_apis());
        assert_eq!(decoded.system_version, 1);
        assert!(matches!(
            call(runtime, "Core_version", &[1]),
            Err(CallError::BadArguments { .. })
        ));
    }

    #[test]
    fn metadata_calls_answer_as_a_runtime_with_metadata_api_v2() {
        let metadata = ServedMetadata::built(ChainPreset::FakeNode);
        let version = version();
        let runtime = Runtime {
            version: &version,
            metadata: &metadata,
        };
        let opaque = call(runtime, "Metadata_metadata", &[]).unwrap();
        assert_eq!(
            Vec::<u8>::decode(&mut &opaque[..]).unwrap(),
            metadata.at_version(14).unwrap()
        );
        let at = |v: u32| {
            let bytes = call(runtime, "Metadata_metadata_at_version", &v.encode()).unwrap();
            Option::<Vec<u8>>::decode(&mut &bytes[..]).unwrap()
        };
        assert_eq!(at(15).as_deref(), metadata.at_version(15));
        assert_eq!(at(16), None);
        let versions = call(runtime, "Metadata_metadata_versions", &[]).unwrap();
        assert_eq!(
            Vec::<u32>::decode(&mut &versions[..]).unwrap(),
            vec![14, 15]
        );
        assert!(matches!(
            call(runtime, "Metadata_metadata_at_version", &[15]),
            Err(CallError::BadArguments { .. })
        ));
        assert_eq!(
            call(runtime, "Foo_bar", &[]).unwrap_err().to_string(),
            "Execution failed: Other: Exported method Foo_bar is not found"
        );
    }
}
