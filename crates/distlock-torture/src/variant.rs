//! What the clients (and the register) do: the correct workload, and the
//! deliberately broken negative controls the checker must catch.
//!
//! Every broken behaviour lives here, in the harness; the distlock library
//! has no broken code path.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::checker::ViolationKind;

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
}

impl Variant {
    /// Every variant, the correct one first.
    pub const ALL: [Variant; 5] = [
        Variant::Correct,
        Variant::ReleaseByName,
        Variant::IgnoreValidity,
        Variant::NoFencing,
        Variant::DeadlineFromReply,
    ];

    /// The negative controls.
    pub const CONTROLS: [Variant; 4] = [
        Variant::ReleaseByName,
        Variant::IgnoreValidity,
        Variant::NoFencing,
        Variant::DeadlineFromReply,
    ];

    /// The name used on the command line and in histories.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Correct => "correct",
            Variant::ReleaseByName => "release-by-name",
            Variant::IgnoreValidity => "ignore-validity",
            Variant::NoFencing => "no-fencing",
            Variant::DeadlineFromReply => "deadline-from-reply",
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
        }
    }

    /// Why a control cannot apply to a store, or `None` if it does.
    pub fn not_applicable(self, ttl_expiry: bool) -> Option<&'static str> {
        match self {
            Variant::IgnoreValidity | Variant::DeadlineFromReply if !ttl_expiry => Some(
                "the store has no TTL expiry, so its locks have no validity deadline to ignore or mismeasure",
            ),
            _ => None,
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
