//! Who holds a key, from its queue: the entries under its prefix in
//! create-revision order, each an exclusive lease or a permit of some
//! limit.
//!
//! The holders are the longest head of the queue whose entries can all
//! hold together: an exclusive entry alone when it is first, else the
//! leading permits of the first one's limit, up to that limit. An entry is
//! granted when it is among them, so arrival order decides across modes:
//! an exclusive waiter holds up every permit behind it (no writer
//! starvation), and a permit waits for the permits ahead of it. Entries
//! ahead of one only ever leave (later ones get higher revisions), so an
//! entry once among the holders stays there until it leaves itself.

use std::cmp::Ordering;

use etcd_client::KeyValue;

use super::encode;
use crate::lease::Share;

/// An entry's mode, as its value records it.
pub(super) fn share_of(kv: &KeyValue) -> Share {
    encode::entry_share(kv.value())
}

/// How many entries at the head of a queue whose modes are `shares`, in
/// create-revision order, hold the key.
pub(super) fn holders(shares: impl IntoIterator<Item = Share>) -> usize {
    let mut held = 0;
    let mut limit = None;
    for share in shares {
        match share {
            Share::Exclusive => return if held == 0 { 1 } else { held },
            Share::Permit { limit: l } => {
                if limit.is_some_and(|first| first != l) || held >= l as usize {
                    return held;
                }
                limit = Some(l);
                held += 1;
            }
        }
    }
    held
}

/// Where an entry stands in its queue.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Standing {
    /// Among the holders.
    Granted,
    /// Behind entries it cannot hold with.
    Waiting,
    /// A permit of another limit than the permits holding the key.
    Mismatch {
        /// The holders' limit.
        held: u32,
    },
}

/// How many leading entries an attempt for `share` reads to judge its
/// standing: one for an exclusive lease (it holds only when first); for a
/// permit, one more than its limit (the most holders there can be), so a
/// read that returns fewer is the whole queue (see [`Seen`]).
pub(super) fn head_len(share: Share) -> i64 {
    match share {
        Share::Exclusive => 1,
        Share::Permit { limit } => i64::from(limit) + 1,
    }
}

/// What the backend last saw of a key's queue that a permit could join:
/// the whole queue at `revision`, every entry a permit of one limit. A
/// later permit of that limit that fits beside them, as far as the backend
/// knows (its own entries' deletions since are counted), takes the key
/// with one put guarded on no entry having been created since `revision`:
/// the queue is then a part of what was seen, so it still fits. Stale
/// knowledge costs the guard's failure, whose reads serve the attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    pub(super) revision: i64,
    /// The limit the entries share (`None` when there are none).
    limit: Option<u32>,
    /// How many entries of it there were, less those deleted since.
    entries: usize,
}

impl Seen {
    /// What a read at `revision` of the queue's first entries, `head`
    /// (all of them when `complete`), tells.
    pub(super) fn of(head: &[Share], complete: bool, revision: i64) -> Option<Seen> {
        let limit = match head.first() {
            None => None,
            Some(Share::Permit { limit }) => Some(*limit),
            Some(Share::Exclusive) => return None,
        };
        let one_limit = head.iter().all(|s| s.limit() == limit);
        (complete && one_limit).then_some(Seen {
            revision,
            limit,
            entries: head.len(),
        })
    }

    /// Whether a permit for `share` appended to the queue seen would be
    /// granted.
    pub(super) fn fits(&self, share: Share) -> bool {
        match share {
            Share::Exclusive => self.entries == 0,
            Share::Permit { limit } => {
                self.limit.is_none_or(|seen| seen == limit) && self.entries < limit as usize
            }
        }
    }

    /// One of the entries seen, created at `created`, was deleted.
    pub(super) fn left(&mut self, created: i64) {
        if created <= self.revision {
            self.entries = self.entries.saturating_sub(1);
            if self.entries == 0 {
                self.limit = None;
            }
        }
    }
}

/// The modes of `kvs`.
pub(super) fn shares_of(kvs: &[KeyValue]) -> Vec<Share> {
    kvs.iter().map(share_of).collect()
}

/// The standing of an entry for `share` in a queue whose first entries
/// (at least [`head_len`] of them, or all) have the modes `head`: the
/// entry at `position` in it, or, with `None`, one appended behind them.
pub(super) fn standing(head: &[Share], position: Option<usize>, share: Share) -> Standing {
    if let (Share::Permit { limit }, Some(Share::Permit { limit: held })) = (share, head.first())
        && position != Some(0)
        && *held != limit
    {
        return Standing::Mismatch { held: *held };
    }
    let shares = head.iter().copied();
    let (held, at) = match position {
        Some(at) => (holders(shares), at),
        None => (holders(shares.chain([share])), head.len()),
    };
    if at < held {
        Standing::Granted
    } else {
        Standing::Waiting
    }
}

/// What a waiter watches before it tries again: the one change without
/// which it cannot be granted, seen by it alone where that can be had.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Awaited {
    /// The deletion of the entry at this index of those ahead.
    Deleted(usize),
    /// Any change of the entry at this index: its grant (a put moving it
    /// onto its holder's lease) or its deletion.
    Changed(usize),
    /// Any deletion under the key's prefix.
    AnyDeletion,
    /// Nothing: it may be granted now.
    Nothing,
}

