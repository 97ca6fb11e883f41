//! One etcd watch stream per backend, shared by all its waiters.
//!
//! A waiter asks for "tell me when key K is deleted (or changed, or any key
//! under prefix K is deleted), counting from revision R"; the hub adds a
//! watch for it on its one stream, and answers with the first such event
//! (which key was deleted, or that a put happened), or that it cannot tell
//! (the stream broke, the watch was cancelled or its revision compacted). Starting from the revision of the read that found K means
//! a delete in between is replayed, so no wake-up is lost. Waiters that give
//! up are pruned, and their watches cancelled, as the hub goes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{Client, EventType, WatchFilterType, WatchOptions, WatchResponse, WatchStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What a waiter waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// The key's deletion.
    Deleted,
    /// Any change of the key: a put or its deletion.
    Changed,
    /// The deletion of any key under the prefix.
    DeletedUnder,
    /// Any change under the prefix: a put or a deletion (an observer's).
    ChangedUnder,
}

/// What happened, as a watch saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// This key was deleted.
    Deleted(Vec<u8>),
    /// The key was put.
    Put,
}

/// What a waiter is told: `None` when the hub cannot tell.
type Fire = oneshot::Sender<Option<Change>>;

struct Request {
    key: Vec<u8>,
    event: Event,
    start_revision: i64,
    fire: Fire,
}

/// A waiter: whom to tell, and whether puts count.
struct Waiter {
    fire: Fire,
    puts: bool,
}

/// The handle waiters use; the hub task ends when it is dropped or `stop`
/// is cancelled.
#[derive(Debug)]
pub(super) struct WatchHub {
    requests: mpsc::UnboundedSender<Request>,
}

impl WatchHub {
    /// Starts the hub; every response it gets raises `seen` to its
    /// revision (see `Inner::seen`).
    pub(super) fn start(client: Client, stop: CancellationToken, seen: Arc<AtomicI64>) -> Self {
        let (requests, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, rx, stop, seen));
        WatchHub { requests }
    }

    /// Resolves with true when `key` is deleted at a revision after
    /// `after`, with false when the hub cannot tell (stream broken, watch
    /// cancelled or compacted, etcd unreachable).
    #[cfg(test)]
    pub(super) async fn deleted(&self, key: Vec<u8>, after: i64) -> bool {
        matches!(
            self.happened(key, Event::Deleted, after).await,
            Some(Change::Deleted(_))
        )
    }

    /// Resolves with the first `event` that happens to `key` (under the
    /// prefix `key`, for [`Event::DeletedUnder`]) at a revision after
    /// `after`, with `None` when the hub cannot tell.
    pub(super) async fn happened(&self, key: Vec<u8>, event: Event, after: i64) -> Option<Change> {
        let (fire, fired) = oneshot::channel();
        let request = Request {
            key,
            event,
            start_revision: after + 1,
            fire,
        };
        if self.requests.send(request).is_err() {
            return None;
        }
        fired.await.ok().flatten()
    }
}

#[derive(Default)]
struct Watches {
    /// Waiters whose watch was requested but not yet confirmed, in order
    /// (including those that gave up meanwhile).
    creating: VecDeque<Waiter>,
    /// Confirmed watches by id.
    active: HashMap<i64, Waiter>,
}

impl Watches {
    /// Wakes every waiter: the stream they were on is gone.
    fn fire_all(&mut self) {
        for waiter in self
            .creating
            .drain(..)
            .chain(self.active.drain().map(|(_, w)| w))
        {
            let _ = waiter.fire.send(None);
        }
    }

    fn is_empty(&self) -> bool {
        self.creating.is_empty() && self.active.is_empty()
    }
}

fn options(event: Event, start_revision: i64) -> WatchOptions {
    let options = WatchOptions::new().with_start_revision(start_revision);
    match event {
        Event::Deleted | Event::Changed => options,
        // Puts under a busy prefix (waiters queueing, grants) are of no
        // interest: etcd keeps them off the stream.
        Event::DeletedUnder => options.with_prefix().with_filters([WatchFilterType::NoPut]),
        Event::ChangedUnder => options.with_prefix(),
    }
}

