//! The fairness check shared by the conformance suite and the stores' own
//! tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock::{Locker, ObtainOptions};
use tokio::sync::Barrier;
use tokio::time::sleep;

/// How many times each task takes the lock (six: see below).
const ROUNDS: usize = 6;

/// One task per locker (the same locker may be given several times) takes
/// `key` six times, waiting as long as it takes, and holds it for
/// `hold` — long enough for every other task to queue. Asserts that once
/// all are contending, no task gets the lock twice before every other task
/// had it once; returns the order of grants by task index.
pub async fn assert_served_in_turn(lockers: Vec<Locker>, key: &str, hold: Duration) -> Vec<usize> {
    let tasks = lockers.len();
    let order = Arc::new(Mutex::new(Vec::new()));
    let start = Arc::new(Barrier::new(tasks));
    let handles: Vec<_> = lockers
        .into_iter()
        .enumerate()
        .map(|(id, locker)| {
            let (order, start, key) = (order.clone(), start.clone(), key.to_owned());
            tokio::spawn(async move {
                start.wait().await;
                for _ in 0..ROUNDS {
                    let lock = locker
                        .obtain_with(key.as_str(), ObtainOptions::new().wait_forever())
                        .await
                        .unwrap();
                    order.lock().unwrap().push(id);
                    sleep(hold).await;
                    lock.release().await.unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    // The first and last rounds are not steady: tasks start and finish.
    let steady = &order[tasks..order.len() - tasks];
    for window in steady.windows(tasks) {
        let mut ids = window.to_vec();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), tasks, "out-of-turn handoff order {order:?}");
    }
    order
}
