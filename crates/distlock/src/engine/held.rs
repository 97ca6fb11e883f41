//! The record of one held lease: its fencing token, validity deadline and
//! end. Front types ([`Lock`](crate::Lock)) hold one; the engine's held set
//! and refresher refer to it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::Renewal;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::lease::LeaseRef;
use crate::options::ObtainOptions;
use crate::validity::expiry;

/// Why a lock ended; what [`Lock::lost`](crate::Lock::lost) resolves with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// The validity deadline passed without a successful refresh.
    Expired,
    /// The store said the lock no longer belongs to this owner.
    NotHeld,
    /// The lock was released (or its handle dropped); nothing was lost.
    Released,
    /// The locker was closed, which released the lock; or the backend was
    /// closed under it (by whoever else uses it), so it can no longer be
    /// refreshed.
    Closed,
}

impl LostReason {
    /// True when the lock ended without its holder letting go of it.
    pub fn is_loss(self) -> bool {
        matches!(self, LostReason::Expired | LostReason::NotHeld)
    }
}

pub(crate) struct Held {
    pub(crate) engine: Arc<Engine>,
    pub(crate) id: u64,
    pub(crate) lease: LeaseRef,
    pub(crate) fencing_token: u64,
    pub(crate) ttl: Duration,
    pub(crate) refresh_interval: Duration,
    pub(crate) metadata: Option<String>,
    status: Mutex<Status>,
    /// Signalled when the validity deadline moves or the lock ends.
    pub(crate) changed: Notify,
    /// Set when the holder lets go: refreshers then stop quietly.
    done: AtomicBool,
}

struct Status {
    valid_until: Instant,
    ended: Option<LostReason>,
}

impl Held {
    pub(crate) fn new(
        engine: Arc<Engine>,
        id: u64,
        lease: LeaseRef,
        fencing_token: u64,
        options: &ObtainOptions,
        valid_until: Instant,
    ) -> Arc<Self> {
        Arc::new(Held {
            engine,
            id,
            lease,
            fencing_token,
            ttl: options.ttl_value(),
            refresh_interval: options.refresh_interval_or_default(),
            metadata: options.metadata_value().map(str::to_owned),
            status: Mutex::new(Status {
                valid_until,
                ended: None,
            }),
            changed: Notify::new(),
            done: AtomicBool::new(false),
        })
    }

    fn status(&self) -> MutexGuard<'_, Status> {
        // Status updates are single assignments: a poisoned lock is consistent.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn valid_until(&self) -> Instant {
        self.status().valid_until
    }

    /// When the lock counts as expired: [`EXPIRY_LEAD`](crate::EXPIRY_LEAD)
    /// before its validity deadline.
    pub(crate) fn expires_at(&self) -> Instant {
        expiry(self.valid_until())
    }

    pub(crate) fn ended_with(&self) -> Option<LostReason> {
        self.status().ended
    }

    /// Whether the holder let go (release, drop, close).
    pub(crate) fn is_let_go(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Whether the holder let go (release, drop) or the lock ended.
    pub(crate) fn is_over(&self) -> bool {
        self.is_let_go() || self.ended_with().is_some()
    }

    /// Ends the lock once; `Expired` only if the deadline really passed.
    /// Returns whether this call ended it.
    pub(crate) fn end(&self, reason: LostReason) -> bool {
        {
            let mut status = self.status();
            if status.ended.is_some()
                || (reason == LostReason::Expired && Instant::now() < expiry(status.valid_until))
            {
                return false;
            }
            status.ended = Some(reason);
        }
        self.changed.notify_waiters();
        if reason.is_loss() {
            tracing::warn!(
                key = %self.lease.key.key,
                backend = self.engine.backend.name(),
                fencing_token = self.fencing_token,
                ?reason,
                "distlock: lock lost"
            );
        }
        true
    }

    /// Ok while the lock is ours and within its validity deadline.
    pub(crate) fn check_valid(&self) -> Result<()> {
        if Instant::now() >= self.expires_at() {
            self.end(LostReason::Expired);
        }
        match self.ended_with() {
            None => Ok(()),
            Some(LostReason::Closed) => Err(Error::Closed),
            Some(_) => Err(self.not_held()),
        }
    }

    fn not_held(&self) -> Error {
        Error::NotHeld {
            key: self.lease.key.key.to_string(),
        }
    }

    /// What an extend of this lock asks the store for.
    pub(crate) fn renewal(&self) -> Renewal {
        Renewal::new(self.lease.clone(), self.ttl).validity(self.engine.validity)
    }

    /// How long an extend of this lock may take: until its validity
    /// deadline (see [`Engine::extend_retry_deadline`]).
    pub(crate) fn extend_deadline(&self) -> Instant {
        self.engine.extend_retry_deadline(self.valid_until())
    }

    /// One extend (retried on transient errors when `retry`), bounded by the
    /// validity deadline; see [`settle`](Self::settle) for what its answer
    /// does.
    pub(crate) async fn extend(&self, retry: bool, before_loss: impl FnMut(&Error)) -> Result<()> {
        self.check_valid()?;
        let engine = &self.engine;
        let deadline = self.extend_deadline();
        let sent = Instant::now();
        let renewal = self.renewal();
        let call = || engine.backend.extend(&renewal);
        let result = if retry {
            engine.call_idempotent("extend", Some(deadline), call).await
        } else {
            engine.call_by("extend", Some(deadline), call()).await.0
        };
        self.settle(sent, result, before_loss)
    }

    /// Applies the store's answer to an extend sent at `sent`: moves the
    /// deadline on success, ends the lock when the store says it is gone or
    /// the deadline passed. `before_loss` sees the store's NotHeld before
    /// the lock ends (so before `lost()` fires).
    pub(crate) fn settle(
        &self,
        sent: Instant,
        result: Result<()>,
        mut before_loss: impl FnMut(&Error),
    ) -> Result<()> {
        match result {
            Ok(()) => {
                let mut status = self.status();
                // An answer after the deadline comes too late: the lock may
                // have been someone else's meanwhile, as far as its holder
                // could tell.
                if status.ended.is_some() || Instant::now() >= expiry(status.valid_until) {
                    drop(status);
                    return self.check_valid();
                }
                status.valid_until = status
                    .valid_until
                    .max(self.engine.validity_deadline(sent, self.ttl));
                drop(status);
                self.changed.notify_waiters();
                Ok(())
            }
            Err(e) if e.is_not_held() => {
                before_loss(&e);
                self.end(LostReason::NotHeld);
                Err(e)
            }
            // The backend was closed under the lock (by its owner, or by
            // whoever shares it): it can never be refreshed again, so it ends
            // now rather than at its validity deadline.
            Err(Error::Closed) => {
                self.end(LostReason::Closed);
                Err(Error::Closed)
            }
            Err(e) => {
                self.check_valid()?;
                Err(e)
            }
        }
    }

    /// Called by [`Engine::close`].
    pub(crate) async fn close(&self) {
        self.done.store(true, Ordering::Release);
        // Ended before the release is sent: once the store may give the key
        // to someone else, the holder must already see its lock as gone.
        if self.end(LostReason::Closed) {
            let (result, _) = self
                .engine
                .call_by("release", None, self.engine.backend.release(&self.lease))
                .await;
            if let Err(e) = result {
                tracing::debug!(key = %self.lease.key.key, error = %e, "release on close failed; the lock expires after its TTL");
            }
        }
    }

    /// The holder lets go of the lock (release or drop): refreshers stop and
    /// `close` no longer sees it.
    pub(crate) fn let_go(&self) {
        self.done.store(true, Ordering::Release);
        self.engine.forget(self.id);
    }
}
