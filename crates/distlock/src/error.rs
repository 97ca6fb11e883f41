//! The one error type every backend reports through.

use std::time::Duration;

use crate::holder::HolderInfo;

/// The result type of every fallible distlock operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed source error from a store client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong, identical on every backend.
///
/// A store's own error types never leak out as the top-level error: they are
/// kept as the `source` of [`Error::Backend`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Someone else holds the lock and it could not be obtained within the
    /// wait deadline or the retry budget. When the store's last answer in
    /// that time was a failure instead (or it never answered), the obtain
    /// fails with that error ([`Error::Backend`], [`Error::Timeout`]), not
    /// with this one.
    #[error(
        "lock {key:?} not obtained after {attempts} attempt(s) in {waited:?}{}",
        holder.as_ref().map(|h| format!(" (held with fencing token {})", h.fencing_token)).unwrap_or_default()
    )]
    NotObtained {
        /// The key that was asked for.
        key: String,
        /// How long the caller waited in total.
        waited: Duration,
        /// How many acquisition attempts reached the store.
        attempts: u32,
        /// The holder seen on the last attempt, when the store reported one
        /// (boxed to keep `Error` small).
        holder: Option<Box<HolderInfo>>,
    },

    /// A refresh or release of a lock that expired, was released, or now
    /// belongs to another owner.
    #[error("lock {key:?} is not held by this owner (expired, released or taken over)")]
    NotHeld {
        /// The key of the lock.
        key: String,
    },

    /// A semaphore's (or reader-writer lock's) holders asked for a
    /// different limit, or a store without permits was asked for one. Not
    /// transient: the caller's limit has to change.
    #[error("{key:?}: {reason}")]
    LimitMismatch {
        /// The key that was asked for.
        key: String,
        /// What disagrees: the limit asked for and the one the key is held
        /// with.
        reason: String,
    },

    /// The key is not a valid lock key.
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// What is wrong with it.
        reason: String,
    },

    /// An option or option combination is invalid.
    #[error("invalid option `{option}`: {reason}")]
    InvalidOptions {
        /// The option at fault.
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A backend URL could not be used.
    #[error("invalid backend URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL, with any password removed.
        url: String,
        /// What is wrong with it (an unknown scheme names the cargo feature to enable).
        reason: String,
    },

    /// The store failed.
    #[error("{backend} backend failed during {op}: {source}")]
    Backend {
        /// The backend's name (`memory`, `redis`, ...).
        backend: &'static str,
        /// The operation that failed.
        op: &'static str,
        /// The store client's error.
        #[source]
        source: BoxError,
    },

    /// The store refused the operation for a reason retrying cannot fix:
    /// missing permissions (a Redis ACL, an etcd role, a lock directory's
    /// mode), bad credentials, an untrusted server certificate, a read-only
    /// or full file system. Not transient: the engine reports it at once
    /// instead of retrying, and the message says what is missing.
    #[error("{backend} backend refused {op}: {source}")]
    Refused {
        /// The backend's name.
        backend: &'static str,
        /// The operation that was refused.
        op: &'static str,
        /// The store client's error, explaining what is missing.
        #[source]
        source: BoxError,
    },

    /// The store did not answer in time.
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// The operation that timed out.
        op: &'static str,
        /// How long it was given.
        after: Duration,
    },

    /// The locker was closed.
    #[error("the locker is closed")]
    Closed,
}

impl Error {
    /// True for [`Error::NotObtained`]: someone else holds the lock.
    pub fn is_not_obtained(&self) -> bool {
        matches!(self, Error::NotObtained { .. })
    }

    /// True for [`Error::NotHeld`]: the lock is no longer ours.
    pub fn is_not_held(&self) -> bool {
        matches!(self, Error::NotHeld { .. })
    }

    /// True when retrying the same operation later may succeed: the store
    /// failed or timed out, but nothing proved the lock lost.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Backend { .. } | Error::Timeout { .. })
    }

    /// Wraps a store client error for `backend` during `op`.
    pub fn backend(backend: &'static str, op: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            op,
            source: source.into(),
        }
    }

    /// Wraps a store refusal (permissions, credentials) for `backend`
    /// during `op`: see [`Error::Refused`].
    pub fn refused(backend: &'static str, op: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Refused {
            backend,
            op,
            source: source.into(),
        }
    }

    /// The same error again, for each of the callers one failed call
    /// served (a batch of extends): the variant and message are kept, a
    /// store client's source error becomes its message.
    pub(crate) fn repeat(&self) -> Self {
        let message = |source: &BoxError| -> BoxError { source.to_string().into() };
        match self {
            Error::Timeout { op, after } => Error::Timeout { op, after: *after },
            Error::Closed => Error::Closed,
            Error::NotHeld { key } => Error::NotHeld { key: key.clone() },
            Error::LimitMismatch { key, reason } => Error::LimitMismatch {
                key: key.clone(),
                reason: reason.clone(),
            },
            Error::Backend {
                backend,
                op,
                source,
            } => Error::backend(backend, op, message(source)),
            Error::Refused {
                backend,
                op,
                source,
            } => Error::refused(backend, op, message(source)),
            other => Error::backend("engine", "extend", other.to_string()),
        }
    }

    /// A limit mismatch on `key`: asked for `asked` permits where the
    /// current holders share `held`; for backends to report.
    pub fn limit_mismatch(key: &crate::key::LockKey, asked: u32, held: u32) -> Self {
        let name = |limit: u32| {
            if limit == u32::MAX {
                "readers of a reader-writer lock".to_owned()
            } else {
                format!("a semaphore of {limit} permit(s)")
            }
        };
        Error::LimitMismatch {
            key: key.key.to_string(),
            reason: format!("asked as {} but held as {}", name(asked), name(held)),
        }
    }

    pub(crate) fn invalid_options(option: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidOptions {
            option,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_is_exclusive() {
        let not_obtained = Error::NotObtained {
            key: "k".into(),
            waited: Duration::ZERO,
            attempts: 1,
            holder: None,
        };
        let not_held = Error::NotHeld { key: "k".into() };
        let timeout = Error::Timeout {
            op: "extend",
            after: Duration::from_millis(5),
        };
        assert!(not_obtained.is_not_obtained() && !not_obtained.is_not_held());
        assert!(not_held.is_not_held() && !not_held.is_transient());
        assert!(timeout.is_transient() && !timeout.is_not_obtained());
        assert!(Error::backend("memory", "acquire", "boom").is_transient());
        assert!(!Error::Closed.is_transient());
        assert!(!Error::refused("redis", "acquire", "NOPERM").is_transient());
    }
}
