//! The stores the CLI's tests run `distlock` against, and what they can
//! ask of each: its URL, what a client left in it, a lock deleted behind
//! its holder's back.

use distlock_testkit::server::free_port;
use distlock_testkit::{FileFixture, ReachableFixture, unique_namespace};

use crate::common::TempDir;

/// One store, as the tests reach it.
pub(crate) struct Store {
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) fixture: Box<dyn ReachableFixture>,
    /// A URL of this kind where nothing can be used.
    pub(crate) unusable: String,
    /// Whether locks expire by TTL (file locks do not).
    pub(crate) expires: bool,
    /// Whether a waiting client leaves entries in the store (a queue).
    pub(crate) queues: bool,
    /// Whether a grant can be withdrawn after it was stored, so observers
    /// may see a holder that never held: replicated Redis with replica
    /// acknowledgement on releases a grant whose `WAIT` fell short.
    pub(crate) withdraws_grants: bool,
    /// The CA its servers' certificates come from, when they speak TLS.
    pub(crate) ca: Option<std::path::PathBuf>,
}

impl Store {
    pub(crate) fn file() -> Self {
        let runtime = runtime();
        let fixture = runtime.block_on(FileFixture::new());
        let blocker = fixture.dir().join("not-a-directory");
        std::fs::write(&blocker, "").unwrap();
        Store {
            unusable: format!("file://{}/sub", blocker.display()),
            runtime,
            fixture: Box::new(fixture),
            expires: false,
            queues: false,
            withdraws_grants: false,
            ca: None,
        }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn redis() -> Self {
        Self::server(
            |runtime| Box::new(runtime.block_on(distlock_testkit::redis::RedisFixture::new())),
            format!("redis://127.0.0.1:{}/", free_port()),
        )
    }

    /// One server over TLS, through `rediss://`, the commands trusting
    /// its private CA.
    #[cfg(feature = "redis")]
    pub(crate) fn redis_tls() -> Self {
        Store {
            ca: Some(distlock_testkit::certs::Certificates::shared().ca()),
            ..Self::server(
                |runtime| Box::new(runtime.block_on(distlock_testkit::redis::RedisFixture::tls())),
                format!("rediss://127.0.0.1:{}/", free_port()),
            )
        }
    }

    /// The master of a Sentinel set (one master, two replicas, three
    /// sentinels), through `redis+sentinel://`.
    #[cfg(feature = "redis")]
    pub(crate) fn sentinel() -> Self {
        Self::server(
            |runtime| Box::new(runtime.block_on(distlock_testkit::redis_ha::HaFixture::sentinel())),
            format!(
                "redis+sentinel://127.0.0.1:{}/{}",
                free_port(),
                distlock_testkit::redis_ha::MASTER_NAME
            ),
        )
        .replicated()
    }

    /// [`sentinel`](Self::sentinel) over TLS, through `rediss+sentinel://`,
    /// the commands trusting the servers' private CA.
    #[cfg(feature = "redis")]
    pub(crate) fn sentinel_tls() -> Self {
        Self::ha_tls(
            distlock_testkit::redis_ha::HaFixture::sentinel_tls(),
            format!(
                "rediss+sentinel://127.0.0.1:{}/{}",
                free_port(),
                distlock_testkit::redis_ha::MASTER_NAME
            ),
        )
    }

    /// [`cluster`](Self::cluster) over TLS, through `rediss+cluster://`,
    /// the commands trusting the servers' private CA.
    #[cfg(feature = "redis")]
    pub(crate) fn cluster_tls() -> Self {
        Self::ha_tls(
            distlock_testkit::redis_ha::HaFixture::cluster_tls(),
            format!("rediss+cluster://127.0.0.1:{}", free_port()),
        )
    }

    #[cfg(feature = "redis")]
    fn ha_tls(
        fixture: impl std::future::Future<Output = distlock_testkit::redis_ha::HaFixture>,
        unusable: String,
    ) -> Self {
        let runtime = runtime();
        let fixture = runtime.block_on(fixture);
        let ca = fixture.ca();
        Store {
            ca,
            ..Self::server(|_| Box::new(fixture), unusable).replicated()
        }
    }

    /// A Redis Cluster (three masters, three replicas), through
    /// `redis+cluster://`.
    #[cfg(feature = "redis")]
    pub(crate) fn cluster() -> Self {
        Self::server(
            |runtime| Box::new(runtime.block_on(distlock_testkit::redis_ha::HaFixture::cluster())),
            format!(
                "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
                free_port(),
                free_port()
            ),
        )
        .replicated()
    }

    #[cfg(feature = "etcd")]
    pub(crate) fn etcd() -> Self {
        Self::server(
            |runtime| Box::new(runtime.block_on(distlock_testkit::etcd::EtcdFixture::new())),
            format!("etcd://127.0.0.1:{}", free_port()),
        )
    }

    /// A store served by a server: locks expire and waiters queue in it.
    #[cfg(any(feature = "redis", feature = "etcd"))]
    fn server(
        fixture: impl FnOnce(&tokio::runtime::Runtime) -> Box<dyn ReachableFixture>,
        unusable: String,
    ) -> Self {
        let runtime = runtime();
        Store {
            fixture: fixture(&runtime),
            runtime,
            unusable,
            expires: true,
            queues: true,
            withdraws_grants: false,
            ca: None,
        }
    }

    /// A replicated Redis (its fixture's URL leaves replica acknowledgement
    /// on, at one replica): a grant whose `WAIT` falls short is withdrawn.
    #[cfg(feature = "redis")]
    fn replicated(self) -> Self {
        Store {
            withdraws_grants: true,
            ..self
        }
    }

    /// A scratch directory whose `distlock` commands use this store in a
    /// namespace of their own.
    pub(crate) fn case(&self, case: &str) -> Case {
        let namespace = unique_namespace(case);
        let mut dir = TempDir::with_url(case, &self.fixture.url(&namespace));
        dir.ca = self.ca.clone();
        Case { namespace, dir }
    }

    pub(crate) fn leftovers(&self, case: &Case) -> Vec<String> {
        self.runtime
            .block_on(self.fixture.leftovers(&case.namespace))
    }

    pub(crate) fn assert_clean(&self, case: &Case, after: &str) {
        assert_eq!(
            self.leftovers(case),
            Vec::<String>::new(),
            "left in the store after {after}"
        );
    }

    pub(crate) fn delete_behind_back(&self, case: &Case, key: &str) {
        self.runtime
            .block_on(self.fixture.delete_behind_back(&case.namespace, key));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) struct Case {
    pub(crate) namespace: String,
    pub(crate) dir: TempDir,
}
