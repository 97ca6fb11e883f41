//! The file backend reports what it may not do at once: a lock directory
//! the user cannot write is a refusal naming the path and the permission
//! missing, never a wait that retries until its deadline (or forever).
//!
//! Root ignores permission bits, and CI runs as root: the checks then run
//! in a child process (this test binary again) as uid 65534.
#![cfg(all(unix, feature = "file"))]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use distlock::{Error, Locker, ObtainOptions};
use tokio::time::Instant;

/// Set in the child: the directory the parent prepared.
const CHILD_DIR: &str = "DISTLOCK_TEST_UNWRITABLE_DIR";
const NOBODY: u32 = 65534;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Lock directories another user owns, or that are read-only for us: each
/// case is refused within 2 s although the obtain may wait 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_lock_directories_are_refused_at_once() {
    let base = std::env::temp_dir().join(format!("distlock-perm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let dir = base.join("locks");
    std::fs::create_dir_all(&dir).unwrap();
    // A new directory belongs to our effective uid.
    let root = std::fs::metadata(&dir).unwrap().uid() == 0;
    // Real lock files, as an earlier holder left them.
    for ns in ["c", "d"] {
        let locker = Locker::from_url(&format!("file://{}?namespace={ns}", dir.display()))
            .await
            .unwrap();
        locker
            .try_obtain("k")
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    std::fs::create_dir(dir.join("ns-b")).unwrap();
    chmod(&dir.join("ns-c/k-k.lock"), 0o444);
    chmod(&dir.join("ns-d/k-k.lock"), 0o666);
    for ns in ["b", "c", "d"] {
        chmod(&dir.join(format!("ns-{ns}")), 0o555);
    }
    chmod(&dir, 0o555);
    // The child runs a copy of this binary that uid 65534 can surely
    // execute, wherever the target directory is.
    chmod(&base, 0o755);
    let exe = base.join("child");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    chmod(&exe, 0o755);
    let mut child = Command::new(&exe);
    child
        .args(["--exact", "child_checks", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, &dir);
    if root {
        child.uid(NOBODY).gid(NOBODY);
    }
    let out = child.output().unwrap();
    chmod(&dir, 0o755);
    for ns in ["b", "c", "d"] {
        chmod(&dir.join(format!("ns-{ns}")), 0o755);
    }
    std::fs::remove_dir_all(&base).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The child's half: runs only when the parent test set [`CHILD_DIR`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_checks() {
    let Some(dir) = std::env::var_os(CHILD_DIR).map(PathBuf::from) else {
        return;
    };
    let d = dir.display();
    let cases = [
        // The lock directory itself cannot be created.
        (
            format!("file://{d}/sub"),
            format!(
                "cannot create directory {d}/sub: permission denied (needs write and search permission on {d})"
            ),
        ),
        // Nor a namespace's directory in it.
        (
            format!("file://{d}?namespace=a"),
            format!(
                "cannot create directory {d}/ns-a: permission denied (needs write and search permission on {d})"
            ),
        ),
        // Nor a lock file in a namespace's directory.
        (
            format!("file://{d}?namespace=b"),
            format!(
                "cannot create lock file {d}/ns-b/k-k.lock: permission denied (needs write and search permission on {d}/ns-b)"
            ),
        ),
        // A lock file we may only read.
        (
            format!("file://{d}?namespace=c"),
            format!(
                "cannot open lock file {d}/ns-c/k-k.lock: permission denied (needs read and write permission on it and search permission on {d}/ns-c)"
            ),
        ),
        // A lock file we may lock, without room for the holder record.
        (
            format!("file://{d}?namespace=d"),
            format!(
                "cannot write holder record {d}/ns-d/k-k.holder: permission denied (needs write and search permission on {d}/ns-d)"
            ),
        ),
    ];
    let mut wrong = Vec::new();
    for (url, says) in cases {
        let start = Instant::now();
        let err = match Locker::from_url(&url).await {
            Ok(locker) => locker
                .obtain_with("k", ObtainOptions::new().wait(Duration::from_secs(10)))
                .await
                .expect_err("obtained in an unwritable directory"),
            Err(e) => e,
        };
        let took = start.elapsed();
        let msg = err.to_string();
        let refused = matches!(err, Error::Refused { .. });
        if !refused || !msg.contains(&says) || took >= Duration::from_secs(2) {
            wrong.push(format!(
                "{url}: after {took:?}: {err:?}\n  wanted a refusal saying {says:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
