//! The operator's cases of `distlock run` and `distlock status`, against
//! every store other processes reach: the file backend, and a real
//! `redis-server` (also as a Sentinel set and a Redis Cluster) and `etcd`
//! that the tests start on free loopback ports.
//! After each way out of `distlock run`, the store must hold nothing of
//! that client. `DISTLOCK_BIN` runs them against another build of the
//! binary (scripts/test: the one README's install line builds).

#[path = "../common/mod.rs"]
mod common;
mod leadership;
mod sharing;
mod store;

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use leadership::{
    a_lost_leadership_stops_the_command_with_exit_76,
    elect_runs_only_the_leader_and_hands_over_when_it_exits,
};
use sharing::{
    limit_runs_at_most_n_commands_and_status_lists_them,
    shared_runs_hold_together_and_a_plain_run_excludes_them,
};

use common::{TempDir, alive, read_pids, running, stderr, wait_for_file};
use store::Store;

/// The TTL of the locks these tests take where a TTL matters.
const TTL: Duration = Duration::from_secs(3);

/// `distlock run` of a `sh -c` script under a lock on `k` with [`TTL`] and
/// a 200 ms kill grace.
fn supervised(script: &str) -> [&str; 10] {
    [
        "run",
        "k",
        "--ttl",
        "3s",
        "--kill-grace",
        "200ms",
        "--",
        "sh",
        "-c",
        script,
    ]
}

/// Polls `done` every 5 ms for up to 10 s.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One module of `#[test]`s per store, one test per case.
macro_rules! store_tests {
    ($store:ident: $($case:ident),+ $(,)?) => {
        mod $store {
            $(
                #[test]
                fn $case() {
                    super::$case(super::Store::$store());
                }
            )+
        }
    };
}

/// The cases every store runs; the list lives here only.
macro_rules! every_store {
    ($($case:ident),+ $(,)?) => {
        store_tests!(file: $($case),+);
        #[cfg(feature = "redis")]
        store_tests!(redis: $($case),+);
        #[cfg(feature = "redis")]
        store_tests!(sentinel: $($case),+);
        #[cfg(feature = "redis")]
        store_tests!(cluster: $($case),+);
        #[cfg(feature = "etcd")]
        store_tests!(etcd: $($case),+);
    };
}

// Over TLS, a few cases: each test process starts its own topology.
#[cfg(feature = "redis")]
store_tests!(redis_tls: concurrent_runs_never_overlap_and_tokens_increase, status_reports_the_holder_in_text_and_json);
#[cfg(feature = "redis")]
store_tests!(sentinel_tls: concurrent_runs_never_overlap_and_tokens_increase, status_reports_the_holder_in_text_and_json);
#[cfg(feature = "redis")]
store_tests!(cluster_tls: concurrent_runs_never_overlap_and_tokens_increase, status_reports_the_holder_in_text_and_json);

every_store!(
    concurrent_runs_never_overlap_and_tokens_increase,
    status_reports_the_holder_in_text_and_json,
    conflicts_and_interrupted_waits_leave_the_store_clean,
    a_lock_deleted_behind_its_back_stops_the_group_within_its_validity,
    an_unusable_store_is_exit_code_69,
    limit_runs_at_most_n_commands_and_status_lists_them,
    shared_runs_hold_together_and_a_plain_run_excludes_them,
    elect_runs_only_the_leader_and_hands_over_when_it_exits,
    a_lost_leadership_stops_the_command_with_exit_76,
);

/// 4 processes × 4 rounds each of `distlock run` on one key: a counter in
/// a file, read and rewritten non-atomically with a pause in between, ends
/// exact, and the fencing tokens the commands saw strictly increase in the
/// order they ran.
fn concurrent_runs_never_overlap_and_tokens_increase(store: Store) {
    let case = store.case("mutex");
    let dir = &case.dir;
    std::fs::write(dir.path("counter"), "0").unwrap();
    std::fs::write(
        dir.path("critical.sh"),
        "n=$(cat counter); sleep 0.01; echo $((n + 1)) > counter; echo \"$DISTLOCK_FENCING_TOKEN\" >> tokens\n",
    )
    .unwrap();
    let (workers, rounds) = (4, 4);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                for _ in 0..rounds {
                    let out = dir.output(&["run", "counter", "--quiet", "--", "sh", "critical.sh"]);
                    assert!(out.status.success(), "{:?}: {}", out.status, stderr(&out));
                }
            });
        }
    });
    let counter = std::fs::read_to_string(dir.path("counter")).unwrap();
    assert_eq!(counter.trim(), (workers * rounds).to_string());
    let tokens: Vec<u64> = std::fs::read_to_string(dir.path("tokens"))
        .unwrap()
        .lines()
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(tokens.len(), workers * rounds);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens not strictly increasing: {tokens:?}"
    );
    store.assert_clean(&case, "every run finished");
}

