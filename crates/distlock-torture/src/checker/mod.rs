//! The offline checker: reads a run directory and reports every violation.
//!
//! A grant's critical section (CS) is `[obtain ok, end]` with
//! `end = min(first release invoked, final validity deadline, lost() seen)`,
//! and, for the overlap check only, also cut at the moment its process (or
//! task) was killed. Checks:
//!
//! * `stale_write_accepted` — the register accepted a token lower than one
//!   it had accepted before for the key (so accepted tokens only grow, and
//!   change only by increasing when the holder changes);
//! * `unknown_token` — the register accepted a token no recorded grant of
//!   the key carried;
//! * `duplicate_token` / `token_order` — two grants of a key with one token,
//!   or a grant whose token is not above that of a grant completed before it
//!   was even requested;
//! * `overlapping_cs` — two grants of one key whose CSs overlap;
//! * `write_outside_cs` — a write decided outside its grant's CS (the
//!   holder acted on a lock it could not rely on);
//! * `release_by_non_owner` — a release that returned `Ok` although a newer
//!   grant of the key had been handed out before the release was sent;
//! * `lost_late` — `lost()` seen later than the validity deadline plus the
//!   tolerance (grants whose process was SIGSTOPped across the deadline are
//!   excused, and counted; stores without TTL expiry have no deadline, so
//!   only their other checks apply);
//! * `expired_grant` — an obtain returned a lock whose validity deadline
//!   had already passed (more than the tolerance before the client saw it);
//! * `leftover_key` — a key still held after the clients stopped and the
//!   TTLs passed;
//! * `client_crash` — a client that failed on its own or would not stop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::history::{Event, Fault, RegisterEntry, RunEnd, RunMeta, read_json, read_lines};

/// A kind of violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// The register accepted a stale token.
    StaleWriteAccepted,
    /// The register accepted a token no grant of the key had.
    UnknownToken,
    /// Two grants of a key got the same token.
    DuplicateToken,
    /// A later grant got a token not above an earlier one's.
    TokenOrder,
    /// Two holders' critical sections overlapped.
    OverlappingCs,
    /// A write was decided outside its grant's critical section.
    WriteOutsideCs,
    /// A release returned Ok for a lock a newer grant had replaced.
    ReleaseByNonOwner,
    /// `lost()` fired later than the validity deadline plus the tolerance.
    LostLate,
    /// An obtain returned a lock whose validity deadline had already passed
    /// (by more than the tolerance).
    ExpiredGrant,
    /// A key was still held after the run.
    LeftoverKey,
    /// A client crashed or would not stop.
    ClientCrash,
}

impl ViolationKind {
    /// The name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::StaleWriteAccepted => "stale_write_accepted",
            ViolationKind::UnknownToken => "unknown_token",
            ViolationKind::DuplicateToken => "duplicate_token",
            ViolationKind::TokenOrder => "token_order",
            ViolationKind::OverlappingCs => "overlapping_cs",
            ViolationKind::WriteOutsideCs => "write_outside_cs",
            ViolationKind::ReleaseByNonOwner => "release_by_non_owner",
            ViolationKind::LostLate => "lost_late",
            ViolationKind::ExpiredGrant => "expired_grant",
            ViolationKind::LeftoverKey => "leftover_key",
            ViolationKind::ClientCrash => "client_crash",
        }
    }
}

/// One violation, with enough detail to find it in the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// What.
    pub kind: ViolationKind,
    /// Where and when.
    pub detail: String,
}

