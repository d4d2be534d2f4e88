//! The runtime metadata fake-node serves: built with Substrate's own format crates
//! (`frame-metadata`, `scale-info`) to describe exactly the storage fake-node holds, or a real
//! chain's metadata loaded from a file. Pure: no I/O.
//!
//! Client libraries (polkadot.js, substrate-interface, polkadot-api, subxt) refuse to start
//! without metadata, and read storage by pallet and item name through it. The built metadata
//! describes:
//! - `System` (index 0): storage `Number`, `ParentHash`, `BlockHash` (computed per block, see
//!   [`crate::system_storage`]) and `Events` (always empty: blocks carry no extrinsics);
//!   constants `BlockHashCount` and `SS58Prefix`; a `remark` call, so that the runtime's call,
//!   event and error enums are real, non-empty enums as on every FRAME chain.
//! - `Environment` (index 2, as on Chainflip): storage `CurrentReleaseVersion`, typed as
//!   Chainflip's `cf_primitives::SemVer { major: u8, minor: u8, patch: u8 }`.
//! - The header digest types (`sp_runtime::generic::digest::{Digest, DigestItem}`), which clients
//!   decode header logs with.
//! - The extrinsic format (version 4, `UncheckedExtrinsic` with its address, call, signature and
//!   signed-extension types) and, in V15, the runtime APIs fake-node answers (`Core`,
//!   `Metadata`) and the outer enums.
//!
//! Encoded metadata is built once per node and shared ([`ServedMetadata`]), since clients ask for
//! it on every connection.

use std::collections::BTreeMap;
use std::sync::Arc;

use frame_metadata::{v14, v15, RuntimeMetadata, RuntimeMetadataPrefixed, META_RESERVED};
use parity_scale_codec::{Decode, Encode};
use scale_info::form::PortableForm;
use scale_info::{
    Field, Path, PortableRegistry, PortableRegistryBuilder, Type, TypeDef, TypeDefArray,
    TypeDefCompact, TypeDefComposite, TypeDefPrimitive, TypeDefSequence, TypeDefTuple,
    TypeDefVariant, TypeParameter, Variant,
};

use crate::preset::ChainPreset;
use crate::system_storage::BLOCK_HASH_COUNT;

/// The `Environment` pallet's index in Chainflip's runtime.
pub const ENVIRONMENT_PALLET_INDEX: u8 = 2;

/// The metadata versions fake-node builds: V14 is what `state_getMetadata` and
/// `Metadata_metadata` return (as on Substrate), V15 adds the runtime APIs.
pub const BUILT_VERSIONS: [u32; 2] = [14, 15];

/// The encoded `RuntimeMetadataPrefixed` a node serves, by metadata version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedMetadata {
    versions: BTreeMap<u32, Arc<[u8]>>,
}

impl ServedMetadata {
    /// The metadata describing fake-node's own storage, in every version of [`BUILT_VERSIONS`].
    pub fn built(preset: ChainPreset) -> Self {
        let parts = Parts::new(preset);
        let versions = BTreeMap::from([
            (14, Arc::from(parts.v14().encode())),
            (15, Arc::from(parts.v15().encode())),
        ]);
        ServedMetadata { versions }
    }

    /// A real chain's metadata (SCALE `RuntimeMetadataPrefixed`, as `state_getMetadata` returns
    /// it), served as it is, in the one version it holds.
    pub fn from_scale(bytes: Vec<u8>) -> Result<Self, MetadataError> {
        let version = check(&bytes)?;
        Ok(ServedMetadata {
            versions: BTreeMap::from([(version, Arc::from(bytes))]),
        })
    }

    /// What `state_getMetadata` and `Metadata_metadata` return: V14 when served, else the only
    /// version there is.
    pub fn default_metadata(&self) -> &[u8] {
        self.versions
            .get(&14)
            .or_else(|| self.versions.values().next())
            .expect("at least one version")
    }

    /// `Metadata_metadata_at_version`.
    pub fn at_version(&self, version: u32) -> Option<&[u8]> {
        self.versions.get(&version).map(|bytes| &bytes[..])
    }

    /// `Metadata_metadata_versions`, ascending.
    pub fn versions(&self) -> Vec<u32> {
        self.versions.keys().copied().collect()
    }
}

