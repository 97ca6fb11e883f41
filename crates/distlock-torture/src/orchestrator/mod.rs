//! The orchestrator: starts the store, the fenced register and the
//! clients, runs the nemesis for the planned duration, stops everything,
//! looks for leftover keys once the TTLs passed, and checks the history.

mod faults;
mod pool;
mod waiter_stop;
mod waiters;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::{Instant, sleep};

use crate::checker::{self, Report};
use crate::clock;
use crate::history::{JsonLines, RunEnd, RunMeta, write_json};
use crate::nemesis::{FaultKind, Nemesis};
use crate::register::Register;
use crate::store::{BackendKind, Store};
use crate::variant::{Variant, Workload};
use faults::Done;
use pool::Pool;

/// The namespace of every run's locks.
pub const NAMESPACE: &str = "torture";

/// One run's parameters.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The store.
    pub backend: BackendKind,
    /// What the clients take.
    pub workload: Workload,
    /// The semaphore workload's permits per key.
    pub limit: u32,
    /// The clients' behaviour.
    pub variant: Variant,
    /// The run seed: client RNGs and the fault schedule derive from it.
    pub seed: u64,
    /// How many clients.
    pub clients: u32,
    /// How many keys they contend for.
    pub keys: u32,
    /// Lock TTL.
    pub ttl: Duration,
    /// How long the workload runs at least.
    pub duration: Duration,
    /// After `duration`, the run goes on until the register has seen this
    /// many grants write and the nemesis injected `min_faults` faults, up to
    /// `max_duration` in all (then it stops; the campaign judges the numbers).
    pub min_acquisitions: u64,
    /// See `min_acquisitions`.
    pub min_faults: u64,
    /// See `min_acquisitions`.
    pub max_duration: Duration,
    /// Also go on (up to `max_duration`) until every fault kind of the
    /// backend happened and a waiter stop found a client waiting.
    pub min_coverage: bool,
    /// Whether the nemesis injects faults.
    pub faults: bool,
    /// The fault kinds, instead of the variant's on the backend
    /// ([`Variant::fault_kinds`]).
    pub fault_kinds: Option<Vec<FaultKind>>,
    /// On a replicated Redis, how many replicas acknowledge each grant and
    /// extend (`?replicas=N`); `None`: the backend's default.
    pub replicas: Option<usize>,
    /// Pause between two faults, drawn uniformly from this range.
    pub fault_interval: (Duration, Duration),
    /// Allowed lateness of `lost()` past the validity deadline.
    pub lost_tolerance: Duration,
    /// The run directory (created; must not exist or be empty).
    pub out: PathBuf,
    /// The binary to start client processes from (`<exe> client ...`);
    /// CLI rounds run its `section` subcommand under `distlock run`.
    pub client_exe: PathBuf,
    /// The `distlock` binary, for the CLI profile.
    pub cli_bin: Option<PathBuf>,
    /// The command line, recorded in `run.json`.
    pub command: String,
}

impl RunConfig {
    /// The fault kinds the nemesis deals.
    pub fn fault_kinds(&self) -> &[FaultKind] {
        self.fault_kinds
            .as_deref()
            .unwrap_or_else(|| self.variant.fault_kinds(self.backend))
    }
}

