//! The nemesis: a seeded schedule of faults, one every few seconds. The
//! orchestrator carries each one out and logs it to `nemesis.jsonl`.
//!
//! Kinds are dealt from a shuffled deck, so every kind of the backend
//! occurs once in each run of `kinds.len()` faults: a short smoke run sees
//! every kind, however unlucky its seed.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGSTOP a client process (its process group: a CLI client's
    /// `distlock run` too) for 0.5–3× the TTL, then SIGCONT.
    ClientStop,
    /// SIGKILL a client process group, then start a new incarnation.
    ClientKill,
    /// SIGSTOP a client that is waiting for a lock for longer than its
    /// waiter's lease (Redis: the 1 s waiter lease; etcd: its waiters'
    /// lease, about 2.5 s), then SIGCONT: it resumes with its place in the
    /// queue gone.
    WaiterStop,
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
    /// Redis: `FLUSHALL` — every lock, queue and fencing counter is gone.
    Flushall,
    /// Redis: SIGKILL, delete its data (the AOF), restart empty.
    WipeRestart,
    /// Sentinel, Cluster: SIGKILL a master (Cluster: the one serving a
    /// key's slot), wait until a replica has taken its place, restart the
    /// killed one (it rejoins as a replica).
    MasterKill,
    /// Cluster: `CLUSTER FAILOVER` on the replica of a key's master: they
    /// swap roles without losing a write.
    ManualFailover,
    /// Sentinel, Cluster: SIGSTOP the replicas of a master (Sentinel: both;
    /// Cluster: the one of a key's master) for 0.3–1.5× the TTL, so no
    /// `WAIT` there succeeds, then SIGCONT.
    ReplicaPause,
    /// Sentinel, Cluster: a failover that loses writes. The replicas of a
    /// master (Cluster: of every master at once) are cut off from it for
    /// 0.5–1.5× the TTL while it keeps serving its clients (a partition between the master
    /// and its replicas, made by a wrong `masterauth` on the replicas and
    /// `CLIENT KILL TYPE replica` on the master), then one is promoted
    /// while the old master still runs (`SENTINEL FAILOVER`, `CLUSTER
    /// FAILOVER FORCE`): what the master granted meanwhile is gone.
    CutFailover,
    /// Sentinel: `SENTINEL FAILOVER` while the master runs and its
    /// replicas stay linked (an operator's failover): a replica is
    /// promoted, the other follows it, the old master is demoted seconds
    /// later. Not among the store's faults (`run --faults` only): while the
    /// other replica still follows the old master, it acknowledges what
    /// the old master grants, which the new master never sees — a window
    /// of a few hundred ms, in which 13 such failovers lost nothing that
    /// mattered (RELIABILITY.md).
    SentinelFailover,
}

impl FaultKind {
    /// The name in logs and tables.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::ClientStop => "client_stop",
            FaultKind::ClientKill => "client_kill",
            FaultKind::WaiterStop => "waiter_stop",
            FaultKind::TaskPause => "task_pause",
            FaultKind::TaskAbort => "task_abort",
            FaultKind::ServerKill => "server_kill",
            FaultKind::ServerStop => "server_stop",
            FaultKind::LeaderKill => "leader_kill",
            FaultKind::LeaderIsolate => "leader_isolate",
            FaultKind::ProxyReset => "proxy_reset",
            FaultKind::ProxyBlackhole => "proxy_blackhole",
            FaultKind::Flushall => "flushall",
            FaultKind::WipeRestart => "wipe_restart",
            FaultKind::MasterKill => "master_kill",
            FaultKind::ManualFailover => "manual_failover",
            FaultKind::ReplicaPause => "replica_pause",
            FaultKind::CutFailover => "cut_failover",
            FaultKind::SentinelFailover => "sentinel_failover",
        }
    }

    /// Every kind.
    pub const ALL: [FaultKind; 18] = [
        FaultKind::ClientStop,
        FaultKind::ClientKill,
        FaultKind::WaiterStop,
        FaultKind::TaskPause,
        FaultKind::TaskAbort,
        FaultKind::ServerKill,
        FaultKind::ServerStop,
        FaultKind::LeaderKill,
        FaultKind::LeaderIsolate,
        FaultKind::ProxyReset,
        FaultKind::ProxyBlackhole,
        FaultKind::Flushall,
        FaultKind::WipeRestart,
        FaultKind::MasterKill,
        FaultKind::ManualFailover,
        FaultKind::ReplicaPause,
        FaultKind::CutFailover,
        FaultKind::SentinelFailover,
    ];

    /// Whether the fault hits one client.
    pub fn targets_client(self) -> bool {
        matches!(
            self,
            FaultKind::ClientStop
                | FaultKind::ClientKill
                | FaultKind::WaiterStop
                | FaultKind::TaskPause
                | FaultKind::TaskAbort
        )
    }

    /// Whether the fault is one of a replicated Redis's topology (see
    /// [`crate::store`]'s `redis_ha`).
    pub fn topology_fault(self) -> bool {
        matches!(
            self,
            FaultKind::MasterKill
                | FaultKind::ManualFailover
                | FaultKind::ReplicaPause
                | FaultKind::CutFailover
                | FaultKind::SentinelFailover
        )
    }

    /// Whether the store forgets its locks: mutual exclusion cannot hold
    /// across it, only fencing can (the checker cuts the sections it hits).
    pub fn loses_data(self) -> bool {
        matches!(self, FaultKind::Flushall | FaultKind::WipeRestart)
    }
}

