//! Identifiers, parsed once at the edge and trusted afterwards.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// A bulk action's id: a ULID, so ids sort by creation time and never collide across
/// api instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, example = "01JDQ6V4J8Q0Y5Z6X7W8V9T0S1"))]
pub struct ActionId(Ulid);

impl ActionId {
    pub fn from_ulid(ulid: Ulid) -> Self {
        Self(ulid)
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Ulid::from_str(raw).ok().map(Self)
    }

    pub fn ulid(&self) -> Ulid {
        self.0
    }

    /// A stable partition for this action among `partitions` (>= 1). Uses the ULID's random
    /// bits, so actions spread evenly whatever their creation times.
    pub fn partition(&self, partitions: u32) -> u32 {
        let random_bits = self.0.random();
        (random_bits % u128::from(partitions.max(1))) as u32
    }
}

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The tenant. Every query and every write is scoped by one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, example = "acme-corp"))]
pub struct AccountId(String);

pub const ACCOUNT_ID_MAX_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountIdError {
    #[error("accountId must not be empty")]
    Empty,
    #[error("accountId must be at most {ACCOUNT_ID_MAX_LEN} characters")]
    TooLong,
    #[error("accountId may contain only letters, digits, '-', '_' and ':'")]
    InvalidCharacter,
}

impl AccountId {
    /// Account ids end up in Redis keys, log lines and query filters, so the alphabet is
    /// kept to characters that are inert in all three.
    pub fn parse(raw: &str) -> Result<Self, AccountIdError> {
        if raw.is_empty() {
            return Err(AccountIdError::Empty);
        }
        if raw.len() > ACCOUNT_ID_MAX_LEN {
            return Err(AccountIdError::TooLong);
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':');
        if !raw.chars().all(allowed) {
            return Err(AccountIdError::InvalidCharacter);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The partition that holds this account's actions, queues and budgets among
    /// `partitions` (>= 1). FNV-1a, written out here because it must never change between
    /// builds or platforms: it decides where existing data lives.
    pub fn partition(&self, partitions: u32) -> u32 {
        let hash = self
            .0
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        (hash % u64::from(partitions.max(1))) as u32
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_id_rejects_operators_and_spaces() {
        assert_eq!(AccountId::parse(""), Err(AccountIdError::Empty));
        assert_eq!(
            AccountId::parse("$where"),
            Err(AccountIdError::InvalidCharacter)
        );
        assert_eq!(
            AccountId::parse("a b"),
            Err(AccountIdError::InvalidCharacter)
        );
        assert!(AccountId::parse("acme-corp_1:eu").is_ok());
        assert_eq!(
            AccountId::parse(&"a".repeat(129)),
            Err(AccountIdError::TooLong)
        );
    }

    #[test]
    fn account_partitions_never_change() {
        // Pinned values: changing the hash would strand every stored action.
        let acme = AccountId::parse("acme").unwrap();
        assert_eq!(acme.partition(1), 0);
        assert_eq!(acme.partition(4), 3); // FNV-1a("acme") = 0x0724d383f4f6de0f
        assert_eq!(AccountId::parse("").map(|a| a.partition(4)).ok(), None);
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        let id = ActionId::from_ulid(Ulid::from_parts(1, 12345));
        assert_eq!(id.partition(4), (12345 % 4) as u32);
        assert_eq!(id.partition(0), 0);
        assert_eq!(ActionId::parse(&id.to_string()), Some(id));
    }
}
