//! Replays a run directory's histories into what the checks work on:
//! grants with their sections, every obtain with its answer, and the
//! faults by client. Counts outcomes into the report on the way.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use super::report::Report;
use crate::history::{Event, Fault, LostCause, Mode, read_lines};
use crate::nemesis::FaultKind;
use crate::variant::ClientProfile;

/// One write of a grant.
#[derive(Debug)]
pub(super) struct Write {
    pub(super) op: u64,
    pub(super) checked: i64,
    /// What the act needed of the key.
    pub(super) mode: Mode,
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

/// What a CLI section recorded of itself: it knows no deadline, so its
/// section is what it did.
#[derive(Debug)]
pub(super) struct CliSection {
    /// Its `SectionEnd`, if it got that far.
    pub(super) end: Option<i64>,
    /// Its latest event (a section killed mid-way acted until then).
    pub(super) last_act: i64,
    /// `distlock run`'s (`elect`'s) exit code, if it was seen exiting.
    pub(super) exit: Option<i32>,
}

#[derive(Debug)]
pub(super) struct Grant {
    pub(super) client: u32,
    pub(super) incarnation: u32,
    pub(super) op: u64,
    pub(super) key: String,
    pub(super) token: u64,
    /// What it holds of the key.
    pub(super) mode: Mode,
    pub(super) invoke: i64,
    pub(super) ok: i64,
    pub(super) valid_until_first: i64,
    pub(super) valid_until_max: i64,
    pub(super) lost: Option<(i64, LostCause)>,
    pub(super) releases: Vec<Release>,
    pub(super) writes: Vec<Write>,
    pub(super) death: Option<i64>,
    /// The Locker it was obtained on, and when that Locker's close began.
    pub(super) locker: Option<u64>,
    pub(super) locker_closed: Option<i64>,
    pub(super) cli: Option<CliSection>,
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
        if let Some(cli) = &self.cli {
            return cli.end.unwrap_or(cli.last_act);
        }
        let mut end = self.final_valid_until();
        if let Some(r) = self.releases.first() {
            end = end.min(r.invoke);
        }
        if let Some((t, _)) = &self.lost {
            end = end.min(*t);
        }
        if let Some(t) = self.locker_closed {
            end = end.min(t);
        }
        end
    }

    /// The end of the CS for the overlap check: also cut at death.
    pub(super) fn end_alive(&self) -> i64 {
        self.death.map_or(self.end(), |d| self.end().min(d))
    }

    /// How many sections of its key may be open with this one, it
    /// included: what it holds, or less if one of its acts needed less
    /// company (a write under a read lock needs the key alone).
    pub(super) fn limit(&self) -> u32 {
        self.writes
            .iter()
            .map(|w| w.mode.limit())
            .fold(self.mode.limit(), u32::min)
    }
}

/// How an obtain was answered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Answer {
    Granted,
    NotObtained,
    Failed,
}

/// Every obtain, granted or not.
#[derive(Debug)]
pub(super) struct Obtain {
    pub(super) client: u32,
    pub(super) incarnation: u32,
    pub(super) op: u64,
    pub(super) key: String,
    pub(super) mode: Mode,
    pub(super) invoke: i64,
    pub(super) answer: Option<(i64, Answer)>,
    /// The error of an obtain refused with `LimitMismatch`.
    pub(super) mismatch: Option<String>,
}

/// An obtain that failed with `Closed`.
#[derive(Debug)]
pub(super) struct ClosedObtain {
    pub(super) client: u32,
    pub(super) incarnation: u32,
    pub(super) op: u64,
    pub(super) locker: Option<u64>,
    pub(super) t: i64,
    /// When its Locker's close began, if it did.
    pub(super) locker_closed: Option<i64>,
}

/// A run's history, replayed.
#[derive(Debug, Default)]
pub(super) struct Replay {
    pub(super) grants: Vec<Grant>,
    pub(super) obtains: Vec<Obtain>,
    pub(super) closed_obtains: Vec<ClosedObtain>,
    /// `distlock run` exits that no correct run should see.
    pub(super) bad_cli_exits: Vec<String>,
}

/// Faults by what they hit.
#[derive(Debug, Default)]
pub(super) struct Faults {
    /// (client, incarnation) → when it was killed.
    pub(super) deaths: HashMap<(u32, u32), i64>,
    /// (client, incarnation) → when it was SIGSTOPped, and until when.
    pub(super) stops: HashMap<(u32, u32), Vec<(i64, i64)>>,
    /// Waiter stops: (client, incarnation, start, end).
    pub(super) waiter_stops: Vec<(u32, u32, i64, i64)>,
    /// When the store lost its data: (start, end).
    pub(super) losses: Vec<(i64, i64)>,
}

