//! A campaign: for each backend and workload, one correct run with faults,
//! then every negative control of the workload that applies (without
//! faults), each checked; plus a combined table. The CI smoke test and
//! `scripts/torture` both run one.

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checker::Report;
use crate::history::CloseWhy;
use crate::nemesis::FaultKind;
use crate::orchestrator::{self, RunConfig};
use crate::store::BackendKind;
use crate::variant::{ClientProfile, Variant, Workload};

/// A campaign's parameters.
#[derive(Clone, Debug)]
pub struct CampaignConfig {
    /// The backends, in order.
    pub backends: Vec<BackendKind>,
    /// The workloads run on each backend, in order.
    pub workloads: Vec<Workload>,
    /// The semaphore workload's permits per key.
    pub limit: u32,
    /// The run seed (every run of the campaign uses it).
    pub seed: u64,
    /// Clients per run.
    pub clients: u32,
    /// Keys per run.
    pub keys: u32,
    /// Lock TTL.
    pub ttl: Duration,
    /// Duration of each correct run (with faults); it goes on, up to twice
    /// as long, while short of its `minimums`.
    pub duration: Duration,
    /// Duration of each negative control run (no faults).
    pub control_duration: Duration,
    /// Whether to run the negative controls.
    pub controls: bool,
    /// Pause between two faults.
    pub fault_interval: (Duration, Duration),
    /// Allowed lateness of `lost()`.
    pub lost_tolerance: Duration,
    /// What a correct run must reach to pass.
    pub minimums: Minimums,
    /// The campaign directory; each run gets `<backend>-<variant>/` in it
    /// (`<backend>-<workload>-<variant>/` for the permit workloads).
    pub out: PathBuf,
    /// The binary client processes are started from.
    pub client_exe: PathBuf,
    /// The `distlock` binary, for the CLI profile.
    pub cli_bin: Option<PathBuf>,
    /// The command line, recorded with every run.
    pub command: String,
}

/// The outcome of one run of a campaign.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CampaignRun {
    /// The backend.
    pub backend: BackendKind,
    /// The workload.
    #[serde(default)]
    pub workload: Workload,
    /// The variant.
    pub variant: Variant,
    /// Whether the run did what it had to: a correct run passed the checker
    /// (and met the minimums), a control was caught by its expected
    /// violation, or the control does not apply.
    pub ok: bool,
    /// `PASS`, `FAIL: ...`, `CAUGHT: ...`, `MISSED: ...` or `n/a: ...`.
    pub verdict: String,
    /// The run directory, relative to the campaign's.
    pub dir: String,
    /// The checker's report (absent for controls that do not apply).
    pub report: Option<Report>,
}

/// What a correct run must reach to pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Minimums {
    /// Acquisitions.
    pub acquisitions: u64,
    /// Faults.
    pub faults: u64,
    /// Every fault kind of the backend (a waiter stop that caught a client
    /// waiting), an acquisition by every client profile of the run; for
    /// locks, a Locker closed between rounds and one during a round; for
    /// the semaphore, a key whose permits were all held at once; for the
    /// reader-writer lock, reads and writes granted, and readers together;
    /// for leadership, handovers after a resign and after a loss.
    pub coverage: bool,
}