fn status_reports_the_holder_in_text_and_json(store: Store) {
    let case = store.case("status");
    let dir = &case.dir;
    let out = dir.output(&["status", "k"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"k\" is free");
    assert_eq!(
        dir.status_json("k"),
        serde_json::json!({"key": "k", "held": false})
    );
    let ttl = humantime::format_duration(TTL).to_string();
    let mut holder = dir.spawn(&["run", "k", "--ttl", &ttl, "--", "sleep", "30"]);
    dir.wait_held("k");
    let out = dir.output(&["status", "k"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("pid {}", holder.id()))
            && text.contains("running sleep")
            && text.contains("fencing token")
            && text.contains("time left"),
        "{text}"
    );
    // Only the file store records when the lock was granted.
    assert_eq!(text.contains("since"), !store.expires, "{text}");
    let json = dir.status_json("k");
    assert_eq!(json["held"], true);
    assert_eq!(json["pid"], holder.id());
    assert_eq!(json["command"], "sleep");
    assert!(json["fencing_token"].as_u64().unwrap() > 0, "{json}");
    if store.expires {
        let left = json["expires_in_ms"].as_u64().unwrap();
        assert!(left > 0, "{json}");
    } else {
        assert_eq!(json["expires_in_ms"], serde_json::Value::Null, "no TTL");
    }
    kill(Pid::from_raw(holder.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(
        holder.wait().unwrap().code(),
        Some(143),
        "forwarded SIGTERM"
    );
    assert_eq!(dir.output(&["status", "k"]).status.code(), Some(1));
    store.assert_clean(&case, "the holder was stopped by SIGTERM");
}

/// While one process holds the lock: `--no-wait` and `--wait` give up with
/// the conflict code, and a waiter interrupted by SIGINT or SIGTERM exits
/// 130 / 143, each leaving the store exactly as it found it (no queue
/// entry, no waiter lease, no phantom holder); the moment the holder is
/// done, a `--no-wait` run gets the lock.
fn conflicts_and_interrupted_waits_leave_the_store_clean(store: Store) {
    let case = store.case("conflict");
    let dir = &case.dir;
    let mut holder = dir.spawn(&["run", "k", "--", "sleep", "30"]);
    dir.wait_held("k");
    let holding = store.leftovers(&case);

    let out = dir.output(&["run", "k", "--no-wait", "--", "touch", "ran"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    let message = stderr(&out);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains("not obtained") && message.contains(&format!("pid {}", holder.id())),
        "{message}"
    );
    assert_eq!(store.leftovers(&case), holding, "after --no-wait");
    let out = dir.output(&[
        "run",
        "k",
        "--no-wait",
        "--conflict-exit-code",
        "9",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(9));

    let start = Instant::now();
    let out = dir.output(&["run", "k", "--wait", "300ms", "--quiet", "--", "true"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(stderr(&out).contains("within"), "{}", stderr(&out));
    assert_eq!(store.leftovers(&case), holding, "after --wait ran out");

    for (signal, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let mut waiter = dir.spawn(&["run", "k", "--", "touch", "ran"]);
        let mut said = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(waiter.stderr.as_mut().unwrap()),
            &mut said,
        )
        .unwrap();
        assert!(said.contains("waiting for lock"), "{said}");
        if store.queues {
            wait_until("the waiter queued", || store.leftovers(&case) != holding);
        }
        kill(Pid::from_raw(waiter.id() as i32), signal).unwrap();
        let status = waiter.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{signal} while waiting");
        assert_eq!(
            store.leftovers(&case),
            holding,
            "after {signal} while waiting"
        );
    }
    assert!(!dir.path("ran").exists());

    kill(Pid::from_raw(holder.id() as i32), Signal::SIGTERM).unwrap();
    holder.wait().unwrap();
    let out = dir.output(&["run", "k", "--no-wait", "--", "true"]);
    assert!(
        out.status.success(),
        "right after the release: {}",
        stderr(&out)
    );
    store.assert_clean(&case, "the holder and every waiter left");
}

/// Deleting the lock behind the holder's back loses it (someone else can
/// take it): the command's whole group is stopped — SIGTERM, then SIGKILL
/// after the grace period for a command that ignores SIGTERM — and
/// distlock exits with 76, all before the lock's validity could end.
fn a_lock_deleted_behind_its_back_stops_the_group_within_its_validity(store: Store) {
    let case = store.case("lost");
    let dir = &case.dir;
    let mut holder = dir.spawn(&supervised(
        "trap '' TERM; sleep 30 & echo $! >> pids; echo $$ >> pids; wait",
    ));
    dir.wait_held("k");
    wait_for_file(&dir.path("pids"));
    wait_until("both pids written", || {
        read_pids(&dir.path("pids")).len() >= 2
    });
    let pids = read_pids(&dir.path("pids"));
    store.delete_behind_back(&case, "k");
    let deleted = Instant::now();
    let status = holder.wait().unwrap();
    let took = deleted.elapsed();
    let mut message = String::new();
    std::io::Read::read_to_string(holder.stderr.as_mut().unwrap(), &mut message).unwrap();
    assert_eq!(status.code(), Some(76), "{message}");
    assert!(message.contains("lock lost"), "{message}");
    // The last refresh before the deletion was sent at most TTL/3 earlier,
    // so the validity deadline lay at least 0.99 × TTL − TTL/3 after the
    // deletion: the group must be gone (distlock exits after it) by then.
    assert!(
        took < TTL.mul_f64(0.99) - TTL / 3,
        "took {took:?} to stop the command"
    );
    for pid in pids {
        assert!(!alive(pid), "pid {pid} of the command's group survived");
    }
    store.assert_clean(&case, "the lock was lost");
}

fn an_unusable_store_is_exit_code_69(store: Store) {
    let case = store.case("unusable");
    for sub in ["run", "status"] {
        let mut command = case.dir.distlock(&[sub, "k"]);
        if sub == "run" {
            command.args(["--", "true"]);
        }
        let start = Instant::now();
        let out = command
            .env("DISTLOCK_URL", &store.unusable)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(69), "{sub}: {}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{sub} took {:?}",
            start.elapsed()
        );
    }
}

/// Refreshes black-holed (the store stops answering) while the command
/// floods a stderr pipe nobody reads, which blocks every write distlock
/// makes to it: the command's group is still gone before the validity
/// deadline, which lies no later than the store's expiry less the drift
/// allowance (1 % of the TTL and 2 ms).
#[cfg(feature = "redis")]
#[test]
fn black_holed_refreshes_and_an_unread_stderr_still_stop_the_group_in_time() {
    use distlock_testkit::proxy::FaultProxy;
    use std::process::Stdio;

    let store = Store::redis();
    let server = distlock_testkit::redis::shared_server();
    let proxy = store
        .runtime
        .block_on(FaultProxy::start(([127, 0, 0, 1], server.port()).into()))
        .unwrap();
    let case = store.case("stall");
    let through_proxy = TempDir::with_url(
        "stall-proxied",
        &format!("redis://{}/?namespace={}", proxy.addr(), case.namespace),
    );
    let mut holder = through_proxy
        .distlock(&supervised(
            "echo $$ > pid; trap '' TERM; while :; do echo flood >&2; done",
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped()) // never read
        .spawn()
        .unwrap();
    wait_for_file(&through_proxy.path("pid"));
    case.dir.wait_held("k");
    let command = read_pids(&through_proxy.path("pid"))[0];
    std::thread::sleep(Duration::from_millis(200)); // the pipe is full by now
    proxy.set_blackhole(true);
    std::thread::sleep(Duration::from_millis(100)); // a refresh in flight lands or is lost
    let asked = Instant::now();
    let json = case.dir.status_json("k");
    let left = Duration::from_millis(json["expires_in_ms"].as_u64().expect("held"));
    let deadline = asked + left - TTL / 100 - Duration::from_millis(2);
    wait_until("the command stopped", || !running(command));
    let gone = Instant::now();
    assert!(
        gone < deadline,
        "the command ran {:?} past the validity deadline",
        gone - deadline
    );
    proxy.set_blackhole(false);
    let exited = Instant::now();
    while holder.try_wait().unwrap().is_none() {
        assert!(
            exited.elapsed() < Duration::from_secs(20),
            "distlock never exited"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(holder.wait().unwrap().code(), Some(76));
    wait_until("the store freed the lock", || {
        store.leftovers(&case).is_empty()
    });
}

/// A store that stops answering while a waiter waits: the waiter gives up
/// at its deadline (exit 75, or 69 when its last attempt failed rather
/// than being cut short by the deadline), and the queue entry it cannot
/// remove from the unreachable store goes when its lease runs out, `lease`
/// at most after the store was cut off, as documented.
#[cfg(any(feature = "redis", feature = "etcd"))]
fn a_store_lost_while_waiting_costs_the_queue_at_most_its_lease(
    store: Store,
    upstream: u16,
    url: impl Fn(std::net::SocketAddr, &str) -> String,
    lease: Duration,
) {
    use distlock_testkit::proxy::FaultProxy;

    let case = store.case("storelost");
    let mut holder = case.dir.spawn(&["run", "k", "--", "sleep", "30"]);
    case.dir.wait_held("k");
    let holding = store.leftovers(&case);
    let proxy = store
        .runtime
        .block_on(FaultProxy::start(([127, 0, 0, 1], upstream).into()))
        .unwrap();
    let proxied = TempDir::with_url("storelost-proxied", &url(proxy.addr(), &case.namespace));
    let waiter = proxied.spawn(&["run", "k", "--ttl", "2s", "--wait", "2s", "--", "true"]);
    wait_until("the waiter queued", || store.leftovers(&case) != holding);
    proxy.set_blackhole(true);
    let cut = Instant::now();
    while store.leftovers(&case) != holding {
        assert!(
            cut.elapsed() < lease + Duration::from_secs(1),
            "the cut-off waiter's entry outlived its {lease:?} lease"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.set_blackhole(false);
    let out = waiter.wait_with_output().unwrap();
    assert!(
        matches!(out.status.code(), Some(69 | 75)),
        "{:?}: {}",
        out.status,
        stderr(&out)
    );
    kill(Pid::from_raw(holder.id() as i32), Signal::SIGTERM).unwrap();
    holder.wait().unwrap();
    store.assert_clean(&case, "the holder left and the waiter was cut off");
}

#[cfg(feature = "redis")]
#[test]
fn redis_a_store_lost_while_waiting_costs_the_queue_at_most_its_lease() {
    let port = distlock_testkit::redis::shared_server().port();
    a_store_lost_while_waiting_costs_the_queue_at_most_its_lease(
        Store::redis(),
        port,
        |addr, ns| format!("redis://{addr}/?namespace={ns}"),
        Duration::from_secs(1), // the default waiter lease
    );
}

#[cfg(feature = "etcd")]
#[test]
fn etcd_a_store_lost_while_waiting_costs_the_queue_at_most_its_lease() {
    let store = Store::etcd();
    let endpoint = store.fixture.url("x");
    let port = endpoint
        .trim_start_matches("etcd://")
        .split(['?', ','])
        .next()
        .and_then(|host| host.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .expect("an etcd://host:port URL");
    a_store_lost_while_waiting_costs_the_queue_at_most_its_lease(
        store,
        port,
        |addr, ns| format!("etcd://{addr}?namespace={ns}"),
        // The waiters' lease: 2 s (etcd's floor) plus its 0.5 s expiry check.
        Duration::from_millis(2500),
    );
}

/// The build under test speaks every store, as README's install line
/// promises, and `--help` says so.
#[cfg(all(feature = "file", feature = "redis", feature = "etcd"))]
#[test]
fn help_lists_every_store() {
    let out = std::process::Command::new(common::bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for url in [
        "file:///dir",
        "redis://",
        "rediss://",
        "redis+sentinel://",
        "redis+cluster://",
        "etcd://",
        "etcds://",
        "memory://",
    ] {
        assert!(help.contains(url), "--help does not list {url}:\n{help}");
    }
    assert!(!help.contains("Not built in"), "{help}");
}
