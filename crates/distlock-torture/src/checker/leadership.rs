//! Leadership: how each term ended, and the handovers that followed.
//! Only counts; one leader at a time and rising terms are the lock's
//! checks (`overlaps`, `tokens`).

use super::Checker;
use super::replay::{Grant, Outcome};
use crate::history::LostCause;

/// How a grant ended, as the holder (a leader) saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Released (resigned) with Ok; `distlock elect` exited 0.
    Resigned,
    /// `lost()` fired with `Expired` or `NotHeld` before the release, or
    /// the release said `NotHeld`; `distlock elect` exited 76.
    Lost,
    /// Its process was killed (its task aborted) while it held it.
    Died,
    /// Anything else: closed, a release that failed or went unanswered.
    Other,
}

/// How `g` ended.
fn ending(g: &Grant) -> Ending {
    if let Some(cli) = &g.cli {
        return match cli.exit {
            Some(0) => Ending::Resigned,
            Some(76) => Ending::Lost,
            None if g.death.is_some() => Ending::Died,
            _ => Ending::Other,
        };
    }
    let release = g.releases.first();
    if let Some((t, LostCause::Expired | LostCause::NotHeld)) = g.lost
        && release.is_none_or(|r| t < r.invoke)
    {
        return Ending::Lost;
    }
    match release.map(|r| r.outcome) {
        Some(Outcome::Ok) => Ending::Resigned,
        Some(Outcome::NotHeld) => Ending::Lost,
        None if g.death.is_some() => Ending::Died,
        _ => Ending::Other,
    }
}

/// Leadership: how each term of a key that had a successor ended — the
/// handovers, by resignation, by loss, by the leader's death. Counts only;
/// one leader at a time is `overlaps`, terms rising is `tokens`.
pub(super) fn handovers(c: &mut Checker, grants: &[Grant], idx: &[usize]) {
    let mut by_ok: Vec<usize> = idx.to_vec();
    by_ok.sort_by_key(|&i| grants[i].ok);
    let h = &mut c.report.handovers;
    for &i in by_ok.iter().rev().skip(1) {
        match ending(&grants[i]) {
            Ending::Resigned => h.resigned += 1,
            Ending::Lost => h.lost += 1,
            Ending::Died => h.died += 1,
            Ending::Other => h.other += 1,
        }
    }
}
