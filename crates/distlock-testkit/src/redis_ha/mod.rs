//! Replicated Redis topologies on loopback (cargo feature `redis`): a
//! [`SentinelSet`] and a [`RedisCluster`], with the faults the tests
//! need (kill a master and wait for the failover, manual failover, slot
//! migration, pausing a replica).
//!
//! Every process is a [`RedisServer`](crate::redis::RedisServer) or a
//! [`ServerProcess`]: free loopback ports, a directory under the process's
//! temporary directory, killed when dropped or when the test process
//! exits. A missing binary fails naming its Debian package: `redis-server`
//! (which also runs the sentinels, as `redis-server sentinel.conf
//! --sentinel`, so the `redis-sentinel` package is not needed) and
//! `redis-tools` (for `redis-cli --cluster create`). Redis 7.0 or later
//! (`SENTINEL DEBUG`, `cluster-port`).
//!
//! Sentinels and cluster nodes save and fsync their configuration on every
//! change of topology. On a disk under heavy I/O one such fsync took over
//! 20 s here; with `TMPDIR` on a tmpfs (`TMPDIR=/dev/shm`) the disk is out
//! of the picture.
//!
//! # URLs
//!
//! The fixtures hand out the URLs the backend accepts for these topologies:
//!
//! - `redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME`: the sentinels
//!   to ask, and the name of the master they monitor ([`SentinelSet::url`]).
//! - `redis+cluster://HOST:PORT[,HOST:PORT...]`: seed nodes of a cluster;
//!   the client discovers the rest ([`RedisCluster::url`]).
//! - `rediss+sentinel://` and `rediss+cluster://` from
//!   [`SentinelSet::start_tls`] and [`RedisCluster::start_tls`]: every
//!   process speaks only TLS, replication and the cluster bus included,
//!   with certificates from a private CA
//!   ([`Certificates`](crate::certs::Certificates)), which a client trusts
//!   with `SSL_CERT_FILE`. Their shared instances
//!   ([`SentinelSet::shared_tls`], [`RedisCluster::shared_tls`]) serve
//!   every TLS test of a process.
//!
//! The fixtures' methods are `async` and open a fresh connection per admin
//! command (a fixture may be shared by tests on different runtimes); every
//! command has a deadline, so a paused or dying node cannot hang a test.

mod cluster;
mod fixture;
mod sentinel;

use std::future::Future;
use std::time::Duration;

use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, Pipeline, RedisError};

use crate::server::ServerProcess;

pub use cluster::{RedisCluster, SlotMigration};
pub use fixture::HaFixture;
pub use sentinel::{MASTER_NAME, SentinelSet};

/// The cluster slot of the Redis key `name`: CRC16 (XMODEM) of its hash
/// tag (the first non-empty `{...}`), or of the whole name, modulo 16384.
pub fn key_slot(name: &str) -> u16 {
    let bytes = name.as_bytes();
    let tag = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
        Some(&bytes[open + 1..open + 1 + close]).filter(|t| !t.is_empty())
    });
    crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(bytes)) % 16384
}

/// How long a probe (a read that [`settle`] repeats) may take: short, so
/// a stopped node is noticed and the probe retried.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a change (`SETSLOT`, `MIGRATE`, `FAILOVER`...) may take: a
/// node saves and fsyncs its configuration before it answers one, which
/// takes seconds on a busy disk. A change is not retried.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a fixture waits for a topology to settle (startup, failover,
/// migration) before it fails with the last reason it was not settled.
/// Typical settling takes 1–5 s; the rest is headroom for a loaded machine.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `cmd` on the Redis (or sentinel) at `127.0.0.1:port`, on a fresh
/// connection, within `within`.
async fn query<T: FromRedisValue>(port: u16, cmd: &Cmd, within: Duration) -> Result<T, String> {
    let mut one = redis::pipe();
    one.add_command(cmd.clone());
    let (reply,): (T,) = query_all(port, &one, within).await?;
    Ok(reply)
}

