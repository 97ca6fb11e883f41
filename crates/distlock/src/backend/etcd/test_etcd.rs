//! A private etcd server for the unit tests that drive this backend's
//! parts (the watch hub) directly against a real store, on free loopback
//! ports in a temporary directory.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::Client;

use super::{EtcdBackend, EtcdOptions};

pub(super) struct TestEtcd {
    child: Child,
    dir: PathBuf,
    endpoint: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

impl TestEtcd {
    /// Starts `etcd` from PATH; panics, naming the package, if it is missing.
    pub(super) fn start() -> Self {
        let (client, peer) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!(
            "distlock-unit-etcd-{}-{client}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create the etcd directory");
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .current_dir(&dir)
            .args(["--name", "unit", "--data-dir", "data"])
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("unit={peer_url}")])
            // The page cache outlives what these tests do to etcd; fsyncs
            // on a disk busy with builds stall it for seconds.
            .arg("--unsafe-no-fsync")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run etcd ({e}): install the etcd-server package"));
        let endpoint = format!("127.0.0.1:{client}");
        let ready_by = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&endpoint).is_err() {
            assert!(
                Instant::now() < ready_by,
                "etcd did not listen on {endpoint}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TestEtcd {
            child,
            dir,
            endpoint,
        }
    }

    /// The client endpoint, `127.0.0.1:PORT`.
    pub(super) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A client, once the member has elected itself leader.
    pub(super) async fn client(&self) -> Client {
        let mut client = Client::connect([self.endpoint.as_str()], None)
            .await
            .expect("connect to the test etcd");
        let ready_by = Instant::now() + Duration::from_secs(30);
        while !client.status().await.is_ok_and(|s| s.leader() != 0) {
            assert!(Instant::now() < ready_by, "etcd elected no leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client
    }

    /// A backend of its own (its own session, leases and watch stream, as
    /// another process would have), with a 2 s session TTL.
    pub(super) async fn backend(&self) -> Arc<EtcdBackend> {
        let options = EtcdOptions::new().session_ttl(Duration::from_secs(2));
        Arc::new(
            EtcdBackend::connect([self.endpoint()], options)
                .await
                .unwrap(),
        )
    }

    /// Stops (`SIGSTOP`) or continues (`SIGCONT`) the server: requests sent
    /// meanwhile wait in its socket, unanswered.
    pub(super) fn pause(&self, paused: bool) {
        let signal = if paused { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
