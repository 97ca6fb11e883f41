//! The report of a checked run (`summary.json`) and its table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{Violation, ViolationKind};
use crate::history::{CloseWhy, PauseKind, RunMeta};
use crate::nemesis::FaultKind;
use crate::variant::{ClientProfile, Workload};

/// What a run did and what the checker found; also `summary.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The run's configuration (absent only for an unreadable directory).
    pub meta: Option<RunMeta>,
    /// How long the workload ran, seconds.
    pub duration_s: f64,
    /// Client incarnations (processes or tasks) that ran.
    pub incarnations: u64,
    /// Successful obtains (CLI: sections started).
    pub acquisitions: u64,
    /// Acquisitions by client profile.
    #[serde(default)]
    pub acquisitions_by_profile: BTreeMap<ClientProfile, u64>,
    /// Acquisitions by what they hold (`exclusive`, `permit of N`, `read`).
    #[serde(default)]
    pub acquisitions_by_mode: BTreeMap<String, u64>,
    /// The most critical sections of one key open at once (as the overlap
    /// check cuts them).
    #[serde(default)]
    pub max_concurrent: u64,
    /// Obtains that gave up (`NotObtained`).
    pub obtain_not_obtained: u64,
    /// Obtains that failed with another error.
    pub obtain_errors: u64,
    /// Obtains without an outcome (client killed).
    pub obtain_unknown: u64,
    /// Writes the register accepted.
    pub writes_accepted: u64,
    /// Writes the register rejected as stale.
    pub writes_rejected: u64,
    /// Of the accepted writes, reads (of read locks).
    #[serde(default)]
    pub reads_accepted: u64,
    /// Of the rejected writes, reads.
    #[serde(default)]
    pub reads_rejected: u64,
    /// Writes that failed on the way.
    pub writes_failed: u64,
    /// Writes without an outcome.
    pub writes_unknown: u64,
    /// Releases that returned Ok.
    pub releases_ok: u64,
    /// Releases that returned NotHeld.
    pub releases_not_held: u64,
    /// Releases that failed otherwise.
    pub releases_failed: u64,
    /// Releases without an outcome.
    pub releases_unknown: u64,
    /// Locks whose `lost()` fired with `Expired`.
    pub lost_expired: u64,
    /// Locks whose `lost()` fired with `NotHeld`.
    pub lost_not_held: u64,
    /// Deliberate stalls by kind.
    pub pauses: BTreeMap<PauseKind, u64>,
    /// Lockers closed, by why.
    #[serde(default)]
    pub locker_closes: BTreeMap<CloseWhy, u64>,
    /// `distlock run` exits by code (`signal N` for a signal).
    #[serde(default)]
    pub cli_exits: BTreeMap<String, u64>,
    /// Faults by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// What the waiter stops hit.
    #[serde(default)]
    pub waiter_stops: WaiterStops,
    /// What the store's data losses did.
    #[serde(default)]
    pub data_loss: DataLoss,
    /// Leadership: how the terms that had a successor ended.
    #[serde(default)]
    pub handovers: Handovers,
    /// Violations by kind.
    pub violations: BTreeMap<ViolationKind, u64>,
    /// The first few violations of each kind.
    pub examples: Vec<Violation>,
    /// The latest `lost()` past its deadline among grants not excused, ms
    /// (negative: always early).
    pub max_lost_lateness_ms: Option<f64>,
    /// Grants whose lateness was excused (their process was stopped).
    pub lost_lateness_excused: u64,
    /// Grants whose `lost()` came late while their release was under way
    /// (their deadline may have moved by a refresh in flight), excused.
    #[serde(default)]
    pub lost_in_release_excused: u64,
    /// Obtains that returned past the deadline because their process was
    /// stopped between the engine's check and the return.
    pub expired_grants_excused: u64,
}

impl Report {
    /// True when no violation was found.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The total number of faults.
    pub fn fault_count(&self) -> u64 {
        self.faults.values().sum()
    }

    /// Whether a violation of `kind` was reported.
    pub fn has(&self, kind: ViolationKind) -> bool {
        self.violations.contains_key(&kind)
    }

    /// How many faults of `kind` there were.
    pub fn faults_of(&self, kind: FaultKind) -> u64 {
        self.faults.get(&kind).copied().unwrap_or_default()
    }

