//! The checks, each over the replayed grants (of one key, where it says
//! `idx`).

use std::collections::{HashMap, HashSet};

use super::replay::{Answer, ClosedObtain, Grant, Obtain, Outcome};
use super::{Checker, ViolationKind, ms};
use crate::history::{LostCause, RegisterEntry};

pub(super) fn register(c: &mut Checker, register: &[RegisterEntry], grants: &[Grant]) {
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

pub(super) fn tokens(c: &mut Checker, grants: &[Grant], idx: &[usize]) {
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

/// How long after a data loss ended a grant the store made just before it
/// may still reach its client: a generous bound for a reply on its way
/// back on a loaded machine. Later grants were made after the loss.
const REPLY_SLACK_NS: i64 = 250_000_000;

/// Overlapping sections of one key. A section a data loss hit ends, for
/// this check, where the loss began (or is empty if it was granted during
/// the loss): the store forgot it, so the next holder may start at once.
pub(super) fn overlaps(c: &mut Checker, grants: &[Grant], idx: &[usize], losses: &[(i64, i64)]) {
    let uncut = |g: &Grant| g.end_alive();
    let cut = |g: &Grant| {
        losses
            .iter()
            .filter(|&&(start, end)| {
                g.invoke < end && g.ok < end + REPLY_SLACK_NS && g.end_alive() > start
            })
            .fold(g.end_alive(), |e, &(start, _)| e.min(start.max(g.ok)))
    };
    c.report.data_loss.grants_cut += idx
        .iter()
        .filter(|&&i| cut(&grants[i]) < uncut(&grants[i]))
        .count() as u64;
    let found = sweep(grants, idx, cut, |o, i| {
        c.violation(
            ViolationKind::OverlappingCs,
            format!(
                "{} began {:.1} ms before the CS of {} ended",
                grants[i].name(),
                ms(cut(&grants[o]) - grants[i].ok),
                grants[o].name()
            ),
        );
    });
    let all = sweep(grants, idx, uncut, |_, _| {});
    c.report.data_loss.overlaps_excused += all.saturating_sub(found);
}

/// Calls `found(open, next)` for each section that begins before the
/// latest-ending earlier one ends (sections end at `end`); returns how many.
fn sweep(
    grants: &[Grant],
    idx: &[usize],
    end: impl Fn(&Grant) -> i64,
    mut found: impl FnMut(usize, usize),
) -> u64 {
    let mut live: Vec<usize> = idx
        .iter()
        .copied()
        .filter(|&i| end(&grants[i]) > grants[i].ok)
        .collect();
    live.sort_by_key(|&i| grants[i].ok);
    let mut open: Option<usize> = None;
    let mut count = 0;
    for &i in &live {
        if let Some(o) = open
            && grants[i].ok < end(&grants[o])
        {
            found(o, i);
            count += 1;
        }
        if open.is_none_or(|o| end(&grants[i]) > end(&grants[o])) {
            open = Some(i);
        }
    }
    count
}

pub(super) fn releases(c: &mut Checker, grants: &[Grant], idx: &[usize]) {
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

pub(super) fn lost(
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
        if g.releases.is_empty() || !matches!(reason, LostCause::Expired | LostCause::NotHeld) {
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
                    "{}: lost() ({reason:?}) seen {:.1} ms after its validity deadline",
                    g.name(),
                    ms(late)
                ),
            );
        }
    }
    c.report.max_lost_lateness_ms = max.map(ms);
}

/// Writes decided outside their grant's section.
pub(super) fn writes(c: &mut Checker, grants: &[Grant]) {
    for g in grants {
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
}

/// Obtains that returned a lock already past its validity deadline. One
/// whose process was stopped across the deadline is excused (and counted):
/// the engine checked the deadline before the stop, and nothing in a frozen
/// process can act; its holder must check the lock, as `lost()` says.
pub(super) fn expired(
    c: &mut Checker,
    grants: &[Grant],
    stops: &HashMap<(u32, u32), Vec<(i64, i64)>>,
    tolerance_ns: i64,
) {
    for g in grants {
        if g.ok > g.valid_until_first.saturating_add(tolerance_ns) {
            let deadline = g.valid_until_first;
            let stopped = stops.get(&(g.client, g.incarnation)).is_some_and(|s| {
                s.iter()
                    .any(|&(start, end)| start <= g.ok && end >= deadline - tolerance_ns)
            });
            if stopped {
                c.report.expired_grants_excused += 1;
                continue;
            }
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

/// Locks that ended, and obtains that failed, with `Closed` although their
/// own Locker's close had not begun: another Locker's close (or the shared
/// backend's) ended them.
pub(super) fn closes(c: &mut Checker, grants: &[Grant], obtains: &[ClosedObtain]) {
    for o in obtains {
        if o.locker_closed.is_none_or(|closed| closed > o.t) {
            c.violation(
                ViolationKind::ClosedByOther,
                format!(
                    "client {}/{} obtain {} failed with Closed on Locker {:?}, which was not being closed",
                    o.client, o.incarnation, o.op, o.locker
                ),
            );
        }
    }
    for g in grants {
        let Some((t, LostCause::Closed)) = g.lost else {
            continue;
        };
        if g.locker_closed.is_none_or(|closed| closed > t) {
            c.violation(
                ViolationKind::ClosedByOther,
                format!(
                    "{} ended with Closed on Locker {:?}, which was not being closed",
                    g.name(),
                    g.locker
                ),
            );
        }
    }
}

/// What the waiter stops hit: the obtains of the stopped client that were
/// pending when it was stopped and still pending when it resumed.
pub(super) fn waiter_stops(c: &mut Checker, obtains: &[Obtain], stops: &[(u32, u32, i64, i64)]) {
    let w = &mut c.report.waiter_stops;
    for &(client, incarnation, start, end) in stops {
        w.stops += 1;
        let across = obtains.iter().filter(|o| {
            o.client == client
                && o.incarnation == incarnation
                && o.invoke < start
                && o.answer.is_none_or(|(t, _)| t > end)
        });
        let mut any = false;
        for o in across {
            any = true;
            match o.answer {
                Some((_, Answer::Granted)) => w.obtained += 1,
                Some((_, Answer::NotObtained)) => w.not_obtained += 1,
                Some((_, Answer::Failed)) => w.failed += 1,
                None => w.unknown += 1,
            }
        }
        w.waiting += u64::from(any);
    }
}
