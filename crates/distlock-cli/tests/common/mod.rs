//! Running the `distlock` binary as users do, shared by the CLI's tests.

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// The binary under test: `DISTLOCK_BIN` when set (scripts/test points it
/// at the build README's install line makes), else this package's build.
pub fn bin() -> PathBuf {
    std::env::var_os("DISTLOCK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_distlock")))
}

/// A fresh directory for a test's files, removed on drop, and the store
/// URL the `distlock` commands it runs use.
pub struct TempDir {
    pub dir: PathBuf,
    pub url: String,
    /// A CA the commands trust (`SSL_CERT_FILE`, in place of the system's
    /// roots), for a store that speaks TLS with a private CA.
    pub ca: Option<PathBuf>,
}

impl TempDir {
    /// A directory whose commands use the file store in `./locks`.
    pub fn new(case: &str) -> Self {
        let mut dir = Self::with_url(case, "");
        dir.url = format!("file://{}", dir.path("locks").display());
        dir
    }

    /// A directory whose commands use the store at `url`.
    pub fn with_url(case: &str, url: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "distlock-cli-{case}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir {
            dir,
            url: url.to_owned(),
            ca: None,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `distlock ARGS` on this directory's store, run in the directory.
    pub fn distlock(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin());
        command
            .args(args)
            .env("DISTLOCK_URL", &self.url)
            .env_remove("XDG_RUNTIME_DIR")
            .current_dir(&self.dir);
        if let Some(ca) = &self.ca {
            command.env("SSL_CERT_FILE", ca);
        }
        command
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.distlock(args).output().unwrap()
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.distlock(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Waits until `key` is held (per `distlock status`).
    pub fn wait_held(&self, key: &str) {
        let start = Instant::now();
        while self.output(&["status", key]).status.code() != Some(0) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{key} never got held"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn status_json(&self, key: &str) -> serde_json::Value {
        let out = self.output(&["status", key, "--json"]);
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn alive(pid: i32) -> bool {
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// Whether `pid` is still running: not gone, and not a zombie waiting to be
/// reaped (a zombie can do nothing more).
pub fn running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X') | None)
}

pub fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

pub fn wait_for_file(path: &Path) {
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
