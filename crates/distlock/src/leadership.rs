//! Leader election: the front types that campaign for a key, hold its
//! leadership, and observe who leads.
//!
//! Leadership is a lock whose holder others observe: a campaign is an
//! obtain, the term is the grant's fencing token, the identity rides in the
//! lock's metadata, resigning is a release. Nothing here is a mechanism of
//! its own.
//!
//! # What other elections got wrong, and how it is handled here
//!
//! * **etcd's `Campaign` does not abort when its session expires**: a
//!   candidate whose lease lapsed while it waited can be told it leads
//!   with a key etcd already deleted. Here a campaign is the engine's
//!   obtain: a waiter whose queue entry vanished re-queues at the back, and
//!   a grant that arrives after its own validity deadline (counted from
//!   when it was sent) is never handed out.
//! * **client-go requires LeaseDuration > RenewDeadline > RetryPeriod**, and
//!   leaves checking it to the caller. The same order is validated here
//!   for every campaign: the TTL, then the validity deadline (the TTL less
//!   the clock-drift allowance and safety margin), then the refresh
//!   interval (TTL/3 by default), which must be shorter than the validity;
//!   failed refreshes are retried every quarter interval up to the
//!   deadline. client-go's leader election also gives no fencing; here the
//!   term is a fencing token.
//! * **Curator's leaders must treat SUSPENDED as lost**, and many do not.
//!   There is no "suspended" state here: [`Leadership::lost`] fires at the
//!   validity deadline when refreshes could not get through, before the
//!   store can give the key to the next candidate, and at once when the
//!   store proves the leadership gone. A leader stops acting when it fires.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::Stream;
use tokio::time::Instant;

use crate::engine::{Engine, LostReason};
use crate::error::{Error, Result};
use crate::holder::HolderInfo;
use crate::key::LockKey;
use crate::lease::Share;
use crate::lock::{Lock, RefreshHandle};
use crate::options::ObtainOptions;

/// How a leader's metadata starts: the format's name and version, then the
/// wall-clock time it took office (ms since the epoch) and its identity.
const METADATA_PREFIX: &str = "distlock-leader/1 ";

/// How often [`Locker::observe`](crate::Locker::observe) reads the key when
/// no notification came: the most a change can go unseen.
pub const DEFAULT_OBSERVE_POLL: Duration = Duration::from_millis(250);

/// Who leads a key, as [`Locker::leader`](crate::Locker::leader) and
/// [`Locker::observe`](crate::Locker::observe) report it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leader {
    /// The identity the leader campaigned with.
    pub identity: String,
    /// Its term: the fencing token of its grant, strictly greater than
    /// every earlier leader's.
    pub term: u64,
    /// When it took office, by its own wall clock.
    pub since: Option<SystemTime>,
    /// The most the store keeps its leadership without a refresh (`None`
    /// on stores without TTL expiry: file locks).
    pub expires_in: Option<Duration>,
}

impl Leader {
    /// The leader a holder of the key describes. A key held by a plain lock
    /// reads as a leader whose identity is the lock's metadata (or empty).
    pub fn from_holder(holder: &HolderInfo) -> Leader {
        let metadata = holder.metadata.as_deref().unwrap_or_default();
        let parsed = metadata
            .strip_prefix(METADATA_PREFIX)
            .and_then(|rest| rest.split_once(' '))
            .and_then(|(ms, id)| Some((ms.parse::<u64>().ok()?, id)));
        let (since, identity) = match parsed {
            Some((ms, id)) => (Some(UNIX_EPOCH + Duration::from_millis(ms)), id),
            None => (holder.since, metadata),
        };
        Leader {
            identity: identity.to_owned(),
            term: holder.fencing_token,
            since,
            expires_in: holder.expires_in,
        }
    }

    /// The same leader in a later reading: same term (time left aside).
    fn same_term(a: &Option<Leader>, b: &Option<Leader>) -> bool {
        a.as_ref().map(|l| l.term) == b.as_ref().map(|l| l.term)
    }
}

/// This process's default identity: `host:pid`.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

/// The metadata a candidate's grant carries.
fn metadata(identity: &str) -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("{METADATA_PREFIX}{since} {identity}")
}

/// Campaigns for `key` as `identity` with `options` (their metadata is
/// replaced by the identity's), returning once this candidate leads.
pub(crate) async fn campaign(
    engine: &Arc<Engine>,
    key: LockKey,
    identity: String,
    options: ObtainOptions,
) -> Result<Leadership> {
    if identity.is_empty() || identity.contains(['\n', '\r']) {
        return Err(Error::invalid_options(
            "identity",
            "must be non-empty and on one line",
        ));
    }
    let options = options.metadata(metadata(&identity));
    let held = engine.obtain(key, Share::Exclusive, options).await?;
    let lock = Lock::new(held);
    let refresher = lock.start_refresh(|e| {
        tracing::warn!(error = %e, "refreshing a leadership failed");
    });
    Ok(Leadership {
        lock,
        refresher,
        identity,
    })
}

/// The current leader of `key`, read once.
pub(crate) async fn leader(engine: &Engine, key: &LockKey) -> Result<Option<Leader>> {
    engine.ensure_open()?;
    let holder = engine
        .call_idempotent("inspect", None, || engine.backend.inspect(key))
        .await?;
    Ok(holder.as_ref().map(Leader::from_holder))
}