/// Why metadata bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    #[error("is not runtime metadata: it does not start with the \"meta\" magic (0x6d657461); save the result of state_getMetadata from a node")]
    NoMagic,
    #[error("holds metadata V{0}; fake-node serves V14 or newer (the format of every FRAME chain since 2022)")]
    TooOld(u32),
    #[error("cannot be decoded as runtime metadata: {0}; save the result of state_getMetadata from a node")]
    Corrupt(String),
}

/// Checks that `bytes` are a complete `RuntimeMetadataPrefixed` of V14 or newer and returns its
/// version.
fn check(bytes: &[u8]) -> Result<u32, MetadataError> {
    if bytes.get(..4) != Some(&META_RESERVED.to_le_bytes()[..]) {
        return Err(MetadataError::NoMagic);
    }
    // A version below 14 decodes only as opaque bytes here: refuse it by its version byte.
    if let Some(&version) = bytes.get(4) {
        if version < 14 {
            return Err(MetadataError::TooOld(version.into()));
        }
    }
    let mut input = bytes;
    let metadata = RuntimeMetadataPrefixed::decode(&mut input)
        .map_err(|e| MetadataError::Corrupt(e.to_string()))?;
    if !input.is_empty() {
        return Err(MetadataError::Corrupt(format!(
            "{} bytes left over after the metadata",
            input.len()
        )));
    }
    Ok(metadata.1.version())
}

/// Reads a metadata file's contents: `0x` hex (whitespace and newlines ignored), a JSON-RPC
/// response `{"result": "0x…"}` (as `curl` saves `state_getMetadata`), or raw SCALE bytes.
/// The result is checked like [`ServedMetadata::from_scale`].
pub fn parse_file(contents: &[u8]) -> Result<ServedMetadata, MetadataError> {
    let text = std::str::from_utf8(contents).ok().map(str::trim);
    let hex_text = match text {
        Some(text) if text.starts_with('{') => Some(json_result(text)?),
        Some(text) if text.starts_with("0x") => Some(text.to_string()),
        _ => None,
    };
    let bytes = match hex_text {
        Some(hex_text) => {
            let digits: String = hex_text[2..]
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            hex::decode(digits).map_err(|e| MetadataError::Corrupt(format!("bad hex: {e}")))?
        }
        None => contents.to_vec(),
    };
    ServedMetadata::from_scale(bytes)
}

/// The `result` of a saved JSON-RPC response, which must be a `0x` hex string.
fn json_result(text: &str) -> Result<String, MetadataError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| MetadataError::Corrupt(format!("not JSON: {e}")))?;
    match value.get("result").and_then(|r| r.as_str()) {
        Some(result) if result.starts_with("0x") => Ok(result.to_string()),
        _ => Err(MetadataError::Corrupt(
            "a JSON file must be a JSON-RPC response with a \"result\": \"0x…\" string".into(),
        )),
    }
}

/// Type ids the pallets and extrinsic refer to.
struct Ids {
    u16: u32,
    u32: u32,
    h256: u32,
    sem_ver: u32,
    events: u32,
    call: u32,
    event: u32,
    error: u32,
    system_call: u32,
    system_event: u32,
    system_error: u32,
    extrinsic: u32,
    address: u32,
    signature: u32,
    extra: u32,
    runtime: u32,
    signed_extensions: Vec<(&'static str, u32, u32)>,
    runtime_version: u32,
    opaque_metadata: u32,
    option_opaque_metadata: u32,
    vec_u32: u32,
}

/// Everything both metadata versions are made of.
struct Parts {
    preset: ChainPreset,
    types: PortableRegistry,
    ids: Ids,
}

/// Builds types in portable form, with paths chosen at run time (the runtime's crate differs
/// per preset).
#[derive(Default)]
struct Types(PortableRegistryBuilder);

fn field(name: Option<&str>, ty: u32, type_name: &str) -> Field<PortableForm> {
    Field::new(
        name.map(Into::into),
        ty.into(),
        Some(type_name.into()),
        Vec::new(),
    )
}

fn variant(name: &str, index: u8, fields: Vec<Field<PortableForm>>) -> Variant<PortableForm> {
    Variant::new(name.into(), fields, index, Vec::new())
}

impl Types {
    fn add(
        &mut self,
        path: &str,
        params: &[(&str, Option<u32>)],
        def: impl Into<TypeDef<PortableForm>>,
    ) -> u32 {
        let path = if path.is_empty() {
            Path::default()
        } else {
            Path::from_segments_unchecked(path.split("::").map(String::from))
        };
        let params = params
            .iter()
            .map(|(name, ty)| TypeParameter::new_portable((*name).into(), ty.map(Into::into)));
        self.0
            .register_type(Type::new(path, params, def.into(), Vec::new()))
    }

