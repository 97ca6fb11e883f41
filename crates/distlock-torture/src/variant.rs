//! What the clients (and the register) do: the workloads (locks, semaphore
//! permits, read and write locks, leadership), the correct behaviour, and the
//! deliberately broken negative controls the checker must catch.
//!
//! Every broken behaviour lives here, in the harness; the distlock library
//! has no broken code path.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::checker::ViolationKind;
use crate::history::Mode;
use crate::nemesis::FaultKind;
use crate::store::BackendKind;

/// What the clients take, and do under it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Locks (`obtain`): each section writes alone.
    #[default]
    Lock,
    /// Permits of a semaphore of N per key (`semaphore(key, N)`): up to N
    /// sections at once, each writing with its permit's token, fenced by
    /// the register's window of N (see [`crate::register`]).
    Semaphore,
    /// A reader-writer lock per key (`rw_lock(key)`): a quarter of the
    /// rounds write under a write lock, the others read under a read lock.
    RwLock,
    /// Leader election (`campaign_with(key, identity, ..)`): a round is a
    /// term — several writes with gaps, the term as the token, each decided
    /// only while the leadership holds — then `resign()`. One leader per
    /// key at a time is the lock's rule; see [`crate::client`] for how a
    /// leader stalls, since a `Leadership` refreshes itself.
    Leadership,
}

/// The share of the reader-writer workload's rounds that write.
const WRITE_SHARE: f64 = 0.25;

impl Workload {
    /// Every workload.
    pub const ALL: [Workload; 4] = [
        Workload::Lock,
        Workload::Semaphore,
        Workload::RwLock,
        Workload::Leadership,
    ];

    /// The name on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Lock => "lock",
            Workload::Semaphore => "semaphore",
            Workload::RwLock => "rwlock",
            Workload::Leadership => "leadership",
        }
    }

    /// What the next round of a `variant` client takes and does, for a
    /// semaphore of `limit` permits.
    pub fn round(self, variant: Variant, limit: u32, rng: &mut fastrand::Rng) -> Round {
        match self {
            Workload::Lock | Workload::Leadership => Round {
                take: Mode::Exclusive,
                act: Mode::Exclusive,
            },
            Workload::Semaphore => {
                let permits = Mode::Permit { limit };
                let take = if variant == Variant::LimitAboveCapacity {
                    Mode::Permit { limit: limit + 1 }
                } else {
                    permits
                };
                Round { take, act: permits }
            }
            Workload::RwLock if rng.f64() < WRITE_SHARE => Round {
                take: if variant == Variant::ReadLockedWriter {
                    Mode::Read
                } else {
                    Mode::Exclusive
                },
                act: Mode::Exclusive,
            },
            Workload::RwLock => Round {
                take: Mode::Read,
                act: Mode::Read,
            },
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                format!("unknown workload {s:?}; expected lock, semaphore, rwlock or leadership")
            })
    }
}

/// One round of a client: what it takes of the key, and what its acts on
/// the register need (they differ only in the controls that take too
/// little).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    /// The grant it asks for.
    pub take: Mode,
    /// What each of its acts needs; the register fences them by it.
    pub act: Mode,
}

/// The behaviour of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// The correct client: checks its lock before every write, stops at
    /// `lost()` or the validity deadline, releases through the library.
    Correct,
    /// Control 1 — release without token check: the first release's reply
    /// is "lost", and the client retries by deleting the key by name (the
    /// seed's etcd bug), which deletes whoever holds it now.
    ReleaseByName,
    /// Control 2 — ignores `lost()` and the validity deadline: keeps
    /// writing after overdue pauses that expired its lock. In the
    /// leadership workload, a deposed leader acting on (client-go's leader
    /// election without fencing): its refreshes are cut past its deadline,
    /// or, on the file store (no TTL), its lock file is deleted behind its
    /// back, and it writes on.
    IgnoreValidity,
    /// Control 3 — fencing disabled: the register accepts every token.
    /// Clients are correct; delayed writes arrive after newer holders'.
    NoFencing,
    /// Control 4 — deadline measured from the reply: replies are delayed
    /// (injected, 10–60% of the TTL); the client computes its deadline from
    /// the moment it got the reply, without refreshing, and keeps its
    /// critical section until then.
    DeadlineFromReply,
    /// Control 5 — a Locker's close closes the backend it shares with the
    /// process's other Lockers (what `Locker::close` did before 6b16ffc):
    /// on etcd that revokes every lease of the backend, so the other
    /// Lockers' locks vanish from the store while their holders work on.
    CloseSharedBackend,
    /// Control 6 (semaphore) — the lock allows more than the resource: every
    /// client asks for a semaphore of N + 1 permits (so the store sees no
    /// disagreement to refuse) for a resource, the register, that allows N
    /// writers at once.
    LimitAboveCapacity,
    /// Control 7 (reader-writer) — writers take a read lock: a writing
    /// round calls `read_with` where it needs `write_with`, and writes.
    ReadLockedWriter,
    /// Control 8 (replicated Redis) — no replica acknowledgement
    /// (`?replicas=0`): grants are handed out as soon as the master made
    /// them, and the nemesis makes failovers that lose the master's last
    /// writes ([`FaultKind::CutFailover`] only): a lock the new master
    /// never heard of is granted again while its holder works on.
    NoAck,
}

