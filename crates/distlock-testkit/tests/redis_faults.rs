//! Redis-specific behaviour under faults. Every test starts its own
//! redis-server, so killing, pausing or reconfiguring it disturbs nobody.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock::backend::redis::{RedisBackend, RedisKeys};
use distlock::backend::{AcquireRequest, Attempt, Backend, Renewal};
use distlock::{
    Error, Key, LockKey, Locker, LostReason, Namespace, ObtainOptions, OwnerToken, RetryStrategy,
};
use distlock_testkit::certs::Certificates;
use distlock_testkit::fairness::assert_served_in_turn;
use distlock_testkit::redis::RedisServer;
use distlock_testkit::refusal::{assert_refused_at_once, first_error_at_once};
use tokio::time::{Instant, sleep, timeout};

/// Extra time allowed for scheduling on a loaded machine.
const SLACK: Duration = Duration::from_millis(500);
const MS: Duration = Duration::from_millis(1);

async fn locker(url: &str, namespace: &str) -> Locker {
    Locker::builder(Arc::new(RedisBackend::connect(url).await.unwrap()))
        .namespace(namespace)
        .build()
        .unwrap()
}

/// `key`, waiting up to 5 s for the server (it may be restarting).
async fn obtain_soon(locker: &Locker, key: &str) -> distlock::Lock {
    timeout(
        Duration::from_secs(10),
        locker.obtain_with(key, ObtainOptions::new().wait(Duration::from_secs(5))),
    )
    .await
    .unwrap()
    .unwrap()
}

fn names(namespace: &str, key: &str) -> RedisKeys {
    RedisKeys::new(&LockKey {
        namespace: Namespace::new(namespace).unwrap(),
        key: Key::new(key).unwrap(),
    })
}

async fn query<T: redis::FromRedisValue>(server: &RedisServer, cmd: &mut redis::Cmd) -> T {
    cmd.query_async(&mut server.admin().await).await.unwrap()
}

/// Waits (bounded) until `channel` has `count` subscribers.
async fn await_subscribers(server: &RedisServer, channel: &str, count: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, n): (String, i64) =
            query(server, redis::cmd("PUBSUB").arg("NUMSUB").arg(channel)).await;
        if n == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{channel} has {n} subscribers, expected {count}"
        );
        sleep(Duration::from_millis(5)).await;
    }
}

/// How many times the server ran `command` (from INFO commandstats).
async fn calls(server: &RedisServer, command: &str) -> u64 {
    let info: String = query(server, redis::cmd("INFO").arg("commandstats")).await;
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Waits (bounded) until the server ran `command` more than `before` times.
async fn await_calls(server: &RedisServer, command: &str, before: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls(server, command).await <= before {
        assert!(Instant::now() < deadline, "no {command} after {before}");
        sleep(Duration::from_millis(5)).await;
    }
}

/// A restart without persistence loses every lock: the refresher learns it
/// (NotHeld, not a hang or a timeout) and `lost()` fires well before the
/// TTL; a refresh of another lock is NotHeld; the key can be taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_persistence_reports_not_held_and_fires_lost() {
    let mut server = RedisServer::start();
    let locker = locker(&server.url(), "restart").await;
    let ttl = Duration::from_secs(3);
    let refreshed = locker
        .obtain_with("a", ObtainOptions::new().ttl(ttl))
        .await
        .unwrap();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let _refresher = refreshed.start_refresh(move |e| seen.lock().unwrap().push(e.is_not_held()));
    let lost = tokio::spawn(refreshed.lost());
    let idle = locker
        .obtain_with("b", ObtainOptions::new().ttl(Duration::from_secs(30)))
        .await
        .unwrap();
    let old_token = idle.fencing_token();

    let restarted = Instant::now();
    server.restart();

    let reason = timeout(ttl, lost)
        .await
        .expect("lost() fired before the TTL")
        .unwrap();
    assert_eq!(reason, LostReason::NotHeld);
    assert!(
        restarted.elapsed() < ttl,
        "lost() after {:?}",
        restarted.elapsed()
    );
    assert_eq!(
        errors.lock().unwrap().last(),
        Some(&true),
        "the refresher saw NotHeld"
    );
    match timeout(Duration::from_secs(5), idle.refresh()).await {
        Ok(Err(Error::NotHeld { .. })) => {}
        other => panic!("expected NotHeld, got {other:?}"),
    }
    assert!(idle.is_lost());
    let again = timeout(Duration::from_secs(5), locker.try_obtain("b"))
        .await
        .unwrap()
        .unwrap();
    // The counter is gone with the data, but tokens never go back.
    assert!(again.fencing_token() > old_token);
    again.release().await.unwrap();
}