/// A wait for a change of `key`'s holders ([`Backend::watch`]), owned so
/// that it can outlive the read it was armed before.
///
/// [`Backend::watch`]: crate::backend::Backend::watch
type Watch = futures::future::BoxFuture<'static, ()>;

/// Starts a watch of `key` and polls it once, which is when a store starts
/// listening (see [`Backend::watch`](crate::backend::Backend::watch)).
async fn arm(engine: &Arc<Engine>, key: &LockKey, until: Instant) -> Watch {
    let (engine, key) = (engine.clone(), key.clone());
    let mut watch: Watch = Box::pin(async move {
        // An error is only a lost hint: the poll still bounds the wait.
        let _ = engine.backend.watch(&key, until).await;
    });
    if futures::poll!(watch.as_mut()).is_ready() {
        return Box::pin(std::future::ready(()));
    }
    watch
}

/// Every change of `key`'s leader, the current one first: woken by the
/// store's notifications where it has them, read again every `poll` in any
/// case and when the leader's time runs out.
///
/// Each read is made with a watch already armed, kept for the wait after
/// it: a change while the read is under way, or between the read and the
/// wait (while the stream's consumer is busy), still wakes the wait. A
/// watch armed after the read would miss it until the next poll.
pub(crate) fn observe(
    engine: Arc<Engine>,
    key: LockKey,
    poll: Duration,
) -> impl Stream<Item = Result<Option<Leader>>> + Send + 'static {
    struct State {
        engine: Arc<Engine>,
        key: LockKey,
        poll: Duration,
        shown: Option<Option<Leader>>,
        /// The watch armed before the last read, and when to read again
        /// without a notification.
        pending: Option<(Watch, Instant)>,
    }
    let state = State {
        engine,
        key,
        poll,
        shown: None,
        pending: None,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some((watch, wake_at)) = st.pending.take() {
                tokio::select! {
                    _ = st.engine.closed.cancelled() => return None,
                    _ = watch => {}
                    _ = tokio::time::sleep_until(wake_at) => {}
                }
            }
            let read_at = Instant::now();
            let watch = arm(&st.engine, &st.key, read_at + st.poll).await;
            let read = leader(&st.engine, &st.key).await;
            let wake_at = |now: &Option<Leader>| {
                let wait = now
                    .as_ref()
                    .and_then(|l| l.expires_in)
                    .map_or(st.poll, |left| left.min(st.poll));
                read_at + wait
            };
            match read {
                Err(Error::Closed) => return None,
                Err(e) => {
                    // A failing store is read again after a poll, not at once.
                    if let Some(shown) = &st.shown {
                        st.pending = Some((watch, wake_at(shown)));
                    }
                    return Some((Err(e), st));
                }
                Ok(now) => {
                    let changed = st
                        .shown
                        .as_ref()
                        .is_none_or(|shown| !Leader::same_term(shown, &now));
                    st.pending = Some((watch, wake_at(&now)));
                    if changed {
                        st.shown = Some(now.clone());
                        return Some((Ok(now), st));
                    }
                }
            }
        }
    })
}

/// This candidate's leadership of a key: always refreshed while held, with
/// [`term`](Self::term) as the fencing token to hand to what the leader
/// writes to. Dropping it resigns in the background, as dropping a
/// [`Lock`] releases it.
///
/// A leader must stop acting at [`lost`](Self::lost): it fires when the
/// store proves the leadership gone or, at the latest, at the validity
/// deadline when refreshes could not get through — before the store can
/// give the key to the next candidate.
pub struct Leadership {
    lock: Lock,
    refresher: RefreshHandle,
    identity: String,
}

impl Leadership {
    /// The key.
    pub fn key(&self) -> &str {
        self.lock.key()
    }

    /// The term: strictly greater than every earlier leader's of this key.
    pub fn term(&self) -> u64 {
        self.lock.fencing_token()
    }

    /// The identity this candidate campaigned with.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Until when the leadership is safe to rely on (see
    /// [`Lock::valid_until`]).
    pub fn valid_until(&self) -> Instant {
        self.lock.valid_until()
    }

    /// True once the leadership no longer holds (see [`Lock::is_lost`]).
    pub fn is_lost(&self) -> bool {
        self.lock.is_lost()
    }

    /// Resolves when the leadership ends (see [`Lock::lost`]): never after
    /// its validity deadline.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.lock.lost()
    }

    /// The lock that is this leadership, for what works on locks (its
    /// refresher belongs to the leadership: do not start another).
    pub fn as_lock(&self) -> &Lock {
        &self.lock
    }

    /// Steps down at once: the key is released, so a waiting candidate
    /// takes over within a store round trip or a notification.
    ///
    /// # Errors
    ///
    /// As [`Lock::release`]: [`Error::NotHeld`] if the leadership had
    /// already been lost.
    pub async fn resign(self) -> Result<()> {
        self.refresher.stop().await;
        self.lock.release().await
    }
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("key", &self.key())
            .field("identity", &self.identity)
            .field("term", &self.term())
            .finish_non_exhaustive()
    }
}
