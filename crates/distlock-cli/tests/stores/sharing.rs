//! `distlock run --limit N` and `--shared`, and `status` of their keys.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::stderr;
use crate::{Store, wait_until};

/// Two `run --limit 2` commands hold `pool` at once, each told the limit;
/// a third is not obtained, one with another limit is a usage error, and
/// `status` lists both holders.
pub fn limit_runs_at_most_n_commands_and_status_lists_them(store: Store) {
    let case = store.case("limit");
    let dir = &case.dir;
    let script = "echo \"$DISTLOCK_PERMITS $DISTLOCK_FENCING_TOKEN\" >> permits; sleep 30";
    let run = [
        "run", "pool", "--limit", "2", "--ttl", "3s", "--", "sh", "-c", script,
    ];
    let mut holders = [dir.spawn(&run), dir.spawn(&run)];
    wait_until("both permits are held", || {
        std::fs::read_to_string(dir.path("permits")).is_ok_and(|t| t.lines().count() == 2)
    });
    let seen = std::fs::read_to_string(dir.path("permits")).unwrap();
    let tokens: Vec<&str> = seen
        .lines()
        .map(|l| l.strip_prefix("2 ").expect(l))
        .collect();
    assert_ne!(tokens[0], tokens[1], "each permit has its own token");

    let out = dir.output(&["run", "pool", "--limit", "2", "--no-wait", "--", "true"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(stderr(&out).contains("2 of 2 permits"), "{}", stderr(&out));
    let out = dir.output(&["run", "pool", "--limit", "3", "--no-wait", "--", "true"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("semaphore of 2"), "{}", stderr(&out));

    let out = dir.output(&["status", "pool"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("\"pool\" is held by 2 of 2 permits:"),
        "{text}"
    );
    for holder in &holders {
        assert!(text.contains(&format!("pid {}", holder.id())), "{text}");
    }
    let json = dir.status_json("pool");
    assert_eq!(json["limit"], 2, "{json}");
    assert_eq!(json["holders"].as_array().map(Vec::len), Some(2), "{json}");

    for holder in &mut holders {
        kill(Pid::from_raw(holder.id() as i32), Signal::SIGTERM).unwrap();
        assert_eq!(holder.wait().unwrap().code(), Some(143));
    }
    store.assert_clean(&case, "both permits were returned");
}

/// Two `run --shared` commands hold `doc` together; a plain `run` is not
/// obtained while they do, and gets it once they are gone.
pub fn shared_runs_hold_together_and_a_plain_run_excludes_them(store: Store) {
    let case = store.case("shared");
    let dir = &case.dir;
    let run = [
        "run",
        "doc",
        "--shared",
        "--ttl",
        "3s",
        "--",
        "sh",
        "-c",
        "echo >> readers; sleep 30",
    ];
    let mut readers = [dir.spawn(&run), dir.spawn(&run)];
    wait_until("both readers hold the key", || {
        std::fs::read_to_string(dir.path("readers")).is_ok_and(|t| t.lines().count() == 2)
    });
    let out = dir.output(&["status", "doc"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("\"doc\" is held by 2 readers:"), "{text}");
    let out = dir.output(&["run", "doc", "--no-wait", "--", "true"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(stderr(&out).contains("2 readers"), "{}", stderr(&out));

    let mut writer = dir.spawn(&[
        "run",
        "doc",
        "--wait",
        "20s",
        "--",
        "sh",
        "-c",
        "echo wrote > wrote",
    ]);
    for reader in &mut readers {
        kill(Pid::from_raw(reader.id() as i32), Signal::SIGTERM).unwrap();
        assert_eq!(reader.wait().unwrap().code(), Some(143));
    }
    assert!(writer.wait().unwrap().success());
    assert_eq!(
        std::fs::read_to_string(dir.path("wrote")).unwrap().trim(),
        "wrote"
    );
    store.assert_clean(&case, "the readers and the writer finished");
}
