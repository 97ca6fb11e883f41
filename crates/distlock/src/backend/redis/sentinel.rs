//! Following the master a set of sentinels names.
//!
//! Commands go to the current master through a [`ConnectionManager`]. A
//! command that fails in a way that says the master may have moved (the
//! connection failed or timed out, or the server answers `READONLY`: it
//! was demoted to a replica, or `MASTERDOWN`) asks the sentinels again, in
//! a task of its own so that a caller giving up does not abandon the
//! lookup half-way; the failed command's error still reaches the engine,
//! whose retry rules apply, and its next attempt goes to the new master.
//! The subscription connection follows through [`SentinelMaster::changes`].

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ::redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use ::redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use ::redis::{
    Client, Cmd, ConnectionInfo, ErrorKind, Pipeline, RedisError, RedisResult, ServerErrorKind,
    Value, cmd,
};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

use super::replica_view::live_sentinel_replicas;

/// Sentinels are asked at most this often while the master they name
/// keeps failing (it is down, but no failover has happened yet): every
/// failing command would otherwise ask them again.
const MIN_LOOKUP_INTERVAL: Duration = Duration::from_millis(100);

/// The master a set of sentinels names, and a connection to it.
pub(super) struct SentinelMaster {
    lookup: tokio::sync::Mutex<Lookup>,
    name: String,
    node: SentinelNodeConnectionInfo,
    config: ConnectionManagerConfig,
    /// Bounds one lookup: asking the sentinels and connecting.
    bound: Duration,
    current: RwLock<Arc<Current>>,
    changed: watch::Sender<u64>,
    db: i64,
    /// For counting the master's replicas (see `replica_view`).
    sentinels: Vec<ConnectionInfo>,
    /// The connection to the sentinel that last answered a count.
    asked: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

struct Lookup {
    sentinel: Sentinel,
    last: Option<Instant>,
}

/// The master as last looked up.
pub(super) struct Current {
    pub(super) client: Client,
    pub(super) conn: ConnectionManager,
    /// Counts the masters followed, from 0.
    pub(super) generation: u64,
}

impl SentinelMaster {
    /// Asks `sentinels` for the master called `name` and connects to it;
    /// `bound` bounds each later lookup.
    ///
    /// # Errors
    ///
    /// What the sentinels or the master answered (an unknown master name
    /// is [`ErrorKind::MasterNameNotFoundBySentinel`]).
    pub(super) async fn connect(
        sentinels: Vec<ConnectionInfo>,
        name: String,
        node: SentinelNodeConnectionInfo,
        db: i64,
        config: ConnectionManagerConfig,
        bound: Duration,
    ) -> RedisResult<Self> {
        let mut lookup = Lookup {
            sentinel: Sentinel::build(sentinels.clone())?,
            last: None,
        };
        // The caller bounds this by its connect timeout.
        let (client, conn) = find(&mut lookup.sentinel, &name, &node, &config).await?;
        lookup.last = Some(Instant::now());
        Ok(SentinelMaster {
            lookup: tokio::sync::Mutex::new(lookup),
            name,
            node,
            config,
            bound,
            current: RwLock::new(Arc::new(Current {
                client,
                conn,
                generation: 0,
            })),
            changed: watch::channel(0).0,
            db,
            sentinels,
            asked: tokio::sync::Mutex::new(None),
        })
    }

    pub(super) fn current(&self) -> Arc<Current> {
        // Every update replaces the Arc whole.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn db(&self) -> i64 {
        self.db
    }

    /// Ticks (with the new generation) whenever another master is
    /// followed.
    pub(super) fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(super) async fn run(self: &Arc<Self>, cmd: &Cmd) -> RedisResult<Value> {
        let current = self.current();
        let result = current.conn.clone().req_packed_command(cmd).await;
        self.check(&current, result.as_ref().err()).await;
        result
    }

    pub(super) async fn run_pipeline(
        self: &Arc<Self>,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let current = self.current();
        let result = current
            .conn
            .clone()
            .req_packed_commands(pipeline, offset, count)
            .await;
        self.check(&current, result.as_ref().err()).await;
        result
    }

    /// After a command on `current` failed with `error`: looks the master
    /// up again if the error says it may have moved.
    async fn check(self: &Arc<Self>, current: &Current, error: Option<&RedisError>) {
        if error.is_some_and(points_elsewhere) {
            let me = self.clone();
            let seen = current.generation;
            // The lookup finishes even if this caller is dropped.
            let _ = tokio::spawn(async move { me.follow(seen).await }).await;
        }
    }