/// What a run of `variant` on `backend` with `clients` clients falls short
/// of in `min` (empty: nothing); its workload is the report's.
pub fn shortfalls(
    backend: BackendKind,
    variant: Variant,
    clients: u32,
    report: &Report,
    min: &Minimums,
) -> Vec<String> {
    let mut short = Vec::new();
    if report.acquisitions < min.acquisitions {
        short.push(format!(
            "{} acquisitions < {}",
            report.acquisitions, min.acquisitions
        ));
    }
    if report.fault_count() < min.faults {
        short.push(format!("{} faults < {}", report.fault_count(), min.faults));
    }
    if !min.coverage {
        return short;
    }
    let kinds = if report.meta.as_ref().is_some_and(|m| m.faults) {
        variant.fault_kinds(backend)
    } else {
        &[]
    };
    for kind in kinds {
        if report.faults_of(*kind) == 0 {
            short.push(format!("no {kind}"));
        }
    }
    if kinds.contains(&FaultKind::WaiterStop) && report.waiter_stops.waiting == 0 {
        short.push("no waiter stop caught a client waiting".into());
    }
    let profiles: std::collections::BTreeSet<ClientProfile> =
        (0..clients).map(|c| variant.profile(backend, c)).collect();
    for profile in &profiles {
        if report
            .acquisitions_by_profile
            .get(profile)
            .is_none_or(|n| *n == 0)
        {
            short.push(format!("no acquisition by a {profile} client"));
        }
    }
    // Lockers closed while their sections work: a lock smoke's coverage
    // (permits go through the same close; their short runs see too few
    // rounds of the shared profile to count on one close during a round).
    let workload = report.meta.as_ref().map(|m| m.workload);
    if profiles.contains(&ClientProfile::Shared) && workload == Some(Workload::Lock) {
        for (why, when) in [(CloseWhy::Cycle, "between"), (CloseWhy::Race, "during")] {
            if report.locker_closes.get(&why).is_none_or(|n| *n == 0) {
                short.push(format!("no Locker closed {when} rounds"));
            }
        }
    }
    short.extend(workload_shortfall(report));
    short
}

/// What a workload's run must have seen: every permit of a key held at
/// once; reads and writes, and readers together; handovers of leadership
/// by resignation and by loss (on stores with TTL expiry, a leadership
/// lost while its leader lived).
fn workload_shortfall(report: &Report) -> Vec<String> {
    let Some(meta) = &report.meta else {
        return Vec::new();
    };
    let granted = |mode: &str| {
        report
            .acquisitions_by_mode
            .get(mode)
            .is_some_and(|n| *n > 0)
    };
    let mut short = Vec::new();
    match meta.workload {
        Workload::Lock => {}
        Workload::Semaphore => {
            let limit = u64::from(meta.limit.unwrap_or(1));
            if report.max_concurrent < limit {
                short.push(format!(
                    "at most {} of {limit} permits of a key held at once",
                    report.max_concurrent
                ));
            }
        }
        Workload::Leadership => {
            let h = &report.handovers;
            if h.resigned == 0 {
                short.push("no handover after a resign".into());
            }
            if h.lost + h.died == 0 {
                short.push("no handover after a leadership lost or its leader killed".into());
            }
            if meta.ttl_expiry && h.lost == 0 {
                short.push("no leadership lost (deadline passed, or the store took it)".into());
            }
        }
        Workload::RwLock => {
            for mode in ["read", "exclusive"] {
                if !granted(mode) {
                    short.push(format!("no {mode} lock granted"));
                }
            }
            if report.max_concurrent < 2 {
                short.push("no two readers at once".into());
            }
        }
    }
    short
}

/// Judges a finished run (minimums apply to the correct run only).
pub fn verdict(
    backend: BackendKind,
    variant: Variant,
    clients: u32,
    report: &Report,
    min: &Minimums,
) -> (bool, String) {
    if variant.is_control() {
        let expected = variant.expected_violations();
        let caught: Vec<_> = expected
            .iter()
            .filter(|k| report.has(**k))
            .map(|k| k.name())
            .collect();
        return if caught.is_empty() {
            (false, format!("MISSED: expected {expected:?}"))
        } else {
            (true, format!("CAUGHT: {}", caught.join(", ")))
        };
    }
    if !report.passed() {
        return (false, "FAIL: violations".into());
    }
    let short = shortfalls(backend, variant, clients, report, min);
    if !short.is_empty() {
        return (false, format!("FAIL: {}", short.join("; ")));
    }
    (true, "PASS".into())
}