/// Runs the commands of `pipe` on the Redis (or sentinel) at
/// `127.0.0.1:port`, on one fresh connection, within `within`.
async fn query_all<T: FromRedisValue>(
    port: u16,
    pipe: &Pipeline,
    within: Duration,
) -> Result<T, String> {
    // redis-rs's own defaults (1 s to connect, 500 ms per reply) are
    // shorter than a node's fsync on a busy disk: `within` bounds it all.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(within))
        .set_response_timeout(Some(within));
    let work = async {
        let client = crate::redis::admin_client(port)?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        pipe.query_async(&mut conn).await
    };
    match tokio::time::timeout(within, work).await {
        Ok(result) => result.map_err(|e: RedisError| format!("127.0.0.1:{port}: {e}")),
        Err(_) => Err(format!("127.0.0.1:{port} did not answer within {within:?}")),
    }
}

/// Whether the master at `127.0.0.1:port` streams its writes to
/// `replicas` replicas, which acknowledge them: a write of `key` (set and
/// deleted again, in one script) and `WAIT replicas` on one connection.
///
/// `INFO replication` cannot tell: a replica reports its link `up` once
/// it has loaded the master's snapshot, and the master lists it `online`
/// once the transfer ended, but Redis 7.0 streams writes to it only after
/// its next `REPLCONF ACK`. When the replica's first ACK comes before the
/// master has noted the transfer's end, it is ignored, and the next comes
/// from the replica's once-a-second cron: in 3 of 5 fresh master–replica
/// pairs here the first `WAIT` took 980–1000 ms (idle machine, tmpfs),
/// so the first grants on a fresh topology failed their 500 ms replica
/// timeout, whatever the load.
async fn streams_to(port: u16, key: &str, replicas: usize) -> Result<(), String> {
    let mut probe = redis::pipe();
    probe
        .cmd("EVAL")
        .arg("redis.call('SET', KEYS[1], '1') redis.call('DEL', KEYS[1])")
        .arg(1)
        .arg(key)
        .ignore()
        .cmd("WAIT")
        .arg(replicas)
        .arg(PROBE_ACK_MS);
    let (acked,): (usize,) = query_all(port, &probe, PROBE_TIMEOUT).await?;
    if acked >= replicas {
        Ok(())
    } else {
        Err(format!(
            "127.0.0.1:{port}: {acked} of {replicas} replicas acknowledged a write within {PROBE_ACK_MS} ms"
        ))
    }
}

/// How long [`streams_to`] waits for acknowledgements: a round trip on a
/// loaded machine; [`settle`] asks again if it was not enough.
const PROBE_ACK_MS: u64 = 100;

/// A probe: `cmd` within [`PROBE_TIMEOUT`], for [`settle`]'s checks.
async fn ask<T: FromRedisValue>(port: u16, cmd: &Cmd) -> Result<T, String> {
    query(port, cmd, PROBE_TIMEOUT).await
}

/// A change: `cmd` to `server` (on its first port) within
/// [`CHANGE_TIMEOUT`]; panics, naming `what`, with the server's state and
/// log if it fails.
async fn tell<T: FromRedisValue>(server: &ServerProcess, cmd: &Cmd, what: &str) -> T {
    match query(server.ports()[0], cmd, CHANGE_TIMEOUT).await {
        Ok(reply) => reply,
        Err(e) => {
            let log = server.log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "{what}: {e}\n(the server is {}; the end of its log:)\n{}",
                if server.is_alive() { "running" } else { "dead" },
                tail.join("\n")
            )
        }
    }
}

/// One field of an `INFO` (or `CLUSTER INFO`) reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim())
    })
}

/// Polls `check` until it returns `Ok` and returns that value; panics with
/// `what` and the last reason it gave if that takes over `within`.
async fn settle<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = tokio::time::Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(reason) if start.elapsed() > within => {
                panic!("{what}: not done within {within:?}; last: {reason}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// Runs `work` to completion on a runtime of its own, on a thread of its
/// own: starts a fixture kept in a `static` from synchronous code
/// (`OnceLock::get_or_init`), whether or not the caller is on a runtime
/// (blocking on one from inside another panics).
fn on_own_runtime<T: Send>(work: impl Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the fixture")
                .block_on(work)
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `redis-server` options every node of both topologies gets: replicas
/// sync at once (Redis 7 waits 5 s by default before a diskless sync, to
/// batch replicas), which matters at startup and after every failover.
const NODE_OPTIONS: &[&str] = &["--repl-diskless-sync-delay", "0"];
