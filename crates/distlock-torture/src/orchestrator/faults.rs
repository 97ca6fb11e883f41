//! Carrying out the nemesis' faults.

use std::collections::BTreeSet;
use std::io;

use nix::sys::signal::Signal;
use tokio::time::sleep;

use super::pool::Pool;
use super::waiter_stop;
use crate::clock;
use crate::history::{Fault, JsonLines};
use crate::nemesis::{FaultKind, PlannedFault};
use crate::store::Store;

/// What the nemesis did so far, for the run's minimums.
#[derive(Debug, Default)]
pub(super) struct Done {
    /// Faults carried out.
    pub(super) faults: u64,
    /// Their kinds.
    pub(super) kinds: BTreeSet<FaultKind>,
}

/// Carries out one fault and describes it; `None` when it is logged later
/// (a waiter stop, once its client is resumed).
pub(super) async fn apply(
    pool: &mut Pool<'_>,
    store: &mut Store,
    plan: PlannedFault,
    done: &mut Done,
    log: &JsonLines,
) -> io::Result<Option<Fault>> {
    done.faults += 1;
    done.kinds.insert(plan.kind);
    let client = pool.target(plan.client as usize);
    let mut fault = Fault {
        kind: plan.kind,
        client: plan.kind.targets_client().then_some(client as u32),
        incarnation: plan
            .kind
            .targets_client()
            .then(|| pool.slots[client].incarnation()),
        start: clock::now_ns(),
        end: 0,
        detail: String::new(),
    };
    match plan.kind {
        FaultKind::ClientStop => {
            pool.slots[client].signal_group(Signal::SIGSTOP);
            sleep(plan.duration).await;
            pool.slots[client].signal_group(Signal::SIGCONT);
            fault.detail = format!("stopped {} ms", plan.duration.as_millis());
        }
        FaultKind::WaiterStop => {
            waiter_stop::stop_a_waiter(pool, plan, log).await;
            return Ok(None);
        }
        FaultKind::ClientKill | FaultKind::TaskAbort => {
            let (death, inc) = pool.kill_and_respawn(client).await?;
            fault.start = death;
            fault.incarnation = Some(inc);
            fault.detail = format!("respawned as incarnation {}", inc + 1);
        }
        FaultKind::TaskPause => {
            pool.slots[client].pause(plan.duration);
            fault.detail = format!(
                "asked to stall {} ms at its next step",
                plan.duration.as_millis()
            );
        }
        FaultKind::ServerKill | FaultKind::LeaderKill => {
            fault.detail = store.kill_server().await;
        }
        FaultKind::ServerStop => {
            let (server, what) = store.pause_server().await;
            sleep(plan.duration).await;
            store.resume_server(server);
            fault.detail = format!("{what} for {} ms", plan.duration.as_millis());
        }
        FaultKind::LeaderIsolate => {
            let what = store.isolate_leader().await;
            sleep(plan.duration).await;
            let after = store.leader().await;
            store.heal();
            fault.detail = format!(
                "{what} for {} ms; before healing: {after}",
                plan.duration.as_millis()
            );
        }
        FaultKind::ProxyReset => {
            let n: usize = store.proxies().iter().map(|p| p.reset_all()).sum();
            fault.detail = format!("{n} connections reset");
        }
        FaultKind::ProxyBlackhole => {
            for proxy in store.proxies() {
                proxy.set_blackhole(true);
            }
            sleep(plan.duration).await;
            for proxy in store.proxies() {
                proxy.set_blackhole(false);
            }
            fault.detail = format!("black hole for {} ms", plan.duration.as_millis());
        }
        FaultKind::Flushall => fault.detail = store.flushall().await,
        FaultKind::WipeRestart => fault.detail = store.wipe_restart().await,
        FaultKind::MasterKill
        | FaultKind::ManualFailover
        | FaultKind::ReplicaPause
        | FaultKind::CutFailover
        | FaultKind::SentinelFailover => {
            // A cluster fault hits the master of one of the keys.
            let key = &pool.keys[plan.client as usize % pool.keys.len()];
            fault.detail = store
                .topology_fault(plan.kind, super::NAMESPACE, key, plan.duration)
                .await;
        }
    }
    fault.end = clock::now_ns();
    Ok(Some(fault))
}
