//! The server fixture's own guarantees: servers die with their owner and
//! can be paused and restarted.

use std::time::{Duration, Instant};

use distlock_testkit::server::{ServerProcess, require_binary};

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_dropped_server_is_killed_and_its_directory_removed() {
    let sleep = require_binary("sleep", "coreutils");
    let server = ServerProcess::start("sleeper", sleep, vec!["600".into()], vec![]);
    assert!(server.is_alive());
    let dir = server.dir().to_owned();
    assert!(dir.is_dir());
    let probe = ServerProcess::start(
        "probe",
        require_binary("sleep", "coreutils"),
        vec!["600".into()],
        vec![],
    );
    drop(server);
    wait_until("the directory is removed", || !dir.exists());
    assert!(probe.is_alive(), "other servers are untouched");
}

#[test]
fn a_server_can_be_paused_killed_and_restarted_in_place() {
    let sleep = require_binary("sleep", "coreutils");
    let mut server = ServerProcess::start("restartable", sleep, vec!["600".into()], vec![]);
    std::fs::write(server.dir().join("data"), "kept").unwrap();
    server.pause();
    server.resume();
    server.kill();
    assert!(!server.is_alive());
    server.restart();
    assert!(server.is_alive());
    // Give the old watchdog time to act on "keep": the data must survive.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        std::fs::read_to_string(server.dir().join("data")).unwrap(),
        "kept"
    );
}

#[test]
#[should_panic(expected = "apt-get install -y no-such-package")]
fn a_missing_binary_fails_with_the_package_to_install() {
    require_binary("distlock-no-such-server", "no-such-package");
}
