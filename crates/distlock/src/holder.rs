//! What a read-only look at a lock reports.

use std::time::Duration;

/// The current holder of a lock, as the store reports it.
///
/// The owner token that proves ownership is never part of it: whoever can
/// read a holder cannot release its lock.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HolderInfo {
    /// The holder's fencing token.
    pub fencing_token: u64,
    /// Time left before the store expires the lock, when it has a TTL
    /// (`None` for locks that live as long as their holder, such as file locks).
    pub expires_in: Option<Duration>,
    /// Metadata the holder attached when it obtained the lock.
    pub metadata: Option<String>,
}

impl HolderInfo {
    /// A holder with the given fencing token, no TTL and no metadata.
    pub fn new(fencing_token: u64) -> Self {
        HolderInfo {
            fencing_token,
            expires_in: None,
            metadata: None,
        }
    }

    /// Sets the time left before the store expires the lock.
    pub fn expires_in(mut self, left: Duration) -> Self {
        self.expires_in = Some(left);
        self
    }

    /// Sets the holder's metadata.
    pub fn metadata(mut self, metadata: Option<String>) -> Self {
        self.metadata = metadata;
        self
    }
}
