//! A session: one etcd lease that holds a backend's lock entries, and the one
//! keepalive stream that renews it.
//!
//! The session knows, on the local monotonic clock, until when the lease is
//! *guaranteed* to live: the validity deadline, under the engine's
//! [`ValidityPolicy`] (its drift allowance and margin), of the last
//! keepalive that etcd answered, counted from its send time with the TTL it
//! granted. etcd counts a renewal from when it receives it (later than the
//! send) and a new leader only extends leases, so the lease cannot expire
//! before that instant. A
//! grant or an extend is only reported to the engine once the guarantee
//! covers the lock's whole validity; if the keepalives stop being answered
//! the guarantee runs out, extends fail, and the engine fires `lost()` at
//! the validity deadline, before etcd can expire the lease.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::validity::ValidityPolicy;

#[derive(Clone, Copy, Debug)]
pub(super) struct LeaseStatus {
    /// The send time of the answered keepalive (or grant) that renewed the
    /// lease furthest.
    sent: Instant,
    /// The TTL etcd granted with it.
    ttl: Duration,
    /// etcd said the lease no longer exists (expired or revoked): every key
    /// attached to it is gone.
    pub(super) dead: bool,
}

/// Why a guarantee could not be had.
#[derive(Debug)]
pub(super) enum LeaseTrouble {
    /// The lease is gone, and with it every entry on it.
    Dead,
    /// The lease's TTL is shorter than the guarantee asked for.
    TooShort,
}

/// What the keepalive task shares with its session. The task holds no
/// reference to the session itself, so the session's reference count says
/// exactly who uses the lease: the backend's map, its entries, and attempts
/// in flight.
#[derive(Debug)]
struct Shared {
    status: watch::Sender<LeaseStatus>,
    kick: Notify,
}

#[derive(Debug)]
pub(super) struct Session {
    pub(super) id: i64,
    /// The TTL etcd granted.
    pub(super) ttl: Duration,
    shared: Arc<Shared>,
    pub(super) stop: CancellationToken,
    last_used: std::sync::Mutex<Instant>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Nobody uses the lease any more: stop renewing it (it expires).
        self.stop.cancel();
    }
}

impl Session {
    /// A session for lease `id`, granted with `ttl` by a request sent at `sent`;
    /// spawns its keepalive task.
    pub(super) fn start(
        client: Client,
        id: i64,
        ttl: Duration,
        sent: Instant,
        request_timeout: Duration,
    ) -> Arc<Self> {
        let (status, _) = watch::channel(LeaseStatus {
            sent,
            ttl,
            dead: false,
        });
        let session = Arc::new(Session {
            id,
            ttl,
            shared: Arc::new(Shared {
                status,
                kick: Notify::new(),
            }),
            stop: CancellationToken::new(),
            last_used: std::sync::Mutex::new(Instant::now()),
        });
        tokio::spawn(keep_alive(
            client,
            id,
            ttl,
            session.shared.clone(),
            session.stop.clone(),
            request_timeout,
        ));
        session
    }

    /// Notes that an attempt uses this lease now.
    pub(super) fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long since an attempt last used this lease.
    pub(super) fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(*self.last_used.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(super) fn status(&self) -> LeaseStatus {
        *self.shared.status.borrow()
    }

    pub(super) fn is_dead(&self) -> bool {
        self.status().dead
    }

    /// Marks the lease gone (etcd said so) and stops its keepalives.
    pub(super) fn mark_dead(&self) {
        self.shared.mark_dead();
        self.stop.cancel();
    }

    /// Asks for a keepalive now, without waiting for it, unless the lease
    /// is guaranteed (under `validity`) to live until `target`.
    pub(super) fn kick_if_short(&self, target: Instant, validity: &ValidityPolicy) {
        if self.status().until(validity) < target {
            self.shared.kick.notify_one();
        }
    }

    /// Waits until the lease is guaranteed (under `validity`) to live until
    /// `target`, sending keepalives as needed. Unbounded in time: callers
    /// bound it.
    pub(super) async fn ensure_until(
        &self,
        target: Instant,
        validity: &ValidityPolicy,
    ) -> Result<(), LeaseTrouble> {
        if target > validity.deadline(Instant::now(), self.ttl) {
            return Err(LeaseTrouble::TooShort);
        }
        let mut rx = self.shared.status.subscribe();
        loop {
            let status = *rx.borrow_and_update();
            if status.dead {
                return Err(LeaseTrouble::Dead);
            }
            if status.until(validity) >= target {
                return Ok(());
            }
            self.shared.kick.notify_one();
            if rx.changed().await.is_err() {
                return Err(LeaseTrouble::Dead);
            }
        }
    }
}

impl Shared {
    fn mark_dead(&self) {
        self.status.send_modify(|s| s.dead = true);
    }