/// What a run did and what the checker found; also `summary.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The run's configuration (absent only for an unreadable directory).
    pub meta: Option<RunMeta>,
    /// How long the workload ran, seconds.
    pub duration_s: f64,
    /// Client incarnations (processes or tasks) that ran.
    pub incarnations: u64,
    /// Successful obtains.
    pub acquisitions: u64,
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
    /// Deliberate stalls by kind (`overdue`, `slow`, `nemesis`).
    pub pauses: BTreeMap<String, u64>,
    /// Faults by kind.
    pub faults: BTreeMap<String, u64>,
    /// Violations by kind.
    pub violations: BTreeMap<String, u64>,
    /// The first few violations of each kind.
    pub examples: Vec<Violation>,
    /// The latest `lost()` past its deadline among grants not excused, ms
    /// (negative: always early).
    pub max_lost_lateness_ms: Option<f64>,
    /// Grants whose lateness was excused (their process was stopped).
    pub lost_lateness_excused: u64,
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
        self.violations.contains_key(kind.name())
    }

    /// The summary as a Markdown table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        if let Some(m) = &self.meta {
            row("backend", m.backend.clone());
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
        row("deliberate stalls", join_counts(&self.pauses));
        row(
            "faults",
            format!("{} ({})", self.fault_count(), join_counts(&self.faults)),
        );
        let tolerance = self.meta.as_ref().map_or(0, |m| m.lost_tolerance_ms);
        row(
            "max lost() lateness",
            match self.max_lost_lateness_ms {
                Some(ms) => format!(
                    "{ms:.1} ms (tolerance {tolerance} ms; {} excused: process stopped)",
                    self.lost_lateness_excused
                ),
                None => "no lock lost by expiry or store".into(),
            },
        );
        row(
            "violations",
            if self.violations.is_empty() {
                "none".into()
            } else {
                join_counts(&self.violations)
            },
        );
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

fn join_counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug)]
struct Write {
    op: u64,
    checked: i64,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Ok,
    NotHeld,
    Failed,
    Unknown,
}

#[derive(Debug)]
struct Release {
    op: u64,
    invoke: i64,
    valid_until: i64,
    outcome: Outcome,
}

#[derive(Debug)]
struct Grant {
    client: u32,
    incarnation: u32,
    op: u64,
    key: String,
    token: u64,
    invoke: i64,
    ok: i64,
    valid_until_first: i64,
    valid_until_max: i64,
    lost: Option<(i64, String)>,
    releases: Vec<Release>,
    writes: Vec<Write>,
    death: Option<i64>,
}

impl Grant {
    fn name(&self) -> String {
        format!(
            "client {}/{} grant {} (key {}, token {})",
            self.client, self.incarnation, self.op, self.key, self.token
        )
    }

    fn final_valid_until(&self) -> i64 {
        self.releases
            .first()
            .map_or(self.valid_until_max, |r| r.valid_until)
    }

    /// The end of the CS for the holder's own actions.
    fn end(&self) -> i64 {
        let mut end = self.final_valid_until();
        if let Some(r) = self.releases.first() {
            end = end.min(r.invoke);
        }
        if let Some((t, _)) = &self.lost {
            end = end.min(*t);
        }
        end
    }

    /// The end of the CS for the overlap check: also cut at death.
    fn end_alive(&self) -> i64 {
        self.death.map_or(self.end(), |d| self.end().min(d))
    }
}

struct Checker {
    report: Report,
    per_kind: HashMap<ViolationKind, usize>,
}

