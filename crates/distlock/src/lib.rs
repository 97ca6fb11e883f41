//! # distlock
//!
//! One distributed-lock API over several stores — memory (one process),
//! a local file (one host), Redis and etcd — with the same behaviour on
//! every one of them: fencing tokens, validity deadlines measured from the
//! send time, a lost-lock signal, read-only inspection, fair local waiting
//! and cancel-safe obtains.
//!
//! Business code depends on [`Locker`] and [`Lock`] only; which store
//! serves them is configuration ([`Locker::from_url`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> distlock::Result<()> {
//! use std::time::Duration;
//! use distlock::{Locker, ObtainOptions};
//!
//! let locker = Locker::from_url("memory://?namespace=billing").await?;
//! let lock = locker
//!     .obtain_with("invoices/2026-11", ObtainOptions::new()
//!         .ttl(Duration::from_secs(10))
//!         .wait(Duration::from_secs(2))
//!         .metadata("worker-1"))
//!     .await?;
//! let refresher = lock.start_refresh(|e| eprintln!("refresh failed: {e}"));
//!
//! // Hand the fencing token to every resource the lock protects.
//! let token = lock.fencing_token();
//! assert_eq!(locker.inspect("invoices/2026-11").await?.unwrap().fencing_token, token);
//!
//! tokio::select! {
//!     reason = lock.lost() => panic!("lock lost: {reason:?}"),
//!     _ = tokio::time::sleep(Duration::from_millis(10)) => {} // the critical section
//! }
//! refresher.stop().await;
//! lock.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## Backends
//!
//! * [`backend::memory`] — always compiled in (`memory://`).
//! * `backend::redis` — cargo feature `redis` (`redis://`, `rediss://`):
//!   one Redis server, Lua scripts, per-key fencing counters, pub/sub
//!   wake-ups.
//! * `etcd://` / `etcds://` — cargo feature `etcd` (needs `protoc` to
//!   build): module `backend::etcd`, with a fair FIFO queue by create
//!   revision, the create revision as fencing token, and two etcd writes per
//!   uncontended obtain + release.
//!
//! ## What a lease-based lock can promise
//!
//! A lock with a TTL is safe only while its holder meets its validity
//! deadline. A process paused past it (GC, swap, SIGSTOP, a suspended VM)
//! may still believe it holds the lock while another holder has it. The
//! fencing token is what makes that harmless: a resource that rejects
//! writes carrying a token lower than one it has seen cannot be corrupted by
//! a stale holder.
#![deny(missing_docs)]

pub mod backend;
mod backoff;
mod engine;
mod error;
mod holder;
mod key;
mod leadership;
mod lease;
mod lock;
mod locker;
mod options;
mod retry;
mod rwlock;
mod semaphore;
mod url;
mod validity;

pub use engine::LostReason;
pub use error::{BoxError, Error, Result};
pub use holder::{HolderInfo, Holders};
pub use key::{
    DEFAULT_NAMESPACE, IntoKey, Key, LockKey, MAX_KEY_BYTES, MAX_NAMESPACE_BYTES, Namespace,
};
pub use leadership::{DEFAULT_OBSERVE_POLL, Leader, Leadership, default_identity};
pub use lease::{LeaseRef, OwnerToken, Share};
pub use lock::{Lock, RefreshHandle};
pub use locker::{DEFAULT_OP_TIMEOUT, Locker, LockerBuilder};
pub use options::{DEFAULT_TTL, MAX_METADATA_BYTES, MAX_TTL, ObtainOptions};
pub use retry::RetryStrategy;
pub use rwlock::RwLock;
pub use semaphore::Semaphore;
pub use validity::{EXPIRY_LEAD, ValidityPolicy};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
