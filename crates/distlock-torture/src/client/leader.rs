//! The leadership workload's own pieces: a round campaigns with
//! `Locker::campaign_with` and holds the [`Leadership`] for a term of
//! writes with gaps, then resigns (the rest of the round is the lock
//! round's, in `worker`).
//!
//! A `Leadership` refreshes itself and has no way to stop its refresher,
//! so a leader's stall cannot stop refreshing as a lock's does. Each
//! candidate's Locker is built instead over its own
//! [`Faulty`](distlock_testkit::Faulty) wrapper of the client's backend,
//! and a stall (the overdue pause, the memory backend's task pause) *cuts*
//! the candidate's refreshes there: every extend fails as a reset
//! connection would, the engine retries until the validity deadline, and
//! `lost()` must fire by then — the leader partitioned from its store. The
//! cut is lifted when the stall ends. Process stops (SIGSTOP on file, Redis
//! and etcd) freeze the refresher with everything else, as they do for
//! locks. On the file store (no TTL) a cut takes nothing away; in the
//! negative control the harness deposes the leader there by deleting its
//! lock file, which the next refresh proves.

use std::sync::Arc;
use std::time::Duration;

use distlock::backend::Backend;
use distlock::{Leadership, Lock, Locker};
use distlock_testkit::Faulty;
use tokio::time::sleep;

/// What a round holds: a lock (the round refreshes it) or a leadership
/// (refreshed by itself).
pub(super) enum Hold {
    Lock(Lock),
    Leader(Leadership),
}

impl Hold {
    pub(super) fn lock(&self) -> &Lock {
        match self {
            Hold::Lock(lock) => lock,
            Hold::Leader(leadership) => leadership.as_lock(),
        }
    }

    /// Releases the lock, or resigns.
    pub(super) async fn give_up(self) -> distlock::Result<()> {
        match self {
            Hold::Lock(lock) => lock.release().await,
            Hold::Leader(leadership) => leadership.resign().await,
        }
    }
}

/// A candidate's Locker over its own `Faulty` wrapper of `backend` (the
/// Locker owns the backend with `owns`), and the wrapper.
pub(super) fn candidate_locker(
    backend: Arc<dyn Backend>,
    namespace: &str,
    owns: bool,
) -> (Locker, Arc<Faulty>) {
    let faulty = Arc::new(Faulty::new(backend));
    let builder = Locker::builder(faulty.clone()).namespace(namespace);
    let builder = if owns {
        builder.owns_backend()
    } else {
        builder
    };
    (builder.build().expect("a valid namespace"), faulty)
}

/// The identity a candidate campaigns with: unique per Locker of a run.
pub(super) fn identity(client: u32, incarnation: u32, locker: u64) -> String {
    format!("client-{client}/{incarnation}/locker-{locker}")
}

/// Stalls `d` with every refresh of `faulty`'s Locker failing, then lets
/// them through again.
pub(super) async fn cut_refreshes(faulty: &Faulty, d: Duration) {
    faulty.fail_extends(u32::MAX);
    sleep(d).await;
    faulty.fail_extends(0);
}
