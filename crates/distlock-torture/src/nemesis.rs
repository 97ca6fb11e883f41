//! The nemesis: a seeded schedule of faults, one every few seconds. The
//! orchestrator carries each one out and logs it to `nemesis.jsonl`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGSTOP a client process for 0.5–3× the TTL, then SIGCONT.
    ClientStop,
    /// SIGKILL a client process, then start a new incarnation of it.
    ClientKill,
    /// Stall an in-process client (memory) for 0.5–3× the TTL, refresher
    /// included, at its next step.
    TaskPause,
    /// Abort an in-process client's task (memory), then start a new one.
    TaskAbort,
    /// SIGKILL the server and restart it on the same port and data.
    ServerKill,
    /// SIGSTOP the server (etcd: the leader) for 0.3–1.5× the TTL, then
    /// SIGCONT.
    ServerStop,
    /// etcd: SIGKILL the leader, wait for the others to elect a new one,
    /// then restart it on the same ports and data.
    LeaderKill,
    /// etcd: cut the leader off from its peers and its clients for 1.5–3×
    /// the TTL, and at least 1.5 s (longer than an election timeout, so the
    /// others elect a new leader), then heal.
    LeaderIsolate,
    /// Reset every client connection at the proxy (TCP RST).
    ProxyReset,
    /// Black-hole the proxy for 0.3–1.5× the TTL (nothing flows, nothing
    /// is lost), then heal it.
    ProxyBlackhole,
}

impl FaultKind {
    /// The name in logs and tables.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::ClientStop => "client_stop",
            FaultKind::ClientKill => "client_kill",
            FaultKind::TaskPause => "task_pause",
            FaultKind::TaskAbort => "task_abort",
            FaultKind::ServerKill => "server_kill",
            FaultKind::ServerStop => "server_stop",
            FaultKind::LeaderKill => "leader_kill",
            FaultKind::LeaderIsolate => "leader_isolate",
            FaultKind::ProxyReset => "proxy_reset",
            FaultKind::ProxyBlackhole => "proxy_blackhole",
        }
    }

    /// Whether the fault hits one client.
    pub fn targets_client(self) -> bool {
        matches!(
            self,
            FaultKind::ClientStop
                | FaultKind::ClientKill
                | FaultKind::TaskPause
                | FaultKind::TaskAbort
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One fault to carry out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlannedFault {
    /// How long to wait before it.
    pub wait: Duration,
    /// What.
    pub kind: FaultKind,
    /// The client it hits (for client faults).
    pub client: u32,
    /// How long it lasts (for faults that are healed).
    pub duration: Duration,
}

/// The seeded fault schedule.
#[derive(Debug)]
pub struct Nemesis {
    rng: fastrand::Rng,
    kinds: Vec<FaultKind>,
    clients: u32,
    ttl: Duration,
    interval: (Duration, Duration),
}

impl Nemesis {
    /// A schedule of `kinds` against `clients` clients, one fault every
    /// `interval.0`..`interval.1`.
    pub fn new(
        seed: u64,
        kinds: &[FaultKind],
        clients: u32,
        ttl: Duration,
        interval: (Duration, Duration),
    ) -> Self {
        Nemesis {
            rng: fastrand::Rng::with_seed(seed ^ 0x6E65_6D65_7369_7321),
            kinds: kinds.to_vec(),
            clients,
            ttl,
            interval,
        }
    }

    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + (hi.saturating_sub(lo)).mul_f64(self.rng.f64())
    }

    /// The next fault.
    pub fn next_fault(&mut self) -> PlannedFault {
        let wait = self.between(self.interval.0, self.interval.1);
        let kind = self.kinds[self.rng.usize(..self.kinds.len())];
        let client = self.rng.u32(..self.clients.max(1));
        let ttl = self.ttl;
        let duration = match kind {
            FaultKind::ClientStop | FaultKind::TaskPause => {
                self.between(ttl.mul_f64(0.5), ttl.mul_f64(3.0))
            }
            FaultKind::ServerStop | FaultKind::ProxyBlackhole => {
                self.between(ttl.mul_f64(0.3), ttl.mul_f64(1.5))
            }
            FaultKind::LeaderIsolate => {
                // Past etcd's election timeout (1 s by default) however short the TTL.
                let floor = Duration::from_millis(1500);
                self.between(ttl.mul_f64(1.5).max(floor), ttl.mul_f64(3.0).max(floor * 2))
            }
            _ => Duration::ZERO,
        };
        PlannedFault {
            wait,
            kind,
            client,
            duration,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_reproducible_from_the_seed() {
        let kinds = [
            FaultKind::ClientStop,
            FaultKind::ServerKill,
            FaultKind::ProxyReset,
        ];
        let ttl = Duration::from_secs(1);
        let interval = (Duration::from_secs(1), Duration::from_secs(3));
        let plan = |seed| {
            let mut n = Nemesis::new(seed, &kinds, 5, ttl, interval);
            (0..20).map(|_| n.next_fault()).collect::<Vec<_>>()
        };
        assert_eq!(plan(7), plan(7));
        assert_ne!(plan(7), plan(8));
        for f in plan(9) {
            assert!(f.wait >= interval.0 && f.wait <= interval.1);
            assert!(f.client < 5);
            if f.kind == FaultKind::ClientStop {
                assert!(f.duration >= ttl / 2 && f.duration <= ttl * 3);
            }
        }
    }
}