/// Whatever Redis loses — every key (FLUSHALL), the counter key alone, all
/// of its data in a restart without persistence — each later token is
/// greater than every earlier one: what a fenced resource relies on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_never_go_back_when_redis_loses_the_counter() {
    let mut server = RedisServer::start();
    let namespace = "lossy";
    let locker = locker(&server.url(), namespace).await;
    let fence = names(namespace, "k").fence;
    let mut highest = 0;
    let mut grant_twice = async |locker: &Locker, after: &str| {
        for _ in 0..2 {
            let lock = obtain_soon(locker, "k").await;
            assert!(
                lock.fencing_token() > highest,
                "token {} after {after}, but {highest} was given out before",
                lock.fencing_token()
            );
            highest = lock.fencing_token();
            lock.release().await.unwrap();
        }
    };
    grant_twice(&locker, "nothing").await;
    let mut admin = server.admin().await;
    let _: () = ::redis::cmd("FLUSHALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    grant_twice(&locker, "FLUSHALL").await;
    let _: () = ::redis::cmd("DEL")
        .arg(&fence)
        .query_async(&mut admin)
        .await
        .unwrap();
    grant_twice(&locker, "the counter was deleted").await;
    server.restart();
    grant_twice(&locker, "a restart without persistence").await;
}

/// With `appendonly yes` and `appendfsync always`, fencing tokens keep
/// increasing across a restart (what the backend's docs promise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_survive_a_restart_with_aof_always() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let locker = locker(&server.url(), "aof").await;
    let mut last = 0;
    for _ in 0..3 {
        let lock = locker.obtain("k").await.unwrap();
        last = lock.fencing_token();
        lock.release().await.unwrap();
    }
    server.restart();
    let lock = obtain_soon(&locker, "k").await;
    assert!(
        lock.fencing_token() > last,
        "{} after {last}",
        lock.fencing_token()
    );
    lock.release().await.unwrap();
}

/// A SIGSTOPped server: every operation fails with a timeout within its
/// bound, the refresher keeps trying, and `lost()` fires at the validity
/// deadline. After SIGCONT the store works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_times_out_within_bounds_and_lost_fires_by_the_deadline() {
    let server = RedisServer::start();
    let op_timeout = Duration::from_millis(300);
    let locker = Locker::builder(Arc::new(
        RedisBackend::connect(&server.url()).await.unwrap(),
    ))
    .namespace("paused")
    .op_timeout(op_timeout)
    .build()
    .unwrap();
    let ttl = Duration::from_millis(1500);
    let lock = locker
        .obtain_with("k", ObtainOptions::new().ttl(ttl))
        .await
        .unwrap();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let _refresher = lock.start_refresh(move |e| {
        seen.lock()
            .unwrap()
            .push((e.is_transient(), e.is_not_held()))
    });

    server.process().pause();

    for op in ["inspect", "try_obtain"] {
        let start = Instant::now();
        let err = match op {
            "inspect" => locker.inspect("k").await.unwrap_err(),
            _ => locker.try_obtain("other").await.unwrap_err(),
        };
        let took = start.elapsed();
        assert!(
            matches!(err, Error::Timeout { .. }),
            "{op}: expected a timeout, got {err}"
        );
        assert!(took < op_timeout + SLACK, "{op} took {took:?}");
    }
    // Any reply in flight at the pause has arrived by now.
    let deadline = lock.valid_until();
    let reason = timeout(ttl + SLACK, lock.lost())
        .await
        .expect("lost() fired");
    let fired = Instant::now();
    assert_eq!(reason, LostReason::Expired);
    assert!(
        // Armed EXPIRY_LEAD early, so that it is not late.
        fired + distlock::EXPIRY_LEAD >= deadline && fired < deadline + SLACK / 2,
        "lost() {:?} after the deadline",
        fired - deadline
    );
    {
        let errors = errors.lock().unwrap();
        // Timeouts while it could still help, then (maybe already) the loss.
        assert!(
            errors.first().is_some_and(|(transient, _)| *transient),
            "the refresher reported its failures: {errors:?}"
        );
        assert!(
            errors
                .iter()
                .all(|(transient, not_held)| *transient || *not_held),
            "{errors:?}"
        );
    }

    server.process().resume();
    let fresh = timeout(
        Duration::from_secs(10),
        locker.obtain_with("k", ObtainOptions::new().wait(Duration::from_secs(5))),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(fresh.fencing_token() > lock.fencing_token());
    fresh.release().await.unwrap();
}