async fn run(
    mut client: Client,
    mut requests: mpsc::UnboundedReceiver<Request>,
    stop: CancellationToken,
    seen: Arc<AtomicI64>,
) {
    let mut stream: Option<WatchStream> = None;
    let mut watches = Watches::default();
    let mut prune = tokio::time::interval(Duration::from_secs(1));
    loop {
        let message = async {
            match stream.as_mut() {
                Some(s) => s.message().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                watches.fire_all();
                return;
            }
            request = requests.recv() => {
                let Some(request) = request else {
                    watches.fire_all();
                    return;
                };
                let options = options(request.event, request.start_revision);
                let added = match stream.as_mut() {
                    Some(s) => s.watch(request.key, Some(options)).await.is_ok(),
                    None => match client.watch(request.key, Some(options)).await {
                        Ok(s) => {
                            stream = Some(s);
                            true
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "etcd watch stream did not open");
                            false
                        }
                    },
                };
                let waiter = Waiter {
                    fire: request.fire,
                    puts: matches!(request.event, Event::Changed | Event::ChangedUnder),
                };
                if added {
                    watches.creating.push_back(waiter);
                } else {
                    let _ = waiter.fire.send(None);
                    watches.fire_all();
                    stream = None;
                }
            }
            message = message => match message {
                Ok(Some(response)) => {
                    if let Some(header) = response.header() {
                        seen.fetch_max(header.revision(), Ordering::SeqCst);
                    }
                    if let Some(s) = stream.as_mut() {
                        handle(response, s, &mut watches).await;
                    }
                }
                other => {
                    tracing::debug!(?other, "etcd watch stream ended");
                    watches.fire_all();
                    stream = None;
                }
            },
            _ = prune.tick() => {
                // Forget waiters that gave up; cancel their watches. Those
                // still awaiting confirmation stay queued: confirmations
                // match requests by order, and `handle` cancels theirs.
                let gone: Vec<i64> = watches
                    .active
                    .iter()
                    .filter(|(_, waiter)| waiter.fire.is_closed())
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    watches.active.remove(&id);
                    if let Some(s) = stream.as_mut() {
                        let _ = s.cancel(id).await;
                    }
                }
                // An idle stream is closed; the next waiter opens another.
                if watches.is_empty() {
                    stream = None;
                }
            }
        }
    }
}

async fn handle(response: WatchResponse, stream: &mut WatchStream, watches: &mut Watches) {
    let id = response.watch_id();
    if response.created() {
        // Confirmations come in the order the watches were asked for.
        let Some(waiter) = watches.creating.pop_front() else {
            return;
        };
        if response.canceled() || waiter.fire.is_closed() {
            let _ = waiter.fire.send(None);
            let _ = stream.cancel(id).await;
            return;
        }
        watches.active.insert(id, waiter);
    }
    let puts = watches.active.get(&id).is_some_and(|w| w.puts);
    let happened = response.events().iter().find_map(|e| match e.event_type() {
        EventType::Delete => {
            let key = e.kv().map(|kv| kv.key().to_vec()).unwrap_or_default();
            Some(Change::Deleted(key))
        }
        EventType::Put if puts => Some(Change::Put),
        EventType::Put => None,
    });
    if happened.is_some() || response.canceled() || response.compact_revision() > 0 {
        if let Some(waiter) = watches.active.remove(&id) {
            let _ = waiter.fire.send(happened);
        }
        if !response.canceled() {
            let _ = stream.cancel(id).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::etcd::test_etcd::TestEtcd;

    /// etcd confirms watches in the order they were asked for. A waiter
    /// that gives up while its confirmation is delayed (here: etcd stopped)
    /// must not shift the waiters asked for after it onto the wrong watch:
    /// each is still woken by the delete of its own key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_giving_up_before_its_watch_is_confirmed_shifts_no_other() {
        let etcd = TestEtcd::start();
        let mut client = etcd.client().await;
        let mut revision = 0;
        for key in ["a", "b", "c", "open"] {
            let put = client.put(key, "", None).await.unwrap();
            revision = put.header().unwrap().revision();
        }
        let seen = Arc::new(AtomicI64::new(0));
        let hub = Arc::new(WatchHub::start(
            client.clone(),
            CancellationToken::new(),
            seen,
        ));
        let wait = |key: &'static str| {
            let hub = hub.clone();
            tokio::spawn(async move { hub.deleted(key.into(), revision).await })
        };
        // Keeps the stream open throughout.
        let _open = wait("open");
        tokio::time::sleep(Duration::from_millis(200)).await;

        etcd.pause(true);
        let gives_up = wait("a");
        let (b, c) = (wait("b"), wait("c"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        gives_up.abort();
        // The hub prunes waiters that gave up once a second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        etcd.pause(false);
        tokio::time::sleep(Duration::from_millis(300)).await;

        for (key, waiter) in [("b", b), ("c", c)] {
            assert!(
                !waiter.is_finished(),
                "{key} woke before its key was deleted"
            );
            client.delete(key, None).await.unwrap();
            let woken = tokio::time::timeout(Duration::from_secs(3), waiter).await;
            assert!(
                matches!(woken, Ok(Ok(true))),
                "the waiter on {key} was not woken by its delete: {woken:?}"
            );
        }
    }
}
