//! Issue 15: the availability gap of a failover, on Redis Sentinel and
//! Redis Cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use distlock::backend::Backend;
use distlock::backend::redis::RedisBackend;
use distlock::{Locker, ObtainOptions};
use tokio::time::Instant;

use super::report;
use crate::Env;
use crate::redis_ha_store::lock_name;
use crate::report::Report;
use crate::stats::{Summary, median};
use crate::stores::{Replicated, Store};

const NS: &str = "bench-failover";

/// The URLs' replica settings measured: the default, and each set.
const VARIANTS: &[(&str, &str)] = &[
    ("default (replicas unset)", ""),
    ("replicas=1", "replicas=1&"),
    ("replicas=0", "replicas=0&"),
];

/// How long after the kill a variant may go without a grant.
const GAP_LIMIT: Duration = Duration::from_secs(10);

/// Between attempts: finer than a default obtain's 100 ms, so the gap is
/// the store's.
const RETRY: Duration = Duration::from_millis(10);

/// Cycles timed on the key before the kill and after the first grant.
const CYCLES: usize = 5;

/// The most frequent error messages a variant's notes show.
const SHOWN_ERRORS: usize = 4;

/// One variant on one topology: its backend (to ask how many replicas
/// it waits for), its Locker and a key the killed master serves.
struct Subject {
    backend: Arc<RedisBackend>,
    locker: Locker,
    key: String,
}

/// What one variant saw in one failover.
#[derive(Default)]
struct Trial {
    /// Kill to the next grant, if there was one within [`GAP_LIMIT`].
    gap: Option<Duration>,
    before: Vec<Duration>,
    after: Vec<Duration>,
    /// Errors, by message, with how often each came.
    errors: BTreeMap<String, usize>,
    /// How many replicas the backend waited for once the topology settled.
    replicas: usize,
}

impl Trial {
    fn error(&mut self, what: impl std::fmt::Display) {
        let mut message = what.to_string();
        message.truncate(200);
        *self.errors.entry(message).or_default() += 1;
    }
}

/// Time from killing (SIGKILL) the master that serves a lock's key, which
/// was just obtained and released, to the next grant on that key, for
/// each of [`VARIANTS`] (all on the same kill, each with its own Locker
/// retrying every [`RETRY`]); `env.failovers` failovers, each on a fresh
/// topology. Also the cycle time on the key before the kill and right
/// after the first grant.
pub async fn failover(env: &Env, store: Arc<dyn Store>) -> Report {
    let mut report = report(
        &*store,
        "failover",
        format!(
            "kill the master serving a just-released lock's key, time to the next grant on it; {} failovers, each on a fresh topology, attempts every {} ms",
            env.failovers,
            RETRY.as_millis()
        ),
    );
    let mut trials: Vec<Vec<Trial>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for round in 0..env.failovers {
        let Some(topology) = store.replicated().await else {
            report
                .notes
                .push(format!("skipped: {} has no failover", store.name()));
            return report;
        };
        if round == 0 {
            report.notes.push(topology.timing().await);
        }
        let mut subjects = Vec::new();
        for (v, (_, query)) in VARIANTS.iter().enumerate() {
            subjects.push(subject(&*topology, query, &format!("v{v}-r{round}")).await);
        }
        let mut round_trials = Vec::new();
        for s in &subjects {
            let mut trial = Trial::default();
            trial.before = cycles(s, &mut trial).await;
            round_trials.push(trial);
        }
        let killed = Instant::now();
        topology.kill_master();
        let outcomes = futures::future::join_all(
            subjects
                .iter()
                .zip(round_trials)
                .map(|(s, trial)| after_kill(s, trial, killed)),
        )
        .await;
        topology.wait_failed_over().await;
        for ((s, mut trial), all) in subjects.iter().zip(outcomes).zip(&mut trials) {
            trial.replicas = s.backend.replicas();
            s.locker.close().await.expect("close");
            all.push(trial);
        }
    }
    for ((label, _), trials) in VARIANTS.iter().zip(&trials) {
        summarize(&mut report, label, trials);
    }
    report.notes.push(format!(
        "a gap is from the SIGKILL to the grant; a variant without a grant within {GAP_LIMIT:?} counts as none. Before each kill every variant obtains and releases its key {CYCLES} times (cycle before); after its first grant it does so {CYCLES} more times (cycle after)"
    ));
    report
}

