//! A campaign: for each backend, one correct run with faults, then every
//! negative control that applies (without faults), each checked; plus a
//! combined table. The CI smoke test and `scripts/torture` both run one.

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
use crate::variant::{ClientProfile, Variant};

/// A campaign's parameters.
#[derive(Clone, Debug)]
pub struct CampaignConfig {
    /// The backends, in order.
    pub backends: Vec<BackendKind>,
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
    /// The campaign directory; each run gets `<backend>-<variant>/` in it.
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
    /// waiting), an acquisition by every client profile of the run, and a
    /// Locker closed between rounds and one during a round.
    pub coverage: bool,
}

/// What a run of `variant` on `backend` with `clients` clients falls short
/// of in `min` (empty: nothing).
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
        backend.faults()
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
    if profiles.contains(&ClientProfile::Shared) {
        for (why, when) in [(CloseWhy::Cycle, "between"), (CloseWhy::Race, "during")] {
            if report.locker_closes.get(&why).is_none_or(|n| *n == 0) {
                short.push(format!("no Locker closed {when} rounds"));
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
        let caught: Vec<_> = variant
            .expected_violations()
            .iter()
            .filter(|k| report.has(**k))
            .map(|k| k.name())
            .collect();
        return if caught.is_empty() {
            (
                false,
                format!("MISSED: expected {:?}", variant.expected_violations()),
            )
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
        let variants: Vec<Variant> = if cfg.controls {
            Variant::ALL.to_vec()
        } else {
            vec![Variant::Correct]
        };
        for variant in variants {
            let dir = format!("{backend}-{variant}");
            if let Some(why) = variant.not_applicable(backend) {
                println!("== {dir}: not applicable ({why})\n");
                runs.push(CampaignRun {
                    backend,
                    variant,
                    ok: true,
                    verdict: format!("n/a: {why}"),
                    dir,
                    report: None,
                });
                continue;
            }
            let correct = variant == Variant::Correct;
            let run = RunConfig {
                backend,
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
                faults: correct,
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
            runs.push(CampaignRun {
                backend,
                variant,
                ok,
                verdict,
                dir,
                report: Some(report),
            });
        }
    }
    let table = table(&runs);
    println!("{table}");
    std::fs::write(cfg.out.join("campaign.md"), &table)?;
    crate::history::write_json(&cfg.out.join("campaign.json"), &runs)?;
    Ok(runs)
}

/// The combined table of a campaign, in Markdown.
pub fn table(runs: &[CampaignRun]) -> String {
    let mut out = String::from(
        "| backend | variant | duration | acquisitions | faults | writes accepted / rejected | violations | max lost() lateness | verdict |\n\
         |---|---|---|---|---|---|---|---|---|\n",
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
                    "| {} | {} | {:.0} s | {} | {} | {} / {} | {} | {} | {} |",
                    run.backend,
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
                    "| {} | {} | - | - | - | - | - | - | {} |",
                    run.backend, run.variant, run.verdict
                );
            }
        }
    }
    out
}
