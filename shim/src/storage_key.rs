//! Storage keys for plain `StorageValue` items, computed the way Substrate does.
//!
//! The default release key is derived from the pallet and item names rather than pasted, so a
//! different chain only needs `--storage-key` or its own names.

use std::hash::Hasher;

use twox_hash::XxHash64;

/// Pallet that stores the release on Chainflip.
pub const RELEASE_PALLET: &str = "Environment";
/// Storage item holding the release on Chainflip.
pub const RELEASE_ITEM: &str = "CurrentReleaseVersion";

/// `twox128(x)` = xxh64(x, seed 0) ++ xxh64(x, seed 1), each little-endian.
pub fn twox128(data: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (seed, chunk) in out.chunks_exact_mut(8).enumerate() {
        let mut hasher = XxHash64::with_seed(seed as u64);
        hasher.write(data);
        chunk.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    out
}

/// The key of a `StorageValue`: twox128(pallet) ++ twox128(item).
pub fn storage_value_key(pallet: &str, item: &str) -> Vec<u8> {
    let mut key = twox128(pallet.as_bytes()).to_vec();
    key.extend_from_slice(&twox128(item.as_bytes()));
    key
}

/// Chainflip's `Environment::CurrentReleaseVersion` key.
pub fn release_key() -> Vec<u8> {
    storage_value_key(RELEASE_PALLET, RELEASE_ITEM)
}

/// A storage key given on the command line, as `0x`-prefixed (or bare) hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageKey(pub Vec<u8>);

impl std::str::FromStr for StorageKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_key(text).map(StorageKey)
    }
}

/// Parses a `0x`-prefixed (or bare) hex storage key given on the command line.
pub fn parse_key(text: &str) -> Result<Vec<u8>, String> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    let key = hex::decode(digits).map_err(|e| format!("storage key '{text}' is not hex: {e}"))?;
    if key.is_empty() {
        return Err("storage key must not be empty".into());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twox128_matches_substrate_check_value() {
        assert_eq!(
            hex::encode(twox128(b"System")),
            "26aa394eea5630e07c48ae0c9558cef7"
        );
    }

    #[test]
    fn chainflip_release_key() {
        assert_eq!(
            hex::encode(release_key()),
            "ea74517f3c97f142e2fa95ff896cfe9ff86eff33c0bbe9c5ee5d383dacc1d2ef"
        );
    }

    #[test]
    fn parses_keys_with_or_without_prefix() {
        assert_eq!(parse_key("0x0a0b").unwrap(), vec![10, 11]);
        assert_eq!(parse_key("0a0b").unwrap(), vec![10, 11]);
        assert!(parse_key("0xzz").is_err());
        assert!(parse_key("0x").is_err());
    }
}