impl std::str::FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown fault kind {s:?}"))
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
    deck: Vec<FaultKind>,
    clients: u32,
    ttl: Duration,
    waiter_lease: Duration,
    interval: (Duration, Duration),
}

impl Nemesis {
    /// A schedule of `kinds` against `clients` clients, one fault every
    /// `interval.0`..`interval.1`; waiter stops outlast `waiter_lease`.
    pub fn new(
        seed: u64,
        kinds: &[FaultKind],
        clients: u32,
        ttl: Duration,
        waiter_lease: Duration,
        interval: (Duration, Duration),
    ) -> Self {
        Nemesis {
            rng: fastrand::Rng::with_seed(seed ^ 0x6E65_6D65_7369_7321),
            kinds: kinds.to_vec(),
            deck: Vec::new(),
            clients,
            ttl,
            waiter_lease,
            interval,
        }
    }

    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + (hi.saturating_sub(lo)).mul_f64(self.rng.f64())
    }

    /// Deals `kind` next, ahead of the deck: a run short of that kind's
    /// coverage asks for it again.
    pub fn deal_next(&mut self, kind: FaultKind) {
        if self.deck.is_empty() {
            self.deck = self.kinds.clone();
            self.rng.shuffle(&mut self.deck);
        }
        self.deck.push(kind);
    }

    /// The next fault.
    pub fn next_fault(&mut self) -> PlannedFault {
        let wait = self.between(self.interval.0, self.interval.1);
        if self.deck.is_empty() {
            self.deck = self.kinds.clone();
            self.rng.shuffle(&mut self.deck);
        }
        let kind = self.deck.pop().expect("a backend has fault kinds");
        let client = self.rng.u32(..self.clients.max(1));
        let ttl = self.ttl;
        let duration = match kind {
            FaultKind::ClientStop | FaultKind::TaskPause => {
                self.between(ttl.mul_f64(0.5), ttl.mul_f64(3.0))
            }
            // Past the lease, so the waiter's place is gone when it resumes.
            FaultKind::WaiterStop => {
                let lease = self.waiter_lease;
                self.between(lease.mul_f64(1.2), lease.mul_f64(2.0))
            }
            FaultKind::ServerStop | FaultKind::ProxyBlackhole | FaultKind::ReplicaPause => {
                self.between(ttl.mul_f64(0.3), ttl.mul_f64(1.5))
            }
            FaultKind::CutFailover => self.between(ttl.mul_f64(0.5), ttl.mul_f64(1.5)),
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
    fn schedules_are_reproducible_from_the_seed_and_deal_every_kind() {
        let kinds = [
            FaultKind::ClientStop,
            FaultKind::ServerKill,
            FaultKind::ProxyReset,
            FaultKind::WaiterStop,
        ];
        let ttl = Duration::from_secs(1);
        let lease = Duration::from_secs(5);
        let interval = (Duration::from_secs(1), Duration::from_secs(3));
        let plan = |seed| {
            let mut n = Nemesis::new(seed, &kinds, 5, ttl, lease, interval);
            (0..20).map(|_| n.next_fault()).collect::<Vec<_>>()
        };
        assert_eq!(plan(7), plan(7));
        assert_ne!(plan(7), plan(8));
        let faults = plan(9);
        for deal in faults.chunks(kinds.len()) {
            let mut dealt: Vec<_> = deal.iter().map(|f| f.kind).collect();
            dealt.sort();
            let mut all = kinds.to_vec();
            all.sort();
            assert_eq!(dealt, all, "each deal holds every kind once");
        }
        for f in faults {
            assert!(f.wait >= interval.0 && f.wait <= interval.1);
            assert!(f.client < 5);
            match f.kind {
                FaultKind::ClientStop => assert!(f.duration >= ttl / 2 && f.duration <= ttl * 3),
                FaultKind::WaiterStop => assert!(f.duration > lease && f.duration <= lease * 2),
                _ => {}
            }
        }
    }

    #[test]
    fn a_kind_asked_for_again_is_dealt_next_and_the_deck_goes_on() {
        let kinds = [
            FaultKind::ClientStop,
            FaultKind::ServerKill,
            FaultKind::WaiterStop,
        ];
        let second = Duration::from_secs(1);
        let mut n = Nemesis::new(3, &kinds, 4, second, second, (second, second));
        for _ in 0..2 {
            n.deal_next(FaultKind::WaiterStop);
            assert_eq!(n.next_fault().kind, FaultKind::WaiterStop);
        }
        let mut deal: Vec<_> = (0..3).map(|_| n.next_fault().kind).collect();
        deal.sort();
        let mut all = kinds.to_vec();
        all.sort();
        assert_eq!(deal, all, "the asked-for faults came on top of a full deal");
    }
}