/// `CLIENT KILL` of the command and subscription connections: the next
/// operation reconnects, and the subscription comes back by itself and
/// still wakes waiters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_reconnect() {
    let server = RedisServer::start();
    let (a, b) = (
        locker(&server.url(), "kill").await,
        locker(&server.url(), "kill").await,
    );
    let held = a.obtain("k").await.unwrap();
    let waiter = tokio::spawn(async move {
        let opts = ObtainOptions::new()
            .wait(Duration::from_secs(30))
            .retry(RetryStrategy::linear(Duration::from_secs(10)));
        let lock = b.obtain_with("k", opts).await.unwrap();
        let at = Instant::now();
        lock.release().await.unwrap();
        at
    });
    let channel = names("kill", "k").channel;
    // Parked: subscribed, and its check that the key is still held done.
    await_subscribers(&server, &channel, 1).await;
    await_calls(&server, "exists", 0).await;
    let exists_before = calls(&server, "exists").await;

    let killed: i64 = query(
        &server,
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes"),
    )
    .await;
    assert!(killed >= 2, "killed {killed} command connections");
    let killed: i64 = query(
        &server,
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
    )
    .await;
    assert_eq!(killed, 1, "one subscription connection for b");

    // The next operations reconnect.
    timeout(Duration::from_secs(3), held.refresh())
        .await
        .expect("refresh did not hang")
        .expect("refresh reconnected");
    let holder = timeout(Duration::from_secs(3), a.inspect("k"))
        .await
        .unwrap()
        .unwrap()
        .expect("still held");
    assert_eq!(holder.fencing_token, held.fencing_token());

    // The subscription is back; the waiter is parked on it again (it
    // re-checked the key after re-subscribing), and a release wakes it.
    await_subscribers(&server, &channel, 1).await;
    await_calls(&server, "exists", exists_before).await;
    let released = Instant::now();
    held.release().await.unwrap();
    let obtained = timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(
        obtained - released < Duration::from_millis(500),
        "handoff took {:?} with a 10 s retry delay",
        obtained - released
    );
}

/// A waiter in another process (another backend) is woken by the release's
/// publish, well under its retry delay, and not by polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_is_woken_by_pubsub_well_under_the_retry_delay() {
    let server = RedisServer::start();
    let (a, b) = (
        locker(&server.url(), "wake").await,
        locker(&server.url(), "wake").await,
    );
    let retry_delay = Duration::from_secs(5);
    let channel = names("wake", "k").channel;
    let mut handoffs = Vec::new();
    for _ in 0..5 {
        let held = a.obtain("k").await.unwrap();
        let exists_before = calls(&server, "exists").await;
        let b = b.clone();
        let waiter = tokio::spawn(async move {
            let opts = ObtainOptions::new()
                .wait(Duration::from_secs(30))
                .retry(RetryStrategy::linear(retry_delay));
            let lock = b.obtain_with("k", opts).await.unwrap();
            let at = Instant::now();
            lock.release().await.unwrap();
            at
        });
        // Parked: subscribed, and its check that the key is still held done.
        await_subscribers(&server, &channel, 1).await;
        await_calls(&server, "exists", exists_before).await;
        let released = Instant::now();
        held.release().await.unwrap();
        let obtained = timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        handoffs.push(obtained - released);
    }
    let worst = handoffs.iter().max().unwrap();
    assert!(
        *worst < Duration::from_millis(250),
        "handoffs {handoffs:?} with a {retry_delay:?} retry delay"
    );
}

