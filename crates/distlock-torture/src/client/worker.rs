//! One task's rounds over one Locker: obtain (or campaign), a critical
//! section of fenced writes (with injected stalls; a leader's term),
//! release (or resign). The single and shared profiles run it; the
//! negative controls 1–4 live in it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use distlock::backend::Backend;
use distlock::{Lock, Locker, ObtainOptions, RefreshHandle, ValidityPolicy};
use distlock_testkit::Faulty;
use futures::FutureExt as _;
use tokio::time::{Instant, sleep};

use super::acts::{Under, write_done, write_invoke};
use super::leader::{self, Hold};
use super::stalls::Stalls;
use super::{ClientConfig, Control, Ops};
use crate::clock::{self, ns};
use crate::history::{CloseWhy, Event, JsonLines, LostCause, Mode, PauseKind};
use crate::register::{Act, RegisterClient};
use crate::store::ClientStore;
use crate::variant::{Variant, Workload};

/// A Locker and what the history calls it.
#[derive(Clone, Debug)]
pub(super) struct LockerSlot {
    pub(super) locker: Locker,
    pub(super) id: u64,
    /// Set before the Locker's close is recorded and called: a write
    /// decided after that is outside the section.
    closing: Arc<AtomicBool>,
    /// A candidate's backend wrapper, through which its stalls cut its
    /// refreshes (leadership only; see [`super::leader`]).
    faulty: Option<Arc<Faulty>>,
}

impl LockerSlot {
    /// A Locker on `backend` (its owner with `owns`) for `workload`.
    pub(super) fn on(
        backend: Arc<dyn Backend>,
        namespace: &str,
        owns: bool,
        workload: Workload,
        id: u64,
    ) -> Self {
        let (locker, faulty) = if workload == Workload::Leadership {
            let (locker, faulty) = leader::candidate_locker(backend, namespace, owns);
            (locker, Some(faulty))
        } else {
            let builder = Locker::builder(backend).namespace(namespace);
            let builder = if owns {
                builder.owns_backend()
            } else {
                builder
            };
            (builder.build().expect("a valid namespace"), None)
        };
        LockerSlot {
            locker,
            id,
            closing: Arc::new(AtomicBool::new(false)),
            faulty,
        }
    }

    pub(super) fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }
}

/// One task's workload.
pub(super) struct Worker {
    cfg: Arc<ClientConfig>,
    store: ClientStore,
    hist: JsonLines,
    rng: fastrand::Rng,
    register: RegisterClient,
    ttl: Duration,
    ops: Ops,
    stalls: Stalls,
}

/// One grant being worked on.
struct Held {
    hold: Hold,
    grant: u64,
    key: String,
    token: u64,
    /// What its acts need of the key.
    act: Mode,
    refresher: Option<RefreshHandle>,
    /// The deadline the client relies on (its own, in control 4).
    own_deadline: Option<Instant>,
}

impl Held {
    fn under(&self) -> Under<'_> {
        Under {
            grant: self.grant,
            key: &self.key,
            token: self.token,
            act: self.act,
        }
    }

    fn lock(&self) -> &Lock {
        self.hold.lock()
    }

    fn deadline(&self) -> Instant {
        self.own_deadline
            .unwrap_or_else(|| self.lock().valid_until())
    }

    async fn stop_refresh(&mut self) {
        if let Some(r) = self.refresher.take() {
            r.stop().await;
        }
    }
}

impl Worker {
    pub(super) fn new(
        cfg: Arc<ClientConfig>,
        store: ClientStore,
        hist: JsonLines,
        ops: Ops,
        seed: u64,
    ) -> Self {
        Worker {
            rng: fastrand::Rng::with_seed(seed),
            register: RegisterClient::new(cfg.register),
            ttl: cfg.ttl(),
            stalls: Stalls::of(cfg.variant, cfg.workload, cfg.ttl()),
            hist,
            store,
            ops,
            cfg,
        }
    }

    fn next_op(&mut self) -> u64 {
        self.ops.next()
    }

    pub(super) fn variant(&self) -> Variant {
        self.cfg.variant
    }

    /// Whether to do something with probability `p`.
    pub(super) fn chance(&mut self, p: f64) -> bool {
        self.rng.f64() < p
    }

