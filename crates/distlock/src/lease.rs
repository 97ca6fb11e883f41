//! Owner tokens and lease references: what proves a lock is ours.

use std::fmt;

use crate::error::{Error, Result};
use crate::key::LockKey;

/// 128 random bits from the OS CSPRNG identifying one acquisition.
///
/// Stores compare it before every extend and release, so a stale or forged
/// handle can never touch a newer holder's lock.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerToken(u128);

impl OwnerToken {
    /// Draws a fresh token from the operating system's CSPRNG.
    pub fn random() -> Result<Self> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::backend("engine", "owner token", e.to_string()))?;
        Ok(OwnerToken(u128::from_le_bytes(bytes)))
    }

    /// The token as 32 lowercase hex digits, the form stores keep.
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }

    /// Builds a token from a raw value; for tests that forge a non-owner.
    pub fn from_u128(raw: u128) -> Self {
        OwnerToken(raw)
    }
}

impl fmt::Debug for OwnerToken {
    // Only a prefix: the full token is a capability and stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerToken({}…)", &self.to_hex()[..8])
    }
}

/// How many holders a key admits besides this one: the mode of a lease.
///
/// Every primitive is a lease on a key and differs only in this: a lock and
/// a writer hold the key alone; a semaphore permit is one of `limit` holders;
/// a reader is a permit of [`Share::READERS`], so any number of readers hold
/// the key together and a writer excludes them all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Share {
    /// The key alone: no other holder of either mode.
    #[default]
    Exclusive,
    /// One of at most `limit` holders that all asked for the same limit,
    /// with no exclusive holder.
    Permit {
        /// How many permits the key has (at least 1).
        limit: u32,
    },
}

impl Share {
    /// The permit a reader of a reader-writer lock takes: one of
    /// `u32::MAX`, which is as good as unlimited.
    pub const READERS: Share = Share::Permit { limit: u32::MAX };

    /// The permit limit, or `None` for an exclusive lease.
    pub fn limit(self) -> Option<u32> {
        match self {
            Share::Exclusive => None,
            Share::Permit { limit } => Some(limit),
        }
    }
}

/// A reference to one acquisition: the key, the owner token it was granted
/// to, and its mode. Backends extend and release only if the stored owner
/// matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRef {
    /// The locked key.
    pub key: LockKey,
    /// The owner token the lock was granted to.
    pub owner: OwnerToken,
    /// How the key was shared: which of a store's records holds the lease.
    pub share: Share,
}

impl LeaseRef {
    /// An exclusive lease (a lock) on `key` by `owner`.
    pub fn exclusive(key: LockKey, owner: OwnerToken) -> Self {
        LeaseRef {
            key,
            owner,
            share: Share::Exclusive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hex_encoded() {
        let a = OwnerToken::random().unwrap();
        let b = OwnerToken::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.to_hex().len(), 32);
        assert!(!format!("{a:?}").contains(&a.to_hex()));
    }
}