/// Runs one campaign and checks it. The report is also written to
/// `summary.json` in the run directory.
pub async fn run(cfg: &RunConfig) -> io::Result<Report> {
    prepare_dir(&cfg.out)?;
    let keys: Vec<String> = (0..cfg.keys).map(|k| format!("k{k}")).collect();
    let fenced = cfg.variant.fenced_register();
    write_json(
        &cfg.out.join("run.json"),
        &RunMeta {
            backend: cfg.backend.name().into(),
            workload: cfg.workload,
            limit: (cfg.workload == Workload::Semaphore).then_some(cfg.limit),
            variant: cfg.variant,
            seed: cfg.seed,
            clients: cfg.clients,
            keys: keys.clone(),
            ttl_ms: cfg.ttl.as_millis() as u64,
            ttl_expiry: cfg.backend.ttl_expiry(),
            duration_ms: cfg.duration.as_millis() as u64,
            faults: cfg.faults,
            fenced,
            lost_tolerance_ms: cfg.lost_tolerance.as_millis() as u64,
            command: cfg.command.clone(),
        },
    )?;
    let mut store = Store::start(cfg.backend, &cfg.out, cfg.replicas).await;
    let register =
        Register::start(fenced, JsonLines::create(&cfg.out.join("register.jsonl"))?).await?;
    let faults_log = JsonLines::create(&cfg.out.join("nemesis.jsonl"))?;

    let started = clock::now_ns();
    let (crashed, unstoppable) = {
        let mut pool = Pool::new(
            cfg,
            store.client_url().to_owned(),
            store.client_store(),
            register.addr(),
            keys.clone(),
        );
        pool.start_all()?;
        let begun = Instant::now();
        let mut end_at = begun + cfg.duration;
        let mut done = Done::default();
        let mut nemesis = Nemesis::new(
            cfg.seed,
            cfg.fault_kinds(),
            cfg.clients,
            cfg.ttl,
            cfg.backend.waiter_lease(cfg.ttl),
            cfg.fault_interval,
        );
        loop {
            let plan = cfg.faults.then(|| nemesis.next_fault());
            let wait = plan.map_or(cfg.duration, |p| p.wait);
            let until = (Instant::now() + wait).min(end_at);
            while Instant::now() < until {
                sleep(
                    until
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(100)),
                )
                .await;
                pool.reap_crashes().await?;
                pool.resume_due(&faults_log, false);
            }
            if Instant::now() >= end_at {
                let no_waiter_caught = cfg.faults
                    && cfg.min_coverage
                    && cfg.backend.faults().contains(&FaultKind::WaiterStop)
                    && pool.waiters_caught() == 0;
                let short = (register.grants_seen() as u64) < cfg.min_acquisitions
                    || (cfg.faults && short_of_faults(cfg, &done))
                    || no_waiter_caught;
                if !short || Instant::now() >= begun + cfg.max_duration {
                    break;
                }
                // Short of the minimums: go on a little longer.
                end_at = (Instant::now() + Duration::from_secs(2)).min(begun + cfg.max_duration);
                if no_waiter_caught {
                    nemesis.deal_next(FaultKind::WaiterStop);
                }
            }
            if let Some(plan) = plan
                && let Some(fault) =
                    faults::apply(&mut pool, &mut store, plan, &mut done, &faults_log).await?
            {
                faults_log.append(&fault);
            }
        }
        pool.resume_due(&faults_log, true);
        store.heal();
        let unstoppable = pool.stop_all(cfg.ttl * 10 + Duration::from_secs(10)).await;
        (pool.crashed, unstoppable)
    };
    let ended = clock::now_ns();
    // Locks of killed clients expire after their TTL (etcd: their lease);
    // then nothing may be left.
    sleep(cfg.backend.settle_time(cfg.ttl, cfg.faults)).await;
    let leftover_keys = store.leftover(NAMESPACE, &keys).await;
    write_json(
        &cfg.out.join("end.json"),
        &RunEnd {
            leftover_keys,
            crashed_clients: crashed,
            unstoppable_clients: unstoppable,
            started,
            ended,
        },
    )?;
    drop(register);
    drop(store);
    let report = checker::check(&cfg.out)?;
    write_json(&cfg.out.join("summary.json"), &report)?;
    Ok(report)
}

/// Whether the nemesis is still short of the run's fault minimums.
fn short_of_faults(cfg: &RunConfig, done: &Done) -> bool {
    let kinds = cfg.fault_kinds();
    done.faults < cfg.min_faults
        || (cfg.min_coverage && kinds.iter().any(|k| !done.kinds.contains(k)))
}

fn prepare_dir(dir: &Path) -> io::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} is not empty; give a new run directory", dir.display()),
        ));
    }
    std::fs::create_dir_all(dir)
}
