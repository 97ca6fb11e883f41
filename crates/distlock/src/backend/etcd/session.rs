//! A session: one etcd lease that holds a backend's lock entries, and the one
//! keepalive stream that renews it.
//!
//! The session knows, on the local monotonic clock, until when the lease is
//! *guaranteed* to live: the send time of the last keepalive that etcd
//! answered, plus the TTL it granted, minus a drift allowance. etcd counts a
//! renewal from when it receives it (later than the send) and a new leader
//! only extends leases, so the lease cannot expire before that instant. A
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

/// Clock-rate allowance between this host and the etcd leader.
const DRIFT: f64 = 0.01;
/// Fixed allowance subtracted from every guarantee.
const MARGIN: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, Debug)]
pub(super) struct LeaseStatus {
    /// The lease lives at least until then.
    pub(super) until: Instant,
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

#[derive(Debug)]
pub(super) struct Session {
    pub(super) id: i64,
    /// The TTL etcd granted.
    pub(super) ttl: Duration,
    status: watch::Sender<LeaseStatus>,
    kick: Notify,
    pub(super) stop: CancellationToken,
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
            until: guarantee(sent, ttl),
            dead: false,
        });
        let session = Arc::new(Session {
            id,
            ttl,
            status,
            kick: Notify::new(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(keep_alive(
            client,
            Arc::downgrade(&session),
            session.stop.clone(),
            request_timeout,
        ));
        session
    }

    pub(super) fn status(&self) -> LeaseStatus {
        *self.status.borrow()
    }

    pub(super) fn is_dead(&self) -> bool {
        self.status().dead
    }

    /// Marks the lease gone (etcd said so) and stops its keepalives.
    pub(super) fn mark_dead(&self) {
        self.status.send_modify(|s| s.dead = true);
        self.stop.cancel();
    }

    fn renewed(&self, sent: Instant, ttl: Duration) {
        let until = guarantee(sent, ttl);
        self.status.send_if_modified(|s| {
            if until > s.until {
                s.until = until;
                true
            } else {
                false
            }
        });
    }

    /// Asks for a keepalive now, without waiting for it.
    pub(super) fn kick_if_short(&self, target: Instant) {
        if self.status().until < target {
            self.kick.notify_one();
        }
    }

    /// Waits until the lease is guaranteed to live until `target`, sending
    /// keepalives as needed. Unbounded in time: callers bound it.
    pub(super) async fn ensure_until(&self, target: Instant) -> Result<(), LeaseTrouble> {
        if target > Instant::now() + self.ttl.mul_f64(1.0 - DRIFT) {
            return Err(LeaseTrouble::TooShort);
        }
        let mut rx = self.status.subscribe();
        loop {
            let status = *rx.borrow_and_update();
            if status.dead {
                return Err(LeaseTrouble::Dead);
            }
            if status.until >= target {
                return Ok(());
            }
            self.kick.notify_one();
            if rx.changed().await.is_err() {
                return Err(LeaseTrouble::Dead);
            }
        }
    }
}

fn guarantee(sent: Instant, ttl: Duration) -> Instant {
    (sent + ttl.mul_f64(1.0 - DRIFT))
        .checked_sub(MARGIN)
        .unwrap_or(sent)
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
async fn keep_alive(
    mut client: Client,
    session: std::sync::Weak<Session>,
    stop: CancellationToken,
    request_timeout: Duration,
) {
    let mut backoff = Duration::from_millis(50);
    'open: loop {
        let Some(s) = session.upgrade() else { return };
        let (id, ttl) = (s.id, s.ttl);
        drop(s);
        let interval = ttl / 4;
        let opened_at = Instant::now();
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            opened = tokio::time::timeout(request_timeout, client.lease_keep_alive(id)) => opened,
        };
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) if lease_not_found(&e) => {
                if let Some(s) = session.upgrade() {
                    tracing::warn!(lease = id, "distlock: etcd lease expired or was revoked");
                    s.mark_dead();
                }
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
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue 'open;
            }
        };
        backoff = Duration::from_millis(50);
        // Opening the stream sent one keepalive and saw it answered.
        match session.upgrade() {
            Some(s) => s.renewed(opened_at, ttl),
            None => return,
        }
        let mut in_flight: VecDeque<Instant> = VecDeque::new();
        let mut next = Instant::now() + interval;
        loop {
            // A keepalive unanswered for a whole request timeout means the
            // stream is stuck (a paused server, a dead connection): re-open.
            let stuck_at = in_flight
                .front()
                .map(|sent| *sent + request_timeout)
                .unwrap_or(next + request_timeout);
            let Some(s) = session.upgrade() else { return };
            let send = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                message = stream.message() => match message {
                    Ok(Some(resp)) => {
                        let sent = in_flight.pop_front();
                        if resp.ttl() <= 0 {
                            tracing::warn!(lease = id, "distlock: etcd lease expired or was revoked");
                            s.mark_dead();
                            return;
                        }
                        if let Some(sent) = sent {
                            s.renewed(sent, Duration::from_secs(resp.ttl() as u64));
                        }
                        false
                    }
                    other => {
                        tracing::debug!(lease = id, ?other, "etcd keepalive stream ended; re-opening");
                        continue 'open;
                    }
                },
                _ = s.kick.notified() => true,
                _ = tokio::time::sleep_until(next) => true,
                _ = tokio::time::sleep_until(stuck_at) => {
                    tracing::debug!(lease = id, "etcd keepalive unanswered; re-opening the stream");
                    continue 'open;
                }
            };
            drop(s);
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
