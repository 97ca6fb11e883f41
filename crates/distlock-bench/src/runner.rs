//! Subjects (distlock and its baselines) run in interleaved blocks, so a
//! change in the machine's load hits every subject alike, and ratios come
//! from the same run.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::report::{Report, Target};
use crate::stats::{Summary, median, ratio};
use crate::stores::Store;
use crate::{Env, alloc};

/// One obtain + release cycle of a subject on the key with the given index
/// (each subject has its own key names).
pub type Cycle = Arc<dyn Fn(usize) -> BoxFuture<'static, ()> + Send + Sync>;

/// How many key names a subject needs: the uncontended cycle rotates over
/// the first `ROTATE`, task `t` of the concurrent run uses `ROTATE + t`.
pub const ROTATE: usize = 64;

/// Key names `prefix-0 ...`, leaked so cycles can borrow them for `'static`.
pub fn keys(prefix: &str, tasks: usize) -> &'static [String] {
    keys_where(prefix, tasks, |_| true)
}

/// Like [`keys`], each name the first of `prefix-i`, `prefix-i.1`,
/// `prefix-i.2` ... that `wanted` accepts (a Redis Cluster bench keeps its
/// keys on one master so).
pub fn keys_where(prefix: &str, tasks: usize, wanted: impl Fn(&str) -> bool) -> &'static [String] {
    let name = |i: usize| {
        std::iter::once(format!("{prefix}-{i}"))
            .chain((1..).map(|n| format!("{prefix}-{i}.{n}")))
            .find(|name| wanted(name))
            .expect("an endless search")
    };
    Box::leak(
        (0..ROTATE + tasks)
            .map(name)
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

/// A measured subject.
pub struct Subject {
    pub name: String,
    /// What a ratio with this subject on top calls it (`distlock / ...`).
    pub short: Option<String>,
    pub cycle: Cycle,
    /// A target on distlock's cost relative to this subject (median of the
    /// per-block ratios of mean cycle times must stay at or below it).
    pub target: Option<(String, f64)>,
}

impl Subject {
    pub fn new(name: impl Into<String>, cycle: Cycle) -> Self {
        Subject {
            name: name.into(),
            short: None,
            cycle,
            target: None,
        }
    }

    pub fn short(mut self, short: impl Into<String>) -> Self {
        self.short = Some(short.into());
        self
    }

    pub fn target(mut self, what: impl Into<String>, limit: f64) -> Self {
        self.target = Some((what.into(), limit));
        self
    }
}

/// What one subject measured over all blocks.
#[derive(Default)]
struct Measured {
    samples: Vec<Duration>,
    wall: Duration,
    /// Mean cycle time of each block (wall / cycles for concurrent runs).
    block_cost: Vec<f64>,
    allocs: usize,
    cycles: usize,
    /// Store-side costs over the measured blocks, when the store reports them.
    store: Vec<(String, f64)>,
}

/// What a store's counters say one block cost: requests (`<cmd> calls`,
/// leaving out the bench's own INFO / Status reads) and every counter
/// named `#<what>`.
fn store_cost(counters: &[(String, f64)]) -> Vec<(String, f64)> {
    let mut requests = 0.0;
    let mut out = Vec::new();
    for (name, v) in counters {
        if name.starts_with("info ") || name.starts_with("Status ") {
            continue;
        }
        if let Some(what) = name.strip_prefix('#') {
            out.push((what.to_owned(), *v));
        } else if name.ends_with(" calls") {
            requests += v;
        }
    }
    if requests > 0.0 {
        out.push(("requests".to_owned(), requests));
    }
    out
}

fn add_delta(total: &mut Vec<(String, f64)>, before: &[(String, f64)], after: &[(String, f64)]) {
    for (name, v) in after {
        let was = before
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, v)| *v);
        match total.iter_mut().find(|(n, _)| n == name) {
            Some((_, t)) => *t += v - was,
            None => total.push((name.clone(), v - was)),
        }
    }
}

/// Shape of a run.
pub struct Plan {
    /// Concurrent tasks (1: the uncontended cycle).
    pub tasks: usize,
    /// Measured blocks per subject.
    pub blocks: usize,
    /// Cycles per task per block.
    pub per_block: usize,
    /// Cycles per task in the unmeasured warm-up block.
    pub warmup: usize,
}

impl Plan {
    /// The uncontended cycle: one task, `env.iterations` cycles per subject.
    pub fn uncontended(env: &Env, store: &dyn Store) -> Self {
        let blocks = 10;
        let per_block = (env.iterations / store.slowness() / blocks).max(1);
        Plan {
            tasks: 1,
            blocks,
            per_block,
            warmup: (per_block / 2).max(5),
        }
    }

