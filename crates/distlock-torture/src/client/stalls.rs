//! How often a client stalls on purpose, per variant and workload.

use std::time::Duration;

use crate::variant::{Variant, Workload};

/// How often the workload stalls, per critical section or write.
pub(super) struct Stalls {
    /// Per section: sleep past the TTL with refreshing stopped (a lock's
    /// refresher; a leader's refreshes cut, see [`super::leader`]), between
    /// deciding a write and sending it (a process pause).
    pub(super) overdue: f64,
    /// Per write: the write is delayed in the network (sent later by a task).
    pub(super) delayed: f64,
    /// Per section: a long section with the refresher running.
    pub(super) slow: f64,
    /// Writes per section.
    pub(super) writes: (u32, u32),
    /// The pause after each write, microseconds.
    pub(super) gap_us: (u64, u64),
}

/// A lock's section writes back to back, up to 3 ms apart.
const SHORT_GAP_US: (u64, u64) = (0, 3000);

/// A leader's term: 3–8 writes 2–10% of the TTL apart (about 0.4 s at a TTL
/// of 1 s), so that faults find leaders in office and not only
/// candidates.
const TERM_WRITES: (u32, u32) = (3, 8);
const TERM_GAP: (f64, f64) = (0.02, 0.1);

impl Stalls {
    pub(super) fn of(variant: Variant, workload: Workload, ttl: Duration) -> Stalls {
        let leader = workload == Workload::Leadership;
        let us = |f: f64| ttl.mul_f64(f).as_micros() as u64;
        let (writes, gap_us) = if leader {
            (TERM_WRITES, (us(TERM_GAP.0), us(TERM_GAP.1)))
        } else {
            ((1, 3), SHORT_GAP_US)
        };
        match variant {
            Variant::Correct | Variant::ReleaseByName => Stalls {
                // A leader's overdue stall is its handover by loss on the
                // stores with TTL expiry: 3% of some 200 terms a run.
                overdue: if leader { 0.03 } else { 0.005 },
                delayed: 0.04,
                // A semaphore's permits fill (all N held at once) only if
                // some sections last: on a loaded etcd a grant took 250 ms
                // (median) for a 10 ms section, and 0.5% slow ones left a
                // 27 s run at two of three.
                slow: match workload {
                    Workload::Semaphore => 0.05,
                    Workload::Leadership => 0.0,
                    _ => 0.005,
                },
                writes,
                gap_us,
            },
            // Long sections, so that a sibling's close of the shared backend
            // often finds a lock held (and refreshed) on it, that a
            // broken section meets others (N + 1 permits; a writer and a
            // reader) on a store slower to grant than to write (etcd), and
            // that a grant a failover lost is still held when the new
            // master grants it again (no-ack).
            Variant::CloseSharedBackend
            | Variant::LimitAboveCapacity
            | Variant::ReadLockedWriter
            | Variant::NoAck => Stalls {
                overdue: 0.0,
                delayed: 0.0,
                slow: 0.25,
                writes: (1, 3),
                gap_us,
            },
            Variant::IgnoreValidity => Stalls {
                overdue: 0.3,
                delayed: 0.0,
                slow: 0.0,
                writes: if leader { writes } else { (3, 5) },
                gap_us,
            },
            Variant::NoFencing => Stalls {
                overdue: 0.02,
                delayed: 0.3,
                slow: 0.0,
                writes: (1, 3),
                gap_us,
            },
            Variant::DeadlineFromReply => Stalls {
                overdue: 0.0,
                delayed: 0.0,
                slow: 0.0,
                writes: (0, 0),
                gap_us,
            },
        }
    }
}
