//! Redis (cargo feature `redis`): `redis-server` processes on free loopback
//! ports, and the conformance fixture over them.
//!
//! [`shared_server`] starts one server per test process (nextest runs each
//! test in its own process; `cargo test` shares one server between all
//! tests of a binary, which namespaces keep apart). Tests that inject
//! faults start their own [`RedisServer`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use distlock::backend::Backend;
use distlock::backend::redis::{RedisBackend, RedisKeys};
use distlock::{Key, LockKey, Namespace};
use futures::future::BoxFuture;

use crate::certs::Certificates;
use crate::fixture::{Fixture, ReachableFixture};
use crate::server::{ServerProcess, free_port, require_binary};

/// A `redis-server` on a free loopback port, without persistence unless
/// asked for; killed when dropped or when the test process exits.
#[derive(Debug)]
pub struct RedisServer {
    process: ServerProcess,
    port: u16,
}

impl RedisServer {
    /// A server with `--save "" --appendonly no` (nothing persisted).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with extra `redis-server` arguments, which override the
    /// defaults (e.g. `["--appendonly", "yes", "--appendfsync", "always"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::launch("redis", "--port", extra)
    }

    /// A server that speaks only TLS on [`port`](Self::port) (so
    /// [`url`](Self::url) does not reach it), with the certificate
    /// `server.crt` and key `server.key` from `certs`, and `ca.crt` for
    /// client certificates, which it does not ask for.
    pub fn start_tls(certs: &std::path::Path) -> Self {
        Self::start_tls_with(certs, &[])
    }

    /// [`start_tls`](Self::start_tls) with extra `redis-server` arguments
    /// (e.g. `--tls-replication yes`). The fixtures' own admin connections
    /// to it speak TLS, trusting `ca.crt` (see [`admin_client`]).
    pub fn start_tls_with(certs: &std::path::Path, extra: &[&str]) -> Self {
        let mut options: Vec<String> = ["--port", "0"].map(String::from).to_vec();
        options.extend(tls_options(certs, "--"));
        options.extend(extra.iter().map(|s| s.to_string()));
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        let server = Self::launch("redis-tls", "--tls-port", &options);
        serves_tls(server.port, certs);
        server
    }

    /// Starts a server listening on a free port given by `port_option`.
    fn launch(name: &str, port_option: &str, extra: &[&str]) -> Self {
        let binary = require_binary("redis-server", "redis-server");
        let port = free_port();
        let mut args: Vec<String> = [
            port_option,
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = ServerProcess::start(name, binary, args, vec![port]);
        RedisServer { process, port }
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The URL with a user and password.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}/", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process, for faults (pause, resume, kill).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }

    /// Kills the server and starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.process.restart();
    }

    /// A fresh connection as the default (all-powerful) user.
    pub async fn admin(&self) -> ::redis::aio::MultiplexedConnection {
        ::redis::Client::open(self.url())
            .expect("valid URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis-server")
    }
}

/// The options that make a Redis (or sentinel) speak TLS with the
/// certificates in `certs` (see [`Certificates`](crate::certs::Certificates)),
/// without asking clients for certificates; `prefix` is `--` on a command
/// line, empty in a configuration file.
pub(crate) fn tls_options(certs: &std::path::Path, prefix: &str) -> Vec<String> {
    let path = |name: &str| certs.join(name).display().to_string();
    [
        ("tls-cert-file", path("server.crt")),
        ("tls-key-file", path("server.key")),
        ("tls-ca-cert-file", path("ca.crt")),
        ("tls-auth-clients", "no".into()),
    ]
    .into_iter()
    .flat_map(|(name, value)| [format!("{prefix}{name}"), value])
    .collect()
}

/// The CA (`ca.crt`) of each port this process serves TLS on.
fn tls_ports() -> &'static Mutex<BTreeMap<u16, PathBuf>> {
    static PORTS: OnceLock<Mutex<BTreeMap<u16, PathBuf>>> = OnceLock::new();
    PORTS.get_or_init(Mutex::default)
}