/// What a queued waiter for `share` watches, given the modes of the
/// entries just ahead of it (`ahead`, oldest first: the nearest
/// [`head_len`] of them, or all).
///
/// * An exclusive waiter watches its predecessor (it holds only when
///   first).
/// * A permit behind an exclusive entry watches the nearest one's
///   deletion: it waits for that one in any case, and the permits behind
///   one writer are woken together because they are granted together.
/// * A permit behind a permit of another limit watches the nearest one's
///   change: deleted, it frees the way; granted, it makes the key held
///   with another limit, which the next attempt refuses.
/// * A permit behind `limit` permits, the first to wait, is granted by the
///   release of any of them: it watches every deletion under the prefix.
/// * A permit further back is granted only after the waiter just ahead of
///   it, whose grant moves its entry onto its holder's lease: it watches
///   that entry, so one release wakes one waiter, not all of them.
pub(super) fn awaited(ahead: &[Share], share: Share) -> Awaited {
    let Some(predecessor) = ahead.len().checked_sub(1) else {
        return Awaited::Nothing;
    };
    let Share::Permit { limit } = share else {
        return Awaited::Deleted(predecessor);
    };
    if let Some(blocker) = ahead.iter().rposition(|s| *s != share) {
        return match ahead[blocker] {
            Share::Exclusive => Awaited::Deleted(blocker),
            Share::Permit { .. } => Awaited::Changed(blocker),
        };
    }
    match ahead.len().cmp(&(limit as usize)) {
        Ordering::Less => Awaited::Nothing,
        Ordering::Equal => Awaited::AnyDeletion,
        Ordering::Greater => Awaited::Changed(predecessor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: Share = Share::Exclusive;
    const fn p(limit: u32) -> Share {
        Share::Permit { limit }
    }

    #[test]
    fn the_holders_are_one_exclusive_entry_or_the_leading_permits_up_to_their_limit() {
        assert_eq!(holders([]), 0);
        assert_eq!(holders([X, X]), 1);
        assert_eq!(holders([X, p(3)]), 1);
        assert_eq!(
            holders([p(3), p(3), X, p(3)]),
            2,
            "a writer stops readers behind it"
        );
        assert_eq!(holders([p(2), p(2), p(2)]), 2, "at most the limit");
        assert_eq!(holders([p(3), p(2)]), 1, "another limit waits");
        assert_eq!(holders([Share::READERS; 5]), 5);
    }

    #[test]
    fn an_entry_is_granted_among_the_holders_and_a_permit_of_another_limit_is_refused() {
        use Standing::*;
        assert_eq!(standing(&[], None, X), Granted);
        assert_eq!(standing(&[X], Some(0), X), Granted);
        assert_eq!(standing(&[p(3)], None, X), Waiting);
        assert_eq!(standing(&[p(2), p(2)], Some(1), p(2)), Granted);
        assert_eq!(standing(&[p(2), p(2)], None, p(2)), Waiting, "full");
        assert_eq!(standing(&[p(2)], None, p(2)), Granted);
        assert_eq!(standing(&[p(2), X], None, p(2)), Waiting, "behind a writer");
        assert_eq!(
            standing(&[X, p(5)], None, p(2)),
            Waiting,
            "not held by permits"
        );
        assert_eq!(standing(&[p(5)], None, p(2)), Mismatch { held: 5 });
        assert_eq!(standing(&[p(5), p(2)], Some(1), p(2)), Mismatch { held: 5 });
        assert_eq!(standing(&[p(2), p(5)], Some(0), p(2)), Granted);
    }

    #[test]
    fn waiters_watch_what_stands_between_them_and_the_key() {
        use Awaited::*;
        assert_eq!(awaited(&[], X), Nothing);
        assert_eq!(awaited(&[p(2), p(2)], X), Deleted(1), "its predecessor");
        assert_eq!(
            awaited(&[X, p(3), p(3)], p(3)),
            Deleted(0),
            "the writer ahead"
        );
        assert_eq!(
            awaited(&[p(3), X, p(3)], p(3)),
            Deleted(1),
            "the nearest writer"
        );
        assert_eq!(awaited(&[p(5), p(3)], p(3)), Changed(0), "another limit");
        assert_eq!(awaited(&[X, p(5), p(3)], p(3)), Changed(1));
        assert_eq!(awaited(&[p(2), p(2)], p(2)), AnyDeletion, "first to wait");
        assert_eq!(
            awaited(&[p(2), p(2), p(2)], p(2)),
            Changed(2),
            "behind a waiter"
        );
        assert_eq!(awaited(&[p(2)], p(2)), Nothing);
    }

    #[test]
    fn what_was_seen_tells_whether_a_permit_fits_until_something_is_created() {
        assert_eq!(Seen::of(&[p(2), X], true, 5), None);
        assert_eq!(Seen::of(&[p(2), p(3)], true, 5), None);
        assert_eq!(Seen::of(&[p(2)], false, 5), None, "not the whole queue");
        let mut seen = Seen::of(&[p(2), p(2)], true, 5).unwrap();
        assert!(!seen.fits(p(2)));
        seen.left(7);
        assert!(!seen.fits(p(2)), "created after the read: not counted");
        seen.left(4);
        assert!(seen.fits(p(2)) && !seen.fits(p(3)) && !seen.fits(X));
        seen.left(3);
        assert!(seen.fits(p(3)) && seen.fits(X), "empty");
    }
}
