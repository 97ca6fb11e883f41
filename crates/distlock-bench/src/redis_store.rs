//! Redis: distlock next to a raw redis-rs floor and the `rslock` crate, on
//! a redis-server this run started.

use std::sync::Arc;
use std::time::Duration;

use distlock::Locker;
use distlock_testkit::Fixture;
use distlock_testkit::redis::{RedisFixture, RedisServer};
use futures::future::BoxFuture;
use redis::Script;
use redis::aio::ConnectionManager;

use crate::runner::{Cycle, Subject, keys};
use crate::stores::Store;

/// The raw floor's token-checked delete.
const RAW_UNLOCK: &str =
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// distlock's own scripts, for a baseline that runs them by hand.
const ACQUIRE_LUA: &str = include_str!("../../distlock/src/backend/redis/acquire.lua");
const RELEASE_LUA: &str = include_str!("../../distlock/src/backend/redis/release.lua");

const TTL: Duration = Duration::from_secs(30);

pub struct RedisStore {
    server: RedisServer,
    fixture: RedisFixture,
}

impl RedisStore {
    pub fn start() -> Self {
        let server = RedisServer::start();
        let fixture = RedisFixture::on(&server.url());
        RedisStore { server, fixture }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    async fn admin(&self) -> ConnectionManager {
        redis::Client::open(self.url())
            .expect("valid URL")
            .get_connection_manager()
            .await
            .expect("connect to the bench redis-server")
    }
}

/// `SET key token NX PX 30000`, then the token-checked delete script, on
/// one ConnectionManager shared by all tasks (as distlock shares one).
async fn raw_cycle(mut conn: ConnectionManager, script: Arc<Script>, key: &str) {
    let token = distlock::OwnerToken::random().expect("token").to_hex();
    let set: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(TTL.as_millis() as u64)
        .query_async(&mut conn)
        .await
        .expect("SET NX PX");
    assert!(set.is_some(), "raw SET NX found {key} held");
    let deleted: i64 = script
        .key(key)
        .arg(&token)
        .invoke_async(&mut conn)
        .await
        .expect("unlock script");
    assert_eq!(deleted, 1);
}

/// rslock's `lock` + `unlock` on one of `keys`, through `manager`.
pub fn rslock_cycle(manager: rslock::LockManager, keys: &'static [String]) -> Cycle {
    Arc::new(move |k| {
        let manager = manager.clone();
        Box::pin(async move {
            let lock = manager
                .lock(keys[k].as_str(), TTL)
                .await
                .expect("rslock lock");
            manager.unlock(&lock).await;
        })
    })
}

/// distlock's acquire and release scripts run by hand: the store's share of
/// distlock's cycle, without the backend's and the engine's client code.
async fn same_scripts_cycle(
    mut conn: ConnectionManager,
    scripts: Arc<(Script, Script)>,
    key: &str,
) {
    let owner = distlock::OwnerToken::random().expect("token").to_hex();
    let lock = format!("{key}:lock");
    // The lean acquire (lock and counter), as distlock sends it when the
    // owner is not queued.
    let token: i64 = scripts
        .0
        .key(&lock)
        .key(format!("{key}:fence"))
        .arg(&owner)
        .arg(TTL.as_millis() as u64)
        .arg("-")
        .arg(1) // a waiting attempt, as the engine's obtain sends
        .arg(format!("{key}:released")) // where the grant is published
        .invoke_async(&mut conn)
        .await
        .expect("acquire script");
    assert!(token > 0, "granted");
    let released: i64 = scripts
        .1
        .key(&lock)
        .key(format!("{key}:fence"))
        .key(format!("{key}:queue"))
        .arg(&owner)
        .arg(format!("{key}:released"))
        .invoke_async(&mut conn)
        .await
        .expect("release script");
    assert_eq!(released, 1);
}

impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn locker<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Locker> {
        self.fixture.locker(namespace)
    }

    fn delete_behind_back<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, ()> {
        self.fixture.delete_behind_back(namespace, key)
    }

