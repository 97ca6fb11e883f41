//! The `distlock` binary, spawned as users run it, on the file backend:
//! what does not depend on the store (the cases every store runs are in
//! `stores/`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

mod common;

use common::{TempDir, alive, bin, read_pids, stderr, wait_for_file};

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
fn help_documents_the_exit_codes() {
    for args in [&["--help"][..], &["run", "--help"], &["status", "--help"]] {
        let out = Command::new(bin()).args(args).output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        for code in ["64", "69", "75", "76"] {
            assert!(help.contains(code), "{args:?} does not mention {code}");
        }
    }
    let run = Command::new(bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&run.stdout);
    assert!(help.contains("DISTLOCK_FENCING_TOKEN") && help.contains("--conflict-exit-code"));
}

/// Without a URL, locks live in $XDG_RUNTIME_DIR/distlock, created private;
/// a directory other users could write to is refused.
#[test]
fn the_default_store_is_a_private_per_user_directory() {
    let dir = TempDir::new("default");
    let run = |runtime: &Path| {
        Command::new(bin())
            .args(["run", "k", "--", "true"])
            .env_remove("DISTLOCK_URL")
            .env("XDG_RUNTIME_DIR", runtime)
            .output()
            .unwrap()
    };
    let out = run(&dir.dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let store = dir.path("distlock");
    assert_eq!(
        std::fs::metadata(&store).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(store.join("ns-distlock/k-k.lock").exists());
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(&dir.dir);
    assert_eq!(out.status.code(), Some(69));
    assert!(
        stderr(&out).contains("writable by other users"),
        "{}",
        stderr(&out)
    );
}

/// A lock directory distlock may not write to is a clear error at once —
/// exit code 69, one line naming the path and what is missing — instead of
/// a silent wait. The tests run as another user when they run as root, who
/// may write anywhere.
#[test]
fn a_lock_directory_without_write_permission_is_exit_code_69_at_once() {
    use std::os::unix::process::CommandExt;

    let dir = TempDir::new("eacces");
    let locks = dir.path("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let mut command = dir.distlock(&["run", "k", "--", "true"]);
    if nix::unistd::geteuid().is_root() {
        // A copy uid 65534 can surely execute, wherever the target dir is.
        let copy = dir.path("distlock");
        std::fs::copy(bin(), &copy).unwrap();
        std::fs::set_permissions(&dir.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        command = Command::new(&copy);
        command
            .args(["run", "k", "--", "true"])
            .env("DISTLOCK_URL", &dir.url)
            .current_dir("/")
            .uid(65534)
            .gid(65534); // `locks` is root's, mode 0755
    } else {
        std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let start = Instant::now();
    let out = command.output().unwrap();
    let message = stderr(&out);
    assert_eq!(out.status.code(), Some(69), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains("permission denied") && message.contains(&*locks.to_string_lossy()),
        "{message}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
}
