//! Injected faults: answer a chosen Substrate method with garbage, an error, or not at all.
//!
//! Faults are keyed by the canonical method name; an alias (`state_getStorageAt`,
//! `chain_subscribeFinalisedHeads`, …) shares its canonical method's fault, so a test cannot miss a
//! client that happens to use the other spelling. Control methods (`dev_*`, `fake_*`) cannot be
//! faulted: the test must always be able to clear a fault.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::Value;

/// The Substrate methods that can be faulted, each with its aliases.
pub const FAULTABLE_METHODS: &[(&str, &[&str])] = &[
    ("system_health", &[]),
    ("system_chain", &[]),
    ("system_name", &[]),
    ("system_version", &[]),
    ("system_properties", &[]),
    ("rpc_methods", &[]),
    ("chain_getBlockHash", &["chain_getHead"]),
    ("chain_getHeader", &[]),
    ("chain_getBlock", &[]),
    ("chain_getFinalizedHead", &["chain_getFinalisedHead"]),
    (
        "chain_subscribeFinalizedHeads",
        &["chain_subscribeFinalisedHeads"],
    ),
    (
        "chain_subscribeNewHeads",
        &["chain_subscribeNewHead", "subscribe_newHead"],
    ),
    ("chain_subscribeAllHeads", &[]),
    ("state_getStorage", &["state_getStorageAt"]),
    ("state_getStorageHash", &["state_getStorageHashAt"]),
    ("state_getStorageSize", &["state_getStorageSizeAt"]),
    ("state_getKeys", &[]),
    ("state_getKeysPaged", &["state_getKeysPagedAt"]),
    ("state_queryStorage", &[]),
    ("state_queryStorageAt", &[]),
    ("state_subscribeStorage", &[]),
    ("state_getRuntimeVersion", &["chain_getRuntimeVersion"]),
    ("state_getMetadata", &[]),
    ("state_call", &["state_callAt"]),
    (
        "state_subscribeRuntimeVersion",
        &["chain_subscribeRuntimeVersion"],
    ),
    ("chainHead_v1_follow", &[]),
    ("chainHead_v1_header", &[]),
    ("chainHead_v1_body", &[]),
    ("chainHead_v1_call", &[]),
    ("chainHead_v1_storage", &[]),
    ("chainHead_v1_continue", &[]),
    ("chainHead_v1_stopOperation", &[]),
    ("chainHead_v1_unpin", &[]),
    ("chainSpec_v1_chainName", &[]),
    ("chainSpec_v1_genesisHash", &[]),
    ("chainSpec_v1_properties", &[]),
];

/// The canonical name of a faultable method or one of its aliases.
pub fn canonical_method(name: &str) -> Option<&'static str> {
    FAULTABLE_METHODS
        .iter()
        .find(|(canonical, aliases)| *canonical == name || aliases.contains(&name))
        .map(|(canonical, _)| *canonical)
}

/// How a faulted method answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum FaultMode {
    /// Answer normally (clears a fault).
    #[default]
    None,
    /// A result of the wrong JSON type: the number 42 where a string or null is expected, the
    /// string `"garbage"` where an object or array is expected. Subscriptions send such values as
    /// notifications.
    Garbage,
    /// A string that is not hex (`"0xnot-hex"`), where a hex string is expected.
    NonHex,
    /// A JSON-RPC error (code -32000). Subscriptions are rejected.
    Error,
    /// No answer until the fault is changed; subscriptions are not confirmed until then.
    Hang,
}

impl FaultMode {
    pub const NAMES: &'static [&'static str] = &["none", "garbage", "non_hex", "error", "hang"];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultMode::None => "none",
            FaultMode::Garbage => "garbage",
            FaultMode::NonHex => "non_hex",
            FaultMode::Error => "error",
            FaultMode::Hang => "hang",
        }
    }

    /// Replaces a correct result by this mode's wrong one; `None`, `Error` and `Hang` leave it
    /// alone (they act before a result exists).
    pub fn corrupt(self, value: Value) -> Value {
        match self {
            FaultMode::Garbage => match value {
                Value::Object(_) | Value::Array(_) => Value::from("garbage"),
                _ => Value::from(42),
            },
            FaultMode::NonHex => Value::from("0xnot-hex"),
            FaultMode::None | FaultMode::Error | FaultMode::Hang => value,
        }
    }
}

impl fmt::Display for FaultMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultMode {
    type Err = FaultError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "none" => FaultMode::None,
            "garbage" => FaultMode::Garbage,
            "non_hex" | "non-hex" => FaultMode::NonHex,
            "error" => FaultMode::Error,
            "hang" => FaultMode::Hang,
            other => return Err(FaultError::UnknownMode(other.to_string())),
        })
    }
}

