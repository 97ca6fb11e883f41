//! The `distlock` binary, spawned as users run it, on the file backend.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_distlock");

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(case: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "distlock-cli-{case}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn url(&self) -> String {
        format!("file://{}", self.path("locks").display())
    }

    /// `distlock ARGS` on this directory's file store, run in the directory.
    fn distlock(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("DISTLOCK_URL", self.url())
            .env_remove("XDG_RUNTIME_DIR")
            .current_dir(&self.0);
        command
    }

    fn output(&self, args: &[&str]) -> Output {
        self.distlock(args).output().unwrap()
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.distlock(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Waits until `key` is held (per `distlock status`).
    fn wait_held(&self, key: &str) {
        let start = Instant::now();
        while self.output(&["status", key]).status.code() != Some(0) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{key} never got held"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn status_json(&self, key: &str) -> serde_json::Value {
        let out = self.output(&["status", key, "--json"]);
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn alive(pid: i32) -> bool {
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

fn wait_for_file(path: &Path) {
    let start = Instant::now();
    while !path.exists() || std::fs::read_to_string(path).unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} never written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// 6 processes × 5 rounds each of `distlock run` on one key: a counter in a
/// file, read and rewritten non-atomically with a pause in between, ends
/// exact, and the fencing tokens the commands saw strictly increase in the
/// order they ran.
#[test]
fn concurrent_runs_on_one_key_never_overlap() {
    let dir = TempDir::new("mutex");
    std::fs::write(dir.path("counter"), "0").unwrap();
    std::fs::write(
        dir.path("critical.sh"),
        "n=$(cat counter); sleep 0.01; echo $((n + 1)) > counter; echo \"$DISTLOCK_FENCING_TOKEN\" >> tokens\n",
    )
    .unwrap();
    let (workers, rounds) = (6, 5);
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
}

#[test]
fn the_commands_exit_code_is_distlocks() {
    let dir = TempDir::new("exit");
    for (script, code) in [
        ("exit 0", 0),
        ("exit 42", 42),
        ("false", 1),
        ("kill -9 $$", 137),
    ] {
        let out = dir.output(&["run", "k", "--", "sh", "-c", script]);
        assert_eq!(out.status.code(), Some(code), "{script}: {}", stderr(&out));
    }
    let out = dir.output(&["run", "k", "--", "/nonexistent/command"]);
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    // The lock was released each time.
    assert_eq!(dir.output(&["status", "k"]).status.code(), Some(1));
}

#[test]
fn the_command_gets_the_key_and_fencing_token() {
    let dir = TempDir::new("env");
    let mut holder = dir.spawn(&[
        "run",
        "jobs/nightly 🚀",
        "--",
        "sh",
        "-c",
        "echo \"$DISTLOCK_KEY|$DISTLOCK_FENCING_TOKEN\" > env.txt; sleep 30",
    ]);
    wait_for_file(&dir.path("env.txt"));
    let status = dir.status_json("jobs/nightly 🚀");
    let env = std::fs::read_to_string(dir.path("env.txt")).unwrap();
    assert_eq!(
        env.trim(),
        format!("jobs/nightly 🚀|{}", status["fencing_token"])
    );
    assert_eq!(status["held"], true);
    assert_eq!(status["pid"], holder.id());
    assert_eq!(status["command"], "sh");
    kill(Pid::from_raw(holder.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(
        holder.wait().unwrap().code(),
        Some(143),
        "sleep died of the forwarded SIGTERM"
    );
}

#[test]
fn a_held_lock_is_a_conflict_with_no_wait_or_a_wait_deadline() {
    let dir = TempDir::new("conflict");
    let mut holder = dir.spawn(&["run", "k", "--", "sleep", "30"]);
    dir.wait_held("k");
    let out = dir.output(&["run", "k", "--no-wait", "--", "touch", "ran"]);
    assert_eq!(out.status.code(), Some(75));
    let message = stderr(&out);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains("not obtained") && message.contains(&format!("pid {}", holder.id())),
        "{message}"
    );
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
    assert_eq!(out.status.code(), Some(75));
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(stderr(&out).contains("within"), "{}", stderr(&out));
    assert!(!dir.path("ran").exists());
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[test]
fn status_reports_holder_and_exit_code() {
    let dir = TempDir::new("status");
    let out = dir.output(&["status", "k"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"k\" is free");
    assert_eq!(
        dir.status_json("k"),
        serde_json::json!({"key": "k", "held": false})
    );
    let mut holder = dir.spawn(&["run", "k", "--", "sleep", "30"]);
    dir.wait_held("k");
    let out = dir.output(&["status", "k"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("pid {}", holder.id()))
            && text.contains("fencing token")
            && text.contains("since")
            && text.contains("time left"),
        "{text}"
    );
    let json = dir.status_json("k");
    assert_eq!(
        json["expires_in_ms"],
        serde_json::Value::Null,
        "file locks have no TTL"
    );
    assert!(json["fencing_token"].as_u64().unwrap() > 0);
    holder.kill().unwrap();
    holder.wait().unwrap();
}

/// Deleting the lock file behind the holder's back loses the lock (someone
/// else could lock a new file of that name): the command's whole group is
/// stopped — SIGTERM, then SIGKILL after the grace period for a command
/// that ignores SIGTERM — and distlock exits with 76.
#[test]
fn a_lost_lock_stops_the_whole_command_group() {
    let dir = TempDir::new("lost");
    let mut holder = dir.spawn(&[
        "run",
        "k",
        "--ttl",
        "900ms",
        "--kill-grace",
        "200ms",
        "--",
        "sh",
        "-c",
        "trap '' TERM; sleep 30 & echo $! >> pids; echo $$ >> pids; wait",
    ]);
    dir.wait_held("k");
    wait_for_file(&dir.path("pids"));
    while read_pids(&dir.path("pids")).len() < 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pids = read_pids(&dir.path("pids"));
    let lock_file = dir.path("locks/ns-distlock/k-k.lock");
    std::fs::remove_file(&lock_file).unwrap();
    let deleted = Instant::now();
    let status = holder.wait().unwrap();
    let took = deleted.elapsed();
    let mut message = String::new();
    std::io::Read::read_to_string(holder.stderr.as_mut().unwrap(), &mut message).unwrap();
    assert_eq!(status.code(), Some(76), "{message}");
    assert!(message.contains("lock lost"), "{message}");
    // Noticed within a refresh interval (TTL/3), then the grace period.
    assert!(
        took < Duration::from_millis(300 + 200 + 700),
        "took {took:?}"
    );
    for pid in pids {
        assert!(!alive(pid), "pid {pid} of the command's group survived");
    }
}

#[test]
fn sigterm_and_sigint_are_forwarded_and_the_lock_released_after_the_command() {
    for (signal, name) in [(Signal::SIGTERM, "TERM"), (Signal::SIGINT, "INT")] {
        let dir = TempDir::new("signals");
        let script = format!(
            "trap 'sleep 0.2; echo {name} > got; exit 7' {name}; echo ready > ready; while :; do sleep 0.02; done"
        );
        let mut holder = dir.spawn(&["run", "k", "--", "sh", "-c", &script]);
        wait_for_file(&dir.path("ready"));
        kill(Pid::from_raw(holder.id() as i32), signal).unwrap();
        // Still held while the command handles the signal.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(dir.output(&["status", "k"]).status.code(), Some(0));
        assert_eq!(holder.wait().unwrap().code(), Some(7), "{name}");
        assert_eq!(
            std::fs::read_to_string(dir.path("got")).unwrap().trim(),
            name
        );
        assert_eq!(
            dir.output(&["status", "k"]).status.code(),
            Some(1),
            "released"
        );
    }
}

#[test]
fn a_sigkilled_holder_frees_the_lock_at_once_and_takes_its_command_along() {
    let dir = TempDir::new("sigkill");
    let mut holder = dir.spawn(&["run", "k", "--", "sh", "-c", "echo $$ > pid; exec sleep 30"]);
    wait_for_file(&dir.path("pid"));
    dir.wait_held("k");
    let command = read_pids(&dir.path("pid"))[0];
    holder.kill().unwrap(); // SIGKILL
    holder.wait().unwrap();
    let start = Instant::now();
    let out = dir.output(&["run", "k", "--no-wait", "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let start = Instant::now();
    while alive(command) {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the command outlived distlock"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn waiting_shows_the_holder_unless_quiet() {
    let dir = TempDir::new("waiting");
    let mut holder = dir.spawn(&["run", "k", "--", "sleep", "0.6"]);
    dir.wait_held("k");
    let out = dir.output(&["run", "k", "--", "true"]);
    assert!(out.status.success());
    let message = stderr(&out);
    assert!(
        message.starts_with("distlock: waiting for lock \"k\", held by pid ")
            && message.contains(&format!("pid {}", holder.id())),
        "{message}"
    );
    holder.wait().unwrap();
    let mut holder = dir.spawn(&["run", "k", "--", "sleep", "0.3"]);
    dir.wait_held("k");
    let out = dir.output(&["run", "k", "--quiet", "--", "true"]);
    assert!(out.status.success());
    assert_eq!(stderr(&out), "");
    holder.wait().unwrap();
}

#[test]
fn bad_usage_is_one_line_and_exit_code_64() {
    let dir = TempDir::new("usage");
    for args in [
        &["run"][..],
        &["run", "k"],
        &["run", "--ttl", "soon", "k", "--", "true"],
        &["run", "--wait", "1s", "--no-wait", "k", "--", "true"],
        &["run", "--conflict-exit-code", "300", "k", "--", "true"],
        &[
            "run",
            "--ttl",
            "1s",
            "--kill-grace",
            "5s",
            "k",
            "--",
            "true",
        ],
        &["run", "--backend", "gopher://x", "k", "--", "true"],
        &["run", "", "--", "true"],
        &["status"],
        &["frobnicate"],
        &["--bogus"],
    ] {
        let out = dir.output(args);
        let message = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {message}");
        assert_eq!(message.lines().count(), 1, "{args:?}: {message}");
        assert!(message.starts_with("distlock: "), "{args:?}: {message}");
    }
}

#[test]
fn an_unusable_backend_is_exit_code_69() {
    let dir = TempDir::new("unavailable");
    std::fs::write(dir.path("file"), "").unwrap();
    let url = format!("file://{}/sub", dir.path("file").display());
    for sub in ["run", "status"] {
        let mut command = dir.distlock(&[sub, "k"]);
        if sub == "run" {
            command.args(["--", "true"]);
        }
        let out = command.env("DISTLOCK_URL", &url).output().unwrap();
        assert_eq!(out.status.code(), Some(69), "{sub}: {}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1);
    }
}

#[test]
fn help_documents_the_exit_codes() {
    for args in [&["--help"][..], &["run", "--help"], &["status", "--help"]] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        for code in ["64", "69", "75", "76"] {
            assert!(help.contains(code), "{args:?} does not mention {code}");
        }
    }
    let run = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&run.stdout);
    assert!(help.contains("DISTLOCK_FENCING_TOKEN") && help.contains("--conflict-exit-code"));
}

/// Without a URL, locks live in $XDG_RUNTIME_DIR/distlock, created private;
/// a directory other users could write to is refused.
#[test]
fn the_default_store_is_a_private_per_user_directory() {
    let dir = TempDir::new("default");
    let run = |runtime: &Path| {
        Command::new(BIN)
            .args(["run", "k", "--", "true"])
            .env_remove("DISTLOCK_URL")
            .env("XDG_RUNTIME_DIR", runtime)
            .output()
            .unwrap()
    };
    let out = run(&dir.0);
    assert!(out.status.success(), "{}", stderr(&out));
    let store = dir.path("distlock");
    assert_eq!(
        std::fs::metadata(&store).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(store.join("ns-distlock/k-k.lock").exists());
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(&dir.0);
    assert_eq!(out.status.code(), Some(69));
    assert!(
        stderr(&out).contains("writable by other users"),
        "{}",
        stderr(&out)
    );
}