    fn primitive(&mut self, primitive: TypeDefPrimitive) -> u32 {
        self.add("", &[], primitive)
    }

    fn sequence(&mut self, of: u32) -> u32 {
        self.add("", &[], TypeDefSequence::new(of.into()))
    }

    fn array(&mut self, len: u32, of: u32) -> u32 {
        self.add("", &[], TypeDefArray::new(len, of.into()))
    }

    fn tuple(&mut self, of: &[u32]) -> u32 {
        self.add(
            "",
            &[],
            TypeDefTuple::new_portable(of.iter().map(|&id| id.into())),
        )
    }

    fn composite(
        &mut self,
        path: &str,
        params: &[(&str, Option<u32>)],
        fields: Vec<Field<PortableForm>>,
    ) -> u32 {
        self.add(path, params, TypeDefComposite::new(fields))
    }

    fn enumeration(
        &mut self,
        path: &str,
        params: &[(&str, Option<u32>)],
        variants: Vec<Variant<PortableForm>>,
    ) -> u32 {
        self.add(path, params, TypeDefVariant::new(variants))
    }
}

impl Parts {
    fn new(preset: ChainPreset) -> Self {
        let mut t = Types::default();
        let runtime_path = |name: &str| format!("{}::{name}", preset.runtime_crate());
        let u8 = t.primitive(TypeDefPrimitive::U8);
        let u16 = t.primitive(TypeDefPrimitive::U16);
        let u32 = t.primitive(TypeDefPrimitive::U32);
        // Not used by an item here, but in every real runtime: polkadot.js maps Substrate's
        // well-known keys (`:heappages`) to it and warns when it is missing.
        t.primitive(TypeDefPrimitive::U64);
        let str = t.primitive(TypeDefPrimitive::Str);
        let bytes = t.sequence(u8);
        let bytes32 = t.array(32, u8);
        let h256 = t.composite(
            "primitive_types::H256",
            &[],
            vec![field(None, bytes32, "[u8; 32]")],
        );
        let account = t.composite(
            "sp_core::crypto::AccountId32",
            &[],
            vec![field(None, bytes32, "[u8; 32]")],
        );
        let sem_ver = t.composite(
            "cf_primitives::SemVer",
            &[],
            vec![
                field(Some("major"), u8, "u8"),
                field(Some("minor"), u8, "u8"),
                field(Some("patch"), u8, "u8"),
            ],
        );

        // The runtime's outer enums, each with the System pallet's enum as its only variant.
        let system_call = t.enumeration(
            "frame_system::pallet::Call",
            &[("T", None)],
            vec![variant(
                "remark",
                0,
                vec![field(Some("remark"), bytes, "Vec<u8>")],
            )],
        );
        let system_event = t.enumeration(
            "frame_system::pallet::Event",
            &[("T", None)],
            vec![
                variant("CodeUpdated", 2, vec![]),
                variant(
                    "Remarked",
                    5,
                    vec![
                        field(Some("sender"), account, "T::AccountId"),
                        field(Some("hash"), h256, "T::Hash"),
                    ],
                ),
            ],
        );
        let system_error = t.enumeration(
            "frame_system::pallet::Error",
            &[("T", None)],
            vec![
                variant("InvalidSpecName", 0, vec![]),
                variant("SpecVersionNeedsToIncrease", 1, vec![]),
                variant("FailedToExtractRuntimeVersion", 2, vec![]),
                variant("CallFiltered", 5, vec![]),
            ],
        );
        let call = t.enumeration(
            &runtime_path("RuntimeCall"),
            &[],
            vec![variant(
                "System",
                0,
                vec![field(None, system_call, "self::sp_api_hidden_includes_construct_runtime::hidden_include::dispatch::CallableCallFor<System, Runtime>")],
            )],
        );
        let event = t.enumeration(
            &runtime_path("RuntimeEvent"),
            &[],
            vec![variant(
                "System",
                0,
                vec![field(None, system_event, "frame_system::Event<Runtime>")],
            )],
        );
        let error = t.enumeration(
            &runtime_path("RuntimeError"),
            &[],
            vec![variant(
                "System",
                0,
                vec![field(None, system_error, "frame_system::Error<Runtime>")],
            )],
        );

        // System::Events: Vec<EventRecord<RuntimeEvent, H256>>.
        let phase = t.enumeration(
            "frame_system::Phase",
            &[],
            vec![
                variant("ApplyExtrinsic", 0, vec![field(None, u32, "u32")]),
                variant("Finalization", 1, vec![]),
                variant("Initialization", 2, vec![]),
            ],
        );
        let topics = t.sequence(h256);
        let event_record = t.composite(
            "frame_system::EventRecord",
            &[("E", Some(event)), ("T", Some(h256))],
            vec![
                field(Some("phase"), phase, "Phase"),
                field(Some("event"), event, "E"),
                field(Some("topics"), topics, "Vec<T>"),
            ],
        );
        let events = t.sequence(event_record);

        // The extrinsic format: MultiAddress, MultiSignature and the signed extensions.
        let unit = t.tuple(&[]);
        let compact_unit = t.add("", &[], TypeDefCompact::new(unit.into()));
        let bytes20 = t.array(20, u8);
        let address = t.enumeration(
            "sp_runtime::multiaddress::MultiAddress",
            &[("AccountId", Some(account)), ("AccountIndex", Some(unit))],
            vec![
                variant("Id", 0, vec![field(None, account, "AccountId")]),
                variant("Index", 1, vec![field(None, compact_unit, "AccountIndex")]),
                variant("Raw", 2, vec![field(None, bytes, "Vec<u8>")]),
                variant("Address32", 3, vec![field(None, bytes32, "[u8; 32]")]),
                variant("Address20", 4, vec![field(None, bytes20, "[u8; 20]")]),
            ],
        );
        let bytes64 = t.array(64, u8);
        let bytes65 = t.array(65, u8);
        let ed25519 = t.composite(
            "sp_core::ed25519::Signature",
            &[],
            vec![field(None, bytes64, "[u8; 64]")],
        );
        let sr25519 = t.composite(
            "sp_core::sr25519::Signature",
            &[],
            vec![field(None, bytes64, "[u8; 64]")],
        );
        let ecdsa = t.composite(
            "sp_core::ecdsa::Signature",
            &[],
            vec![field(None, bytes65, "[u8; 65]")],
        );
        let signature = t.enumeration(
            "sp_runtime::MultiSignature",
            &[],
            vec![
                variant(
                    "Ed25519",
                    0,
                    vec![field(None, ed25519, "ed25519::Signature")],
                ),
                variant(
                    "Sr25519",
                    1,
                    vec![field(None, sr25519, "sr25519::Signature")],
                ),
                variant("Ecdsa", 2, vec![field(None, ecdsa, "ecdsa::Signature")]),
            ],
        );
        let compact_u32 = t.add("", &[], TypeDefCompact::new(u32.into()));
        let runtime = t.composite(&runtime_path("Runtime"), &[], vec![]);
        let check = |t: &mut Types, name: &str, fields: Vec<Field<PortableForm>>| {
            let module = match name {
                "CheckSpecVersion" => "check_spec_version",
                "CheckTxVersion" => "check_tx_version",
                "CheckGenesis" => "check_genesis",
                _ => "check_nonce",
            };
            t.composite(
                &format!("frame_system::extensions::{module}::{name}"),
                &[("T", Some(runtime))],
                fields,
            )
        };
        let spec_version_ext = check(&mut t, "CheckSpecVersion", vec![]);
        let tx_version_ext = check(&mut t, "CheckTxVersion", vec![]);
        let genesis_ext = check(&mut t, "CheckGenesis", vec![]);
        let nonce_ext = check(
            &mut t,
            "CheckNonce",
            vec![field(None, compact_u32, "T::Nonce")],
        );
        let signed_extensions = vec![
            ("CheckSpecVersion", spec_version_ext, u32),
            ("CheckTxVersion", tx_version_ext, u32),
            ("CheckGenesis", genesis_ext, h256),
            ("CheckNonce", nonce_ext, unit),
        ];
        let extra = t.tuple(&[spec_version_ext, tx_version_ext, genesis_ext, nonce_ext]);
        let extrinsic = t.composite(
            "sp_runtime::generic::unchecked_extrinsic::UncheckedExtrinsic",
            &[
                ("Address", Some(address)),
                ("Call", Some(call)),
                ("Signature", Some(signature)),
                ("Extra", Some(extra)),
            ],
            // Its encoding is custom: described, as Substrate does, as opaque bytes.
            vec![field(None, bytes, "")],
        );

        // Header digests: not referenced by any item, but clients that decode header logs look
        // these types up by path in the metadata.
        let bytes4 = t.array(4, u8);
        let engine_item = |name: &str, index: u8| {
            variant(
                name,
                index,
                vec![
                    field(None, bytes4, "ConsensusEngineId"),
                    field(None, bytes, "Vec<u8>"),
                ],
            )
        };
        let digest_item = t.enumeration(
            "sp_runtime::generic::digest::DigestItem",
            &[],
            vec![
                engine_item("PreRuntime", 6),
                engine_item("Consensus", 4),
                engine_item("Seal", 5),
                variant("Other", 0, vec![field(None, bytes, "Vec<u8>")]),
                variant("RuntimeEnvironmentUpdated", 8, vec![]),
            ],
        );
        let digest_items = t.sequence(digest_item);
        t.composite(
            "sp_runtime::generic::digest::Digest",
            &[],
            vec![field(Some("logs"), digest_items, "Vec<DigestItem>")],
        );

        // The runtime API types: sp_version::RuntimeVersion and sp_core::OpaqueMetadata.
        let cow_str = t.composite("Cow", &[("T", Some(str))], vec![field(None, str, "")]);
        let bytes8 = t.array(8, u8);
        let api = t.tuple(&[bytes8, u32]);
        let apis = t.sequence(api);
        let cow_apis = t.composite("Cow", &[("T", Some(apis))], vec![field(None, apis, "")]);
        let runtime_version = t.composite(
            "sp_version::RuntimeVersion",
            &[],
            vec![
                field(Some("spec_name"), cow_str, "Cow<'static, str>"),
                field(Some("impl_name"), cow_str, "Cow<'static, str>"),
                field(Some("authoring_version"), u32, "u32"),
                field(Some("spec_version"), u32, "u32"),
                field(Some("impl_version"), u32, "u32"),
                field(Some("apis"), cow_apis, "ApisVec"),
                field(Some("transaction_version"), u32, "u32"),
                field(Some("system_version"), u8, "u8"),
            ],
        );
        let opaque_metadata = t.composite(
            "sp_core::OpaqueMetadata",
            &[],
            vec![field(None, bytes, "Vec<u8>")],
        );
        let option_opaque_metadata = t.enumeration(
            "Option",
            &[("T", Some(opaque_metadata))],
            vec![
                variant("None", 0, vec![]),
                variant("Some", 1, vec![field(None, opaque_metadata, "")]),
            ],
        );
        let vec_u32 = t.sequence(u32);

        Parts {
            preset,
            types: t.0.finish(),
            ids: Ids {
                u16,
                u32,
                h256,
                sem_ver,
                events,
                call,
                event,
                error,
                system_call,
                system_event,
                system_error,
                extrinsic,
                address,
                signature,
                extra,
                runtime,
                signed_extensions,
                runtime_version,
                opaque_metadata,
                option_opaque_metadata,
                vec_u32,
            },
        }
    }

