//! Block identity shared by the follower, the gate and the log lines.

use std::fmt;
use std::str::FromStr;

/// A 32-byte block hash, printed in full as `0x…` (operators grep for whole hashes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub [u8; 32]);

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for BlockHash {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s
            .strip_prefix("0x")
            .ok_or_else(|| format!("block hash '{s}' must start with 0x"))?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(digits, &mut out)
            .map_err(|_| format!("block hash '{s}' is not 32 bytes of hex"))?;
        Ok(BlockHash(out))
    }
}

/// A finalized block the shim has looked at: its number and hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockRef {
    pub number: u64,
    pub hash: BlockHash,
}

impl fmt::Display for BlockRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} ({})", self.number, self.hash)
    }
}

/// A block named by the operator, by hash or by number (`check --at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockSelector {
    Hash(BlockHash),
    Number(u64),
}

impl FromStr for BlockSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("0x") {
            s.parse().map(BlockSelector::Hash)
        } else {
            s.parse()
                .map(BlockSelector::Number)
                .map_err(|_| format!("'{s}' is neither a 0x block hash nor a block number"))
        }
    }
}

/// Parses a header `number` as nodes send it: `0x`-prefixed hex, zero-padded or not.
pub fn parse_block_number(text: &str) -> Result<u64, String> {
    let digits = text
        .strip_prefix("0x")
        .ok_or_else(|| format!("block number '{text}' must be 0x-prefixed hex"))?;
    if digits.is_empty() {
        return Err(format!("block number '{text}' has no digits"));
    }
    u64::from_str_radix(digits, 16).map_err(|_| format!("block number '{text}' is not hex"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_numbers_padded_or_not() {
        assert_eq!(parse_block_number("0x1a").unwrap(), 26);
        assert_eq!(parse_block_number("0x0000001a").unwrap(), 26);
        assert_eq!(parse_block_number("0x0").unwrap(), 0);
        assert!(parse_block_number("26").is_err());
        assert!(parse_block_number("0x").is_err());
        assert!(parse_block_number("0xg").is_err());
    }

    #[test]
    fn block_selector_parses_hashes_and_numbers() {
        let hash = format!("0x{}", "11".repeat(32));
        assert!(matches!(hash.parse(), Ok(BlockSelector::Hash(_))));
        assert_eq!("42".parse(), Ok(BlockSelector::Number(42)));
        assert!("0x12".parse::<BlockSelector>().is_err());
        assert!("forty".parse::<BlockSelector>().is_err());
    }

    #[test]
    fn hashes_round_trip_in_full() {
        let text = format!("0x{}", "ab".repeat(32));
        let hash: BlockHash = text.parse().unwrap();
        assert_eq!(hash.to_string(), text);
        assert!("0xabcd".parse::<BlockHash>().is_err());
        assert!("ab".repeat(32).parse::<BlockHash>().is_err());
    }
}
