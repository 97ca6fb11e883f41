//! The leases entries live on: one per lease TTL in use for locks, and
//! one short lease for waiters; created on demand, retired when idle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Inner;
use super::session::Session;
use crate::error::{Error, Result};

/// The slot of the waiters' lease among the sessions (lock TTL classes are
/// whole seconds, at least one).
pub(super) const WAITERS: u64 = 0;

impl Inner {
    pub(super) fn lease_class(&self, ttl: Duration) -> u64 {
        let floor = self.options.session_ttl.as_secs_f64().ceil() as u64;
        let wanted = (ttl.as_secs_f64() * 1.5).ceil() as u64;
        floor.max(wanted).max(1)
    }

    /// The live session of `class` (touched), if there is one; retires
    /// idle sessions of other classes on the way.
    pub(super) fn live_session(&self, class: u64) -> Option<Arc<Session>> {
        let mut sessions = self.sessions();
        let retired = self.retire_idle(&mut sessions, class);
        let found = sessions.get(&class).filter(|s| !s.is_dead()).cloned();
        drop(sessions);
        for session in retired {
            let mut client = self.client.clone();
            let timeout = self.options.request_timeout;
            tracing::debug!(lease = session.id, "distlock: revoking an idle etcd lease");
            tokio::spawn(async move {
                let _ = tokio::time::timeout(timeout, client.lease_revoke(session.id)).await;
            });
        }
        if let Some(s) = &found {
            s.touch();
        }
        found
    }

    /// Removes sessions other than `keep` and the session-TTL one that
    /// nobody has used for the idle timeout (looked for at most every half
    /// idle timeout, and every 30 s).
    pub(super) fn retire_idle(
        &self,
        sessions: &mut HashMap<u64, Arc<Session>>,
        keep: u64,
    ) -> Vec<Arc<Session>> {
        let idle = self.options.lease_idle_timeout;
        let now = Instant::now();
        {
            let mut last = self.idle_scan.lock().unwrap_or_else(|p| p.into_inner());
            if now < *last + (idle / 2).min(Duration::from_secs(30)) {
                return Vec::new();
            }
            *last = now;
        }
        let floor = self.lease_class(Duration::ZERO);
        let idle_classes: Vec<u64> = sessions
            .iter()
            .filter(|(class, s)| {
                **class != keep
                    && **class != floor
                    // Only the map holds it: no entry, no attempt in flight.
                    && Arc::strong_count(s) == 1
                    && s.idle_for(now) >= idle
            })
            .map(|(class, _)| *class)
            .collect();
        idle_classes
            .into_iter()
            .filter_map(|class| sessions.remove(&class))
            .inspect(|s| s.mark_dead())
            .collect()
    }

    /// The live session for lock TTL `ttl`, creating its lease if needed.
    pub(super) async fn session(&self, ttl: Duration) -> Result<Arc<Session>> {
        let class = self.lease_class(ttl);
        self.session_in(class, class).await
    }

    /// The live session queued waiters' entries live on (a lease as short
    /// as etcd grants, by default), creating its lease if needed.
    pub(super) async fn waiter_session(&self) -> Result<Arc<Session>> {
        let ask = self.options.waiter_lease.as_secs_f64().ceil().max(1.0) as u64;
        self.session_in(WAITERS, ask).await
    }

    /// The live session in `slot`, creating a lease of `ask` seconds for
    /// it if needed (etcd may grant more).
    async fn session_in(&self, slot: u64, ask: u64) -> Result<Arc<Session>> {
        if let Some(s) = self.live_session(slot) {
            return Ok(s);
        }
        let _creating = self.creating.lock().await;
        if let Some(s) = self.live_session(slot) {
            return Ok(s);
        }
        self.ensure_open()?;
        let timeout = self.options.session_timeout;
        let sent = Instant::now();
        let mut client = self.client.clone();
        let granted =
            match tokio::time::timeout(timeout, client.lease_grant(ask as i64, None)).await {
                Ok(Ok(granted)) => granted,
                Ok(Err(e)) => return Err(self.err("lease grant", None, e)),
                Err(_) => {
                    return Err(Error::Timeout {
                        op: "lease grant",
                        after: timeout,
                    });
                }
            };
        let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
        let session = Session::start(
            self.client.clone(),
            granted.id(),
            ttl,
            sent,
            self.options.request_timeout,
        );
        tracing::debug!(lease = granted.id(), ?ttl, "distlock: etcd session started");
        if let Some(old) = self.sessions().insert(slot, session.clone()) {
            old.stop.cancel();
        }
        // Raced with close: don't leave a lease behind.
        if self.closed.is_cancelled() {
            session.stop.cancel();
            let _ = tokio::time::timeout(timeout, client.lease_revoke(granted.id())).await;
            return Err(Error::Closed);
        }
        Ok(session)
    }
}