/// Runs the campaign, printing each run's table as it finishes, and writes
/// `campaign.json` and `campaign.md` in the campaign directory.
pub async fn run(cfg: &CampaignConfig) -> io::Result<Vec<CampaignRun>> {
    std::fs::create_dir_all(&cfg.out)?;
    let mut runs = Vec::new();
    for &backend in &cfg.backends {
        for &workload in &cfg.workloads {
            for variant in Variant::of(workload).filter(|v| cfg.controls || !v.is_control()) {
                runs.push(one(cfg, backend, workload, variant).await?);
            }
        }
    }
    let table = table(&runs);
    println!("{table}");
    std::fs::write(cfg.out.join("campaign.md"), &table)?;
    crate::history::write_json(&cfg.out.join("campaign.json"), &runs)?;
    Ok(runs)
}

/// Runs (or declares not applicable) `variant` of `workload` on `backend`.
async fn one(
    cfg: &CampaignConfig,
    backend: BackendKind,
    workload: Workload,
    variant: Variant,
) -> io::Result<CampaignRun> {
    let dir = match workload {
        Workload::Lock => format!("{backend}-{variant}"),
        _ => format!("{backend}-{workload}-{variant}"),
    };
    if let Some(why) = variant.not_applicable(backend, workload) {
        println!("== {dir}: not applicable ({why})\n");
        return Ok(CampaignRun {
            backend,
            workload,
            variant,
            ok: true,
            verdict: format!("n/a: {why}"),
            dir,
            report: None,
        });
    }
    let correct = variant == Variant::Correct;
    let run = RunConfig {
        backend,
        workload,
        limit: cfg.limit,
        variant,
        seed: cfg.seed,
        clients: cfg.clients,
        keys: cfg.keys,
        ttl: cfg.ttl,
        duration: if correct {
            cfg.duration
        } else {
            cfg.control_duration
        },
        min_acquisitions: if correct {
            cfg.minimums.acquisitions
        } else {
            0
        },
        min_faults: if correct { cfg.minimums.faults } else { 0 },
        min_coverage: correct && cfg.minimums.coverage,
        max_duration: if correct {
            cfg.duration * 2
        } else {
            cfg.control_duration
        },
        faults: correct || variant.faulted_control(),
        replicas: Some(variant.replicas()),
        fault_kinds: None,
        fault_interval: cfg.fault_interval,
        lost_tolerance: cfg.lost_tolerance,
        out: cfg.out.join(&dir),
        client_exe: cfg.client_exe.clone(),
        cli_bin: cfg.cli_bin.clone(),
        command: cfg.command.clone(),
    };
    println!("== {dir}: running for {:?}", run.duration);
    let report = orchestrator::run(&run).await?;
    let min = if correct {
        cfg.minimums
    } else {
        Minimums::default()
    };
    let (ok, verdict) = verdict(backend, variant, cfg.clients, &report, &min);
    println!("{}\n{dir}: {verdict}\n", report.table());
    Ok(CampaignRun {
        backend,
        workload,
        variant,
        ok,
        verdict,
        dir,
        report: Some(report),
    })
}

/// The combined table of a campaign, in Markdown.
pub fn table(runs: &[CampaignRun]) -> String {
    let mut out = String::from(
        "| backend | workload | variant | duration | acquisitions | faults | writes accepted / rejected | violations | max lost() lateness | verdict |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for run in runs {
        match &run.report {
            Some(r) => {
                let violations = crate::checker::join_counts(&r.violations, |k| k.name());
                let lateness = r
                    .max_lost_lateness_ms
                    .map_or("-".to_owned(), |ms| format!("{ms:.1} ms"));
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.0} s | {} | {} | {} / {} | {} | {} | {} |",
                    run.backend,
                    run.workload,
                    run.variant,
                    r.duration_s,
                    r.acquisitions,
                    r.fault_count(),
                    r.writes_accepted,
                    r.writes_rejected,
                    violations,
                    lateness,
                    run.verdict
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | - | - | - | - | - | - | {} |",
                    run.backend, run.workload, run.variant, run.verdict
                );
            }
        }
    }
    out
}
