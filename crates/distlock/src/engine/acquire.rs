//! The acquire loop: local queue, attempts, waits, and the undo of an
//! attempt whose outcome is unknown.

use std::sync::Arc;

use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::{AcquireRequest, Attempt};
use crate::engine::{Engine, Held};
use crate::error::{Error, Result};
use crate::holder::HolderInfo;
use crate::key::LockKey;
use crate::lease::{LeaseRef, OwnerToken, Share};
use crate::options::ObtainOptions;

/// A failed acquisition and the number of attempts it made.
pub(crate) type Failed = (Error, u32);

impl Engine {
    /// Obtains `key` in mode `share` with `options`, validated here, in a
    /// tracing span that records the outcome: what every front type's
    /// acquire calls.
    ///
    /// Cancel-safe, as [`acquire`](Self::acquire).
    pub(crate) async fn obtain(
        self: &Arc<Self>,
        key: LockKey,
        share: Share,
        options: ObtainOptions,
    ) -> Result<Arc<Held>> {
        options.validate(&self.validity)?;
        self.ensure_open()?;
        let span = tracing::debug_span!(
            "distlock.obtain",
            key = %key.key,
            backend = self.backend.name(),
            limit = share.limit(),
            outcome = tracing::field::Empty,
            attempts = tracing::field::Empty,
            waited_ms = tracing::field::Empty,
        );
        let start = Instant::now();
        let result = self
            .acquire(key, share, &options, start)
            .instrument(span.clone())
            .await;
        let (outcome, attempts) = match &result {
            Ok((_, attempts)) => ("obtained", *attempts),
            Err((e, attempts)) if e.is_not_obtained() => ("not_obtained", *attempts),
            Err((_, attempts)) => ("error", *attempts),
        };
        span.record("outcome", outcome);
        span.record("attempts", attempts);
        span.record("waited_ms", start.elapsed().as_secs_f64() * 1e3);
        result.map(|(held, _)| held).map_err(|(e, _)| e)
    }

