//! `distlock-bench`: distlock next to its stores' raw clients and peer
//! crates, measured in the same run against servers it starts itself.
//!
//! ```text
//! cargo run --release -p distlock-bench -- [--json] [--smoke] [OPTIONS] [SELECTION...]
//! ```
//!
//! A selection is a backend (`memory`, `file`, `redis`, `etcd`,
//! `redis-sentinel`, `redis-cluster`), a scenario (`uncontended`,
//! `throughput`, `handoff-processes`, `handoff-one-locker`, `held`, `lost`,
//! `permits-uncontended`, `permits-throughput`,
//! `permits-handoff-processes`, `leadership`, `failover`), a scenario's
//! first words (`permits`, `handoff`) or a backend and a scenario
//! (`redis-held`, `etcd-permits`, `redis-cluster-failover`); none means
//! everything. Every scenario is one async function over a
//! [`stores::Store`] returning a [`report::Report`]; adding one means one
//! entry in [`SCENARIOS`], adding a store one entry in [`BACKENDS`].
//! `--smoke` without a selection leaves out [`NOT_IN_SMOKE`].

mod alloc;
mod etcd_store;
mod machine;
mod redis_ha_store;
mod redis_store;
mod report;
mod runner;
mod scenarios;
mod stats;
mod stores;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::redis_ha_store::{HaStore, Kind};
use crate::stores::Store;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// Sizes of a run.
pub struct Env {
    /// Cycles per subject in the uncontended scenario.
    pub iterations: usize,
    /// Concurrent tasks in the throughput scenario (and obtain concurrency).
    pub tasks: usize,
    /// Cycles per task per subject in the throughput scenario.
    pub per_task: usize,
    /// Critical sections per handoff scenario.
    pub handoffs: usize,
    /// Locks held in the held-lock scenario.
    pub held: usize,
    /// Their TTL (refresh interval TTL/3).
    pub held_ttl: Duration,
    /// Refresh intervals measured.
    pub held_rounds: u32,
    /// Locks per case in the lost-signal scenario.
    pub lost_trials: usize,
    /// Their TTL.
    pub lost_ttl: Duration,
    /// Failovers per replicated store in the failover scenario.
    pub failovers: usize,
}

impl Env {
    fn full() -> Self {
        Env {
            iterations: 5000,
            tasks: 64,
            per_task: 240,
            handoffs: 500,
            held: 10_000,
            held_ttl: Duration::from_secs(30),
            held_rounds: 2,
            lost_trials: 24,
            lost_ttl: Duration::from_secs(1),
            failovers: 5,
        }
    }

    /// A few seconds per backend: every code path, no meaningful numbers.
    /// 16 tasks: the concurrent runs' shapes with a quarter of the cycles.
    fn smoke() -> Self {
        Env {
            iterations: 100,
            tasks: 16,
            per_task: 12,
            handoffs: 40,
            held: 300,
            held_ttl: Duration::from_millis(1500),
            held_rounds: 1,
            lost_trials: 4,
            lost_ttl: Duration::from_millis(600),
            failovers: 1,
        }
    }
}

type Run = for<'a> fn(&'a Env, Arc<dyn Store>) -> BoxFuture<'a, report::Report>;