    fn renewed(&self, sent: Instant, ttl: Duration) {
        self.status.send_if_modified(|s| {
            // Furthest by etcd's reckoning (send time + TTL): under any
            // policy, the same renewal then gives the latest guarantee.
            if sent + ttl > s.sent + s.ttl {
                s.sent = sent;
                s.ttl = ttl;
                true
            } else {
                false
            }
        });
    }
}

impl LeaseStatus {
    /// Until when the lease is guaranteed to live, under `validity`.
    fn until(&self, validity: &ValidityPolicy) -> Instant {
        validity.deadline(self.sent, self.ttl)
    }
}

fn lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("not found"),
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        _ => false,
    }
}

/// Keeps lease `id` alive: one keepalive every quarter TTL and one per
/// kick, on one stream, re-opened whenever it breaks or stops answering.
/// Ends when `stop` is cancelled (the session was dropped, closed or
/// retired) or etcd says the lease is gone.
async fn keep_alive(
    mut client: Client,
    id: i64,
    ttl: Duration,
    shared: Arc<Shared>,
    stop: CancellationToken,
    request_timeout: Duration,
) {
    let interval = ttl / 4;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    'open: loop {
        let opened_at = Instant::now();
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            opened = tokio::time::timeout(request_timeout, client.lease_keep_alive(id)) => opened,
        };
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) if lease_not_found(&e) => {
                tracing::warn!(lease = id, "distlock: etcd lease expired or was revoked");
                shared.mark_dead();
                return;
            }
            failed => {
                tracing::debug!(
                    lease = id,
                    ?failed,
                    "etcd keepalive stream did not open; retrying"
                );
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
                continue 'open;
            }
        };
        backoff.reset();
        // Opening the stream sent one keepalive and saw it answered.
        shared.renewed(opened_at, ttl);
        let mut in_flight: VecDeque<Instant> = VecDeque::new();
        let mut next = Instant::now() + interval;
        loop {
            // A keepalive unanswered for a whole request timeout means the
            // stream is stuck (a paused server, a dead connection): re-open.
            let stuck_at = in_flight
                .front()
                .map(|sent| *sent + request_timeout)
                .unwrap_or(next + request_timeout);
            let send = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                message = stream.message() => match message {
                    Ok(Some(resp)) => {
                        let sent = in_flight.pop_front();
                        if resp.ttl() <= 0 {
                            tracing::warn!(lease = id, "distlock: etcd lease expired or was revoked");
                            shared.mark_dead();
                            return;
                        }
                        if let Some(sent) = sent {
                            shared.renewed(sent, Duration::from_secs(resp.ttl() as u64));
                        }
                        false
                    }
                    other => {
                        tracing::debug!(lease = id, ?other, "etcd keepalive stream ended; re-opening");
                        continue 'open;
                    }
                },
                _ = shared.kick.notified() => true,
                _ = tokio::time::sleep_until(next) => true,
                _ = tokio::time::sleep_until(stuck_at) => {
                    tracing::debug!(lease = id, "etcd keepalive unanswered; re-opening the stream");
                    continue 'open;
                }
            };
            if send {
                let now = Instant::now();
                in_flight.push_back(now);
                next = now + interval;
                if keeper.keep_alive().await.is_err() {
                    continue 'open;
                }
            }
        }
    }
}