/// A user limited to `~app:*` keys, `&app:*` channels and the commands
/// `required_acl` lists can do everything; users without them get an error
/// that says what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_limited_user_works_and_others_get_a_clear_error() {
    let server = RedisServer::start();
    let app = Namespace::new("app").unwrap();
    let other = Namespace::new("other").unwrap();
    for (user, rules) in [
        ("locker", RedisBackend::required_acl(&app)),
        ("outsider", RedisBackend::required_acl(&other)),
        ("nocommands", "~app:* &app:* +ping".to_owned()),
    ] {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg(user)
            .arg("reset")
            .arg("on")
            .arg(">secret");
        for rule in rules.split_whitespace() {
            cmd.arg(rule);
        }
        let _: () = query(&server, &mut cmd).await;
    }
    let url = |user: &str| format!("{}?namespace=app", server.url_as(user, "secret"));

    // Works end to end, waking included.
    let a = Locker::from_url(&url("locker")).await.unwrap();
    let b = Locker::from_url(&url("locker")).await.unwrap();
    let held = a
        .obtain_with("k", ObtainOptions::new().metadata("m"))
        .await
        .unwrap();
    let holder = b.inspect("k").await.unwrap().expect("held");
    assert_eq!(holder.fencing_token, held.fencing_token());
    assert!(b.try_obtain("k").await.unwrap_err().is_not_obtained());
    held.refresh().await.unwrap();
    let exists_before = calls(&server, "exists").await;
    let waiter = tokio::spawn(async move {
        let opts = ObtainOptions::new()
            .wait(Duration::from_secs(30))
            .retry(RetryStrategy::linear(Duration::from_secs(10)));
        let lock = b.obtain_with("k", opts).await.unwrap();
        let at = Instant::now();
        lock.release().await.unwrap();
        at
    });
    await_subscribers(&server, &names("app", "k").channel, 1).await;
    await_calls(&server, "exists", exists_before).await;
    let released = Instant::now();
    held.release().await.unwrap();
    let obtained = timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(obtained - released < Duration::from_millis(500));

    // CONFIG is not granted: unknown policy, not an error.
    let limited = RedisBackend::connect(&server.url_as("locker", "secret"))
        .await
        .unwrap();
    assert_eq!(limited.maxmemory_policy(), None);
    let admin = RedisBackend::connect(&server.url()).await.unwrap();
    assert_eq!(admin.maxmemory_policy(), Some("noeviction"));

    for (user, says) in [("outsider", "key"), ("nocommands", "evalsha")] {
        let locker = Locker::from_url(&url(user)).await.unwrap();
        let start = Instant::now();
        for err in [
            locker.try_obtain("k").await.unwrap_err(),
            locker.inspect("k").await.unwrap_err(),
            locker
                .obtain_with("k", ObtainOptions::new().wait(Duration::from_secs(30)))
                .await
                .unwrap_err(),
        ] {
            let msg = err.to_string();
            assert!(matches!(err, Error::Refused { .. }), "{user}: {msg}");
            assert!(
                msg.contains("the Redis ACL denied")
                    && msg.contains(says)
                    && msg.contains("the user needs: ~app:* &app:* +evalsha"),
                "{user}: {msg}"
            );
        }
        // A refusal is final: not retried for an op timeout or a wait.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
}

/// Credentials the server turns down are a refusal naming the user,
/// reported at once rather than retried until the wait runs out: a wrong
/// password, an unknown user, no password where one is required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_at_once() {
    let server = RedisServer::start_with(&["--requirepass", "secret"]);
    for (url, says) in [
        (server.url_as("default", "hunter2"), "user \"default\""),
        (server.url_as("nobody", "secret"), "user \"nobody\""),
        (server.url(), "requires a password"),
    ] {
        let msg = assert_refused_at_once(&url, &[says]).await;
        assert!(!msg.contains("hunter2"), "{msg}");
    }
}

/// A database index the server does not have (`/99` with the default
/// `databases 16`), or one that is not a number, is an invalid URL,
/// reported at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_the_server_lacks_is_an_invalid_url() {
    let server = RedisServer::start();
    for (db, says) in [("99", "database 99 does not exist"), ("x", "database")] {
        let url = format!("{}{db}", server.url());
        let err = first_error_at_once(&url).await;
        let msg = err.to_string();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
        assert!(msg.contains(says), "{url}: {msg}");
    }
}

