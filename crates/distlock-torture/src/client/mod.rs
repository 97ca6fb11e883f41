//! The workload one client runs: obtain a key (a lock, a semaphore permit,
//! a read or write lock, or its leadership: its [`Workload`]), act on the
//! fenced register under it, sometimes stall on purpose, release; repeat
//! until told to stop. Every step is recorded in the client's history.
//!
//! The same code runs in a client process (`distlock-torture client`) and,
//! for the memory backend, as a task of the orchestrator. How the client
//! uses distlock is its [`ClientProfile`]:
//!
//! * `single` — one Locker from the URL (`worker`);
//! * `shared` — one backend, several Lockers on it, closed and built again
//!   mid-run (`shared`);
//! * `cli` — `distlock run` (`distlock elect`) around every critical
//!   section (`cli`).
//!
//! How a leader stalls, given that a `Leadership` refreshes itself, is in
//! `leader`.

mod acts;
mod cli;
mod leader;
mod shared;
mod stalls;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::sleep;

pub use cli::{SectionConfig, run_section};

use crate::clock;
use crate::history::{CloseWhy, Event, JsonLines};
use crate::store::{BackendKind, ClientStore};
use crate::variant::{ClientProfile, Variant, Workload};

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
    /// What it takes.
    #[serde(default)]
    pub workload: Workload,
    /// The semaphore workload's permits per key.
    #[serde(default = "one")]
    pub limit: u32,
    /// Its behaviour.
    pub variant: Variant,
    /// How it uses distlock.
    pub profile: ClientProfile,
    /// Its history file.
    pub history: PathBuf,
    /// The `distlock` binary (the CLI profile).
    pub cli: Option<PathBuf>,
    /// The binary whose `section` subcommand a CLI round runs.
    pub section_exe: Option<PathBuf>,
}

fn one() -> u32 {
    1
}

impl ClientConfig {
    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    /// What the next round takes and does.
    fn round(&self, rng: &mut fastrand::Rng) -> crate::variant::Round {
        self.workload.round(self.variant, self.limit, rng)
    }
}

/// A task-level pause order (the memory backend's stand-in for SIGSTOP):
/// every task of the client obeys each new `seq` once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PauseOrder {
    /// Grows by one per order.
    pub seq: u64,
    /// How long to stall.
    pub duration: Duration,
}

/// How the orchestrator steers an in-process client. Each task of the
/// client has its own clone.
#[derive(Clone, Debug)]
pub struct Control {
    /// Becomes `true` when the client should stop after its current round.
    pub stop: watch::Receiver<bool>,
    /// Task-level pauses (memory only).
    pub pause: Option<watch::Receiver<PauseOrder>>,
    /// The last pause order this task obeyed.
    pub seen: u64,
}

impl Control {
    /// A control that only stops.
    pub fn new(stop: watch::Receiver<bool>, pause: Option<watch::Receiver<PauseOrder>>) -> Self {
        Control {
            stop,
            pause,
            seen: 0,
        }
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn pause_requested(&mut self) -> Option<Duration> {
        let order = *self.pause.as_ref()?.borrow();
        (order.seq > self.seen).then(|| {
            self.seen = order.seq;
            order.duration
        })
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

/// Operation ids of one incarnation, shared by its tasks: ids stay unique
/// in the history they all write.
#[derive(Clone, Debug, Default)]
struct Ops(Arc<AtomicU64>);

impl Ops {
    fn next(&self) -> u64 {
        self.reserve(1)
    }

    /// `n` consecutive ids; returns the first.
    fn reserve(&self, n: u64) -> u64 {
        self.0.fetch_add(n, Ordering::Relaxed) + 1
    }
}

/// Runs the workload until `control.stop` turns true, recording to `hist`
/// (created from `cfg.history`). Errors are harness failures (the store
/// could not even be opened).
pub async fn run(
    cfg: ClientConfig,
    store: ClientStore,
    control: Control,
    hist: JsonLines,
) -> Result<(), String> {
    hist.append(&Event::Start {
        client: cfg.client,
        incarnation: cfg.incarnation,
        pid: std::process::id(),
        variant: cfg.variant,
        profile: cfg.profile,
        seed: cfg.seed,
        t: clock::now_ns(),
    });
    let ops = Ops::default();
    let cfg = Arc::new(cfg);
    match cfg.profile {
        ClientProfile::Single => {
            let backend = retry_open(|| store.open_backend()).await?;
            let owns = store.owns_backends();
            let slot =
                worker::LockerSlot::on(backend, &cfg.namespace, owns, cfg.workload, ops.next());
            let mut worker = worker::Worker::new(cfg.clone(), store, hist.clone(), ops, cfg.seed);
            let mut control = control;
            while !control.stopped() {
                worker.round(&slot, &mut control).await;
            }
            worker.close(&slot, CloseWhy::Stop, None).await;
        }
        ClientProfile::Shared => {
            shared::run(cfg.clone(), store, control, hist.clone(), ops).await?
        }
        ClientProfile::Cli => cli::run(&cfg, control, &hist, &ops).await?,
    }
    hist.append(&Event::Stop { t: clock::now_ns() });
    Ok(())
}

/// A client respawned right after a server fault may find the store still
/// coming back: keeps trying for a while before calling it a crash.
async fn retry_open<T, F, Fut>(mut open: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = distlock::Result<T>>,
{
    let opening = tokio::time::Instant::now();
    loop {
        match open().await {
            Ok(opened) => return Ok(opened),
            Err(e) if opening.elapsed() > Duration::from_secs(15) => {
                return Err(format!("open the store: {e}"));
            }
            Err(_) => sleep(Duration::from_millis(200)).await,
        }
    }
}
