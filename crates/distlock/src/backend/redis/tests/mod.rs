//! Permits (semaphores, reader-writer locks) against a real redis-server:
//! one per test process, or a fresh one for tests that count commands.
//! Separate lockers get separate backends (own connections), as separate
//! processes would.

mod leases;
mod waiting;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use distlock_testkit::server::{ServerProcess, free_port, require_binary};
use tokio::time::{Instant, sleep, timeout};

use super::{RedisBackend, RedisBackendBuilder, RedisKeys};
use crate::backend::{AcquireRequest, Attempt, Backend, Renewal};
use crate::{
    Error, Key, LeaseRef, LockKey, Locker, Namespace, ObtainOptions, OwnerToken, RetryStrategy,
    Share,
};

/// Extra time allowed for scheduling on a loaded machine.
const SLACK: Duration = Duration::from_millis(700);

struct Server {
    _process: ServerProcess,
    url: String,
}

impl Server {
    fn start() -> Self {
        let port = free_port();
        let args = ["--port", &port.to_string(), "--bind", "127.0.0.1"]
            .into_iter()
            .chain(["--save", "", "--appendonly", "no"])
            .map(str::to_owned)
            .collect();
        let binary = require_binary("redis-server", "redis-server");
        Server {
            _process: ServerProcess::start("redis-permits", binary, args, vec![port]),
            url: format!("redis://127.0.0.1:{port}/"),
        }
    }

    async fn admin(&self) -> ::redis::aio::MultiplexedConnection {
        ::redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn query<T: ::redis::FromRedisValue>(&self, cmd: &mut ::redis::Cmd) -> T {
        cmd.query_async(&mut self.admin().await).await.unwrap()
    }

    /// Every key of `namespace` but the fencing counters.
    async fn leftovers(&self, namespace: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .query(::redis::cmd("KEYS").arg(format!("{namespace}:*")))
            .await;
        keys.retain(|k| !k.contains("}:fence:"));
        keys
    }

    /// How many times the server ran `command` (INFO commandstats).
    async fn calls(&self, command: &str) -> u64 {
        let info: String = self.query(::redis::cmd("INFO").arg("commandstats")).await;
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    /// Waits (bounded) until `check` holds.
    async fn until<F: AsyncFn(&Server) -> bool>(&self, what: &str, check: F) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check(self).await {
            assert!(Instant::now() < deadline, "never: {what}");
            sleep(Duration::from_millis(5)).await;
        }
    }

    fn backend(&self) -> RedisBackendBuilder {
        RedisBackend::builder(::redis::Client::open(self.url.as_str()).unwrap())
    }

    async fn locker(&self, namespace: &str) -> Locker {
        let backend = self.backend().build().await.unwrap();
        Locker::builder(Arc::new(backend))
            .namespace(namespace)
            .build()
            .unwrap()
    }
}

/// The redis-server of this test process.
fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start)
}

fn lock_key(namespace: &str, key: &str) -> LockKey {
    LockKey {
        namespace: Namespace::new(namespace).unwrap(),
        key: Key::new(key).unwrap(),
    }
}

fn names(namespace: &str, key: &str) -> RedisKeys {
    RedisKeys::new(&lock_key(namespace, key))
}

fn request(namespace: &str, key: &str, share: Share, ttl: Duration) -> AcquireRequest {
    AcquireRequest::new(lock_key(namespace, key), OwnerToken::random().unwrap(), ttl).share(share)
}

async fn granted(backend: &RedisBackend, req: &AcquireRequest) -> u64 {
    match backend.try_acquire(req).await.unwrap() {
        Attempt::Granted { fencing_token } => fencing_token,
        other => panic!("not granted: {other:?}"),
    }
}

async fn queued(server: &Server, namespace: &str, key: &str) -> i64 {
    server
        .query(::redis::cmd("ZCARD").arg(names(namespace, key).queue))
        .await
}

/// Releases `held` once `waiter`, a task waiting for `key`, queued behind
/// it; returns what the waiter then got.
async fn hand_over(
    server: &Server,
    (namespace, key): (&str, &str),
    held: crate::Lock,
    waiter: tokio::task::JoinHandle<crate::Result<crate::Lock>>,
) -> crate::Lock {
    server
        .until("the waiter queued", async |s| {
            queued(s, namespace, key).await == 1
        })
        .await;
    held.release().await.unwrap();
    timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

fn waiting(max: Duration) -> ObtainOptions {
    ObtainOptions::new().wait(max)
}