impl Variant {
    /// Every variant, the correct one first.
    pub const ALL: [Variant; 9] = [
        Variant::Correct,
        Variant::ReleaseByName,
        Variant::IgnoreValidity,
        Variant::NoFencing,
        Variant::DeadlineFromReply,
        Variant::CloseSharedBackend,
        Variant::LimitAboveCapacity,
        Variant::ReadLockedWriter,
        Variant::NoAck,
    ];

    /// The negative controls.
    pub const CONTROLS: [Variant; 8] = [
        Variant::ReleaseByName,
        Variant::IgnoreValidity,
        Variant::NoFencing,
        Variant::DeadlineFromReply,
        Variant::CloseSharedBackend,
        Variant::LimitAboveCapacity,
        Variant::ReadLockedWriter,
        Variant::NoAck,
    ];

    /// The variants a campaign runs for `workload`: the correct one first,
    /// then the controls made for it. Controls 1–5 were made for locks;
    /// control 2 also serves leadership.
    /// (Control 4 on permits is weak by construction: it is caught only when
    /// N + 1 sections meet, and every holder's section starts late, its reply
    /// delayed too; on etcd it was caught 2–5 times in 5 s.)
    pub fn of(workload: Workload) -> impl Iterator<Item = Variant> {
        Variant::ALL.into_iter().filter(move |v| match v {
            Variant::Correct => true,
            Variant::LimitAboveCapacity => workload == Workload::Semaphore,
            Variant::ReadLockedWriter => workload == Workload::RwLock,
            Variant::IgnoreValidity => matches!(workload, Workload::Lock | Workload::Leadership),
            _ => workload == Workload::Lock,
        })
    }

