//! One refresher per engine: a single task extends every lock that asked
//! for refreshing ([`Lock::start_refresh`](crate::Lock::start_refresh)), in
//! batches of the locks due at about the same time
//! ([`Backend::extend_all`](crate::backend::Backend::extend_all)), instead
//! of one task per lock.
//!
//! Each registration is due every refresh interval, soon again after a
//! failed extend (a quarter interval), and at its expiry at the latest, so
//! that a lock that could not be extended is reported lost to its
//! `on_error` when it expires. Rounds run concurrently, each bounded by the
//! earliest validity deadline among its locks, so a hanging store call
//! delays no lock past its own deadline. `lost()` does not depend on the
//! refresher: it has its own timer.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::Renewal;
use crate::engine::Held;
use crate::error::{Error, Result};

/// Callbacks for refresh failures, as given to `start_refresh`.
pub(crate) type OnError = Box<dyn FnMut(&Error) + Send>;

/// The refresher of one engine: its schedule and, while anything is
/// registered, its task.
#[derive(Default)]
pub(crate) struct Refresher {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    schedule: Mutex<Schedule>,
    /// A registration arrived or left: the task looks at the schedule again.
    changed: Notify,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Schedule {
    due: BTreeSet<(Instant, u64)>,
    entries: HashMap<u64, Entry>,
    /// Whether a task serves this schedule.
    running: bool,
}

struct Entry {
    registration: Arc<Registration>,
    /// When it is due; `None` while a round extends it.
    due: Option<Instant>,
}

/// One `start_refresh`: the lock, its callback, and whether it was stopped.
pub(crate) struct Registration {
    id: u64,
    held: Arc<Held>,
    stopped: AtomicBool,
    /// Set when the refresher gave up on the lock (it ended).
    finished: AtomicBool,
    on_error: Mutex<OnError>,
    shared: Arc<Shared>,
}

impl Refresher {
    /// Starts refreshing `held` every refresh interval until the returned
    /// registration is stopped, the lock is let go of, or it ends. Needs a
    /// tokio runtime (the task is spawned on the caller's).
    pub(crate) fn register(&self, held: Arc<Held>, on_error: OnError) -> Arc<Registration> {
        let shared = &self.shared;
        let registration = Arc::new(Registration {
            id: shared.next_id.fetch_add(1, Ordering::Relaxed),
            held,
            stopped: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            on_error: Mutex::new(on_error),
            shared: shared.clone(),
        });
        let due = registration.next_due(Instant::now(), registration.held.refresh_interval);
        let start = {
            let mut schedule = shared.schedule();
            schedule.insert(registration.clone(), due);
            !std::mem::replace(&mut schedule.running, true)
        };
        if start {
            tokio::spawn(shared.clone().run());
        } else {
            shared.changed.notify_one();
        }
        registration
    }
}

impl Registration {
    /// Stops refreshing: no callback runs after this returns (one running
    /// now is waited for).
    pub(crate) fn stop(&self) {
        self.cancel();
        drop(self.callback());
    }

    /// Stops refreshing without waiting for a running callback (drop).
    pub(crate) fn cancel(&self) {
        self.stopped.store(true, Ordering::Release);
        self.shared.schedule().remove(self.id);
        self.shared.changed.notify_one();
    }

    /// True until stopped, let go of, or ended.
    pub(crate) fn is_running(&self) -> bool {
        !(self.is_stopped() || self.finished.load(Ordering::Acquire) || self.held.is_over())
    }

    fn callback(&self) -> MutexGuard<'_, OnError> {
        // A panic in the callback leaves nothing half-updated in it for us.
        self.on_error.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Passes `e` to the callback unless refreshing was stopped or the
    /// holder let go (a release racing an extend is not an error).
    fn report(&self, e: &Error) {
        let mut callback = self.callback();
        if !self.is_stopped() && !self.held.is_let_go() {
            callback(e);
        }
    }

    /// The next due time `after` from now, never later than the expiry.
    fn next_due(&self, now: Instant, after: Duration) -> Instant {
        (now + after).min(self.held.expires_at())
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    fn is_quiet(&self) -> bool {
        self.is_stopped() || self.held.is_let_go()
    }
}

impl Schedule {
    fn insert(&mut self, registration: Arc<Registration>, due: Instant) {
        let id = registration.id;
        self.due.insert((due, id));
        self.entries.insert(
            id,
            Entry {
                registration,
                due: Some(due),
            },
        );
    }

    fn remove(&mut self, id: u64) {
        if let Some(Entry { due: Some(due), .. }) = self.entries.remove(&id) {
            self.due.remove(&(due, id));
        }
    }

    /// Takes every registration due by `now`, plus those due within an
    /// eighth of their refresh interval (extending a little early batches
    /// locks obtained at about the same time). Returns them and the next
    /// due time after them.
    fn take_due(&mut self, now: Instant) -> (Vec<Arc<Registration>>, Option<Instant>) {
        let mut taken = Vec::new();
        while let Some(&(due, id)) = self.due.first() {
            let Some(entry) = self.entries.get_mut(&id) else {
                self.due.pop_first();
                continue;
            };
            if due > now + entry.registration.held.refresh_interval / 8 {
                return (taken, Some(due));
            }
            self.due.pop_first();
            entry.due = None;
            taken.push(entry.registration.clone());
        }
        (taken, None)
    }