    /// Asks the sentinels for the master, unless another caller already
    /// followed a newer one than generation `seen` (or asked very
    /// recently), and switches to it if it moved.
    pub(super) async fn follow(&self, seen: u64) {
        self.ask(seen, false).await;
    }

    /// Whether the sentinels still name the master of generation `seen`:
    /// asks them at once (bounded), and follows the master if it moved.
    /// False also when they cannot be asked: not confirmed.
    pub(super) async fn confirm(&self, seen: u64) -> bool {
        self.ask(seen, true).await == Some(true)
    }

    /// [`follow`](Self::follow), `now` even if the sentinels were asked
    /// very recently; returns `Some(true)` if they named the master of
    /// generation `seen` again, `Some(false)` if another master is
    /// followed now, `None` if they were not asked or did not answer.
    async fn ask(&self, seen: u64, now: bool) -> Option<bool> {
        let mut lookup = self.lookup.lock().await;
        if self.current().generation != seen {
            return Some(false);
        }
        if !now
            && lookup
                .last
                .is_some_and(|last| last.elapsed() < MIN_LOOKUP_INTERVAL)
        {
            return None;
        }
        lookup.last = Some(Instant::now());
        let old = self.current();
        let work = async {
            let client = self.lookup_client(&mut lookup.sentinel).await?;
            if client.get_connection_info().addr() == old.client.get_connection_info().addr() {
                // Still this master: its manager reconnects by itself.
                return Ok(None);
            }
            let conn =
                ConnectionManager::new_with_config(client.clone(), self.config.clone()).await?;
            Ok::<_, RedisError>(Some((client, conn)))
        };
        match timeout(self.bound, work).await {
            Ok(Ok(Some((client, conn)))) => {
                tracing::info!(
                    from = %old.client.get_connection_info().addr(),
                    to = %client.get_connection_info().addr(),
                    master = self.name,
                    "distlock: following the Redis master to its new address"
                );
                let generation = old.generation + 1;
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Current {
                    client,
                    conn,
                    generation,
                });
                self.changed.send_replace(generation);
                Some(false)
            }
            Ok(Ok(None)) => Some(true),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, master = self.name, "distlock: asking the sentinels for the master failed");
                None
            }
            Err(_) => {
                tracing::debug!(
                    master = self.name,
                    "distlock: asking the sentinels for the master timed out"
                );
                None
            }
        }
    }

    /// How many replicas of the master the sentinels deem alive (see
    /// [`live_sentinel_replicas`]), asking one sentinel after another,
    /// each within the lookup bound; `None` if none answered.
    pub(super) async fn live_replicas(&self) -> Option<usize> {
        let mut asked = self.asked.lock().await;
        let mut ask = cmd("SENTINEL");
        ask.arg("REPLICAS").arg(&self.name);
        if let Some(conn) = asked.as_mut()
            && let Ok(Ok(reply)) = timeout(self.bound, ask.query_async::<Value>(conn)).await
        {
            return live_sentinel_replicas(&reply);
        }
        *asked = None;
        for info in &self.sentinels {
            let attempt = async {
                let mut conn = Client::open(info.clone())?
                    .get_multiplexed_async_connection()
                    .await?;
                let reply: Value = ask.query_async(&mut conn).await?;
                Ok::<_, RedisError>((conn, reply))
            };
            match timeout(self.bound, attempt).await {
                Ok(Ok((conn, reply))) => {
                    *asked = Some(conn);
                    return live_sentinel_replicas(&reply);
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, master = self.name, "distlock: a sentinel did not list the replicas");
                }
                Err(_) => {
                    tracing::debug!(
                        master = self.name,
                        "distlock: a sentinel did not list the replicas in time"
                    );
                }
            }
        }
        None
    }

    async fn lookup_client(&self, sentinel: &mut Sentinel) -> RedisResult<Client> {
        sentinel
            .async_master_for(&self.name, Some(&self.node))
            .await
    }
}

/// The master's client and a connection manager over it.
async fn find(
    sentinel: &mut Sentinel,
    name: &str,
    node: &SentinelNodeConnectionInfo,
    config: &ConnectionManagerConfig,
) -> RedisResult<(Client, ConnectionManager)> {
    let client = sentinel.async_master_for(name, Some(node)).await?;
    let conn = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
    Ok((client, conn))
}

/// Whether `e` says the master may be elsewhere now.
pub(super) fn points_elsewhere(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN"))
}