impl Checker {
    fn violation(&mut self, kind: ViolationKind, detail: String) {
        *self
            .report
            .violations
            .entry(kind.name().to_owned())
            .or_default() += 1;
        let shown = self.per_kind.entry(kind).or_default();
        if *shown < 5 {
            *shown += 1;
            self.report.examples.push(Violation { kind, detail });
        }
    }
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

/// Checks the run in `dir` (see the module docs).
pub fn check(dir: &Path) -> io::Result<Report> {
    let meta: RunMeta = read_json(&dir.join("run.json"))?;
    let end: RunEnd = read_json(&dir.join("end.json")).unwrap_or_default();
    let faults: Vec<Fault> = read_optional(&dir.join("nemesis.jsonl"))?;
    let register: Vec<RegisterEntry> = read_optional(&dir.join("register.jsonl"))?;
    let tolerance_ns = i64::try_from(meta.lost_tolerance_ms).unwrap_or(i64::MAX) * 1_000_000;
    let mut c = Checker {
        report: Report {
            duration_s: ms(end.ended - end.started) / 1e3,
            meta: Some(meta.clone()),
            ..Report::default()
        },
        per_kind: HashMap::new(),
    };

    let mut deaths: HashMap<(u32, u32), i64> = HashMap::new();
    let mut stops: HashMap<(u32, u32), Vec<(i64, i64)>> = HashMap::new();
    for f in &faults {
        *c.report.faults.entry(f.kind.clone()).or_default() += 1;
        if let (Some(client), Some(inc)) = (f.client, f.incarnation) {
            match f.kind.as_str() {
                "client_kill" | "task_abort" => {
                    deaths.insert((client, inc), f.start);
                }
                "client_stop" => stops
                    .entry((client, inc))
                    .or_default()
                    .push((f.start, f.end)),
                _ => {}
            }
        }
    }

    let mut grants = read_grants(dir, &mut c.report)?;
    for g in &mut grants {
        g.death = deaths.get(&(g.client, g.incarnation)).copied();
    }

    check_register(&mut c, &register, &grants);
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, g) in grants.iter().enumerate() {
        by_key.entry(g.key.as_str()).or_default().push(i);
    }
    for idx in by_key.values() {
        check_tokens(&mut c, &grants, idx);
        check_overlaps(&mut c, &grants, idx);
        check_releases(&mut c, &grants, idx);
    }
    for g in &grants {
        let (start, end) = (g.ok, g.end());
        for w in &g.writes {
            if w.checked < start || w.checked > end {
                c.violation(
                    ViolationKind::WriteOutsideCs,
                    format!(
                        "{} decided write {} {:.1} ms after its CS ended",
                        g.name(),
                        w.op,
                        ms(w.checked - end)
                    ),
                );
            }
        }
    }
    if meta.ttl_expiry {
        check_lost(&mut c, &grants, &stops, tolerance_ns);
        for g in &grants {
            if g.ok > g.valid_until_first + tolerance_ns {
                c.violation(
                    ViolationKind::ExpiredGrant,
                    format!(
                        "{}: obtain returned {:.1} ms after the lock's validity deadline",
                        g.name(),
                        ms(g.ok - g.valid_until_first)
                    ),
                );
            }
        }
    }

    for key in &end.leftover_keys {
        c.violation(
            ViolationKind::LeftoverKey,
            format!("still held after the run: {key}"),
        );
    }
    for client in end.crashed_clients.iter().chain(&end.unstoppable_clients) {
        c.violation(ViolationKind::ClientCrash, client.clone());
    }
    c.report.examples.sort_by_key(|v| v.kind);
    Ok(c.report)
}

fn read_optional<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Vec<T>> {
    match read_lines(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        other => other,
    }
}