    /// Closes `slot`'s Locker (and `backend`, for control 5), recording
    /// both ends.
    pub(super) async fn close(
        &self,
        slot: &LockerSlot,
        why: CloseWhy,
        backend: Option<&dyn Backend>,
    ) {
        close_slot(&self.hist, slot, why, backend).await;
    }

    pub(super) fn ttl_fraction(&mut self, lo: f64, hi: f64) -> Duration {
        self.ttl.mul_f64(lo + (hi - lo) * self.rng.f64())
    }

    /// One obtain / critical section / release on `slot`'s Locker.
    pub(super) async fn round(&mut self, slot: &LockerSlot, control: &mut Control) {
        if let Some(pause) = control.pause_requested() {
            sleep(pause).await;
        }
        let key = self.cfg.keys[self.rng.usize(..self.cfg.keys.len())].clone();
        let round = self.cfg.round(&mut self.rng);
        let op = self.next_op();
        let wait = self.ttl * 2 + self.ttl_fraction(0.0, 1.0);
        self.hist.append(&Event::ObtainInvoke {
            op,
            key: key.clone(),
            ttl_ms: self.cfg.ttl_ms,
            mode: round.take,
            locker: Some(slot.id),
            t: clock::now_ns(),
        });
        let options = ObtainOptions::new().ttl(self.ttl).wait(wait);
        let result = if self.cfg.workload == Workload::Leadership {
            let id = leader::identity(self.cfg.client, self.cfg.incarnation, slot.id);
            let campaign = slot.locker.campaign_with(key.as_str(), id, options);
            campaign.await.map(Hold::Leader)
        } else {
            let taken = take(&slot.locker, self.cfg.workload, &key, round.take, options);
            taken.await.map(Hold::Lock)
        };
        let obtained_at = Instant::now();
        let hold = match result {
            Ok(hold) => hold,
            Err(e) => {
                self.hist.append(&Event::ObtainFail {
                    op,
                    not_obtained: e.is_not_obtained(),
                    closed: matches!(e, distlock::Error::Closed),
                    limit_mismatch: matches!(e, distlock::Error::LimitMismatch { .. }),
                    error: e.to_string(),
                    t: ns(obtained_at),
                });
                if !e.is_not_obtained() {
                    // The store is down or unreachable: do not spin.
                    sleep(self.ttl_fraction(0.02, 0.1)).await;
                }
                return;
            }
        };
        let mut held = Held {
            // A leader's term is its grant's fencing token.
            token: hold.lock().fencing_token(),
            hold,
            grant: op,
            key,
            act: round.act,
            refresher: None,
            own_deadline: None,
        };
        let learned_at = if self.cfg.variant == Variant::DeadlineFromReply {
            // The reply is delayed on its way; the client then measures its
            // deadline from when the reply arrived (the bug), and relies on
            // it without refreshing.
            sleep(self.ttl_fraction(0.1, 0.6)).await;
            let reply = Instant::now();
            let span = ValidityPolicy::default()
                .span(self.ttl)
                .expect("a valid TTL");
            held.own_deadline = Some(reply + span);
            reply
        } else {
            if let Hold::Lock(lock) = &held.hold {
                held.refresher = Some(lock.start_refresh(|_| {}));
            }
            let lost = held.lock().lost();
            let hist = self.hist.clone();
            let grant = held.grant;
            tokio::spawn(async move {
                let reason = lost.await;
                hist.append(&Event::Lost {
                    grant,
                    reason: LostCause::from(reason),
                    t: clock::now_ns(),
                });
            });
            obtained_at
        };
        self.hist.append(&Event::ObtainOk {
            op,
            key: held.key.clone(),
            token: held.token,
            valid_until: ns(held.deadline()),
            t: ns(learned_at),
        });
        if self.cfg.variant == Variant::DeadlineFromReply {
            self.section_until_own_deadline(&mut held).await;
        } else {
            self.section(&mut held, slot, control).await;
        }
        held.stop_refresh().await;
        self.release(held).await;
        // Think time between rounds.
        sleep(Duration::from_micros(self.rng.u64(0..=2000))).await;
    }

