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

/// A reference to one acquisition: the key and the owner token it was
/// granted to. Backends extend and release only if the stored owner matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRef {
    /// The locked key.
    pub key: LockKey,
    /// The owner token the lock was granted to.
    pub owner: OwnerToken,
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
