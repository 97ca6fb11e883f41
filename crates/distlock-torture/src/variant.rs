//! What the clients (and the register) do: the correct workload, and the
//! deliberately broken negative controls the checker must catch.
//!
//! Every broken behaviour lives here, in the harness; the distlock library
//! has no broken code path.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::checker::ViolationKind;
use crate::store::BackendKind;

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
    /// writing after overdue pauses that expired its lock.
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
}

impl Variant {
    /// Every variant, the correct one first.
    pub const ALL: [Variant; 6] = [
        Variant::Correct,
        Variant::ReleaseByName,
        Variant::IgnoreValidity,
        Variant::NoFencing,
        Variant::DeadlineFromReply,
        Variant::CloseSharedBackend,
    ];

    /// The negative controls.
    pub const CONTROLS: [Variant; 5] = [
        Variant::ReleaseByName,
        Variant::IgnoreValidity,
        Variant::NoFencing,
        Variant::DeadlineFromReply,
        Variant::CloseSharedBackend,
    ];

    /// The name used on the command line and in histories.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Correct => "correct",
            Variant::ReleaseByName => "release-by-name",
            Variant::IgnoreValidity => "ignore-validity",
            Variant::NoFencing => "no-fencing",
            Variant::DeadlineFromReply => "deadline-from-reply",
            Variant::CloseSharedBackend => "close-shared-backend",
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
        }
    }

    /// Why a control cannot apply to a store, or `None` if it does.
    pub fn not_applicable(self, backend: BackendKind) -> Option<&'static str> {
        match self {
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
    /// Each round runs `distlock run KEY -- distlock-torture section ...`:
    /// the CLI holds the lock, the section (a process it starts) writes
    /// with `$DISTLOCK_FENCING_TOKEN`.
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