    fn storage(&self) -> [(&'static str, u8, v14::PalletStorageMetadata<PortableForm>); 2] {
        use v14::{StorageEntryMetadata, StorageEntryModifier, StorageEntryType, StorageHasher};
        let ids = &self.ids;
        let entry = |name: &str, ty: StorageEntryType<PortableForm>, default: Vec<u8>| {
            StorageEntryMetadata {
                name: name.into(),
                modifier: StorageEntryModifier::Default,
                ty,
                default,
                docs: Vec::new(),
            }
        };
        let plain = |id: u32| StorageEntryType::Plain(id.into());
        let system = v14::PalletStorageMetadata {
            prefix: "System".into(),
            entries: vec![
                entry(
                    "BlockHash",
                    StorageEntryType::Map {
                        hashers: vec![StorageHasher::Twox64Concat],
                        key: ids.u32.into(),
                        value: ids.h256.into(),
                    },
                    vec![0; 32],
                ),
                entry("Number", plain(ids.u32), vec![0; 4]),
                entry("ParentHash", plain(ids.h256), vec![0; 32]),
                entry("Events", plain(ids.events), vec![0]),
            ],
        };
        let environment = v14::PalletStorageMetadata {
            prefix: "Environment".into(),
            entries: vec![entry(
                "CurrentReleaseVersion",
                plain(ids.sem_ver),
                vec![0; 3],
            )],
        };
        [
            ("System", 0, system),
            ("Environment", ENVIRONMENT_PALLET_INDEX, environment),
        ]
    }

    fn system_constants(&self) -> Vec<v14::PalletConstantMetadata<PortableForm>> {
        let constant = |name: &str, ty: u32, value: Vec<u8>| v14::PalletConstantMetadata {
            name: name.into(),
            ty: ty.into(),
            value,
            docs: Vec::new(),
        };
        vec![
            constant("BlockHashCount", self.ids.u32, BLOCK_HASH_COUNT.encode()),
            constant(
                "SS58Prefix",
                self.ids.u16,
                self.preset.ss58_prefix().encode(),
            ),
        ]
    }

    fn pallets_v14(&self) -> Vec<v14::PalletMetadata<PortableForm>> {
        let ids = &self.ids;
        self.storage()
            .into_iter()
            .map(|(name, index, storage)| {
                let system = name == "System";
                v14::PalletMetadata {
                    name: name.into(),
                    storage: Some(storage),
                    calls: system.then(|| v14::PalletCallMetadata {
                        ty: ids.system_call.into(),
                    }),
                    event: system.then(|| v14::PalletEventMetadata {
                        ty: ids.system_event.into(),
                    }),
                    constants: if system {
                        self.system_constants()
                    } else {
                        Vec::new()
                    },
                    error: system.then(|| v14::PalletErrorMetadata {
                        ty: ids.system_error.into(),
                    }),
                    index,
                }
            })
            .collect()
    }

    fn signed_extensions(&self) -> Vec<v14::SignedExtensionMetadata<PortableForm>> {
        self.ids
            .signed_extensions
            .iter()
            .map(|&(name, ty, additional)| v14::SignedExtensionMetadata {
                identifier: name.into(),
                ty: ty.into(),
                additional_signed: additional.into(),
            })
            .collect()
    }

    fn v14(&self) -> RuntimeMetadataPrefixed {
        let metadata = v14::RuntimeMetadataV14 {
            types: self.types.clone(),
            pallets: self.pallets_v14(),
            extrinsic: v14::ExtrinsicMetadata {
                ty: self.ids.extrinsic.into(),
                version: 4,
                signed_extensions: self.signed_extensions(),
            },
            ty: self.ids.runtime.into(),
        };
        RuntimeMetadataPrefixed(META_RESERVED, RuntimeMetadata::V14(metadata))
    }

    /// The runtime APIs fake-node answers, as `Metadata_metadata_at_version(15)` lists them.
    fn apis(&self) -> Vec<v15::RuntimeApiMetadata<PortableForm>> {
        let ids = &self.ids;
        let method =
            |name: &str, inputs: Vec<(&str, u32)>, output: u32| v15::RuntimeApiMethodMetadata {
                name: name.into(),
                inputs: inputs
                    .into_iter()
                    .map(|(name, ty)| v15::RuntimeApiMethodParamMetadata {
                        name: name.into(),
                        ty: ty.into(),
                    })
                    .collect(),
                output: output.into(),
                docs: Vec::new(),
            };
        vec![
            v15::RuntimeApiMetadata {
                name: "Core".into(),
                methods: vec![method("version", vec![], ids.runtime_version)],
                docs: vec![
                    " The `Core` runtime api that every Substrate runtime needs to implement."
                        .into(),
                ],
            },
            v15::RuntimeApiMetadata {
                name: "Metadata".into(),
                methods: vec![
                    method("metadata", vec![], ids.opaque_metadata),
                    method(
                        "metadata_at_version",
                        vec![("version", ids.u32)],
                        ids.option_opaque_metadata,
                    ),
                    method("metadata_versions", vec![], ids.vec_u32),
                ],
                docs: vec![
                    " The `Metadata` api trait that returns metadata for the runtime.".into(),
                ],
            },
        ]
    }

    fn v15(&self) -> RuntimeMetadataPrefixed {
        let ids = &self.ids;
        let pallets = self
            .pallets_v14()
            .into_iter()
            .map(|p| v15::PalletMetadata {
                name: p.name,
                storage: p.storage,
                calls: p.calls,
                event: p.event,
                constants: p.constants,
                error: p.error,
                index: p.index,
                docs: Vec::new(),
            })
            .collect();
        let metadata = v15::RuntimeMetadataV15 {
            types: self.types.clone(),
            pallets,
            extrinsic: v15::ExtrinsicMetadata {
                version: 4,
                address_ty: ids.address.into(),
                call_ty: ids.call.into(),
                signature_ty: ids.signature.into(),
                extra_ty: ids.extra.into(),
                signed_extensions: self
                    .signed_extensions()
                    .into_iter()
                    .map(|e| v15::SignedExtensionMetadata {
                        identifier: e.identifier,
                        ty: e.ty,
                        additional_signed: e.additional_signed,
                    })
                    .collect(),
            },
            ty: ids.runtime.into(),
            apis: self.apis(),
            outer_enums: v15::OuterEnums {
                call_enum_ty: ids.call.into(),
                event_enum_ty: ids.event.into(),
                error_enum_ty: ids.error.into(),
            },
            custom: v15::CustomMetadata {
                map: BTreeMap::new(),
            },
        };
        RuntimeMetadataPrefixed(META_RESERVED, RuntimeMetadata::V15(metadata))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scale_info::TypeDef;

    fn decode(bytes: &[u8]) -> RuntimeMetadata {
        let prefixed = RuntimeMetadataPrefixed::decode(&mut &bytes[..]).expect("decodes");
        assert_eq!(prefixed.0, META_RESERVED);
        prefixed.1
    }

    fn v14_of(served: &ServedMetadata) -> v14::RuntimeMetadataV14 {
        match decode(served.at_version(14).unwrap()) {
            RuntimeMetadata::V14(m) => m,
            other => panic!("expected V14, got V{}", other.version()),
        }
    }

    fn v15_of(served: &ServedMetadata) -> v15::RuntimeMetadataV15 {
        match decode(served.at_version(15).unwrap()) {
            RuntimeMetadata::V15(m) => m,
            other => panic!("expected V15, got V{}", other.version()),
        }
    }

    #[test]
    fn the_release_item_is_chainflips_semver_with_named_u8_fields() {
        let m = v14_of(&ServedMetadata::built(ChainPreset::Chainflip));
        let pallet = m.pallets.iter().find(|p| p.name == "Environment").unwrap();
        assert_eq!(pallet.index, ENVIRONMENT_PALLET_INDEX);
        let storage = pallet.storage.as_ref().unwrap();
        let entry = &storage.entries[0];
        assert_eq!(entry.name, "CurrentReleaseVersion");
        let v14::StorageEntryType::Plain(ty) = &entry.ty else {
            panic!("a plain value")
        };
        let ty = m.types.resolve(ty.id).unwrap();
        assert_eq!(ty.path.segments, ["cf_primitives", "SemVer"]);
        let TypeDef::Composite(composite) = &ty.type_def else {
            panic!("a struct")
        };
        let fields: Vec<_> = composite
            .fields
            .iter()
            .map(|f| {
                let inner = m.types.resolve(f.ty.id).unwrap();
                (f.name.clone().unwrap(), inner.type_def.clone())
            })
            .collect();
        let u8_def = TypeDef::Primitive(TypeDefPrimitive::U8);
        assert_eq!(
            fields,
            [
                ("major".to_string(), u8_def.clone()),
                ("minor".to_string(), u8_def.clone()),
                ("patch".to_string(), u8_def)
            ]
        );
        assert_eq!(entry.default, vec![0, 0, 0], "unset reads as 0.0.0");
    }

    #[test]
    fn system_describes_the_computed_items_and_the_presets_address_format() {
        for preset in ChainPreset::ALL {
            let m = v14_of(&ServedMetadata::built(preset));
            let system = m.pallets.iter().find(|p| p.index == 0).unwrap();
            assert_eq!(system.name, "System");
            let names: Vec<_> = system
                .storage
                .as_ref()
                .unwrap()
                .entries
                .iter()
                .map(|e| e.name.as_str())
                .collect();
            for name in ["Number", "ParentHash", "BlockHash", "Events"] {
                assert!(names.contains(&name), "{name} in {names:?}");
            }
            let ss58 = system
                .constants
                .iter()
                .find(|c| c.name == "SS58Prefix")
                .unwrap();
            assert_eq!(
                u16::decode(&mut &ss58.value[..]).unwrap(),
                preset.ss58_prefix()
            );
            assert_eq!(m.extrinsic.version, 4);
            let extrinsic = m.types.resolve(m.extrinsic.ty.id).unwrap();
            assert_eq!(extrinsic.path.ident().unwrap(), "UncheckedExtrinsic");
            assert_eq!(extrinsic.type_params.len(), 4);
        }
    }

    #[test]
    fn v15_lists_exactly_the_runtime_apis_answered() {
        let m = v15_of(&ServedMetadata::built(ChainPreset::FakeNode));
        let apis: Vec<(String, Vec<String>)> = m
            .apis
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    a.methods.iter().map(|m| m.name.clone()).collect(),
                )
            })
            .collect();
        assert_eq!(
            apis,
            [
                ("Core".to_string(), vec!["version".to_string()]),
                (
                    "Metadata".to_string(),
                    vec![
                        "metadata".to_string(),
                        "metadata_at_version".to_string(),
                        "metadata_versions".to_string()
                    ]
                ),
            ]
        );
        let call = m.types.resolve(m.outer_enums.call_enum_ty.id).unwrap();
        assert_eq!(call.path.segments, ["fake_node_runtime", "RuntimeCall"]);
        assert!(m.custom.map.is_empty());
    }