/// A server whose certificate the client does not trust (`rediss://`
/// trusts the system's roots; this one is from a private CA) is refused at
/// once: retrying cannot make it trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_refused_at_once() {
    let dir = std::env::temp_dir().join(format!("distlock-untrusted-{}", std::process::id()));
    let (_server, port) = start_tls_server(&dir);
    assert_refused_at_once(
        &format!("rediss://127.0.0.1:{port}/"),
        &["certificate", "UnknownIssuer"],
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that may evict keys is reported on connect, with a warning.
#[tokio::test(flavor = "current_thread")]
async fn an_evicting_maxmemory_policy_is_warned_about() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let backend = {
        let _guard = tracing::subscriber::set_default(subscriber);
        RedisBackend::connect(&server.url()).await.unwrap()
    };
    assert_eq!(backend.maxmemory_policy(), Some("allkeys-lru"));
    let text = logs.text();
    assert!(
        text.contains("WARN") && text.contains("allkeys-lru") && text.contains("noeviction"),
        "{text}"
    );
    assert_eq!(text.matches("WARN").count(), 1, "{text}");
}

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// `rediss://`: a TLS connection with a private CA works end to end (the
/// rustls crypto provider is installed; subscriptions use TLS too), and a
/// `rediss://` URL pointing at a plain-TCP server is an error, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_work() {
    let dir = std::env::temp_dir().join(format!("distlock-tls-{}", std::process::id()));
    let (_server, port) = start_tls_server(&dir);
    let tls_locker = || async {
        let client = redis::Client::build_with_tls(
            format!("rediss://127.0.0.1:{port}/"),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(dir.join("ca.crt")).unwrap()),
            },
        )
        .unwrap();
        let backend = RedisBackend::builder(client).build().await.unwrap();
        Locker::builder(Arc::new(backend))
            .namespace("tls")
            .build()
            .unwrap()
    };
    let (a, b) = (tls_locker().await, tls_locker().await);
    let held = a.obtain("k").await.unwrap();
    assert_eq!(
        b.inspect("k").await.unwrap().unwrap().fencing_token,
        held.fencing_token()
    );
    let waiter = tokio::spawn(async move {
        let opts = ObtainOptions::new()
            .wait(Duration::from_secs(20))
            .retry(RetryStrategy::linear(Duration::from_secs(5)));
        let lock = b.obtain_with("k", opts).await.unwrap();
        let at = Instant::now();
        lock.release().await.unwrap();
        at
    });
    // Let the waiter park on its subscription. Not needed for the bound: a
    // waiter that has not parked yet re-checks the key instead; only
    // polling (5 s) would miss it.
    sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    held.release().await.unwrap();
    let obtained = timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(
        obtained - released < Duration::from_secs(1),
        "handoff over TLS took {:?}",
        obtained - released
    );

    let plain = RedisServer::start();
    let err = Locker::from_url(&format!("rediss://127.0.0.1:{}/", plain.port()))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A redis-server that speaks only TLS, with a certificate for 127.0.0.1
/// from a private CA, both made in `dir`; returns it and its port.
fn start_tls_server(dir: &std::path::Path) -> (RedisServer, u16) {
    Certificates::make(dir);
    let server = RedisServer::start_tls(dir);
    let port = server.port();
    (server, port)
}

/// A process that releases a lock another process waits for does not take
/// it straight back with its next attempt: the waiter is queued in Redis,
/// so the releaser's `try_obtain` finds someone waiting and the woken waiter
/// gets the lock. Without the queue the releaser won this race 8 times in
/// 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lock_goes_to_the_waiting_process_not_back_to_the_releaser() {
    let server = RedisServer::start();
    let (a, b) = (
        locker(&server.url(), "yield").await,
        locker(&server.url(), "yield").await,
    );
    let channel = names("yield", "k").channel;
    let rounds = 20;
    let mut to_waiter = 0;
    for _ in 0..rounds {
        let held = a.obtain("k").await.unwrap();
        let exists_before = calls(&server, "exists").await;
        let b = b.clone();
        let waiter = tokio::spawn(async move {
            let opts = ObtainOptions::new()
                .wait(Duration::from_secs(20))
                // Polls well within its 1 s waiter lease, keeping its place.
                .retry(RetryStrategy::linear(Duration::from_millis(200)));
            b.obtain_with("k", opts).await.unwrap()
        });
        await_subscribers(&server, &channel, 1).await;
        await_calls(&server, "exists", exists_before).await;
        held.release().await.unwrap();
        // The releaser comes straight back for the lock.
        match a.try_obtain("k").await {
            Ok(again) => again.release().await.unwrap(),
            Err(e) => {
                assert!(e.is_not_obtained(), "{e}");
                to_waiter += 1;
            }
        }
        let lock = timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        lock.release().await.unwrap();
    }
    assert_eq!(
        to_waiter, rounds,
        "releases that went to the waiting process"
    );
}