    fn baselines(&self, tasks: usize) -> BoxFuture<'_, Vec<Subject>> {
        Box::pin(async move {
            let conn = self.admin().await;
            let script = Arc::new(Script::new(RAW_UNLOCK));
            let raw_keys = keys("bench-raw:k", tasks);
            let raw: Cycle = Arc::new(move |k| {
                let (conn, script) = (conn.clone(), script.clone());
                Box::pin(async move { raw_cycle(conn, script, &raw_keys[k]).await })
            });
            let manager = rslock::LockManager::new(vec![self.url()]);
            let rslock = rslock_cycle(manager, keys("bench-rslock:k", tasks));
            let conn = self.admin().await;
            let scripts = Arc::new((Script::new(ACQUIRE_LUA), Script::new(RELEASE_LUA)));
            let same_keys = keys("bench-scripts:{k}", tasks);
            let same: Cycle = Arc::new(move |k| {
                let (conn, scripts) = (conn.clone(), scripts.clone());
                Box::pin(async move { same_scripts_cycle(conn, scripts, &same_keys[k]).await })
            });
            let (raw, rslock) = (
                Subject::new("raw redis-rs (SET NX PX + Lua DEL)", raw),
                Subject::new("rslock 0.10 (lock + unlock)", rslock),
            );
            // Issue 12's targets.
            let (raw, rslock) = if tasks == 1 {
                (
                    raw.target("redis uncontended: distlock / raw redis-rs floor", 1.05),
                    rslock.target("redis uncontended: distlock / rslock", 0.95),
                )
            } else {
                (
                    raw,
                    rslock.target(
                        format!("redis {tasks} tasks: distlock / rslock, wall per cycle"),
                        1.0,
                    ),
                )
            };
            vec![
                raw,
                rslock,
                Subject::new("raw redis-rs running distlock's 2 scripts", same),
            ]
        })
    }

    fn counters(&self) -> BoxFuture<'_, Vec<(String, f64)>> {
        Box::pin(async move { info_counters(&[self.url()]).await })
    }

    fn handoff_targets(&self) -> bool {
        true
    }
}

/// The servers' `INFO commandstats`, `INFO stats` and `INFO cpu`, added
/// up over `urls`: calls per command (commands a script runs count too),
/// commands processed, read events (a pipelined batch of commands is one
/// read) and the servers' CPU time.
pub async fn info_counters(urls: &[String]) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    let mut add = |name: String, v: f64| match out.iter_mut().find(|(n, _)| *n == name) {
        Some((_, total)) => *total += v,
        None => out.push((name, v)),
    };
    let mut cpu = 0.0;
    for url in urls {
        let mut conn = redis::Client::open(url.as_str())
            .expect("valid URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a bench redis-server");
        for section in ["commandstats", "stats", "cpu"] {
            let text: String = redis::cmd("INFO")
                .arg(section)
                .query_async(&mut conn)
                .await
                .expect("INFO");
            for line in text.lines() {
                if let Some((cmd, fields)) = line
                    .strip_prefix("cmdstat_")
                    .and_then(|l| l.split_once(':'))
                {
                    for field in fields.split(',') {
                        if let Some((k, v)) = field.split_once('=')
                            && k == "calls"
                        {
                            add(format!("{cmd} {k}"), v.parse().unwrap_or(0.0));
                        }
                    }
                } else if let Some((k, v)) = line.split_once(':')
                    && matches!(
                        k,
                        "total_commands_processed"
                            | "total_reads_processed"
                            | "total_net_input_bytes"
                    )
                {
                    add(k.to_owned(), v.trim().parse().unwrap_or(0.0));
                } else if let Some((k, v)) = line.split_once(':')
                    && matches!(k, "used_cpu_sys" | "used_cpu_user")
                {
                    cpu += v.trim().parse::<f64>().unwrap_or(0.0);
                }
            }
        }
    }
    add("#server CPU µs".to_owned(), cpu * 1e6);
    out
}