    #[test]
    fn every_type_id_resolves() {
        let served = ServedMetadata::built(ChainPreset::Chainflip);
        let m = v15_of(&served);
        let len = m.types.types.len() as u32;
        let in_range = |id: u32| assert!(id < len, "type {id} out of {len}");
        for ty in &m.types.types {
            match &ty.ty.type_def {
                TypeDef::Composite(c) => c.fields.iter().for_each(|f| in_range(f.ty.id)),
                TypeDef::Variant(v) => v
                    .variants
                    .iter()
                    .flat_map(|v| &v.fields)
                    .for_each(|f| in_range(f.ty.id)),
                TypeDef::Sequence(s) => in_range(s.type_param.id),
                TypeDef::Array(a) => in_range(a.type_param.id),
                TypeDef::Tuple(t) => t.fields.iter().for_each(|f| in_range(f.id)),
                TypeDef::Compact(c) => in_range(c.type_param.id),
                _ => {}
            }
        }
        assert_eq!(served.versions(), vec![14, 15]);
        assert_eq!(served.default_metadata(), served.at_version(14).unwrap());
    }

    #[test]
    fn files_in_hex_json_or_raw_scale_load_and_anything_else_is_refused() {
        let built = ServedMetadata::built(ChainPreset::Chainflip);
        let raw = built.at_version(15).unwrap().to_vec();
        let hex_text = format!("0x{}\n", hex::encode(&raw));
        let wrapped = hex_text.replace("0x", "0x\n  ");
        let json = format!(
            r#"{{"jsonrpc":"2.0","id":1,"result":"{}"}}"#,
            hex_text.trim()
        );
        for contents in [
            raw.clone(),
            hex_text.into_bytes(),
            wrapped.into_bytes(),
            json.into_bytes(),
        ] {
            let served = parse_file(&contents).unwrap();
            assert_eq!(
                served.versions(),
                vec![15],
                "only the version the file holds"
            );
            assert_eq!(served.default_metadata(), &raw[..]);
            assert_eq!(served.at_version(14), None);
        }
        assert_eq!(parse_file(b"hello"), Err(MetadataError::NoMagic));
        let mut v13 = raw.clone();
        v13[4] = 13;
        assert_eq!(parse_file(&v13), Err(MetadataError::TooOld(13)));
        let truncated = &raw[..raw.len() / 2];
        assert!(matches!(
            parse_file(truncated),
            Err(MetadataError::Corrupt(_))
        ));
        let mut trailing = raw.clone();
        trailing.push(0);
        assert!(matches!(
            parse_file(&trailing),
            Err(MetadataError::Corrupt(_))
        ));
        assert!(matches!(
            parse_file(b"0xzz"),
            Err(MetadataError::Corrupt(_))
        ));
        assert!(matches!(
            parse_file(br#"{"error": {}}"#),
            Err(MetadataError::Corrupt(_))
        ));
    }
}