    /// The critical section (a leader's term): a few writes, each decided
    /// only while the lock is valid (except in control 2), with injected
    /// stalls.
    async fn section(&mut self, held: &mut Held, slot: &LockerSlot, control: &mut Control) {
        let (lo, hi) = self.stalls.writes;
        let writes = self.rng.u32(lo..=hi);
        let overdue_at = (self.rng.f64() < self.stalls.overdue).then(|| self.rng.u32(0..writes));
        if self.rng.f64() < self.stalls.slow {
            let ms = self.ttl_fraction(0.5, 1.5);
            self.pause_event(held.grant, ms, PauseKind::Slow);
            sleep(ms).await;
        }
        for i in 0..writes {
            if let Some(pause) = control.pause_requested() {
                // A task-level pause: everything of this client stalls,
                // its refresher included.
                self.pause_event(held.grant, pause, PauseKind::Nemesis);
                self.stall(held, slot, pause).await;
            }
            let overdue = overdue_at == Some(i);
            let now = Instant::now();
            let valid_until = held.deadline();
            let ignore = self.cfg.variant == Variant::IgnoreValidity;
            // `closing` is read after `now`: a close recorded after this
            // check was recorded after `now` too. `ended` because
            // `is_lost()` is false for a lock that ended with `Closed`.
            if !ignore && (now >= valid_until || ended(held.lock()) || slot.closing()) {
                return;
            }
            let op = self.next_op();
            let delay = if !overdue && self.rng.f64() < self.stalls.delayed {
                Duration::from_millis(self.rng.u64(5..=60))
            } else {
                Duration::ZERO
            };
            write_invoke(
                &self.hist,
                op,
                held.under(),
                ns(now),
                ns(valid_until),
                delay,
            );
            if overdue {
                // Stalls between deciding the write and sending it, past the
                // lock's TTL: only fencing can stop this write now.
                let ms = self.ttl_fraction(1.2, 2.0);
                self.pause_event(held.grant, ms, PauseKind::Overdue);
                self.stall(held, slot, ms).await;
            }
            if delay.is_zero() {
                self.write_now(held, op).await;
            } else {
                let mut register = RegisterClient::new(self.cfg.register);
                let (key, token, mode) = (held.key.clone(), held.token, held.act);
                let (client, incarnation) = (self.cfg.client, self.cfg.incarnation);
                let hist = self.hist.clone();
                tokio::spawn(async move {
                    sleep(delay).await;
                    let act = Act {
                        key: &key,
                        token,
                        mode,
                        client,
                        incarnation,
                        op,
                    };
                    write_done(&hist, op, register.write(&act).await);
                });
            }
            let (lo, hi) = self.stalls.gap_us;
            sleep(Duration::from_micros(self.rng.u64(lo..=hi))).await;
        }
    }

    /// Stalls `d` with the grant's refreshing stopped: a lock's refresher
    /// for good, a leader's refreshes cut for the stall (see
    /// [`super::leader`]). Control 2 deposes a leader on a store without
    /// TTL by deleting its lock behind its back.
    async fn stall(&mut self, held: &mut Held, slot: &LockerSlot, d: Duration) {
        let depose = self.cfg.variant == Variant::IgnoreValidity && !self.cfg.backend.ttl_expiry();
        match (&held.hold, &slot.faulty) {
            (Hold::Leader(_), _) if depose => {
                let ns = &self.cfg.namespace;
                let _ = self.store.delete_by_name(ns, &held.key).await;
                sleep(d).await;
            }
            (Hold::Leader(_), Some(faulty)) => leader::cut_refreshes(faulty, d).await,
            _ => {
                held.stop_refresh().await;
                sleep(d).await;
            }
        }
    }

    /// Writes `op` to the register with the grant's token, and records it.
    async fn write_now(&mut self, held: &Held, op: u64) {
        let act = held.under().act(self.cfg.client, self.cfg.incarnation, op);
        let result = self.register.write(&act).await;
        self.write_done(op, result);
    }