/// Waiters in different processes (different backends and connections)
/// are served in the order they queued in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_in_different_processes_are_served_in_queue_order() {
    let server = RedisServer::start();
    let mut lockers = Vec::new();
    for _ in 0..4 {
        lockers.push(locker(&server.url(), "fifo").await);
    }
    // Long enough for every other task to queue.
    assert_served_in_turn(lockers, "k", 30 * MS).await;
    let queue = names("fifo", "k");
    let left: i64 = query(
        &server,
        redis::cmd("EXISTS").arg(&queue.queue).arg(&queue.waiting),
    )
    .await;
    assert_eq!(left, 0, "the queue is gone once nobody waits");
}

/// A waiter that stops asking (its process died) holds up the queue behind
/// it for at most its waiter lease, and a wait that gives up leaves the
/// queue at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_departed_waiters_never_block_the_queue() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(600);
    let client = redis::Client::open(server.url()).unwrap();
    let backend = RedisBackend::builder(client)
        .waiter_lease(lease)
        .build()
        .await
        .unwrap();
    let locker = |backend: &Arc<RedisBackend>| {
        Locker::builder(backend.clone())
            .namespace("dead")
            .build()
            .unwrap()
    };
    let backend = Arc::new(backend);
    let (holder, other) = (locker(&backend), self::locker(&server.url(), "dead").await);
    let names = names("dead", "k");
    let queued = || async { query::<i64>(&server, redis::cmd("ZCARD").arg(&names.queue)).await };

    // A wait that gives up leaves the queue.
    let held = holder.obtain("k").await.unwrap();
    let gave_up = other
        .obtain_with("k", ObtainOptions::new().wait(Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert!(gave_up.is_not_obtained(), "{gave_up}");
    let deadline = Instant::now() + SLACK;
    while queued().await != 0 {
        assert!(
            Instant::now() < deadline,
            "the departed waiter stayed queued"
        );
        sleep(5 * MS).await;
    }

    // A waiter that dies: one attempt that joins the queue, then nothing.
    let mut dead = AcquireRequest::new(
        LockKey {
            namespace: Namespace::new("dead").unwrap(),
            key: Key::new("k").unwrap(),
        },
        OwnerToken::random().unwrap(),
        Duration::from_secs(30),
    );
    dead.will_wait = true;
    let joined_at = Instant::now();
    assert!(matches!(
        backend.try_acquire(&dead).await.unwrap(),
        Attempt::Contended { .. }
    ));
    assert_eq!(queued().await, 1);
    held.release().await.unwrap();
    // The next waiter queues behind it and gets the lock once its lease ran out.
    let lock = other
        .obtain_with("k", ObtainOptions::new().wait(Duration::from_secs(10)))
        .await
        .unwrap();
    let waited = joined_at.elapsed();
    assert!(
        waited >= lease && waited < lease + SLACK,
        "took the lock {waited:?} after a dead waiter with a {lease:?} lease queued"
    );
    assert_eq!(queued().await, 0);
    lock.release().await.unwrap();
}

fn request(namespace: &str, key: &str, ttl: Duration) -> AcquireRequest {
    let key = LockKey {
        namespace: Namespace::new(namespace).unwrap(),
        key: Key::new(key).unwrap(),
    };
    AcquireRequest::new(key, OwnerToken::random().unwrap(), ttl)
}

/// An uncontended obtain + release is two script calls that touch only the
/// lock and its counter: MGET, TIME, SET (counter), PUBLISH (for
/// observers), SET PX (lock); then MGET, DEL, PUBLISH. No queue read, and
/// no publish to a waiter, while nobody ever queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncontended_cycle_never_touches_the_queue() {
    let server = RedisServer::start();
    let locker = locker(&server.url(), "lean").await;
    locker.obtain("k").await.unwrap().release().await.unwrap();
    let _: () = query(&server, redis::cmd("CONFIG").arg("RESETSTAT")).await;
    let cycles = 10;
    for _ in 0..cycles {
        let lock = locker.obtain("k").await.unwrap();
        lock.release().await.unwrap();
    }
    for (command, per_cycle) in [
        ("evalsha", 2),
        ("mget", 2),
        ("time", 1),
        ("set", 2),
        ("del", 1),
        ("zrange", 0),
        ("publish", 2),
        ("incr", 0),
        ("get", 0),
    ] {
        assert_eq!(
            calls(&server, command).await,
            per_cycle * cycles,
            "{command} calls in {cycles} cycles"
        );
    }
}

