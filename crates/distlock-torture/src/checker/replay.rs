//! Replays a run directory's histories into what the checks work on:
//! grants with their sections, and the faults by client. Counts outcomes
//! into the report on the way.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use super::report::Report;
use crate::history::{Event, Fault, LostCause, read_lines};
use crate::nemesis::FaultKind;

/// One write of a grant.
#[derive(Debug)]
pub(super) struct Write {
    pub(super) op: u64,
    pub(super) checked: i64,
}

/// How a release (or an obtain) ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Outcome {
    Ok,
    NotHeld,
    Failed,
    Unknown,
}

#[derive(Debug)]
pub(super) struct Release {
    pub(super) op: u64,
    pub(super) invoke: i64,
    pub(super) valid_until: i64,
    pub(super) outcome: Outcome,
}

#[derive(Debug)]
pub(super) struct Grant {
    pub(super) client: u32,
    pub(super) incarnation: u32,
    pub(super) op: u64,
    pub(super) key: String,
    pub(super) token: u64,
    pub(super) invoke: i64,
    pub(super) ok: i64,
    pub(super) valid_until_first: i64,
    pub(super) valid_until_max: i64,
    pub(super) lost: Option<(i64, LostCause)>,
    pub(super) releases: Vec<Release>,
    pub(super) writes: Vec<Write>,
    pub(super) death: Option<i64>,
}

impl Grant {
    pub(super) fn name(&self) -> String {
        format!(
            "client {}/{} grant {} (key {}, token {})",
            self.client, self.incarnation, self.op, self.key, self.token
        )
    }

    pub(super) fn final_valid_until(&self) -> i64 {
        self.releases
            .first()
            .map_or(self.valid_until_max, |r| r.valid_until)
    }

    /// The end of the CS for the holder's own actions.
    pub(super) fn end(&self) -> i64 {
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
    pub(super) fn end_alive(&self) -> i64 {
        self.death.map_or(self.end(), |d| self.end().min(d))
    }
}

/// A run's history, replayed.
#[derive(Debug, Default)]
pub(super) struct Replay {
    pub(super) grants: Vec<Grant>,
}

/// Faults by what they hit.
#[derive(Debug, Default)]
pub(super) struct Faults {
    /// (client, incarnation) → when it was killed.
    pub(super) deaths: HashMap<(u32, u32), i64>,
    /// (client, incarnation) → when it was SIGSTOPped, and until when.
    pub(super) stops: HashMap<(u32, u32), Vec<(i64, i64)>>,
}

impl Faults {
    pub(super) fn of(faults: &[Fault]) -> Faults {
        let mut by = Faults::default();
        for f in faults {
            let (Some(client), Some(inc)) = (f.client, f.incarnation) else {
                continue;
            };
            match f.kind {
                FaultKind::ClientKill | FaultKind::TaskAbort => {
                    by.deaths.insert((client, inc), f.start);
                }
                FaultKind::ClientStop => {
                    by.stops
                        .entry((client, inc))
                        .or_default()
                        .push((f.start, f.end));
                }
                _ => {}
            }
        }
        by
    }
}

/// The client history files of `dir`: (client, incarnation, path), sorted.
fn client_files(dir: &Path) -> io::Result<Vec<(u32, u32, PathBuf)>> {
    let mut files = Vec::new();
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
    Ok(files)
}

/// Parses every client history into grants, counting outcomes.
pub(super) fn replay(dir: &Path, report: &mut Report) -> io::Result<Replay> {
    let mut run = Replay::default();
    for (client, incarnation, path) in client_files(dir)? {
        report.incarnations += 1;
        let events: Vec<Event> = read_lines(&path)?;
        File::new(&mut run, report, client, incarnation).replay(events);
    }
    for g in &run.grants {
        for r in &g.releases {
            match r.outcome {
                Outcome::Ok => report.releases_ok += 1,
                Outcome::NotHeld => report.releases_not_held += 1,
                Outcome::Failed => report.releases_failed += 1,
                Outcome::Unknown => report.releases_unknown += 1,
            }
        }
    }
    Ok(run)
}

/// The replay of one client incarnation's file.
struct File<'a> {
    run: &'a mut Replay,
    report: &'a mut Report,
    client: u32,
    incarnation: u32,
    /// Obtain id → when it was invoked.
    pending: HashMap<u64, i64>,
    /// Grant id → index in `run.grants`.
    grant_of: HashMap<u64, usize>,
    /// Write id → (grant index, accepted once answered).
    writes: HashMap<u64, (usize, Option<bool>)>,
    releases: HashMap<u64, (usize, usize)>,
}