/// A variant's backend, Locker and key on `topology`.
async fn subject(topology: &dyn Replicated, query: &str, prefix: &str) -> Subject {
    let url = topology.url(&format!("{query}namespace={NS}"));
    let backend = Arc::new(
        RedisBackend::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}")),
    );
    let locker = Locker::builder(backend.clone() as Arc<dyn Backend>)
        .namespace(NS)
        .owns_backend()
        .build()
        .expect("a locker");
    let key = (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|key| topology.serves(&lock_name(NS, key)))
        .expect("an endless search");
    Subject {
        backend,
        locker,
        key,
    }
}

/// [`CYCLES`] obtain + release cycles on the subject's key, timed; errors
/// go to `trial`.
async fn cycles(s: &Subject, trial: &mut Trial) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..CYCLES {
        let start = Instant::now();
        match s.locker.obtain(s.key.as_str()).await {
            Ok(lock) => match lock.release().await {
                Ok(()) => times.push(start.elapsed()),
                Err(e) => trial.error(format!("release: {e}")),
            },
            Err(e) => trial.error(format!("obtain: {e}")),
        }
    }
    times
}

/// One attempt every [`RETRY`] from `killed` on, until a grant or
/// [`GAP_LIMIT`]; then the cycles after.
async fn after_kill(s: &Subject, mut trial: Trial, killed: Instant) -> Trial {
    let once = ObtainOptions::new().try_once();
    while killed.elapsed() < GAP_LIMIT {
        let attempt = s.locker.obtain_with(s.key.as_str(), once.clone());
        match tokio::time::timeout(GAP_LIMIT, attempt).await {
            Ok(Ok(lock)) => {
                trial.gap = Some(killed.elapsed());
                if let Err(e) = lock.release().await {
                    trial.error(format!("release: {e}"));
                }
                break;
            }
            Ok(Err(e)) => trial.error(e),
            Err(_) => trial.error(format!("one attempt did not return within {GAP_LIMIT:?}")),
        }
        tokio::time::sleep(RETRY).await;
    }
    if trial.gap.is_some() {
        trial.after = cycles(s, &mut trial).await;
    }
    trial
}

/// One variant's rows, figures and notes.
fn summarize(report: &mut Report, label: &str, trials: &[Trial]) {
    let gaps: Vec<Duration> = trials.iter().filter_map(|t| t.gap).collect();
    if gaps.is_empty() {
        report.notes.push(format!(
            "{label}: no grant within {GAP_LIMIT:?} of the kill in any of {} failovers",
            trials.len()
        ));
    } else {
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let summary = Summary::of(gaps.clone(), None);
        report.figure(format!("{label}: gap min, ms"), ms(&summary.min));
        report.figure(
            format!("{label}: gap median, ms"),
            median(gaps.iter().map(ms).collect()),
        );
        report.figure(format!("{label}: gap max, ms"), ms(&summary.max));
        report.row(format!("{label}: kill -> next grant"), summary);
    }
    report.figure(
        format!("{label}: failovers without a grant within {GAP_LIMIT:?}"),
        (trials.len() - gaps.len()) as f64,
    );
    let before: Vec<Duration> = trials.iter().flat_map(|t| t.before.clone()).collect();
    let after: Vec<Duration> = trials.iter().flat_map(|t| t.after.clone()).collect();
    for (what, times) in [
        ("cycle before the kill", before),
        ("cycle after the first grant", after),
    ] {
        if !times.is_empty() {
            report.row(format!("{label}: {what}"), Summary::of(times, None));
        }
    }
    let replicas: Vec<String> = trials.iter().map(|t| t.replicas.to_string()).collect();
    report.notes.push(format!(
        "{label}: replicas the backend waits for once the topology settled, per failover: {}",
        replicas.join(", ")
    ));
    let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
    for t in trials {
        for (message, n) in &t.errors {
            *errors.entry(message).or_default() += n;
        }
    }
    let mut errors: Vec<(&str, usize)> = errors.into_iter().collect();
    errors.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (message, n) in errors.iter().take(SHOWN_ERRORS) {
        report
            .notes
            .push(format!("{label}: {n} x error: {message}"));
    }
    if errors.len() > SHOWN_ERRORS {
        report.notes.push(format!(
            "{label}: and {} other error messages",
            errors.len() - SHOWN_ERRORS
        ));
    }
}
