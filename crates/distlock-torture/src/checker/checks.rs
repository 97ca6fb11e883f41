//! The checks, each over the replayed grants (of one key, where it says
//! `idx`).

use std::collections::{HashMap, HashSet};

use super::replay::{Answer, ClosedObtain, Grant, Obtain, Outcome, Release};
use super::{Checker, ViolationKind, ms};
use crate::history::{LostCause, Mode, RegisterEntry};
use crate::register::Fence;

/// The register's accepts, replayed through a fresh [`Fence`] per key:
/// an accept the fence refuses is a stale write (or read) accepted.
pub(super) fn register(c: &mut Checker, register: &[RegisterEntry], grants: &[Grant]) {
    let known: HashSet<(&str, u64)> = grants.iter().map(|g| (g.key.as_str(), g.token)).collect();
    let mut fences: HashMap<&str, Fence> = HashMap::new();
    for e in register {
        let reads = e.mode == Mode::Read;
        if !e.accepted {
            c.report.writes_rejected += 1;
            c.report.reads_rejected += u64::from(reads);
            continue;
        }
        c.report.writes_accepted += 1;
        c.report.reads_accepted += u64::from(reads);
        let fence = fences.entry(e.key.as_str()).or_default();
        if !fence.admits(e.token, e.mode) {
            c.violation(
                ViolationKind::StaleWriteAccepted,
                format!(
                    "register accepted token {} ({}) on key {} after token {} (client {}/{} write {})",
                    e.token,
                    e.mode,
                    e.key,
                    fence.highest(),
                    e.client,
                    e.incarnation,
                    e.op
                ),
            );
        }
        fence.admit(e.token, e.mode);
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

/// Sections of one key open at once beyond the least of their limits: two
/// where one holds (or acts on) the key alone are `overlapping_cs`, more
/// than a semaphore's permits `permits_over_limit`. A section a data loss
/// hit ends, for this check, where the loss began (or is empty if it was
/// granted during the loss): the store forgot it, so the next holder may
/// start at once.
pub(super) fn overlaps(c: &mut Checker, grants: &[Grant], idx: &[usize], losses: &[(i64, i64)]) {
    let uncut = |g: &Grant| g.end_alive();
    let cut = |g: &Grant| lost_at(g, losses).map_or(g.end_alive(), |t| t.min(g.end_alive()));
    c.report.data_loss.grants_cut += idx
        .iter()
        .filter(|&&i| cut(&grants[i]) < uncut(&grants[i]))
        .count() as u64;
    let mut found = Vec::new();
    let (over, most) = sweep(grants, idx, cut, |i, open, limit| {
        found.push(excess(grants, i, open, limit, cut));
    });
    for (kind, detail) in found {
        c.violation(kind, detail);
    }
    c.report.max_concurrent = c.report.max_concurrent.max(most);
    let (all, _) = sweep(grants, idx, uncut, |_, _, _| {});
    c.report.data_loss.overlaps_excused += all.saturating_sub(over);
}

/// Where the earliest data loss that hit `g`'s section began (its grant,
/// if the loss was under way then), if one did.
fn lost_at(g: &Grant, losses: &[(i64, i64)]) -> Option<i64> {
    losses
        .iter()
        .filter(|&&(start, end)| {
            g.invoke < end && g.ok < end + REPLY_SLACK_NS && g.end_alive() > start
        })
        .map(|&(start, _)| start.max(g.ok))
        .min()
}

/// The violation of section `i`, begun while the sections `open` were
/// (`limit`: the least limit among them all).
fn excess(
    grants: &[Grant],
    i: usize,
    open: &[usize],
    limit: u32,
    end: impl Fn(&Grant) -> i64,
) -> (ViolationKind, String) {
    let g = &grants[i];
    if limit == 1 {
        // The one that needed the key alone, if it was already open.
        let o = open
            .iter()
            .copied()
            .min_by_key(|&o| (grants[o].limit(), std::cmp::Reverse(end(&grants[o]))))
            .expect("an open section");
        return (
            ViolationKind::OverlappingCs,
            format!(
                "{} ({}) began {:.1} ms before the CS of {} ({}) ended",
                g.name(),
                g.mode,
                ms(end(&grants[o]) - g.ok),
                grants[o].name(),
                grants[o].mode
            ),
        );
    }
    let names: Vec<String> = open.iter().take(4).map(|&o| grants[o].name()).collect();
    (
        ViolationKind::PermitsOverLimit,
        format!(
            "{} ({}) began while {} sections of its key were open, limit {limit}: {}{}",
            g.name(),
            g.mode,
            open.len(),
            names.join(", "),
            if open.len() > names.len() {
                ", ..."
            } else {
                ""
            }
        ),
    )
}

/// Walks the sections of one key in the order they began (each ends at
/// `end`), calling `found(next, open, limit)` for each that begins while
/// so many are open that the least limit among them all is exceeded.
/// Returns how many did, and the most sections open at once.
fn sweep(
    grants: &[Grant],
    idx: &[usize],
    end: impl Fn(&Grant) -> i64,
    mut found: impl FnMut(usize, &[usize], u32),
) -> (u64, u64) {
    let mut live: Vec<usize> = idx
        .iter()
        .copied()
        .filter(|&i| end(&grants[i]) > grants[i].ok)
        .collect();
    live.sort_by_key(|&i| grants[i].ok);
    let mut open: Vec<usize> = Vec::new();
    let (mut count, mut most) = (0, 0);
    for &i in &live {
        let start = grants[i].ok;
        open.retain(|&o| end(&grants[o]) > start);
        let limit = open
            .iter()
            .map(|&o| grants[o].limit())
            .fold(grants[i].limit(), u32::min);
        if open.len() >= limit as usize {
            found(i, &open, limit);
            count += 1;
        }
        open.push(i);
        most = most.max(open.len() as u64);
    }
    (count, most)
}

/// Releases that returned Ok for a lock a newer grant had replaced. One
/// whose lock a data loss erased before it was sent is excused (and
/// counted): the engine answers Ok when an attempt that timed out may have
/// released it and a later one finds it gone, and cannot tell that from a
/// store that forgot it (found so: a wipe, another holder, then a release
/// stuck in a server stop).
pub(super) fn releases(c: &mut Checker, grants: &[Grant], idx: &[usize], losses: &[(i64, i64)]) {
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
            // A newer grant proves this one's lease over only if one of
            // the two holds the key alone; permits live side by side.
            let newer = by_ok[from.min(to)..to]
                .iter()
                .copied()
                .filter(|&i| grants[i].token > grants[g].token)
                .filter(|&i| grants[i].mode.is_exclusive() || grants[g].mode.is_exclusive())
                .min_by_key(|&i| grants[i].ok);
            if newer.is_some() && lost_at(&grants[g], losses).is_some_and(|t| t < r.invoke) {
                c.report.data_loss.releases_excused += 1;
            } else if let Some(newer) = newer {
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
    ttl_ns: i64,
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
        // A refresh sent before the release moves the deadline to at most
        // the release's start plus the TTL.
        let refreshable = |r: &Release| r.invoke < *lost_at && *lost_at <= r.invoke + ttl_ns;
        if late > 0 && g.releases.first().is_some_and(refreshable) {
            // Seen while the release was under way: its section had ended,
            // and the deadline recorded at the release may since have moved
            // by a refresh in flight then (found so: a leader resigning,
            // its refresher running, through an etcd fault; lost() 355 ms
            // after the recorded deadline, on time for the refreshed one).
            c.report.lost_in_release_excused += 1;
            continue;
        }
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

/// Obtains refused with `LimitMismatch` on a key whose obtains all asked
/// for one limit (or for the key alone, which is never a mismatch): the
/// store saw a disagreement nobody made.
pub(super) fn limit_mismatches(c: &mut Checker, obtains: &[Obtain]) {
    let mut limits: HashMap<&str, HashSet<u32>> = HashMap::new();
    for o in obtains.iter().filter(|o| !o.mode.is_exclusive()) {
        limits.entry(&o.key).or_default().insert(o.mode.limit());
    }
    for o in obtains {
        let Some(error) = &o.mismatch else { continue };
        if limits.get(o.key.as_str()).is_none_or(|l| l.len() <= 1) {
            c.violation(
                ViolationKind::LimitMismatch,
                format!(
                    "client {}/{} obtain {} ({}) of key {} was refused although every obtain of the key asked the same: {error}",
                    o.client, o.incarnation, o.op, o.mode, o.key
                ),
            );
        }
    }
}
