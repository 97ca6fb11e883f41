//! The waiter stop: SIGSTOP a client while it waits for a lock, for longer
//! than its place in the queue lasts, so the run sees a waiter vanish and
//! come back.
//!
//! Choosing the client races its answer: an obtain may be granted between
//! reading its history and the stop landing. So the stop is confirmed
//! once the process is seen stopped (its history then holds everything it
//! did before); a stop that missed is undone at once, logged as the brief
//! client stop it was, and the search goes on. Even then an answer timed
//! just before the stop may be written after it, so the pool counts a
//! stop as a catch only once the answer is read (`Pool::waiters_caught`).

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::{Instant, sleep};

use super::pool::Pool;
use super::waiters::Waiting;
use crate::clock;
use crate::history::{Fault, JsonLines};
use crate::nemesis::{FaultKind, PlannedFault};

/// How long a waiter stop looks for a waiting client before it settles for
/// the planned one: with short sections a client queued behind a holder
/// is rare at any one instant.
const SEARCH: Duration = Duration::from_secs(3);

/// How long the stop may take to land before it is taken as landed.
const LANDING: Duration = Duration::from_millis(200);

/// Stops a waiting client (else the planned one) and hands it to the pool,
/// which resumes it and logs the fault when `plan.duration` is over.
/// Earlier stops still resume on time while it searches.
pub(super) async fn stop_a_waiter(pool: &mut Pool<'_>, plan: PlannedFault, log: &JsonLines) {
    let give_up = Instant::now() + SEARCH;
    loop {
        let found = if Instant::now() < give_up {
            longest_waiter(pool)
        } else {
            None
        };
        let (client, waiting) = match found {
            Some((client, waiting)) => (client, Some(waiting)),
            None if Instant::now() < give_up => {
                sleep(Duration::from_millis(20)).await;
                pool.resume_due(log, false);
                continue;
            }
            None => (pool.free_client(plan.client as usize), None),
        };
        let mut fault = Fault {
            kind: FaultKind::WaiterStop,
            client: Some(client as u32),
            incarnation: Some(pool.slots[client].incarnation()),
            start: clock::now_ns(),
            end: 0,
            detail: String::new(),
        };
        pool.slots[client].signal_group(Signal::SIGSTOP);
        let Some(waiting) = waiting else {
            fault.detail = format!(
                "stopping {} ms; no client was waiting",
                plan.duration.as_millis()
            );
            pool.hold_stopped(client, None, Instant::now() + plan.duration, fault);
            return;
        };
        let landing = Instant::now() + LANDING;
        while !pool.slots[client].is_stopped() && Instant::now() < landing {
            sleep(Duration::from_millis(1)).await;
        }
        if !pool.slots[client].pending(waiting.op) {
            fault.end = clock::now_ns();
            pool.slots[client].signal_group(Signal::SIGCONT);
            fault.kind = FaultKind::ClientStop;
            fault.detail = format!(
                "a waiter stop that missed: obtain {} was answered as the stop landed; \
                 resumed after {:.1} ms",
                waiting.op,
                (fault.end - fault.start) as f64 / 1e6
            );
            log.append(&fault);
            continue;
        }
        fault.detail = format!(
            "stopping {} ms while waiting {} ms for {} (obtain {})",
            plan.duration.as_millis(),
            (fault.start - waiting.since) / 1_000_000,
            waiting.key,
            waiting.op
        );
        pool.hold_stopped(
            client,
            Some(waiting.op),
            Instant::now() + plan.duration,
            fault,
        );
        return;
    }
}

/// The client waiting longest, for 50 ms at least: queued behind a holder,
/// not about to be answered (nor, for a CLI client, still starting
/// `distlock run`).
fn longest_waiter(pool: &mut Pool<'_>) -> Option<(usize, Waiting)> {
    let before = clock::now_ns() - 50_000_000;
    let free: Vec<usize> = (0..pool.slots.len())
        .filter(|&c| pool.free_client(c) == c)
        .collect();
    free.into_iter()
        .filter_map(|c| pool.slots[c].waiting(before).map(|w| (c, w)))
        .min_by_key(|(c, w)| (w.since, *c))
}