    /// Schedules a registration a round extended again, unless it left.
    fn reschedule(&mut self, id: u64, due: Instant) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.due = Some(due);
            self.due.insert((due, id));
        }
    }
}

impl Shared {
    fn schedule(&self) -> MutexGuard<'_, Schedule> {
        // Every update leaves the schedule consistent (no callback runs under it).
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(self: Arc<Self>) {
        // Marks the schedule unserved however the task ends (its runtime
        // may shut down), so the next registration starts a new one.
        let mut serving = Serving {
            shared: &self,
            done: false,
        };
        let mut rounds = FuturesUnordered::new();
        loop {
            let changed = self.changed.notified();
            let (due, next) = {
                let mut schedule = self.schedule();
                if schedule.entries.is_empty() && rounds.is_empty() {
                    schedule.running = false;
                    serving.done = true;
                    return;
                }
                schedule.take_due(Instant::now())
            };
            if !due.is_empty() {
                rounds.push(round(due));
            }
            let sleep = tokio::time::sleep_until(next.unwrap_or_else(far_future));
            tokio::select! {
                _ = changed => {}
                _ = sleep => {}
                Some(done) = rounds.next(), if !rounds.is_empty() => {
                    let mut schedule = self.schedule();
                    for (id, due) in done {
                        schedule.reschedule(id, due);
                    }
                }
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(24 * 60 * 60)
}

/// Whether the task ended by itself (with the schedule empty) or was
/// dropped with it (its runtime shut down): then the registrations its
/// rounds were extending are due again, for the next task.
struct Serving<'a> {
    shared: &'a Shared,
    done: bool,
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut schedule = self.shared.schedule();
        schedule.running = false;
        let now = Instant::now();
        let in_flight: Vec<u64> = schedule
            .entries
            .iter()
            .filter(|(_, e)| e.due.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in in_flight {
            schedule.reschedule(id, now);
        }
    }
}

/// One round: extends `due` in one call and settles each answer. Returns
/// the registrations to schedule again, with their next due time.
async fn round(due: Vec<Arc<Registration>>) -> Vec<(u64, Instant)> {
    let mut live = Vec::with_capacity(due.len());
    for registration in due {
        if registration.is_quiet() {
            registration.finish();
            continue;
        }
        // Expired (or ended) before we could extend it: report and forget.
        if let Err(e) = registration.held.check_valid() {
            registration.report(&e);
            registration.finish();
            continue;
        }
        live.push(registration);
    }
    let Some(first) = live.first() else {
        return Vec::new();
    };
    let engine = first.held.engine.clone();
    let renewals: Vec<Renewal> = live.iter().map(|r| r.held.renewal()).collect();
    let deadline = live
        .iter()
        .map(|r| r.held.extend_deadline())
        .min()
        .expect("live is not empty");
    let sent = Instant::now();
    let (answer, _) = engine
        .call_by("extend", Some(deadline), async {
            Ok(engine.backend.extend_all(&renewals).await)
        })
        .await;
    let answers: Vec<Result<()>> = match answer {
        Ok(answers) if answers.len() == live.len() => answers,
        Ok(answers) => {
            let e = Error::backend(
                engine.backend.name(),
                "extend",
                format!(
                    "extend_all answered {} of {} renewals",
                    answers.len(),
                    live.len()
                ),
            );
            live.iter().map(|_| Err(e.repeat())).collect()
        }
        Err(e) => live.iter().map(|_| Err(e.repeat())).collect(),
    };
    let now = Instant::now();
    let mut again = Vec::with_capacity(live.len());
    for (registration, answer) in live.into_iter().zip(answers) {
        if let Some(due) = registration.settle(sent, answer, now) {
            again.push((registration.id, due));
        }
    }
    again
}

impl Registration {
    /// Applies one answer; returns when to extend again, or `None` when the
    /// lock ended or the holder let go.
    fn settle(&self, sent: Instant, answer: Result<()>, now: Instant) -> Option<Instant> {
        let held = &self.held;
        // A loss the store reports reaches the callback before `lost()`
        // fires, so whoever wakes on `lost()` sees it reported.
        let mut reported = false;
        let result = held.settle(sent, answer, |e| {
            self.report(e);
            reported = true;
        });
        match result {
            Ok(()) => Some(self.next_due(now, held.refresh_interval)),
            Err(_) if self.is_quiet() => {
                self.finish();
                None
            }
            Err(e) => {
                if !reported {
                    self.report(&e);
                }
                if held.ended_with().is_some() {
                    self.finish();
                    return None;
                }
                // After a failed extend, try again soon rather than a whole
                // interval later.
                let retry_gap = (held.refresh_interval / 4).max(Duration::from_millis(1));
                Some(self.next_due(now, retry_gap))
            }
        }
    }

    fn finish(&self) {
        self.finished.store(true, Ordering::Release);
        self.shared.schedule().remove(self.id);
    }
}