    /// Control 4's section: writes until the client's own (reply-measured)
    /// deadline.
    async fn section_until_own_deadline(&mut self, held: &mut Held) {
        let margin = Duration::from_millis(2);
        loop {
            let now = Instant::now();
            let deadline = held.deadline();
            if now + margin >= deadline {
                return;
            }
            let op = self.next_op();
            let under = held.under();
            write_invoke(&self.hist, op, under, ns(now), ns(deadline), Duration::ZERO);
            self.write_now(held, op).await;
            let gap = self.ttl_fraction(0.02, 0.08);
            let left = deadline.saturating_duration_since(Instant::now() + margin);
            sleep(gap.min(left)).await;
        }
    }

    async fn release(&mut self, held: Held) {
        let valid_until = ns(held.deadline());
        let grant = held.grant;
        let op = self.next_op();
        self.hist.append(&Event::ReleaseInvoke {
            op,
            grant,
            valid_until,
            by_name: false,
            t: clock::now_ns(),
        });
        let key = held.key;
        // A leader resigns with its refresher running (it cannot be
        // stopped first): the deadline above may still move by a refresh
        // in flight, as a lock's may after its refresher's stop.
        let result = held.hold.give_up().await;
        if self.cfg.variant == Variant::ReleaseByName {
            // The reply never reaches the client; it retries by name.
            self.hist.append(&Event::ReleaseUnknown {
                op,
                t: clock::now_ns(),
            });
            sleep(Duration::from_millis(self.rng.u64(10..=60))).await;
            let op = self.next_op();
            self.hist.append(&Event::ReleaseInvoke {
                op,
                grant,
                valid_until,
                by_name: true,
                t: clock::now_ns(),
            });
            let deleted = self.store.delete_by_name(&self.cfg.namespace, &key).await;
            let t = clock::now_ns();
            self.hist.append(&match deleted {
                Ok(_) => Event::ReleaseOk { op, t },
                Err(error) => Event::ReleaseFail {
                    op,
                    not_held: false,
                    error,
                    t,
                },
            });
            return;
        }
        let t = clock::now_ns();
        self.hist.append(&match result {
            Ok(()) => Event::ReleaseOk { op, t },
            Err(e) => Event::ReleaseFail {
                op,
                not_held: e.is_not_held(),
                error: e.to_string(),
                t,
            },
        });
    }

    fn pause_event(&self, grant: u64, ms: Duration, why: PauseKind) {
        self.hist.append(&Event::Pause {
            grant,
            ms: ms.as_millis() as u64,
            why,
            t: clock::now_ns(),
        });
    }

    fn write_done(&self, op: u64, result: std::io::Result<bool>) {
        write_done(&self.hist, op, result);
    }
}

/// Asks `locker` for `key` in `mode`, through the workload's front type:
/// a semaphore's permit, a reader-writer lock's read or write lock, or a
/// plain lock.
async fn take(
    locker: &Locker,
    workload: Workload,
    key: &str,
    mode: Mode,
    options: ObtainOptions,
) -> distlock::Result<Lock> {
    match mode {
        Mode::Permit { limit } => locker.semaphore(key, limit)?.acquire_with(options).await,
        Mode::Read => locker.rw_lock(key)?.read_with(options).await,
        Mode::Exclusive if workload == Workload::RwLock => {
            locker.rw_lock(key)?.write_with(options).await
        }
        Mode::Exclusive => locker.obtain_with(key, options).await,
    }
}

/// Whether the lock ended, for any reason (`lost()` has resolved).
fn ended(lock: &Lock) -> bool {
    lock.lost().now_or_never().is_some()
}

/// Closes `slot`'s Locker (then `backend`, for control 5), recording the
/// close before it starts and its outcome after.
pub(super) async fn close_slot(
    hist: &JsonLines,
    slot: &LockerSlot,
    why: CloseWhy,
    backend: Option<&dyn Backend>,
) {
    slot.closing.store(true, Ordering::SeqCst);
    hist.append(&Event::LockerClose {
        locker: slot.id,
        why,
        backend: backend.is_some(),
        t: clock::now_ns(),
    });
    let mut result = slot.locker.close().await;
    if let Some(backend) = backend {
        result = result.and(backend.close().await);
    }
    hist.append(&Event::LockerClosed {
        locker: slot.id,
        error: result.err().map(|e| e.to_string()),
        t: clock::now_ns(),
    });
}
