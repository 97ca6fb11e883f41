//! The subscription hub: one pub/sub connection per backend, shared by all
//! its waiters and observers, the wait for a waiter's turn and an
//! observer's wait for a change of holders.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ::redis::{Client, ErrorKind, RedisError, Value};
use futures::StreamExt;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use super::builder::Shared;
use super::connect::Source;
use super::errors::is_permission_error;
use super::keys::RedisKeys;
use super::scripts::TURN;
use crate::backoff::Backoff;
use crate::error::Result;
use crate::key::LockKey;
use crate::lease::{OwnerToken, Share};

/// How often the subscription connection is checked with a `PING`, and
/// idle channels are unsubscribed.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a channel stays subscribed without waiters, so a hot key's
/// waiters do not subscribe and unsubscribe on every wait.
pub(super) const LINGER: Duration = Duration::from_secs(10);
/// Back-off bounds between subscription reconnection attempts (each delay
/// jittered up to twice its base: 10 ms to 2 s).
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The payloads of the messages for observers only (owner tokens, which
/// name the waiter whose turn it is, are hex): a grant, and a release that
/// no waiter is told of.
pub(super) const GRANTED: &str = "+";
pub(super) const RELEASED: &str = "-";

impl Shared {
    /// The subscription supervisor's inbox; starts it on first use.
    fn supervisor(&self) -> &UnboundedSender<String> {
        self.supervisor.get_or_init(|| {
            let (tx, rx) = unbounded_channel();
            let supervisor = Supervisor {
                source: self.source.clone(),
                channels: self.channels.clone(),
                shutdown: self.shutdown.clone(),
                connection_timeout: self.connection_timeout,
                response_timeout: self.response_timeout,
            };
            tokio::spawn(supervisor.run(rx));
            tx
        })
    }

    /// Returns when `key` may be free for `owner` (any caller when `None`)
    /// asking for `share`: on a release notification, or at once if it is
    /// free (for a permit: has a place) and `owner` is first in its queue;
    /// at `until` at the latest.
    pub(super) async fn wait_for_turn(
        &self,
        key: &LockKey,
        owner: Option<OwnerToken>,
        share: Share,
        until: Instant,
    ) -> Result<()> {
        let names = RedisKeys::new(key);
        let Some(waiter) = self.listen(&names, until).await else {
            return Ok(());
        };
        let channel = &waiter.channel;
        let released = channel.released.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        // Woken early by a release, a lost connection or a new one.
        if !until_subscribed(channel, released.as_mut(), until).await {
            return Ok(());
        }
        // Subscribed: a release from now on wakes us. One that happened
        // since the caller's last attempt is seen here.
        let mut conn = self.conn();
        let owner = owner.map_or_else(String::new, |owner| owner.to_hex());
        let mut turn = TURN.prepare_invoke();
        turn.key(&names.lock).key(&names.queue).arg(&owner);
        if let Some(limit) = share.limit() {
            turn.key(&names.expiries).arg(limit);
        }
        let turn = turn.invoke_async::<bool>(&mut conn);
        tokio::select! {
            ours = turn => if let Ok(true) = ours { return Ok(()) },
            _ = sleep_until(until) => return Ok(()),
        }
        // A release names the waiter whose turn it is: the others sleep on
        // (no herd), and a missed turn costs at most the poll interval.
        loop {
            tokio::select! {
                _ = &mut released => {}
                _ = sleep_until(until) => return Ok(()),
            }
            released.set(channel.released.notified());
            released.as_mut().enable();
            if channel.wakes(&owner) {
                return Ok(());
            }
        }
    }
}

impl Shared {
    /// Returns when the holders of `key` may have changed: a grant or a
    /// release was published on its channel, the subscription was lost, or
    /// it was not yet subscribed when first polled and now is (what
    /// happened before cannot be seen here, so the caller reads again);
    /// at `until` at the latest. Listening starts on the first poll, before
    /// any await, so a caller that polls it once before reading the key is
    /// woken by every publish after its read. Expiry publishes nothing:
    /// the caller's poll sees it.
    pub(super) async fn watch_holders(&self, key: &LockKey, until: Instant) -> Result<()> {
        let names = RedisKeys::new(key);
        let Some(watcher) = self.listen(&names, until).await else {
            return Ok(());
        };
        let channel = &watcher.channel;
        let changed = channel.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if channel.is_subscribed() {
            tokio::select! {
                _ = changed => {}
                _ = sleep_until(until) => {}
            }
        } else {
            until_subscribed(channel, changed, until).await;
        }
        Ok(())
    }

    /// Joins the channel of `names`' key; `None` once the backend is
    /// closed (no subscription left to wait on), after sleeping to `until`.
    async fn listen(&self, names: &RedisKeys, until: Instant) -> Option<Waiter<'_>> {
        if self.shutdown.is_cancelled() {
            sleep_until(until).await;
            return None;
        }
        Some(self.channels.join(&names.channel, self.supervisor()))
    }
}