/// Every scenario: name, what it measures, and how to run it on a store.
const SCENARIOS: &[(&str, &str, Run)] = &[
    (
        "uncontended",
        "obtain+release, one task, rotating keys; vs SPI only, raw floor, peers",
        |env, s| Box::pin(scenarios::uncontended(env, s)),
    ),
    (
        "throughput",
        "64 tasks on distinct keys through one Locker; vs raw client, peers",
        |env, s| Box::pin(scenarios::throughput(env, s)),
    ),
    (
        "handoff-processes",
        "8 waiters with their own Lockers on one hot key, 1 ms sections",
        |env, s| Box::pin(scenarios::handoff(env, s, true, None)),
    ),
    (
        "handoff-one-locker",
        "8 waiters sharing one Locker on one hot key, 1 ms sections",
        |env, s| Box::pin(scenarios::handoff(env, s, false, None)),
    ),
    (
        "permits-uncontended",
        "a permit (limit 8) and a read lock, acquire+release, one task; vs obtain+release",
        |env, s| Box::pin(scenarios::permits(env, s, false)),
    ),
    (
        "permits-throughput",
        "64 tasks, 8 per semaphore (limit 8) or read key; vs 64 tasks' obtain+release",
        |env, s| Box::pin(scenarios::permits(env, s, true)),
    ),
    (
        "permits-handoff-processes",
        "8 waiters with their own Lockers on one semaphore of 2 permits, 1 ms sections",
        |env, s| Box::pin(scenarios::handoff(env, s, true, Some(2))),
    ),
    (
        "held",
        "10,000 locks held with start_refresh: memory, CPU, store ops per round",
        |env, s| Box::pin(scenarios::held(env, s)),
    ),
    (
        "lost",
        "time from deletion / cut-off to lost(), with start_refresh running",
        |env, s| Box::pin(scenarios::lost(env, s)),
    ),
    (
        "leadership",
        "takeover after resign (vs a plain lock's), observe latency, killed leader",
        |env, s| Box::pin(scenarios::leadership(env, s)),
    ),
    (
        "failover",
        "replicated Redis: time from killing the master of a lock's key to its next grant",
        |env, s| Box::pin(scenarios::failover(env, s)),
    ),
];

/// Scenarios a `--smoke` run without a selection leaves out: a failover
/// starts fresh topologies and waits out the sentinels' and the cluster's
/// timeouts (about 10 s a store; `--smoke failover` runs it once per store).
const NOT_IN_SMOKE: &[&str] = &["failover"];

/// Whether a store without replicas runs `scenario`: all but the failover.
fn unreplicated(scenario: &str) -> bool {
    scenario != "failover"
}

/// Which scenarios the replicated Redis stores run: issue 15's.
fn replicated(scenario: &str) -> bool {
    matches!(scenario, "uncontended" | "throughput" | "failover")
}

/// A store the bench can start.
struct Backend {
    name: &'static str,
    start: fn() -> Arc<dyn Store>,
    /// The server program whose version the report names.
    server: Option<&'static str>,
    /// Which scenarios it runs.
    runs: fn(&str) -> bool,
}

/// Every store, and how to start it.
const BACKENDS: &[Backend] = &[
    Backend {
        name: "memory",
        start: || Arc::new(stores::FixtureStore::memory()),
        server: None,
        runs: unreplicated,
    },
    // Only issue 13's and 14's scenarios (whose cycles include the lock's):
    // the file store was not among issue 7's, and it has no TTL expiry for
    // the lost scenario to cut off.
    Backend {
        name: "file",
        start: || Arc::new(stores::FixtureStore::file()),
        server: None,
        runs: |scenario| scenario.starts_with("permits-") || scenario == "leadership",
    },
    Backend {
        name: "redis",
        start: || Arc::new(redis_store::RedisStore::start()),
        server: Some("redis-server"),
        runs: unreplicated,
    },
    Backend {
        name: "etcd",
        start: || Arc::new(etcd_store::EtcdStore::start()),
        server: Some("etcd"),
        runs: unreplicated,
    },
    // Issue 15: the testkit's topologies, on the same redis-server binary.
    Backend {
        name: "redis-sentinel",
        start: || Arc::new(HaStore::start(Kind::Sentinel)),
        server: Some("redis-server"),
        runs: replicated,
    },
    Backend {
        name: "redis-cluster",
        start: || Arc::new(HaStore::start(Kind::Cluster)),
        server: Some("redis-server"),
        runs: replicated,
    },
];

/// Whether `selection` names `scenario`: all of it or its first words.
fn names(selection: &str, scenario: &str) -> bool {
    scenario == selection
        || scenario
            .strip_prefix(selection)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// Whether `sel` selects `scenario` on `backend`.
fn selects(sel: &str, backend: &str, scenario: &str) -> bool {
    sel == backend
        || names(sel, scenario)
        || sel
            .strip_prefix(backend)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|rest| names(rest, scenario))
}

fn usage() -> ! {
    eprintln!(
        "usage: distlock-bench [--json] [--smoke] [--iterations N] [--per-task N] [--handoffs N]\n\
         \x20                     [--held N] [--held-ttl-ms MS] [--held-rounds N] [--lost-trials N]\n\
         \x20                     [--lost-ttl-ms MS] [--failovers N] [SELECTION...]\n\
         a selection is a backend, a scenario, or BACKEND-SCENARIO; none means all.\nbackends:"
    );
    for backend in BACKENDS {
        eprintln!("  {}", backend.name);
    }
    eprintln!("scenarios:");
    for (name, about, _) in SCENARIOS {
        eprintln!("  {name:<20} {about}");
    }
    std::process::exit(2);
}

