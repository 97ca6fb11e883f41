//! The workload one client runs: obtain a key, write to the fenced
//! register under the lock, sometimes stall on purpose, release; repeat
//! until told to stop. Every step is recorded in the client's history.
//!
//! The same code runs in a client process (`distlock-torture client`) and,
//! for the memory backend, as a task of the orchestrator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use distlock::{Lock, ObtainOptions, RefreshHandle, ValidityPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep};

use crate::clock::{self, ns};
use crate::history::{Event, JsonLines, LostCause, PauseKind};
use crate::register::RegisterClient;
use crate::store::{BackendKind, ClientStore};
use crate::variant::Variant;

/// Everything a client needs; passed to a client process as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientConfig {
    /// The backend.
    pub backend: BackendKind,
    /// The store's URL (without the namespace).
    pub url: String,
    /// The namespace of the run's locks.
    pub namespace: String,
    /// The fenced register.
    pub register: SocketAddr,
    /// This client's number.
    pub client: u32,
    /// How many times it was respawned before.
    pub incarnation: u32,
    /// Its RNG seed.
    pub seed: u64,
    /// The keys it contends for.
    pub keys: Vec<String>,
    /// Lock TTL, milliseconds.
    pub ttl_ms: u64,
    /// Its behaviour.
    pub variant: Variant,
    /// Its history file.
    pub history: PathBuf,
}

/// How the orchestrator steers an in-process client.
#[derive(Debug)]
pub struct Control {
    /// Becomes `true` when the client should stop after its current round.
    pub stop: watch::Receiver<bool>,
    /// Task-level pauses (the memory backend's stand-in for SIGSTOP).
    pub pause: Option<mpsc::UnboundedReceiver<Duration>>,
}

impl Control {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn pause_requested(&mut self) -> Option<Duration> {
        self.pause.as_mut().and_then(|rx| rx.try_recv().ok())
    }
}

