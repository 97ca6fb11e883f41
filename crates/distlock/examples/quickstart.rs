//! Several workers contend for one lock; each writes to a "fenced" resource
//! that rejects stale fencing tokens. Runs on the embedded memory store,
//! no server needed:
//!
//! ```text
//! cargo run --example quickstart
//! cargo run --example quickstart -- redis://127.0.0.1:6379   # any backend URL
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use distlock::{Locker, ObtainOptions};

/// A resource that accepts a write only with a token at least as high as
/// any it has seen: what makes a paused, stale holder harmless.
#[derive(Default)]
struct FencedResource {
    highest: AtomicU64,
}

impl FencedResource {
    fn write(&self, token: u64) -> bool {
        self.highest.fetch_max(token, Ordering::SeqCst) <= token
    }
}

#[tokio::main]
async fn main() -> distlock::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let locker = Locker::from_url(&url).await?;
    println!("distlock quickstart on {} ({url})", locker.backend_name());
    let resource = Arc::new(FencedResource::default());

    let workers: Vec<_> = (1..=4)
        .map(|worker| {
            let (locker, resource) = (locker.clone(), resource.clone());
            tokio::spawn(async move {
                for round in 1..=3 {
                    let opts = ObtainOptions::new()
                        .ttl(Duration::from_secs(5))
                        .wait(Duration::from_secs(10))
                        .metadata(format!("worker-{worker}"));
                    let lock = locker.obtain_with("quickstart/report", opts).await?;
                    let refresher = lock.start_refresh(|e| eprintln!("refresh failed: {e}"));
                    let accepted = resource.write(lock.fencing_token());
                    println!(
                        "worker {worker} round {round}: holds the lock with fencing token {:>2} (write {})",
                        lock.fencing_token(),
                        if accepted { "accepted" } else { "REJECTED" }
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    refresher.stop().await;
                    lock.release().await?;
                }
                distlock::Result::Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker panicked")?;
    }
    let free = !locker.is_locked("quickstart/report").await?;
    println!("all workers done; lock free again: {free}");
    locker.close().await
}