fn main() {
    let mut json = false;
    let mut smoke = false;
    let mut env = Env::full();
    let mut overrides: Vec<(String, u64)> = Vec::new();
    let mut selection: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--smoke" => {
                smoke = true;
                env = Env::smoke();
            }
            "-h" | "--help" => usage(),
            flag if flag.starts_with("--") => {
                let value = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| usage());
                overrides.push((flag.to_owned(), value));
            }
            name => selection.push(name.to_owned()),
        }
    }
    for (flag, v) in overrides {
        let n = v as usize;
        match flag.as_str() {
            "--iterations" => env.iterations = n,
            "--per-task" => env.per_task = n,
            "--handoffs" => env.handoffs = n,
            "--held" => env.held = n,
            "--held-ttl-ms" => env.held_ttl = Duration::from_millis(v),
            "--held-rounds" => env.held_rounds = v as u32,
            "--lost-trials" => env.lost_trials = n,
            "--lost-ttl-ms" => env.lost_ttl = Duration::from_millis(v),
            "--failovers" => env.failovers = n,
            _ => usage(),
        }
    }
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (b, backend) in BACKENDS.iter().enumerate() {
        for (s, (scenario, _, _)) in SCENARIOS.iter().enumerate() {
            let wanted = (selection.is_empty() && !(smoke && NOT_IN_SMOKE.contains(scenario)))
                || selection
                    .iter()
                    .any(|sel| selects(sel, backend.name, scenario));
            if wanted && (backend.runs)(scenario) {
                runs.push((b, s));
            }
        }
    }
    for sel in &selection {
        let known = BACKENDS.iter().any(|b| {
            SCENARIOS
                .iter()
                .any(|(s, _, _)| (b.runs)(s) && selects(sel, b.name, s))
        });
        if !known {
            eprintln!("unknown selection {sel:?} (or nothing it names runs on its backend)");
            usage();
        }
    }

    let started = std::time::Instant::now();
    let mut stores: Vec<Option<Arc<dyn Store>>> = BACKENDS.iter().map(|_| None).collect();
    for (b, _) in &runs {
        if stores[*b].is_none() {
            eprintln!("starting {} ...", BACKENDS[*b].name);
            stores[*b] = Some((BACKENDS[*b].start)());
        }
    }
    let servers = BACKENDS
        .iter()
        .zip(&stores)
        .filter(|(_, started)| started.is_some())
        .filter_map(|(backend, _)| backend.server)
        .fold(Vec::new(), |mut servers, server| {
            if !servers.contains(&server) {
                servers.push(server);
            }
            servers
        })
        .into_iter()
        .map(machine::version)
        .collect();
    let machine = machine::Machine::probe(servers);
    if !json {
        println!("{}", machine.text());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut reports = Vec::new();
    for (b, s) in runs {
        let store = stores[b].clone().expect("started");
        let (name, _, run) = SCENARIOS[s];
        eprintln!("running {}-{name} ...", BACKENDS[b].name);
        let load = machine::load1();
        let mut report = runtime.block_on(run(&env, store));
        report.load = (load, machine::load1());
        if !json {
            println!("{}", report.table());
        }
        reports.push(report);
    }
    let targets: Vec<&report::Target> = reports.iter().flat_map(|r| &r.targets).collect();
    if json {
        let all: Vec<String> = reports.iter().map(report::Report::json).collect();
        println!(
            "{{\"machine\":{},\"seconds\":{:.1},\"reports\":[\n{}\n]}}",
            machine.json(),
            started.elapsed().as_secs_f64(),
            all.join(",\n")
        );
    } else {
        if !targets.is_empty() {
            println!("== targets");
            for target in &targets {
                println!("  {}", target.line());
            }
        }
        println!(
            "\ntotal {:.1} s, load {:.2} at the end",
            started.elapsed().as_secs_f64(),
            machine::load1()
        );
    }
    drop(runtime);
    drop(stores);
}
