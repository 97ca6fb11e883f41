//! `distlock-bench`: distlock next to its stores' raw clients, measured in
//! the same run against servers it starts itself.
//!
//! ```text
//! cargo run --release -p distlock-bench -- [--json] [--iterations N] [--handoffs N] [SCENARIO...]
//! ```
//!
//! Every scenario is one async function returning a [`report::Report`];
//! adding one means one entry in [`SCENARIOS`].

mod redis_scenarios;
mod report;
mod stats;

use futures::future::BoxFuture;

use distlock_testkit::redis::RedisServer;

/// What every scenario may use.
pub struct Env {
    /// A redis-server started for this run (no persistence).
    pub redis_url: String,
    /// Cycles for latency scenarios.
    pub iterations: usize,
    /// Critical sections for contended scenarios.
    pub handoffs: usize,
}

type Run = for<'a> fn(&'a Env) -> BoxFuture<'a, report::Report>;

/// Every scenario: name, what it measures, and how to run it.
const SCENARIOS: &[(&str, &str, Run)] = &[
    (
        "redis-uncontended",
        "obtain+release vs raw SET NX PX + token-checked delete",
        |env| Box::pin(redis_scenarios::uncontended(env)),
    ),
    (
        "redis-handoff-processes",
        "8 waiters with their own Lockers on one hot key, 1 ms sections",
        |env| Box::pin(redis_scenarios::handoff_processes(env)),
    ),
    (
        "redis-handoff-one-locker",
        "8 waiters sharing one Locker on one hot key, 1 ms sections",
        |env| Box::pin(redis_scenarios::handoff_one_locker(env)),
    ),
];

fn usage() -> ! {
    eprintln!(
        "usage: distlock-bench [--json] [--iterations N] [--handoffs N] [SCENARIO...]\nscenarios:"
    );
    for (name, about, _) in SCENARIOS {
        eprintln!("  {name:<28} {about}");
    }
    std::process::exit(2);
}

fn main() {
    let mut json = false;
    let mut iterations = 5000;
    let mut handoffs = 500;
    let mut chosen = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let number = |args: &mut dyn Iterator<Item = String>| -> usize {
            args.next()
                .and_then(|n| n.parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or_else(|| usage())
        };
        match arg.as_str() {
            "--json" => json = true,
            "--iterations" => iterations = number(&mut args),
            "--handoffs" => handoffs = number(&mut args),
            "-h" | "--help" => usage(),
            name => match SCENARIOS.iter().find(|(n, _, _)| *n == name) {
                Some(s) => chosen.push(s),
                None => usage(),
            },
        }
    }
    if chosen.is_empty() {
        chosen = SCENARIOS.iter().collect();
    }

    let server = RedisServer::start();
    let env = Env {
        redis_url: server.url(),
        iterations,
        handoffs,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut reports = Vec::new();
    for (name, _, run) in chosen {
        eprintln!("running {name} ...");
        let report = runtime.block_on(run(&env));
        if !json {
            println!("{}", report.table());
        }
        reports.push(report);
    }
    if json {
        let all: Vec<String> = reports.iter().map(report::Report::json).collect();
        println!("[{}]", all.join(",\n"));
    }
    drop(server);
}