/// Parses every client history into grants, counting outcomes.
fn read_grants(dir: &Path, report: &mut Report) -> io::Result<Vec<Grant>> {
    let mut files: Vec<(u32, u32, std::path::PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(rest) = name
            .strip_prefix("client-")
            .and_then(|r| r.strip_suffix(".jsonl"))
        else {
            continue;
        };
        let mut parts = rest.split('-');
        let (Some(Ok(client)), Some(Ok(inc))) = (
            parts.next().map(str::parse::<u32>),
            parts.next().map(str::parse::<u32>),
        ) else {
            continue;
        };
        files.push((client, inc, path));
    }
    files.sort();
    let mut grants = Vec::new();
    for (client, incarnation, path) in files {
        report.incarnations += 1;
        let events: Vec<Event> = read_lines(&path)?;
        let mut pending_obtain: HashMap<u64, (String, i64)> = HashMap::new();
        let mut grant_of: HashMap<u64, usize> = HashMap::new();
        let mut writes: HashMap<u64, Option<bool>> = HashMap::new();
        let mut releases: HashMap<u64, (usize, usize)> = HashMap::new();
        for event in events {
            match event {
                Event::ObtainInvoke { op, key, t, .. } => {
                    pending_obtain.insert(op, (key, t));
                }
                Event::ObtainOk {
                    op,
                    key,
                    token,
                    valid_until,
                    t,
                } => {
                    let invoke = pending_obtain.remove(&op).map_or(t, |(_, t)| t);
                    report.acquisitions += 1;
                    grant_of.insert(op, grants.len());
                    grants.push(Grant {
                        client,
                        incarnation,
                        op,
                        key,
                        token,
                        invoke,
                        ok: t,
                        valid_until_first: valid_until,
                        valid_until_max: valid_until,
                        lost: None,
                        releases: Vec::new(),
                        writes: Vec::new(),
                        death: None,
                    });
                }
                Event::ObtainFail {
                    op, not_obtained, ..
                } => {
                    pending_obtain.remove(&op);
                    if not_obtained {
                        report.obtain_not_obtained += 1;
                    } else {
                        report.obtain_errors += 1;
                    }
                }
                Event::Pause { why, .. } => *report.pauses.entry(why).or_default() += 1,
                Event::WriteInvoke {
                    op,
                    grant,
                    checked,
                    valid_until,
                    ..
                } => {
                    writes.insert(op, None);
                    if let Some(&g) = grant_of.get(&grant) {
                        let g = &mut grants[g];
                        g.valid_until_max = g.valid_until_max.max(valid_until);
                        g.writes.push(Write { op, checked });
                    }
                }
                Event::WriteOk { op, accepted, .. } => {
                    writes.insert(op, Some(accepted));
                }
                Event::WriteFail { op, .. } => {
                    writes.remove(&op);
                    report.writes_failed += 1;
                }
                Event::Lost { grant, reason, t } => {
                    if let Some(&g) = grant_of.get(&grant) {
                        match reason.as_str() {
                            "Expired" => report.lost_expired += 1,
                            "NotHeld" => report.lost_not_held += 1,
                            _ => {}
                        }
                        grants[g].lost.get_or_insert((t, reason));
                    }
                }
                Event::ReleaseInvoke {
                    op,
                    grant,
                    valid_until,
                    t,
                    ..
                } => {
                    if let Some(&g) = grant_of.get(&grant) {
                        releases.insert(op, (g, grants[g].releases.len()));
                        grants[g].releases.push(Release {
                            op,
                            invoke: t,
                            valid_until,
                            outcome: Outcome::Unknown,
                        });
                    }
                }
                Event::ReleaseOk { op, .. } => set_release(&mut grants, &releases, op, Outcome::Ok),
                Event::ReleaseFail { op, not_held, .. } => {
                    let outcome = if not_held {
                        Outcome::NotHeld
                    } else {
                        Outcome::Failed
                    };
                    set_release(&mut grants, &releases, op, outcome);
                }
                Event::ReleaseUnknown { .. } | Event::Start { .. } | Event::Stop { .. } => {}
            }
        }
        report.obtain_unknown += pending_obtain.len() as u64;
        report.writes_unknown += writes.values().filter(|w| w.is_none()).count() as u64;
    }
    for g in &grants {
        for r in &g.releases {
            match r.outcome {
                Outcome::Ok => report.releases_ok += 1,
                Outcome::NotHeld => report.releases_not_held += 1,
                Outcome::Failed => report.releases_failed += 1,
                Outcome::Unknown => report.releases_unknown += 1,
            }
        }
    }
    Ok(grants)
}

fn set_release(
    grants: &mut [Grant],
    releases: &HashMap<u64, (usize, usize)>,
    op: u64,
    outcome: Outcome,
) {
    if let Some(&(g, r)) = releases.get(&op) {
        grants[g].releases[r].outcome = outcome;
    }
}

fn check_register(c: &mut Checker, register: &[RegisterEntry], grants: &[Grant]) {
    let known: HashSet<(&str, u64)> = grants.iter().map(|g| (g.key.as_str(), g.token)).collect();
    let mut highest: HashMap<&str, u64> = HashMap::new();
    for e in register {
        if !e.accepted {
            c.report.writes_rejected += 1;
            continue;
        }
        c.report.writes_accepted += 1;
        let max = highest.entry(e.key.as_str()).or_default();
        if e.token < *max {
            c.violation(
                ViolationKind::StaleWriteAccepted,
                format!(
                    "register accepted token {} on key {} after token {} (client {}/{} write {})",
                    e.token, e.key, *max, e.client, e.incarnation, e.op
                ),
            );
        }
        *max = (*max).max(e.token);
        if !known.contains(&(e.key.as_str(), e.token)) {
            c.violation(
                ViolationKind::UnknownToken,
                format!(
                    "register accepted token {} on key {} that no recorded grant had (client {}/{} write {})",
                    e.token, e.key, e.client, e.incarnation, e.op
                ),
            );
        }
    }
}