/// `extend_all` renews many locks in a few script calls (one per 256), and
/// answers NotHeld only for the entries that are not held: released, taken
/// by another owner, or never taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_all_renews_held_locks_and_reports_the_others_not_held() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let short = Duration::from_secs(2);
    let mut renewals = Vec::new();
    for i in 0..600 {
        let req = request("batch", &format!("k{i}"), short);
        assert!(matches!(
            backend.try_acquire(&req).await.unwrap(),
            Attempt::Granted { .. }
        ));
        renewals.push(Renewal::new(req.lease(), Duration::from_secs(60)));
    }
    // Released; taken by someone else after a release; never taken.
    backend.release(&renewals[7].lease).await.unwrap();
    backend.release(&renewals[300].lease).await.unwrap();
    let other = request("batch", "k300", short);
    assert!(matches!(
        backend.try_acquire(&other).await.unwrap(),
        Attempt::Granted { .. }
    ));
    renewals.push(Renewal::new(
        request("batch", "never", short).lease(),
        Duration::from_secs(60),
    ));
    let before = calls(&server, "evalsha").await;
    let results = backend.extend_all(&renewals).await;
    assert_eq!(
        calls(&server, "evalsha").await - before,
        3,
        "600 locks in 3 calls"
    );
    assert_eq!(results.len(), renewals.len());
    for (i, result) in results.iter().enumerate() {
        match (i, result) {
            (7 | 300 | 600, Err(Error::NotHeld { .. })) => {}
            (7 | 300 | 600, other) => panic!("entry {i}: expected NotHeld, got {other:?}"),
            (_, Ok(())) => {}
            (_, other) => panic!("entry {i}: expected Ok, got {other:?}"),
        }
    }
    for i in [0, 299, 599] {
        let name = names("batch", &format!("k{i}")).lock;
        let pttl: i64 = query(&server, redis::cmd("PTTL").arg(&name)).await;
        assert!(pttl > 50_000, "{name} has {pttl} ms left after extend_all");
    }
    // The other owner's lock kept its own TTL.
    let pttl: i64 = query(&server, redis::cmd("PTTL").arg(names("batch", "k300").lock)).await;
    assert!(
        pttl <= 2_000,
        "k300 was extended for the wrong owner: {pttl} ms"
    );
    assert!(backend.extend_all(&[]).await.is_empty());
}

/// The queue flag (the counter negated while waiters may be queued) never
/// costs a token: a waiter queued behind a holder gets a larger token than
/// the holder's even when the counter was deleted meanwhile, and the flag
/// is cleared once the queue is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_flag_keeps_tokens_increasing_and_clears_itself() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let ttl = Duration::from_secs(30);
    let holder = request("flag", "k", ttl);
    let Attempt::Granted {
        fencing_token: first,
    } = backend.try_acquire(&holder).await.unwrap()
    else {
        panic!("not granted")
    };
    let fence = names("flag", "k").fence;
    let _: () = query(&server, redis::cmd("DEL").arg(&fence)).await;
    let mut waiter = request("flag", "k", ttl);
    waiter.will_wait = true;
    assert!(matches!(
        backend.try_acquire(&waiter).await.unwrap(),
        Attempt::Contended { holder: Some(_) }
    ));
    let flagged: i64 = query(&server, redis::cmd("GET").arg(&fence)).await;
    assert_eq!(
        flagged,
        -i64::try_from(first).unwrap(),
        "flag raised on the holder's token"
    );
    backend.release(&holder.lease()).await.unwrap();
    let Attempt::Granted {
        fencing_token: second,
    } = backend.try_acquire(&waiter).await.unwrap()
    else {
        panic!("the queued waiter was not granted")
    };
    assert!(second > first, "{second} after {first}");
    let counter: i64 = query(&server, redis::cmd("GET").arg(&fence)).await;
    assert_eq!(counter, i64::try_from(second).unwrap(), "flag cleared");
    backend.release(&waiter.lease()).await.unwrap();
}