impl Faults {
    pub(super) fn of(faults: &[Fault]) -> Faults {
        let mut by = Faults::default();
        for f in faults {
            if f.kind.loses_data() {
                by.losses.push((f.start, f.end));
            }
            let (Some(client), Some(inc)) = (f.client, f.incarnation) else {
                continue;
            };
            match f.kind {
                FaultKind::ClientKill | FaultKind::TaskAbort => {
                    by.deaths.insert((client, inc), f.start);
                }
                FaultKind::ClientStop | FaultKind::WaiterStop => {
                    by.stops
                        .entry((client, inc))
                        .or_default()
                        .push((f.start, f.end));
                    if f.kind == FaultKind::WaiterStop {
                        by.waiter_stops.push((client, inc, f.start, f.end));
                    }
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

/// Parses every client history into grants and obtains, counting outcomes.
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
    profile: ClientProfile,
    /// Obtain id → (index in `run.obtains`, Locker).
    pending: HashMap<u64, (usize, Option<u64>)>,
    /// Grant id → index in `run.grants`.
    grant_of: HashMap<u64, usize>,
    /// Write id → (grant index, accepted once answered).
    writes: HashMap<u64, (usize, Option<bool>)>,
    releases: HashMap<u64, (usize, usize)>,
    /// Locker → when its close began.
    closes: HashMap<u64, i64>,
    /// This file's first entry in `run.closed_obtains`.
    first_closed_obtain: usize,
}

impl<'a> File<'a> {
    fn new(run: &'a mut Replay, report: &'a mut Report, client: u32, incarnation: u32) -> Self {
        File {
            report,
            client,
            incarnation,
            profile: ClientProfile::Single,
            pending: HashMap::new(),
            grant_of: HashMap::new(),
            writes: HashMap::new(),
            releases: HashMap::new(),
            closes: HashMap::new(),
            first_closed_obtain: run.closed_obtains.len(),
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
        for &g in self.grant_of.values() {
            let grant = &mut self.run.grants[g];
            if let Some(locker) = grant.locker {
                grant.locker_closed = self.closes.get(&locker).copied();
            }
        }
        for refused in &mut self.run.closed_obtains[self.first_closed_obtain..] {
            refused.locker_closed = refused.locker.and_then(|l| self.closes.get(&l).copied());
        }
    }

    /// A grant starts (an obtain's Ok, or a CLI section's start).
    fn grant(&mut self, op: u64, key: String, token: u64, valid_until: i64, t: i64) -> usize {
        let (invoke, locker, mode) = match self.pending.remove(&op) {
            Some((o, locker)) => {
                let obtain = &mut self.run.obtains[o];
                obtain.answer = Some((t, Answer::Granted));
                (obtain.invoke, locker, obtain.mode)
            }
            None => (t, None, Mode::Exclusive),
        };
        self.report.acquisitions += 1;
        *self
            .report
            .acquisitions_by_profile
            .entry(self.profile)
            .or_default() += 1;
        *self
            .report
            .acquisitions_by_mode
            .entry(mode.to_string())
            .or_default() += 1;
        let index = self.run.grants.len();
        self.grant_of.insert(op, index);
        self.run.grants.push(Grant {
            client: self.client,
            incarnation: self.incarnation,
            op,
            key,
            token,
            mode,
            invoke,
            ok: t,
            valid_until_first: valid_until,
            valid_until_max: valid_until,
            lost: None,
            releases: Vec::new(),
            writes: Vec::new(),
            death: None,
            locker,
            locker_closed: None,
            cli: None,
        });
        index
    }

    /// An obtain that ended without a grant.
    fn refused(&mut self, op: u64, t: i64, not_obtained: bool) {
        if let Some((o, _)) = self.pending.remove(&op) {
            let answer = if not_obtained {
                Answer::NotObtained
            } else {
                Answer::Failed
            };
            self.run.obtains[o].answer = Some((t, answer));
        }
        if not_obtained {
            self.report.obtain_not_obtained += 1;
        } else {
            self.report.obtain_errors += 1;
        }
    }

    /// A CLI section's event at `t`: it acted until then.
    fn cli_act(&mut self, grant: u64, t: i64) {
        if let Some(&g) = self.grant_of.get(&grant)
            && let Some(cli) = &mut self.run.grants[g].cli
        {
            cli.last_act = cli.last_act.max(t);
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Start { profile, .. } => self.profile = profile,
            Event::ObtainInvoke {
                op,
                key,
                mode,
                locker,
                t,
                ..
            } => {
                self.pending.insert(op, (self.run.obtains.len(), locker));
                self.run.obtains.push(Obtain {
                    client: self.client,
                    incarnation: self.incarnation,
                    op,
                    key,
                    mode,
                    invoke: t,
                    answer: None,
                    mismatch: None,
                });
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
                op,
                not_obtained,
                closed,
                limit_mismatch,
                error,
                t,
            } => {
                if limit_mismatch && let Some(&(o, _)) = self.pending.get(&op) {
                    self.run.obtains[o].mismatch = Some(error);
                }
                if closed {
                    let locker = self.pending.get(&op).and_then(|p| p.1);
                    self.run.closed_obtains.push(ClosedObtain {
                        client: self.client,
                        incarnation: self.incarnation,
                        op,
                        locker,
                        t,
                        locker_closed: None,
                    });
                }
                self.refused(op, t, not_obtained);
            }
            Event::SectionStart {
                op, key, token, t, ..
            } => {
                let g = self.grant(op, key, token, i64::MAX, t);
                self.run.grants[g].cli = Some(CliSection {
                    end: None,
                    last_act: t,
                    exit: None,
                });
            }
            Event::SectionEnd { op, t } => {
                self.cli_act(op, t);
                if let Some(&g) = self.grant_of.get(&op)
                    && let Some(cli) = &mut self.run.grants[g].cli
                {
                    cli.end = Some(t);
                }
            }
            Event::CliExit {
                op,
                code,
                signal,
                t,
            } => self.cli_exit(op, code, signal, t),
            Event::Pause { why, .. } => *self.report.pauses.entry(why).or_default() += 1,
            Event::WriteInvoke {
                op,
                grant,
                mode,
                checked,
                valid_until,
                t,
                ..
            } => {
                if let Some(&g) = self.grant_of.get(&grant) {
                    self.writes.insert(op, (g, None));
                    let grant = &mut self.run.grants[g];
                    grant.valid_until_max = grant.valid_until_max.max(valid_until);
                    grant.writes.push(Write { op, checked, mode });
                    if let Some(cli) = &mut grant.cli {
                        cli.last_act = cli.last_act.max(t);
                    }
                }
            }
            Event::WriteOk { op, accepted, t } => {
                if let Some((g, answer)) = self.writes.get_mut(&op) {
                    *answer = Some(accepted);
                    let grant = self.run.grants[*g].op;
                    self.cli_act(grant, t);
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
            Event::LockerClose { locker, why, t, .. } => {
                self.closes.entry(locker).or_insert(t);
                *self.report.locker_closes.entry(why).or_default() += 1;
            }
            Event::LockerClosed { .. } | Event::ReleaseUnknown { .. } | Event::Stop { .. } => {}
        }
    }

    fn set_release(&mut self, op: u64, outcome: Outcome) {
        if let Some(&(g, r)) = self.releases.get(&op) {
            self.run.grants[g].releases[r].outcome = outcome;
        }
    }

    fn cli_exit(&mut self, op: u64, code: Option<i32>, signal: Option<i32>, t: i64) {
        let shown = match (code, signal) {
            (Some(code), _) => code.to_string(),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => "unknown".into(),
        };
        *self.report.cli_exits.entry(shown.clone()).or_default() += 1;
        let granted = self.grant_of.contains_key(&op);
        if let Some(&g) = self.grant_of.get(&op)
            && let Some(cli) = &mut self.run.grants[g].cli
        {
            cli.exit = code;
        }
        if !granted && self.pending.contains_key(&op) {
            // 75: not obtained within --wait; anything else: the store.
            self.refused(op, t, code == Some(75));
        }
        // 0 ran the section; 75 not obtained; 69 the store unavailable; 76
        // the lock lost (e.g. `distlock run` frozen past its deadline).
        let expected = match code {
            Some(0) => granted,
            Some(69 | 75 | 76) => true,
            _ => false,
        };
        if !expected {
            self.run.bad_cli_exits.push(format!(
                "client {}/{}: distlock run for obtain {op} exited {shown}{}",
                self.client,
                self.incarnation,
                if granted {
                    ""
                } else {
                    " without running its section"
                }
            ));
        }
    }
}