/// The client's RNG seed, derived from the run seed (splitmix64).
pub fn client_seed(run_seed: u64, client: u32, incarnation: u32) -> u64 {
    let mut z = run_seed
        ^ (u64::from(client) << 32 | u64::from(incarnation)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How often the workload stalls, per critical section or write.
struct Profile {
    /// Per section: sleep past the TTL with the refresher stopped, between
    /// deciding a write and sending it (a process pause).
    overdue: f64,
    /// Per write: the write is delayed in the network (sent later by a task).
    delayed: f64,
    /// Per section: a long section with the refresher running.
    slow: f64,
    /// Writes per section.
    writes: (u32, u32),
}

impl Profile {
    fn of(variant: Variant) -> Profile {
        match variant {
            Variant::Correct | Variant::ReleaseByName => Profile {
                overdue: 0.005,
                delayed: 0.04,
                slow: 0.005,
                writes: (1, 3),
            },
            Variant::IgnoreValidity => Profile {
                overdue: 0.3,
                delayed: 0.0,
                slow: 0.0,
                writes: (3, 5),
            },
            Variant::NoFencing => Profile {
                overdue: 0.02,
                delayed: 0.3,
                slow: 0.0,
                writes: (1, 3),
            },
            Variant::DeadlineFromReply => Profile {
                overdue: 0.0,
                delayed: 0.0,
                slow: 0.0,
                writes: (0, 0),
            },
        }
    }
}

struct Client {
    cfg: ClientConfig,
    store: ClientStore,
    hist: JsonLines,
    rng: fastrand::Rng,
    register: RegisterClient,
    ttl: Duration,
    op: u64,
    profile: Profile,
}

/// One grant being worked on.
struct Held {
    lock: Lock,
    grant: u64,
    key: String,
    token: u64,
    refresher: Option<RefreshHandle>,
    /// The deadline the client relies on (its own, in control 4).
    own_deadline: Option<Instant>,
}

impl Held {
    fn deadline(&self) -> Instant {
        self.own_deadline.unwrap_or_else(|| self.lock.valid_until())
    }

    async fn stop_refresh(&mut self) {
        if let Some(r) = self.refresher.take() {
            r.stop().await;
        }
    }
}

/// Runs the workload until `control.stop` turns true, recording to `hist`
/// (created from `cfg.history`). Errors are harness failures (the store
/// could not even be opened).
pub async fn run(
    cfg: ClientConfig,
    store: ClientStore,
    mut control: Control,
    hist: JsonLines,
) -> Result<(), String> {
    hist.append(&Event::Start {
        client: cfg.client,
        incarnation: cfg.incarnation,
        pid: std::process::id(),
        variant: cfg.variant,
        seed: cfg.seed,
        t: clock::now_ns(),
    });
    // A client respawned right after a server fault may find the store
    // still coming back: keep trying for a while before calling it a crash.
    let opening = Instant::now();
    let locker = loop {
        match store.locker(&cfg.namespace).await {
            Ok(locker) => break locker,
            Err(e) if opening.elapsed() > Duration::from_secs(15) => {
                return Err(format!("open the store: {e}"));
            }
            Err(_) => sleep(Duration::from_millis(200)).await,
        }
    };
    let mut client = Client {
        rng: fastrand::Rng::with_seed(cfg.seed),
        register: RegisterClient::new(cfg.register),
        ttl: Duration::from_millis(cfg.ttl_ms),
        op: 0,
        profile: Profile::of(cfg.variant),
        hist,
        store,
        cfg,
    };
    while !control.stopped() {
        if let Some(pause) = control.pause_requested() {
            sleep(pause).await;
        }
        client.round(&locker, &mut control).await;
    }
    client.hist.append(&Event::Stop { t: clock::now_ns() });
    let _ = locker.close().await;
    Ok(())
}

impl Client {
    fn next_op(&mut self) -> u64 {
        self.op += 1;
        self.op
    }

    fn ttl_fraction(&mut self, lo: f64, hi: f64) -> Duration {
        self.ttl.mul_f64(lo + (hi - lo) * self.rng.f64())
    }

    /// One obtain / critical section / release.
    async fn round(&mut self, locker: &distlock::Locker, control: &mut Control) {
        let key = self.cfg.keys[self.rng.usize(..self.cfg.keys.len())].clone();
        let op = self.next_op();
        let wait = self.ttl * 2 + self.ttl_fraction(0.0, 1.0);
        self.hist.append(&Event::ObtainInvoke {
            op,
            key: key.clone(),
            ttl_ms: self.cfg.ttl_ms,
            t: clock::now_ns(),
        });
        let result = locker
            .obtain_with(key.as_str(), ObtainOptions::new().ttl(self.ttl).wait(wait))
            .await;
        let obtained_at = Instant::now();
        let lock = match result {
            Ok(lock) => lock,
            Err(e) => {
                self.hist.append(&Event::ObtainFail {
                    op,
                    not_obtained: e.is_not_obtained(),
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
            token: lock.fencing_token(),
            lock,
            grant: op,
            key,
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
            held.refresher = Some(held.lock.start_refresh(|_| {}));
            let lost = held.lock.lost();
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
            self.section(&mut held, control).await;
        }
        held.stop_refresh().await;
        self.release(held).await;
        // Think time between rounds.
        sleep(Duration::from_micros(self.rng.u64(0..=2000))).await;
    }

    /// The critical section: a few writes, each decided only while the
    /// lock is valid (except in control 2), with injected stalls.
    async fn section(&mut self, held: &mut Held, control: &mut Control) {
        let (lo, hi) = self.profile.writes;
        let writes = self.rng.u32(lo..=hi);
        let overdue_at = (self.rng.f64() < self.profile.overdue).then(|| self.rng.u32(0..writes));
        if self.rng.f64() < self.profile.slow {
            let ms = self.ttl_fraction(0.5, 1.5);
            self.pause_event(held.grant, ms, PauseKind::Slow);
            sleep(ms).await;
        }
        for i in 0..writes {
            if let Some(pause) = control.pause_requested() {
                // A task-level pause: everything of this client stalls,
                // its refresher included.
                held.stop_refresh().await;
                self.pause_event(held.grant, pause, PauseKind::Nemesis);
                sleep(pause).await;
            }
            let overdue = overdue_at == Some(i);
            if overdue {
                held.stop_refresh().await;
            }
            let now = Instant::now();
            let valid_until = held.deadline();
            let ignore = self.cfg.variant == Variant::IgnoreValidity;
            if !ignore && (now >= valid_until || held.lock.is_lost()) {
                return;
            }
            let op = self.next_op();
            let delay = if !overdue && self.rng.f64() < self.profile.delayed {
                Duration::from_millis(self.rng.u64(5..=60))
            } else {
                Duration::ZERO
            };
            self.hist.append(&Event::WriteInvoke {
                op,
                grant: held.grant,
                key: held.key.clone(),
                token: held.token,
                checked: ns(now),
                valid_until: ns(valid_until),
                delay_ms: delay.as_millis() as u64,
                t: clock::now_ns(),
            });
            if overdue {
                // Stalls between deciding the write and sending it, past the
                // lock's TTL: only fencing can stop this write now.
                let ms = self.ttl_fraction(1.2, 2.0);
                self.pause_event(held.grant, ms, PauseKind::Overdue);
                sleep(ms).await;
            }
            if delay.is_zero() {
                self.write_now(held, op).await;
            } else {
                let mut register = RegisterClient::new(self.cfg.register);
                let (key, token, hist) = (held.key.clone(), held.token, self.hist.clone());
                let (client, incarnation) = (self.cfg.client, self.cfg.incarnation);
                tokio::spawn(async move {
                    sleep(delay).await;
                    let result = register.write(&key, token, client, incarnation, op).await;
                    write_done(&hist, op, result);
                });
            }
            sleep(Duration::from_micros(self.rng.u64(0..=3000))).await;
        }
    }

    /// Writes `op` to the register with the grant's token, and records it.
    async fn write_now(&mut self, held: &Held, op: u64) {
        let result = self
            .register
            .write(
                &held.key,
                held.token,
                self.cfg.client,
                self.cfg.incarnation,
                op,
            )
            .await;
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
            self.hist.append(&Event::WriteInvoke {
                op,
                grant: held.grant,
                key: held.key.clone(),
                token: held.token,
                checked: ns(now),
                valid_until: ns(deadline),
                delay_ms: 0,
                t: clock::now_ns(),
            });
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
        let result = held.lock.release().await;
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

fn write_done(hist: &JsonLines, op: u64, result: std::io::Result<bool>) {
    let t = clock::now_ns();
    hist.append(&match result {
        Ok(accepted) => Event::WriteOk { op, accepted, t },
        Err(e) => Event::WriteFail {
            op,
            error: e.to_string(),
            t,
        },
    });
}