    /// The summary as a Markdown table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        if let Some(m) = &self.meta {
            row("backend", m.backend.clone());
            row("workload", m.workload.to_string());
            if let Some(limit) = m.limit {
                row("permits per key", limit.to_string());
            }
            row("variant", m.variant.to_string());
            row("seed", m.seed.to_string());
            row(
                "clients × keys, TTL",
                format!("{} × {}, {} ms", m.clients, m.keys.len(), m.ttl_ms),
            );
            row(
                "fencing register",
                if m.fenced { "on" } else { "off" }.into(),
            );
        }
        row("workload duration", format!("{:.1} s", self.duration_s));
        row("client incarnations", self.incarnations.to_string());
        row("acquisitions", self.acquisitions.to_string());
        row(
            "acquisitions by profile",
            join_counts(&self.acquisitions_by_profile, |p| p.name()),
        );
        row(
            "acquisitions by mode",
            join_counts(&self.acquisitions_by_mode, String::as_str),
        );
        row(
            "most sections of a key at once",
            self.max_concurrent.to_string(),
        );
        row(
            "obtains not obtained / failed / unknown",
            format!(
                "{} / {} / {}",
                self.obtain_not_obtained, self.obtain_errors, self.obtain_unknown
            ),
        );
        row(
            "writes accepted / rejected (stale) / failed / unknown",
            format!(
                "{} / {} / {} / {}",
                self.writes_accepted, self.writes_rejected, self.writes_failed, self.writes_unknown
            ),
        );
        if self.reads_accepted + self.reads_rejected > 0 {
            row(
                "of which reads accepted / rejected",
                format!("{} / {}", self.reads_accepted, self.reads_rejected),
            );
        }
        row(
            "releases ok / not held / failed / unknown",
            format!(
                "{} / {} / {} / {}",
                self.releases_ok,
                self.releases_not_held,
                self.releases_failed,
                self.releases_unknown
            ),
        );
        row(
            "locks lost (expired / not held)",
            format!("{} / {}", self.lost_expired, self.lost_not_held),
        );
        row("deliberate stalls", join_counts(&self.pauses, |p| p.name()));
        row(
            "Lockers closed",
            join_counts(&self.locker_closes, |w| w.name()),
        );
        row(
            "distlock run exits",
            join_counts(&self.cli_exits, String::as_str),
        );
        row(
            "faults",
            format!(
                "{} ({})",
                self.fault_count(),
                join_counts(&self.faults, |k| k.name())
            ),
        );
        let w = &self.waiter_stops;
        row(
            "waiter stops: waiting / then obtained, not obtained, failed, unknown",
            format!(
                "{} of {} / {}, {}, {}, {}",
                w.waiting, w.stops, w.obtained, w.not_obtained, w.failed, w.unknown
            ),
        );
        let d = &self.data_loss;
        row(
            "data losses: sections cut / overlaps across them / releases Ok after them (excused)",
            format!(
                "{}: {} / {} / {}",
                d.losses, d.grants_cut, d.overlaps_excused, d.releases_excused
            ),
        );
        if self.meta.as_ref().map(|m| m.workload) == Some(Workload::Leadership) {
            let h = &self.handovers;
            row(
                "handovers after resign / loss / death / other",
                format!("{} / {} / {} / {}", h.resigned, h.lost, h.died, h.other),
            );
        }
        let tolerance = self.meta.as_ref().map_or(0, |m| m.lost_tolerance_ms);
        row(
            "max lost() lateness",
            match self.max_lost_lateness_ms {
                Some(ms) => format!(
                    "{ms:.1} ms (tolerance {tolerance} ms; {} excused: process stopped; {} during their release)",
                    self.lost_lateness_excused, self.lost_in_release_excused
                ),
                None => "no lock lost by expiry or store".into(),
            },
        );
        row(
            "late obtains excused (process stopped)",
            self.expired_grants_excused.to_string(),
        );
        row("violations", join_counts(&self.violations, |k| k.name()));
        row("result", if self.passed() { "PASS" } else { "FAIL" }.into());
        let mut out = String::from("| metric | value |\n|---|---|\n");
        for (k, v) in rows {
            let _ = writeln!(out, "| {k} | {v} |");
        }
        for v in &self.examples {
            let _ = writeln!(out, "- {}: {}", v.kind.name(), v.detail);
        }
        out
    }
}

/// `name count, ...`, or `none`.
pub fn join_counts<K>(map: &BTreeMap<K, u64>, name: impl Fn(&K) -> &str) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{} {v}", name(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the waiter stops hit: obtains pending when their client was
/// stopped and still pending when it resumed, and how they ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WaiterStops {
    /// Waiter stops.
    pub stops: u64,
    /// Those that stopped a client waiting across the whole stop.
    pub waiting: u64,
    /// Obtains waiting across a stop that then got the lock.
    pub obtained: u64,
    /// ... that then gave up (`NotObtained`).
    pub not_obtained: u64,
    /// ... that then failed otherwise.
    pub failed: u64,
    /// ... without an answer (client killed or stopped at the end).
    pub unknown: u64,
}

/// What the store's data losses did. Sections they hit are cut at the
/// loss for the overlap check (a store that forgot its locks cannot
/// exclude; fencing must hold, and is checked as always).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataLoss {
    /// Faults that lost the store's data.
    pub losses: u64,
    /// Sections cut by one.
    pub grants_cut: u64,
    /// Overlaps with such a section that the cut excused.
    pub overlaps_excused: u64,
    /// Releases that returned Ok for a lock a loss had erased and a newer
    /// grant replaced, excused.
    #[serde(default)]
    pub releases_excused: u64,
}

/// Leadership: how the terms of a key that had a successor ended, so how
/// leadership was handed over.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Handovers {
    /// The leader resigned (`distlock elect` exited 0).
    pub resigned: u64,
    /// The leadership was lost: `lost()` fired (the deadline passed without
    /// a refresh, or the store proved it gone), or the resign said it was
    /// gone (`distlock elect` exited 76).
    pub lost: u64,
    /// The leader was killed in office.
    pub died: u64,
    /// Otherwise: its Locker closed, a resign that failed or was unanswered.
    pub other: u64,
}