fn check_tokens(c: &mut Checker, grants: &[Grant], idx: &[usize]) {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for &i in idx {
        if let Some(&j) = seen.get(&grants[i].token) {
            c.violation(
                ViolationKind::DuplicateToken,
                format!(
                    "{} and {} share a token",
                    grants[j].name(),
                    grants[i].name()
                ),
            );
        } else {
            seen.insert(grants[i].token, i);
        }
    }
    // Real-time order: a grant that completed before another was requested
    // must have a lower token.
    let mut by_ok: Vec<usize> = idx.to_vec();
    by_ok.sort_by_key(|&i| grants[i].ok);
    let mut by_invoke: Vec<usize> = idx.to_vec();
    by_invoke.sort_by_key(|&i| grants[i].invoke);
    let mut next = 0;
    let mut max: Option<usize> = None;
    for &b in &by_invoke {
        while next < by_ok.len() && grants[by_ok[next]].ok < grants[b].invoke {
            let a = by_ok[next];
            if max.is_none_or(|m| grants[a].token > grants[m].token) {
                max = Some(a);
            }
            next += 1;
        }
        if let Some(a) = max
            && grants[a].token >= grants[b].token
            && a != b
        {
            c.violation(
                ViolationKind::TokenOrder,
                format!(
                    "{} was requested after {} completed but got a token not above it",
                    grants[b].name(),
                    grants[a].name()
                ),
            );
        }
    }
}

fn check_overlaps(c: &mut Checker, grants: &[Grant], idx: &[usize]) {
    let mut live: Vec<usize> = idx
        .iter()
        .copied()
        .filter(|&i| grants[i].end_alive() > grants[i].ok)
        .collect();
    live.sort_by_key(|&i| grants[i].ok);
    let mut open: Option<usize> = None;
    for &i in &live {
        if let Some(o) = open
            && grants[i].ok < grants[o].end_alive()
        {
            c.violation(
                ViolationKind::OverlappingCs,
                format!(
                    "{} began {:.1} ms before the CS of {} ended",
                    grants[i].name(),
                    ms(grants[o].end_alive() - grants[i].ok),
                    grants[o].name()
                ),
            );
        }
        if open.is_none_or(|o| grants[i].end_alive() > grants[o].end_alive()) {
            open = Some(i);
        }
    }
}

fn check_releases(c: &mut Checker, grants: &[Grant], idx: &[usize]) {
    let mut by_ok: Vec<usize> = idx.to_vec();
    by_ok.sort_by_key(|&i| grants[i].ok);
    for &g in idx {
        for r in grants[g]
            .releases
            .iter()
            .filter(|r| r.outcome == Outcome::Ok)
        {
            // Grants handed out after this one and before the release was sent.
            let from = by_ok.partition_point(|&i| grants[i].ok <= grants[g].ok);
            let to = by_ok.partition_point(|&i| grants[i].ok < r.invoke);
            let newer = by_ok[from.min(to)..to]
                .iter()
                .copied()
                .filter(|&i| grants[i].token > grants[g].token)
                .min_by_key(|&i| grants[i].ok);
            if let Some(newer) = newer {
                c.violation(
                    ViolationKind::ReleaseByNonOwner,
                    format!(
                        "release {} of {} returned Ok although {} was granted {:.1} ms before it was sent",
                        r.op,
                        grants[g].name(),
                        grants[newer].name(),
                        ms(r.invoke - grants[newer].ok)
                    ),
                );
            }
        }
    }
}

fn check_lost(
    c: &mut Checker,
    grants: &[Grant],
    stops: &HashMap<(u32, u32), Vec<(i64, i64)>>,
    tolerance_ns: i64,
) {
    let mut max: Option<i64> = None;
    for g in grants {
        let Some((lost_at, reason)) = &g.lost else {
            continue;
        };
        if g.releases.is_empty() || !(reason == "Expired" || reason == "NotHeld") {
            continue; // the final deadline is known only from a release
        }
        let deadline = g.final_valid_until();
        let late = lost_at - deadline;
        if late > 0 {
            let stopped = stops.get(&(g.client, g.incarnation)).is_some_and(|s| {
                s.iter()
                    .any(|&(start, end)| start <= *lost_at && end >= deadline - tolerance_ns)
            });
            if stopped {
                c.report.lost_lateness_excused += 1;
                continue;
            }
        }
        max = Some(max.map_or(late, |m: i64| m.max(late)));
        if late > tolerance_ns {
            c.violation(
                ViolationKind::LostLate,
                format!(
                    "{}: lost() ({reason}) seen {:.1} ms after its validity deadline",
                    g.name(),
                    ms(late)
                ),
            );
        }
    }
    c.report.max_lost_lateness_ms = max.map(ms);
}