/// A fault request: which method, answered how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub method: String,
    pub mode: FaultMode,
}

/// Why a fault request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("'{0}' cannot be faulted; faultable methods: {list}", list = faultable_list())]
    UnknownMethod(String),
    #[error("fault mode '{0}' is unknown; use one of: none, garbage, non_hex, error, hang")]
    UnknownMode(String),
}

fn faultable_list() -> String {
    FAULTABLE_METHODS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The faults in force, by canonical method name.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    modes: BTreeMap<&'static str, FaultMode>,
    /// The message of a [`FaultMode::Error`] answer, where a test chose one (any text, control
    /// characters included, as a hostile or broken node might send).
    messages: BTreeMap<&'static str, String>,
}

impl Faults {
    /// Sets (or with [`FaultMode::None`] clears) the fault of a method or alias.
    pub fn set(&mut self, method: &str, mode: FaultMode) -> Result<(), FaultError> {
        self.set_with_message(method, mode, None)
    }

    /// As [`Faults::set`]; an `error` fault answers with `message` if given.
    pub fn set_with_message(
        &mut self,
        method: &str,
        mode: FaultMode,
        message: Option<String>,
    ) -> Result<(), FaultError> {
        let canonical = canonical_method(method)
            .ok_or_else(|| FaultError::UnknownMethod(method.to_string()))?;
        match mode {
            FaultMode::None => self.modes.remove(canonical),
            mode => self.modes.insert(canonical, mode),
        };
        match message {
            Some(message) if mode == FaultMode::Error => self.messages.insert(canonical, message),
            _ => self.messages.remove(canonical),
        };
        Ok(())
    }

    /// The fault of a canonical method name.
    pub fn get(&self, canonical: &str) -> FaultMode {
        self.modes.get(canonical).copied().unwrap_or_default()
    }

    /// The chosen error message of a canonical method name, if any.
    pub fn message(&self, canonical: &str) -> Option<&str> {
        self.messages.get(canonical).map(String::as_str)
    }

    /// Active faults as `(canonical method, mode)`, sorted by method.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, FaultMode)> + '_ {
        self.modes.iter().map(|(k, v)| (*k, *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_error_fault_may_carry_the_message_a_test_chose() {
        let mut faults = Faults::default();
        faults
            .set_with_message(
                "state_getStorageAt",
                FaultMode::Error,
                Some("line one\nline two".into()),
            )
            .unwrap();
        assert_eq!(
            faults.message("state_getStorage"),
            Some("line one\nline two")
        );
        // Any other mode, or the same mode without a message, drops it.
        faults.set("state_getStorage", FaultMode::Error).unwrap();
        assert_eq!(faults.message("state_getStorage"), None);
        faults
            .set_with_message("state_getStorage", FaultMode::Garbage, Some("x".into()))
            .unwrap();
        assert_eq!(faults.message("state_getStorage"), None);
    }

    #[test]
    fn aliases_share_their_canonical_fault() {
        let mut faults = Faults::default();
        faults
            .set("state_getStorageAt", FaultMode::Garbage)
            .unwrap();
        assert_eq!(faults.get("state_getStorage"), FaultMode::Garbage);
        faults
            .set("chain_subscribeFinalisedHeads", FaultMode::Error)
            .unwrap();
        assert_eq!(
            faults.get("chain_subscribeFinalizedHeads"),
            FaultMode::Error
        );
        faults.set("state_getStorage", FaultMode::None).unwrap();
        assert_eq!(faults.get("state_getStorage"), FaultMode::None);
        assert_eq!(faults.iter().count(), 1);
    }

    #[test]
    fn control_and_unknown_methods_cannot_be_faulted() {
        let mut faults = Faults::default();
        for name in ["fake_setFault", "dev_newBlock", "nope"] {
            let err = faults.set(name, FaultMode::Error).unwrap_err();
            assert!(err.to_string().contains("state_getStorage"), "{err}");
        }
        assert!(matches!(
            "broken".parse::<FaultMode>(),
            Err(FaultError::UnknownMode(_))
        ));
    }

    #[test]
    fn garbage_has_the_wrong_json_type() {
        assert_eq!(FaultMode::Garbage.corrupt(json!("0x010000")), json!(42));
        assert_eq!(FaultMode::Garbage.corrupt(Value::Null), json!(42));
        assert_eq!(
            FaultMode::Garbage.corrupt(json!({"a": 1})),
            json!("garbage")
        );
        assert_eq!(FaultMode::NonHex.corrupt(json!("0x01")), json!("0xnot-hex"));
        assert_eq!(FaultMode::None.corrupt(json!("0x01")), json!("0x01"));
        for name in FaultMode::NAMES {
            assert_eq!(name.parse::<FaultMode>().unwrap().as_str(), *name);
        }
    }
}