/// Returns `true` once `channel` is subscribed (at once if it is);
/// `false` if `woken` fires or `until` passes first.
async fn until_subscribed(
    channel: &Channel,
    woken: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    until: Instant,
) -> bool {
    if channel.is_subscribed() {
        return true;
    }
    let ready = channel.ready.notified();
    tokio::pin!(ready);
    ready.as_mut().enable();
    if channel.is_subscribed() {
        return true;
    }
    tokio::select! {
        _ = ready => true,
        _ = woken => false,
        _ = sleep_until(until) => false,
    }
}

/// The release channels this backend's waiters and observers listen on.
#[derive(Default)]
pub(super) struct Channels {
    map: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    channel: Arc<Channel>,
    waiters: usize,
    idle_since: Instant,
}

#[derive(Default)]
struct Channel {
    /// A release was published, or the subscription connection was lost or
    /// re-established (a release may have been missed).
    released: Notify,
    /// Whom the last notification was for: the owner token of the waiter
    /// whose turn it is, or empty for every waiter.
    next: Mutex<String>,
    /// Anything was published, or the subscription connection was lost:
    /// what observers wait for.
    changed: Notify,
    /// The subscription was confirmed.
    ready: Notify,
    subscribed: AtomicBool,
}

impl Channel {
    fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }

    fn set_subscribed(&self, subscribed: bool) {
        self.subscribed.store(subscribed, Ordering::SeqCst);
    }

    /// Wakes the waiter `next` names (every waiter when it is empty).
    fn notify(&self, next: &str) {
        self.changed.notify_waiters();
        if next == GRANTED || next == RELEASED {
            // Nothing for waiters: a grant frees nothing, and a release
            // with nobody queued has nobody to tell.
            return;
        }
        next.clone_into(&mut self.next.lock().unwrap_or_else(|p| p.into_inner()));
        self.released.notify_waiters();
    }

    /// Whether the last notification was for `owner` (hex; empty: anyone).
    fn wakes(&self, owner: &str) -> bool {
        let next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        owner.is_empty() || next.is_empty() || *next == owner
    }
}

/// One waiter's interest in a channel; dropping it leaves.
struct Waiter<'a> {
    channels: &'a Channels,
    name: String,
    channel: Arc<Channel>,
}

impl Channels {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Every update is a single insert, remove or counter change.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn join<'a>(&'a self, name: &str, supervisor: &UnboundedSender<String>) -> Waiter<'a> {
        let mut map = self.map();
        let entry = map.entry(name.to_owned()).or_insert_with(|| {
            // The supervisor subscribes it (or re-subscribes everything
            // after its next connect); if it is gone, waits just poll.
            let _ = supervisor.send(name.to_owned());
            Entry {
                channel: Arc::default(),
                waiters: 0,
                idle_since: Instant::now(),
            }
        });
        entry.waiters += 1;
        Waiter {
            channels: self,
            name: name.to_owned(),
            channel: entry.channel.clone(),
        }
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.map().contains_key(name)
    }

    pub(super) fn names(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    fn with_channels(&self, names: &[String], f: impl Fn(&Channel)) {
        let map = self.map();
        for name in names {
            if let Some(entry) = map.get(name) {
                f(&entry.channel);
            }
        }
    }

    pub(super) fn subscribed(&self, names: &[String]) {
        self.with_channels(names, |c| {
            c.set_subscribed(true);
            c.ready.notify_waiters();
        });
    }

    pub(super) fn released(&self, name: &str, next: &str) {
        if let Some(entry) = self.map().get(name) {
            entry.channel.notify(next);
        }
    }

    /// Marks every channel unsubscribed and wakes every waiter.
    fn disconnected(&self) {
        for entry in self.map().values() {
            entry.channel.set_subscribed(false);
            entry.channel.notify("");
        }
    }

    /// Forgets the channels nobody waited on for `linger`; returns them.
    pub(super) fn sweep(&self, linger: Duration) -> Vec<String> {
        let now = Instant::now();
        let mut idle = Vec::new();
        self.map().retain(|name, entry| {
            let keep = entry.waiters > 0 || now - entry.idle_since < linger;
            if !keep {
                idle.push(name.clone());
            }
            keep
        });
        idle
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut map = self.channels.map();
        if let Some(entry) = map.get_mut(&self.name)
            && Arc::ptr_eq(&entry.channel, &self.channel)
        {
            entry.waiters -= 1;
            entry.idle_since = Instant::now();
        }
    }
}