    /// `env.tasks` concurrent tasks, `env.per_task` cycles each per subject.
    pub fn concurrent(env: &Env, store: &dyn Store) -> Self {
        let blocks = 6;
        let per_block = (env.per_task / store.slowness() / blocks).max(1);
        Plan {
            tasks: env.tasks,
            blocks,
            per_block,
            warmup: (per_block / 2).max(2),
        }
    }

    /// Cycles per subject.
    pub fn cycles(&self) -> usize {
        self.tasks * self.blocks * self.per_block
    }
}

async fn block(cycle: &Cycle, plan: &Plan, n: usize, offset: usize) -> (Vec<Duration>, Duration) {
    let start = Instant::now();
    let samples = if plan.tasks == 1 {
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let t = Instant::now();
            cycle((offset + i) % ROTATE).await;
            samples.push(t.elapsed());
        }
        samples
    } else {
        let tasks: Vec<_> = (0..plan.tasks)
            .map(|task| {
                let cycle = cycle.clone();
                tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(n);
                    for _ in 0..n {
                        let t = Instant::now();
                        cycle(ROTATE + task).await;
                        samples.push(t.elapsed());
                    }
                    samples
                })
            })
            .collect();
        let mut samples = Vec::with_capacity(n * plan.tasks);
        for task in tasks {
            samples.extend(task.await.expect("a cycle panicked"));
        }
        samples
    };
    (samples, start.elapsed())
}

/// Runs every subject in interleaved blocks and reports them, with the
/// ratio of subject `a` to subject `b` for each `(a, b)` of `pairs`.
pub async fn compare_pairs(
    mut report: Report,
    subjects: &[Subject],
    pairs: &[(usize, usize)],
    plan: &Plan,
    store: &dyn Store,
) -> Report {
    let mut measured: Vec<Measured> = subjects.iter().map(|_| Measured::default()).collect();
    for b in 0..=plan.blocks {
        // Block 0 warms connections, scripts, caches and the allocator.
        let n = if b == 0 { plan.warmup } else { plan.per_block };
        // Alternate the order so no subject always runs right after another.
        let order: Vec<usize> = if b % 2 == 0 {
            (0..subjects.len()).collect()
        } else {
            (0..subjects.len()).rev().collect()
        };
        for s in order {
            let counters = if b == 0 {
                Vec::new()
            } else {
                store.counters().await
            };
            let before = alloc::snapshot();
            let (samples, wall) = block(&subjects[s].cycle, plan, n, b * n).await;
            if b == 0 {
                continue;
            }
            let allocs = alloc::snapshot().allocs - before.allocs;
            let after = store.counters().await;
            let m = &mut measured[s];
            add_delta(&mut m.store, &store_cost(&counters), &store_cost(&after));
            m.allocs += allocs;
            m.cycles += samples.len();
            m.wall += wall;
            m.block_cost.push(if plan.tasks == 1 {
                samples.iter().sum::<Duration>().as_secs_f64() / samples.len() as f64
            } else {
                wall.as_secs_f64() / samples.len() as f64
            });
            m.samples.extend(samples);
        }
    }
    let summaries: Vec<Summary> = measured
        .iter()
        .map(|m| Summary::of(m.samples.clone(), Some(m.wall)))
        .collect();
    for (s, summary) in subjects.iter().zip(&summaries) {
        report.row(s.name.clone(), summary.clone());
    }
    let cost = if plan.tasks == 1 {
        "mean cycle"
    } else {
        "wall per cycle"
    };
    for &(a, b) in pairs {
        let (ours, theirs) = (&summaries[a], &summaries[b]);
        let blocks: Vec<f64> = measured[a]
            .block_cost
            .iter()
            .zip(&measured[b].block_cost)
            .map(|(x, y)| x / y)
            .collect();
        let by_blocks = median(blocks);
        let top = subjects[a].short.as_deref().unwrap_or(&subjects[a].name);
        let name = &subjects[b].name;
        report.figure(
            format!("{top} / {name}: {cost}, median of blocks"),
            by_blocks,
        );
        report.figure(format!("{top} / {name}: p50"), ratio(ours.p50, theirs.p50));
        report.figure(format!("{top} / {name}: p99"), ratio(ours.p99, theirs.p99));
        if let Some((what, limit)) = &subjects[b].target {
            report
                .targets
                .push(Target::new(what.clone(), by_blocks, *limit, "x"));
        }
    }
    for (s, m) in subjects.iter().zip(&measured) {
        report.figure(
            format!("allocations per cycle, {}", s.name),
            m.allocs as f64 / m.cycles as f64,
        );
    }
    for (s, m) in subjects.iter().zip(&measured) {
        for (what, total) in &m.store {
            report.figure(
                format!("store {what} per cycle, {}", s.name),
                total / m.cycles as f64,
            );
        }
    }
    report
}