    /// The name used on the command line and in histories.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Correct => "correct",
            Variant::ReleaseByName => "release-by-name",
            Variant::IgnoreValidity => "ignore-validity",
            Variant::NoFencing => "no-fencing",
            Variant::DeadlineFromReply => "deadline-from-reply",
            Variant::CloseSharedBackend => "close-shared-backend",
            Variant::LimitAboveCapacity => "limit-above-capacity",
            Variant::ReadLockedWriter => "read-locked-writer",
            Variant::NoAck => "no-ack",
        }
    }

    /// Whether this is a negative control (a run that must fail).
    pub fn is_control(self) -> bool {
        self != Variant::Correct
    }

    /// Whether the register checks fencing tokens in this variant.
    pub fn fenced_register(self) -> bool {
        self != Variant::NoFencing
    }

    /// The violations that prove the checker caught this control: a
    /// control run passes only if at least one of them is reported.
    pub fn expected_violations(self) -> &'static [ViolationKind] {
        match self {
            Variant::Correct => &[],
            Variant::ReleaseByName => &[ViolationKind::ReleaseByNonOwner],
            Variant::IgnoreValidity => &[ViolationKind::WriteOutsideCs],
            Variant::NoFencing => &[ViolationKind::StaleWriteAccepted],
            Variant::DeadlineFromReply => &[ViolationKind::OverlappingCs],
            Variant::CloseSharedBackend => {
                &[ViolationKind::OverlappingCs, ViolationKind::ClosedByOther]
            }
            Variant::LimitAboveCapacity => &[ViolationKind::PermitsOverLimit],
            Variant::ReadLockedWriter => &[ViolationKind::OverlappingCs],
            Variant::NoAck => &[
                ViolationKind::OverlappingCs,
                ViolationKind::StaleWriteAccepted,
            ],
        }
    }

    /// How many replicas acknowledge each grant and extend on a replicated
    /// Redis (`?replicas=N`): one, said explicitly (`--replicas default`
    /// runs the backend's own count instead), or none for control 8.
    pub fn replicas(self) -> usize {
        usize::from(self != Variant::NoAck)
    }

    /// Whether this control runs with faults: control 8's violation is
    /// made by a failover. (The others run without.)
    pub fn faulted_control(self) -> bool {
        self == Variant::NoAck
    }

    /// The faults a run of this variant on `backend` injects, when it has
    /// faults: the backend's; control 8 only the failover that loses writes.
    pub fn fault_kinds(self, backend: BackendKind) -> &'static [FaultKind] {
        match self {
            Variant::NoAck => &[FaultKind::CutFailover],
            _ => backend.faults(),
        }
    }

    /// Why a control of `workload` cannot apply to a store (or is not run
    /// there), or `None` if it does.
    pub fn not_applicable(self, backend: BackendKind, workload: Workload) -> Option<&'static str> {
        match self {
            Variant::NoAck if !backend.replicated_redis() => {
                Some("only a replicated Redis acknowledges grants by replicas")
            }
            Variant::NoAck | Variant::Correct => None,
            // Controls 1–7 break the client, whose code is the same on
            // every Redis topology: the single-server store runs them.
            _ if backend.replicated_redis() => Some(
                "a client-side control, run on the single-server redis store (the same client code); \
                 a replicated Redis runs its own, no-ack",
            ),
            // A file lock can still be taken away: its file deleted, which
            // the leadership control does to depose a leader.
            Variant::IgnoreValidity if workload == Workload::Leadership => None,
            Variant::IgnoreValidity | Variant::DeadlineFromReply if !backend.ttl_expiry() => Some(
                "the store has no TTL expiry, so its locks have no validity deadline to ignore or mismeasure",
            ),
            // Only etcd's backend ends locks when it closes (it revokes its
            // leases); Redis's close stops only its pub/sub listener, file
            // and memory have nothing to close.
            Variant::CloseSharedBackend if backend != BackendKind::Etcd => {
                Some("closing this store's backend ends no lock (only etcd's revokes its leases)")
            }
            _ => None,
        }
    }

    /// The profile client number `client` runs on `backend`. The correct
    /// run mixes them; control 5 needs Lockers sharing a backend; the other
    /// controls keep the single-Locker client they were measured with.
    pub fn profile(self, backend: BackendKind, client: u32) -> ClientProfile {
        match self {
            Variant::Correct => match client % 4 {
                1 => ClientProfile::Shared,
                // memory:// lives inside one process: no CLI there.
                3 if backend.client_processes() => ClientProfile::Cli,
                3 => ClientProfile::Shared,
                _ => ClientProfile::Single,
            },
            Variant::CloseSharedBackend => ClientProfile::Shared,
            _ => ClientProfile::Single,
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Variant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Variant::ALL.iter().map(|v| v.name()).collect();
                format!(
                    "unknown variant {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// How one client process (or memory task) uses distlock.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ClientProfile {
    /// One Locker from the URL, which owns its backend; one task.
    #[default]
    Single,
    /// One backend, [`SECTIONS`] Lockers built on it with
    /// `Locker::builder`, each used by its own task; Lockers are closed and
    /// built again mid-run while the others work on.
    Shared,
    /// Each round runs `distlock run KEY -- distlock-torture section ...`
    /// (`distlock elect` for leadership): the CLI holds the lock, the
    /// section (a process it starts) writes with `$DISTLOCK_FENCING_TOKEN`.
    Cli,
}

/// Lockers (and tasks) of a [`ClientProfile::Shared`] client.
pub const SECTIONS: u32 = 3;

impl ClientProfile {
    /// The name in histories and tables.
    pub fn name(self) -> &'static str {
        match self {
            ClientProfile::Single => "single",
            ClientProfile::Shared => "shared",
            ClientProfile::Cli => "cli",
        }
    }
}

impl fmt::Display for ClientProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
