//! The shared profile: one backend per client, [`SECTIONS`] Lockers built
//! on it with `Locker::builder`, each driven by its own task. Lockers are
//! closed and built again while the others work on: between two rounds
//! (`cycle`), or by another task at a random moment of a round (`race`:
//! while its section waits, holds or releases). Closing one Locker must not
//! disturb another's lock; the checker holds every section to the same
//! rules as a single-Locker client's.
//!
//! Control 5 closes the shared backend with each Locker it closes (the old
//! `Locker::close`), then opens a new backend for the client's Lockers.

use std::sync::{Arc, Mutex};

use distlock::backend::Backend;
use tokio::time::sleep;

use super::worker::{LockerSlot, Worker, close_slot};
use super::{ClientConfig, Control, Ops, client_seed, retry_open};
use crate::history::{CloseWhy, JsonLines};
use crate::store::ClientStore;
use crate::variant::{SECTIONS, Variant, Workload};

/// Per round: the chances that a Locker is closed between rounds, and that
/// another task closes it at a random moment of the round. At 3% and 1%
/// the smoke sees dozens of each; control 5 closes more, to be caught in
/// a few seconds.
fn close_rates(variant: Variant) -> (f64, f64) {
    if variant == Variant::CloseSharedBackend {
        (0.1, 0.03)
    } else {
        (0.03, 0.01)
    }
}

/// The client's backend, replaced only in control 5 (after it closed it).
struct Backends {
    store: ClientStore,
    namespace: String,
    workload: Workload,
    current: Mutex<(u64, Arc<dyn Backend>)>,
}

/// A section's Locker, with the generation of the backend it is built on.
struct Slot {
    generation: u64,
    backend: Arc<dyn Backend>,
    slot: LockerSlot,
}

impl Backends {
    async fn open(store: ClientStore, cfg: &ClientConfig) -> Result<Backends, String> {
        let backend = retry_open(|| store.open_backend()).await?;
        Ok(Backends {
            store,
            namespace: cfg.namespace.clone(),
            workload: cfg.workload,
            current: Mutex::new((0, backend)),
        })
    }

    fn current(&self) -> (u64, Arc<dyn Backend>) {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (current.0, current.1.clone())
    }

    /// A new Locker on the current backend.
    fn slot(&self, ops: &Ops) -> Slot {
        let (generation, backend) = self.current();
        let slot = LockerSlot::on(
            backend.clone(),
            &self.namespace,
            false,
            self.workload,
            ops.next(),
        );
        Slot {
            generation,
            backend,
            slot,
        }
    }

    /// After generation `closed` was closed: a new backend, unless another
    /// section already opened one.
    async fn replace(&self, closed: u64) -> Result<(), String> {
        if self.current().0 != closed {
            return Ok(());
        }
        let backend = retry_open(|| self.store.open_backend()).await?;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 == closed {
            *current = (closed + 1, backend);
        }
        Ok(())
    }
}

/// Runs the client's sections until `control.stop`, then closes the backend.
pub(super) async fn run(
    cfg: Arc<ClientConfig>,
    store: ClientStore,
    control: Control,
    hist: JsonLines,
    ops: Ops,
) -> Result<(), String> {
    let backends = Backends::open(store.clone(), &cfg).await?;
    let sections = (0..SECTIONS).map(|s| {
        let worker = Worker::new(
            cfg.clone(),
            store.clone(),
            hist.clone(),
            ops.clone(),
            client_seed(cfg.seed, s, u32::MAX),
        );
        section(worker, &backends, control.clone(), &hist, &ops)
    });
    let ended = futures::future::join_all(sections).await;
    ended.into_iter().collect::<Result<(), String>>()?;
    if store.owns_backends() {
        let _ = backends.current().1.close().await;
    }
    Ok(())
}

async fn section(
    mut worker: Worker,
    backends: &Backends,
    mut control: Control,
    hist: &JsonLines,
    ops: &Ops,
) -> Result<(), String> {
    let variant = worker.variant();
    let closes_backend = variant == Variant::CloseSharedBackend;
    let (cycle, race) = close_rates(variant);
    let mut slot = backends.slot(ops);
    while !control.stopped() {
        if slot.generation != backends.current().0 {
            // Control 5: another section closed the backend under this
            // Locker; move to the new one.
            worker.close(&slot.slot, CloseWhy::Cycle, None).await;
            slot = backends.slot(ops);
        }
        let racer = worker.chance(race).then(|| {
            let delay = worker.ttl_fraction(0.0, 1.0);
            let (hist, locker) = (hist.clone(), slot.slot.clone());
            let backend = closes_backend.then(|| slot.backend.clone());
            tokio::spawn(async move {
                sleep(delay).await;
                close_slot(&hist, &locker, CloseWhy::Race, backend.as_deref()).await;
            })
        });
        worker.round(&slot.slot, &mut control).await;
        match racer {
            Some(racer) => {
                let _ = racer.await;
            }
            None if worker.chance(cycle) => {
                let backend = closes_backend.then_some(slot.backend.as_ref());
                worker.close(&slot.slot, CloseWhy::Cycle, backend).await;
            }
            None => {}
        }
        if slot.slot.closing() {
            if closes_backend {
                backends.replace(slot.generation).await?;
            }
            slot = backends.slot(ops);
        }
    }
    worker.close(&slot.slot, CloseWhy::Stop, None).await;
    Ok(())
}