    /// Acquires `key` as `options` say: queued behind this engine's other
    /// waiters for the key, trying the store until granted, out of retries,
    /// past the deadline, or closed. Returns the held record and the number
    /// of attempts.
    ///
    /// Cancel-safe: dropping the future at any point leaves nothing held in
    /// the store (an attempt in flight, or a queue entry in a store that
    /// queues waiters, is released in the background).
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        key: LockKey,
        share: Share,
        options: &ObtainOptions,
        start: Instant,
    ) -> Result<(Arc<Held>, u32), Failed> {
        if share != Share::Exclusive && !self.permits {
            let reason = format!(
                "the {} backend does not serve permits (semaphores, read locks)",
                self.backend.name()
            );
            return Err((Error::invalid_options("limit", reason), 0));
        }
        let plan = options.plan(start);
        let owner = OwnerToken::random().map_err(|e| (e, 0))?;
        let req = AcquireRequest {
            metadata: options.metadata_value().map(Arc::from),
            validity: self.validity,
            will_wait: !plan.retry.is_once(),
            ..AcquireRequest::new(key, owner, options.ttl_value()).share(share)
        };
        // A store that queues waiters keeps our entry after a contended
        // attempt: `pending` then stays armed, so giving up removes it.
        let queued_after_contention = req.will_wait && self.queues_waiters;
        let place = self.queues.join(&req.key);
        let turn = tokio::select! {
            biased;
            _ = self.closed.cancelled() => return Err((Error::Closed, 0)),
            turn = place.turn(plan.queue_deadline) => turn,
        };
        let Some(turn) = turn else {
            return Err((not_obtained(&req.key, start, 0, None), 0));
        };
        let mut pending = PendingGrant::new(self.clone(), req.lease());
        let mut attempts = 0;
        let mut holder = None;
        let mut outcome_unknown = false;
        // What the last attempt that came back said: `None` for "held by
        // someone else", else the store's error. An attempt cut short by the
        // deadline says nothing, so a store that failed before is reported
        // as failing, not hidden behind `NotObtained`; `unanswered` is kept
        // for a wait in which no attempt came back at all.
        let mut last_answer: Option<Option<Error>> = None;
        let mut unanswered = None;
        loop {
            attempts += 1;
            let sent = Instant::now();
            pending.armed = true;
            let (result, cut_by_deadline) = self
                .call_by("acquire", plan.deadline, self.backend.try_acquire(&req))
                .await;
            let answered = !(cut_by_deadline && matches!(&result, Err(e) if e.is_transient()));
            let answer = match result {
                // close() released what it knew of; this late grant is ours to undo.
                Ok(Attempt::Granted { .. }) if self.is_closed() => {
                    return Err((Error::Closed, attempts));
                }
                // The grant came back after its own validity deadline (the
                // store or the network stalled longer than the TTL allows):
                // the store may have expired it and granted the key to someone
                // else already, so it is never handed out. `pending` stays
                // armed (a token-checked release if we give up), and the same
                // owner token makes the next attempt re-grant with a fresh
                // deadline.
                Ok(Attempt::Granted { .. })
                    if self.validity_deadline(sent, options.ttl_value()) <= Instant::now() =>
                {
                    outcome_unknown = true;
                    Some(Error::Timeout {
                        op: "acquire",
                        after: sent.elapsed(),
                    })
                }
                Ok(Attempt::Granted { fencing_token }) => {
                    // `pending` stays armed if close() came first: the grant
                    // is then released, never handed out.
                    let held = self
                        .register(&req, options, fencing_token, sent)
                        .map_err(|e| (e, attempts))?;
                    pending.armed = false;
                    return Ok((held, attempts));
                }
                Ok(Attempt::Contended { holder: h }) => {
                    // An earlier attempt with an unknown outcome may still land
                    // late, and a store that queues waiters keeps our entry:
                    // keep the token-checked release armed for both.
                    pending.armed = outcome_unknown || queued_after_contention;
                    holder = h;
                    None
                }
                // Outcome unknown: the same owner token makes a later attempt
                // idempotent, and `pending` releases it if we give up.
                Err(e) if e.is_transient() => {
                    outcome_unknown = true;
                    Some(e)
                }
                Err(e) => return Err((e, attempts)),
            };
            if answered {
                last_answer = Some(answer);
            } else {
                unanswered = answer;
            }
            let now = Instant::now();
            let wake_at = match (plan.retry.delay(attempts), plan.deadline) {
                (None, _) => None,
                (Some(_), Some(deadline)) if now >= deadline => None,
                (Some(delay), deadline) => {
                    let expiry = holder.as_ref().and_then(|h: &HolderInfo| h.expires_in);
                    Some(
                        [Some(now + delay), deadline, expiry.map(|left| now + left)]
                            .into_iter()
                            .flatten()
                            .min()
                            .unwrap_or(now),
                    )
                }
            };
            let Some(wake_at) = wake_at else {
                let err = match last_answer {
                    Some(Some(e)) => e,
                    Some(None) => not_obtained(&req.key, start, attempts, holder),
                    None => unanswered
                        .unwrap_or_else(|| not_obtained(&req.key, start, attempts, holder)),
                };
                return Err((err, attempts));
            };
            tokio::select! {
                biased;
                _ = self.closed.cancelled() => return Err((Error::Closed, attempts)),
                _ = turn.local_release() => {}
                _ = self.backend.wait(&req, wake_at) => {}
                // The backend's wait is a hint; the engine's bound is authoritative.
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    /// The granted lease, registered in the held set: [`Error::Closed`]
    /// instead when `close` got there first. The check and the insertion
    /// happen under the lock `close` cancels and drains under, so every
    /// lease handed out is one that `close` sees.
    fn register(
        self: &Arc<Self>,
        req: &AcquireRequest,
        options: &ObtainOptions,
        fencing_token: u64,
        sent: Instant,
    ) -> Result<Arc<Held>> {
        let id = self.next_id();
        let held = Held::new(
            self.clone(),
            id,
            req.lease(),
            fencing_token,
            options,
            self.validity_deadline(sent, options.ttl_value()),
        );
        let mut set = self.held();
        if self.is_closed() {
            return Err(Error::Closed);
        }
        set.insert(id, Arc::downgrade(&held));
        drop(set);
        Ok(held)
    }
}

fn not_obtained(key: &LockKey, start: Instant, attempts: u32, holder: Option<HolderInfo>) -> Error {
    Error::NotObtained {
        key: key.key.to_string(),
        waited: start.elapsed(),
        attempts,
        holder: holder.map(Box::new),
    }
}

/// Releases an acquisition whose outcome is unknown (a timed-out attempt, or
/// an acquire future dropped mid-attempt), or a queue entry a contended
/// attempt left in a store that queues waiters, unless it turned into a
/// held lease.
struct PendingGrant {
    engine: Arc<Engine>,
    lease: LeaseRef,
    armed: bool,
}

impl PendingGrant {
    fn new(engine: Arc<Engine>, lease: LeaseRef) -> Self {
        PendingGrant {
            engine,
            lease,
            armed: false,
        }
    }
}

impl Drop for PendingGrant {
    fn drop(&mut self) {
        if self.armed {
            self.engine.release_in_background(self.lease.clone());
        }
    }
}
