//! The offline checker: reads a run directory and reports every violation.
//!
//! A grant holds its key alone (a lock, a write lock) or shares it (one of
//! a semaphore's N permits, a read lock); so does each act on the register
//! (a write alone, a permit's write, a read). A grant's critical section
//! (CS) is `[obtain ok, end]` with
//! `end = min(first release invoked, final validity deadline, lost() seen,
//! its Locker's close begun)`, and, for the overlap check only, also cut at
//! the moment its process (or task) was killed, and where a data loss of
//! the store began. A CLI section (run by `distlock run`, which knows the
//! deadline; the section does not) is `[section start, section end]`, or
//! until its last recorded act if it was stopped mid-way. Checks:
//!
//! * `stale_write_accepted` — the register accepted an act its fencing rule
//!   refuses ([`crate::register::Fence`], replayed over its log): for locks,
//!   a token lower than one it had accepted before for the key (so accepted
//!   tokens only grow, and change only by increasing when the holder
//!   changes); for permits, one below N newer permits' or below a writer's;
//!   a writer's below any act's;
//! * `unknown_token` — the register accepted a token no recorded grant of
//!   the key carried;
//! * `duplicate_token` / `token_order` — two grants of a key with one token,
//!   or a grant whose token is not above that of a grant completed before it
//!   was even requested (a token regression after the store lost its data
//!   is one);
//! * `overlapping_cs` — a CS that needs its key alone (it holds a lock or a
//!   write lock, or acted as a writer: whatever it holds) overlaps another
//!   CS of the key;
//! * `permits_over_limit` — more CSs of a key open at once than the least
//!   limit among them: a semaphore's permits, or fewer if an act of one
//!   needed fewer (the resource's capacity);
//! * `limit_mismatch` — an obtain refused with `LimitMismatch` although
//!   every obtain of the key asked for the same limit;
//! * `write_outside_cs` — a write decided outside its grant's CS (the
//!   holder acted on a lock it could not rely on);
//! * `release_by_non_owner` — a release that returned `Ok` although a newer
//!   grant of the key had been handed out before the release was sent (one
//!   that excludes it: for permits, one of the two holds the key alone),
//!   unless a data loss had erased the lock by then (excused, and counted);
//! * `lost_late` — `lost()` seen later than the validity deadline plus the
//!   tolerance (grants whose process was SIGSTOPped across the deadline are
//!   excused, and counted; stores without TTL expiry have no deadline, so
//!   only their other checks apply);
//! * `expired_grant` — an obtain returned a lock whose validity deadline
//!   had already passed (more than the tolerance before the client saw it);
//! * `closed_by_other` — a lock ended, or an obtain failed, with `Closed`
//!   before its own Locker's close began;
//! * `leftover_key` — a key still held after the clients stopped and the
//!   TTLs passed;
//! * `client_crash` — a client that failed on its own or would not stop,
//!   or a `distlock run` that exited in a way no correct run does.
//!
//! For leadership the report also counts the handovers: how each term that
//! had a successor ended (resigned, lost, its leader killed).
//!
//! `replay` turns the histories into grants, `checks` holds the checks,
//! `report` the summary.

mod checks;
mod leadership;
mod replay;
mod report;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use report::{DataLoss, Handovers, Report, WaiterStops, join_counts};

use crate::history::{Fault, RegisterEntry, RunEnd, RunMeta, read_json, read_lines};
use crate::variant::Workload;
use replay::Faults;

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
    /// A critical section that needs its key alone overlapped another.
    OverlappingCs,
    /// More critical sections of a key were open at once than their limit.
    PermitsOverLimit,
    /// An obtain was refused with `LimitMismatch` although nobody asked for
    /// another limit.
    LimitMismatch,
    /// A write was decided outside its grant's critical section.
    WriteOutsideCs,
    /// A release returned Ok for a lock a newer grant had replaced.
    ReleaseByNonOwner,
    /// `lost()` fired later than the validity deadline plus the tolerance.
    LostLate,
    /// An obtain returned a lock whose validity deadline had already passed
    /// (by more than the tolerance).
    ExpiredGrant,
    /// A lock ended with `Closed` although its own Locker was not being
    /// closed: another Locker's close, or the shared backend's, ended it.
    ClosedByOther,
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
            ViolationKind::PermitsOverLimit => "permits_over_limit",
            ViolationKind::LimitMismatch => "limit_mismatch",
            ViolationKind::WriteOutsideCs => "write_outside_cs",
            ViolationKind::ReleaseByNonOwner => "release_by_non_owner",
            ViolationKind::LostLate => "lost_late",
            ViolationKind::ExpiredGrant => "expired_grant",
            ViolationKind::ClosedByOther => "closed_by_other",
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

struct Checker {
    report: Report,
    per_kind: HashMap<ViolationKind, usize>,
}

impl Checker {
    fn violation(&mut self, kind: ViolationKind, detail: String) {
        *self.report.violations.entry(kind).or_default() += 1;
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
    for f in &faults {
        *c.report.faults.entry(f.kind).or_default() += 1;
    }
    let by = Faults::of(&faults);
    c.report.data_loss.losses = by.losses.len() as u64;

    let mut run = replay::replay(dir, &mut c.report)?;
    for g in &mut run.grants {
        g.death = by.deaths.get(&(g.client, g.incarnation)).copied();
    }
    let grants = &run.grants;
    checks::register(&mut c, &register, grants);
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, g) in grants.iter().enumerate() {
        by_key.entry(g.key.as_str()).or_default().push(i);
    }
    for idx in by_key.values() {
        checks::tokens(&mut c, grants, idx);
        checks::overlaps(&mut c, grants, idx, &by.losses);
        checks::releases(&mut c, grants, idx, &by.losses);
        if meta.workload == Workload::Leadership {
            leadership::handovers(&mut c, grants, idx);
        }
    }
    checks::writes(&mut c, grants);
    checks::closes(&mut c, grants, &run.closed_obtains);
    checks::waiter_stops(&mut c, &run.obtains, &by.waiter_stops);
    checks::limit_mismatches(&mut c, &run.obtains);
    if meta.ttl_expiry {
        let ttl_ns = i64::try_from(meta.ttl_ms).unwrap_or(i64::MAX) * 1_000_000;
        checks::lost(&mut c, grants, &by.stops, tolerance_ns, ttl_ns);
        checks::expired(&mut c, grants, &by.stops, tolerance_ns);
    }

    for key in &end.leftover_keys {
        c.violation(
            ViolationKind::LeftoverKey,
            format!("still held after the run: {key}"),
        );
    }
    let crashes = end.crashed_clients.iter().chain(&end.unstoppable_clients);
    for client in crashes.chain(&run.bad_cli_exits) {
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