/// Owns the one subscription connection of a backend.
pub(super) struct Supervisor {
    pub(super) source: Source,
    pub(super) channels: Arc<Channels>,
    pub(super) shutdown: CancellationToken,
    pub(super) connection_timeout: Duration,
    pub(super) response_timeout: Duration,
}

impl Supervisor {
    async fn run(self, mut inbox: UnboundedReceiver<String>) {
        let mut backoff = Backoff::jittered(MIN_BACKOFF, MAX_BACKOFF);
        let mut warned = false;
        loop {
            let why = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                why = self.session(&mut inbox, &mut backoff) => why,
            };
            self.channels.disconnected();
            match why {
                Ended::Closed => return,
                Ended::Failed(e) => {
                    if is_permission_error(&e) && !warned {
                        warned = true;
                        tracing::warn!(error = %e, "distlock: the Redis ACL denies the release channels; waiters poll instead of being woken");
                    } else {
                        tracing::debug!(error = %e, "distlock: Redis subscription connection failed");
                    }
                }
                Ended::TimedOut(what) => {
                    tracing::debug!(what, "distlock: Redis subscription connection timed out");
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = sleep(backoff.next_delay()) => {}
            }
        }
    }

    async fn session(&self, inbox: &mut UnboundedReceiver<String>, backoff: &mut Backoff) -> Ended {
        match &self.source {
            Source::Single(client) => self.session_on(client, inbox, backoff, None).await,
            Source::Sentinel(master) => {
                // Subscribed to the master followed now, until another is.
                let mut moved = master.changes();
                moved.mark_unchanged();
                let client = master.current().client.clone();
                self.session_on(&client, inbox, backoff, Some(moved)).await
            }
            Source::Cluster(nodes) => self.shard_session(nodes, inbox, backoff).await,
        }
    }

    /// One connection's life: connect, subscribe every channel, then serve
    /// messages, new channels and heartbeats until something fails (or,
    /// under Sentinel, the master moves).
    async fn session_on(
        &self,
        client: &Client,
        inbox: &mut UnboundedReceiver<String>,
        backoff: &mut Backoff,
        mut moved: Option<watch::Receiver<u64>>,
    ) -> Ended {
        let pubsub = match bounded(
            self.connection_timeout,
            "connect",
            client.get_async_pubsub(),
        )
        .await
        {
            Ok(p) => p,
            Err(e) => return e,
        };
        let (mut sink, mut stream) = pubsub.split();
        // Everything queued so far is in the map and subscribed below.
        while inbox.try_recv().is_ok() {}
        let names = self.channels.names();
        if !names.is_empty()
            && let Err(e) =
                bounded(self.response_timeout, "subscribe", sink.subscribe(&names)).await
        {
            return e;
        }
        // Waiters woken when the last connection was lost wait for this:
        // each re-checks its key, catching a release published meanwhile.
        self.channels.subscribed(&names);
        backoff.reset();
        let mut heartbeat = tokio::time::interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
        loop {
            tokio::select! {
                Some(_) = async { Some(moved.as_mut()?.changed().await) } => {
                    return Ended::Failed(RedisError::from((ErrorKind::Io, "the Redis master moved")));
                }
                name = inbox.recv() => {
                    let Some(name) = name else { return Ended::Closed };
                    let mut names = vec![name];
                    while let Ok(more) = inbox.try_recv() {
                        names.push(more);
                    }
                    names.sort_unstable();
                    names.dedup();
                    if let Err(e) = bounded(self.response_timeout, "subscribe", sink.subscribe(&names)).await {
                        return e;
                    }
                    self.channels.subscribed(&names);
                }
                message = stream.next() => {
                    let Some(message) = message else {
                        return Ended::Failed(RedisError::from((ErrorKind::Io, "the subscription connection closed")));
                    };
                    let next: String = message.get_payload().unwrap_or_default();
                    self.channels.released(message.get_channel_name(), &next);
                }
                _ = heartbeat.tick() => {
                    if let Err(e) = bounded(self.response_timeout, "ping", sink.ping::<Value>()).await {
                        return e;
                    }
                    let idle = self.channels.sweep(LINGER);
                    if !idle.is_empty()
                        && let Err(e) = bounded(self.response_timeout, "unsubscribe", sink.unsubscribe(&idle)).await
                    {
                        return e;
                    }
                }
            }
        }
    }
}

pub(super) enum Ended {
    Closed,
    Failed(RedisError),
    TimedOut(&'static str),
}

pub(super) async fn bounded<T>(
    within: Duration,
    what: &'static str,
    call: impl Future<Output = ::redis::RedisResult<T>>,
) -> std::result::Result<T, Ended> {
    match timeout(within, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Ended::Failed(e)),
        Err(_) => Err(Ended::TimedOut(what)),
    }
}