/// Notes that `port` speaks TLS with a certificate from `certs`' CA.
pub(crate) fn serves_tls(port: u16, certs: &std::path::Path) {
    tls_ports()
        .lock()
        .unwrap()
        .insert(port, certs.join("ca.crt"));
}

/// A client for admin commands to the Redis (or sentinel) on `port` of
/// loopback: over TLS trusting its CA when this process started it with
/// TLS ([`RedisServer::start_tls`]), else plain.
pub fn admin_client(port: u16) -> ::redis::RedisResult<::redis::Client> {
    let ca = tls_ports().lock().unwrap().get(&port).cloned();
    match ca {
        Some(ca) => ::redis::Client::build_with_tls(
            format!("rediss://127.0.0.1:{port}/"),
            ::redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(&ca).expect("the CA's certificate")),
            },
        ),
        None => ::redis::Client::open(format!("redis://127.0.0.1:{port}/")),
    }
}

/// The redis-server of this test process, started on first use.
pub fn shared_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

/// The conformance fixture: every locker gets its own [`RedisBackend`]
/// (its own connections, as separate processes would have).
#[derive(Clone, Debug)]
pub struct RedisFixture {
    url: Arc<str>,
    /// For the fixture's own commands (leftovers, deletes).
    admin: ::redis::Client,
}

impl RedisFixture {
    /// A fixture over [`shared_server`].
    pub async fn new() -> Self {
        Self::on(&shared_server().url())
    }

    /// A fixture over the server at `url`.
    pub fn on(url: &str) -> Self {
        RedisFixture {
            url: url.into(),
            admin: ::redis::Client::open(url).expect("valid URL"),
        }
    }

    /// A fixture over a TLS server of this test process (started on first
    /// use, its certificate from [`Certificates::shared`]), through
    /// `rediss://`: a client must trust [`Certificates::ca`].
    pub async fn tls() -> Self {
        static SERVER: OnceLock<RedisServer> = OnceLock::new();
        let server = SERVER.get_or_init(|| RedisServer::start_tls(Certificates::shared().dir()));
        RedisFixture {
            url: format!("rediss://127.0.0.1:{}/", server.port()).into(),
            admin: admin_client(server.port()).expect("a client for the TLS server"),
        }
    }

    /// A new backend (own connections) on this fixture's server.
    pub async fn redis_backend(&self) -> RedisBackend {
        RedisBackend::connect(&self.url)
            .await
            .expect("connect to the test redis-server")
    }
}

impl Fixture for RedisFixture {
    fn backend(&self) -> BoxFuture<'_, Arc<dyn Backend>> {
        Box::pin(async move { Arc::new(self.redis_backend().await) as Arc<dyn Backend> })
    }

    fn delete_behind_back<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let names = RedisKeys::new(&LockKey {
                namespace: Namespace::new(namespace).expect("valid namespace"),
                key: Key::new(key).expect("valid key"),
            });
            let mut conn = self
                .admin
                .get_multiplexed_async_connection()
                .await
                .expect("connect to the test redis-server");
            let deleted: i64 = ::redis::cmd("DEL")
                .arg(&names.lock)
                .query_async(&mut conn)
                .await
                .expect("DEL");
            assert_eq!(deleted, 1, "no live lock on {} to delete", names.lock);
        })
    }
}

impl ReachableFixture for RedisFixture {
    fn url(&self, namespace: &str) -> String {
        format!("{}?namespace={namespace}", self.url)
    }

    /// Every key of the namespace but the fencing counters.
    fn leftovers<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut conn = self
                .admin
                .get_multiplexed_async_connection()
                .await
                .expect("connect to the test redis-server");
            let mut keys: Vec<String> = ::redis::cmd("KEYS")
                .arg(format!("{namespace}:*"))
                .query_async(&mut conn)
                .await
                .expect("KEYS");
            keys.retain(|k| !k.contains("}:fence:"));
            keys.sort();
            keys
        })
    }
}