impl<'a> File<'a> {
    fn new(run: &'a mut Replay, report: &'a mut Report, client: u32, incarnation: u32) -> Self {
        File {
            report,
            client,
            incarnation,
            pending: HashMap::new(),
            grant_of: HashMap::new(),
            writes: HashMap::new(),
            releases: HashMap::new(),
            run,
        }
    }

    fn replay(mut self, events: Vec<Event>) {
        for event in events {
            self.event(event);
        }
        self.report.obtain_unknown += self.pending.len() as u64;
        let unanswered = self.writes.values().filter(|(_, w)| w.is_none()).count();
        self.report.writes_unknown += unanswered as u64;
    }

    /// A grant starts (an obtain's Ok).
    fn grant(&mut self, op: u64, key: String, token: u64, valid_until: i64, t: i64) {
        let invoke = self.pending.remove(&op).unwrap_or(t);
        self.report.acquisitions += 1;
        let index = self.run.grants.len();
        self.grant_of.insert(op, index);
        self.run.grants.push(Grant {
            client: self.client,
            incarnation: self.incarnation,
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

    /// An obtain that ended without a grant.
    fn refused(&mut self, op: u64, not_obtained: bool) {
        self.pending.remove(&op);
        if not_obtained {
            self.report.obtain_not_obtained += 1;
        } else {
            self.report.obtain_errors += 1;
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::ObtainInvoke { op, t, .. } => {
                self.pending.insert(op, t);
            }
            Event::ObtainOk {
                op,
                key,
                token,
                valid_until,
                t,
            } => {
                self.grant(op, key, token, valid_until, t);
            }
            Event::ObtainFail {
                op, not_obtained, ..
            } => self.refused(op, not_obtained),
            Event::Pause { why, .. } => *self.report.pauses.entry(why).or_default() += 1,
            Event::WriteInvoke {
                op,
                grant,
                checked,
                valid_until,
                ..
            } => {
                if let Some(&g) = self.grant_of.get(&grant) {
                    self.writes.insert(op, (g, None));
                    let grant = &mut self.run.grants[g];
                    grant.valid_until_max = grant.valid_until_max.max(valid_until);
                    grant.writes.push(Write { op, checked });
                }
            }
            Event::WriteOk { op, accepted, .. } => {
                if let Some((_, answer)) = self.writes.get_mut(&op) {
                    *answer = Some(accepted);
                }
            }
            Event::WriteFail { op, .. } => {
                self.writes.remove(&op);
                self.report.writes_failed += 1;
            }
            Event::Lost { grant, reason, t } => {
                if let Some(&g) = self.grant_of.get(&grant) {
                    match reason {
                        LostCause::Expired => self.report.lost_expired += 1,
                        LostCause::NotHeld => self.report.lost_not_held += 1,
                        _ => {}
                    }
                    self.run.grants[g].lost.get_or_insert((t, reason));
                }
            }
            Event::ReleaseInvoke {
                op,
                grant,
                valid_until,
                t,
                ..
            } => {
                if let Some(&g) = self.grant_of.get(&grant) {
                    let releases = &mut self.run.grants[g].releases;
                    self.releases.insert(op, (g, releases.len()));
                    releases.push(Release {
                        op,
                        invoke: t,
                        valid_until,
                        outcome: Outcome::Unknown,
                    });
                }
            }
            Event::ReleaseOk { op, .. } => self.set_release(op, Outcome::Ok),
            Event::ReleaseFail { op, not_held, .. } => {
                let outcome = if not_held {
                    Outcome::NotHeld
                } else {
                    Outcome::Failed
                };
                self.set_release(op, outcome);
            }
            Event::ReleaseUnknown { .. } | Event::Start { .. } | Event::Stop { .. } => {}
        }
    }

    fn set_release(&mut self, op: u64, outcome: Outcome) {
        if let Some(&(g, r)) = self.releases.get(&op) {
            self.run.grants[g].releases[r].outcome = outcome;
        }
    }
}
