//! A client's side of a store: Lockers and backends, and raw access
//! behind the library's back for negative control 1.

use std::path::PathBuf;
use std::sync::Arc;

use distlock::Locker;
use distlock::backend::Backend;
use distlock::backend::etcd::EtcdBackend;
use distlock::backend::etcd::etcd_client::{self, GetOptions, SortOrder, SortTarget};
use distlock::backend::file::FileBackend;
use distlock::backend::memory::MemoryBackend;
use distlock::backend::redis::RedisKeys;

use super::{BackendKind, lock_key, with_namespace};

/// A client's side of a store: lockers, and raw access behind the
/// library's back for the negative controls.
#[derive(Clone, Debug)]
pub struct ClientStore {
    kind: BackendKind,
    url: String,
    memory: Option<Arc<MemoryBackend>>,
    redis: Option<redis::aio::MultiplexedConnection>,
}

impl ClientStore {
    /// The store a client process reaches at `url`.
    pub fn from_url(kind: BackendKind, url: &str) -> ClientStore {
        ClientStore::new(kind, url, None)
    }

    /// The store at `url`, or the orchestrator's memory store.
    pub(super) fn new(
        kind: BackendKind,
        url: &str,
        memory: Option<Arc<MemoryBackend>>,
    ) -> ClientStore {
        ClientStore {
            kind,
            url: url.to_owned(),
            memory,
            redis: None,
        }
    }

    /// A new locker (its own connections, as a separate process would
    /// have; memory lockers share the orchestrator's store).
    pub async fn locker(&self, namespace: &str) -> distlock::Result<Locker> {
        match &self.memory {
            Some(store) => Locker::builder(store.clone()).namespace(namespace).build(),
            None => Locker::from_url(&with_namespace(&self.url, namespace)).await,
        }
    }

    /// One backend for several Lockers (the shared profile): the
    /// orchestrator's store for memory, else a fresh connection the caller
    /// closes when its last Locker is done.
    pub async fn open_backend(&self) -> distlock::Result<Arc<dyn Backend>> {
        match &self.memory {
            Some(store) => Ok(store.clone()),
            // The Locker from the URL is only the way to the backend; it is
            // dropped, not closed, so the backend stays open.
            None => Ok(Locker::from_url(&self.url).await?.backend()),
        }
    }

    /// Whether backends from [`open_backend`](Self::open_backend) are the
    /// caller's to close (memory's belongs to the orchestrator).
    pub fn owns_backends(&self) -> bool {
        self.memory.is_none()
    }

    /// Deletes the lock on `key` by name, whoever holds it, without any
    /// owner check: the bug negative control 1 commits. Returns whether a
    /// lock was there.
    pub async fn delete_by_name(&mut self, namespace: &str, key: &str) -> Result<bool, String> {
        let key = lock_key(namespace, key);
        match self.kind {
            BackendKind::Memory => Ok(self.memory.as_ref().expect("memory store").evict(&key)),
            BackendKind::File => {
                let backend = FileBackend::open(file_dir(&self.url)).map_err(|e| e.to_string())?;
                let _ = std::fs::remove_file(backend.holder_path(&key));
                match std::fs::remove_file(backend.lock_path(&key)) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(e.to_string()),
                }
            }
            BackendKind::Redis => {
                if self.redis.is_none() {
                    let client =
                        redis::Client::open(self.url.as_str()).map_err(|e| e.to_string())?;
                    let conn = client
                        .get_multiplexed_async_connection()
                        .await
                        .map_err(|e| e.to_string())?;
                    self.redis = Some(conn);
                }
                let conn = self.redis.as_mut().expect("connected above");
                let deleted: Result<i64, _> = redis::cmd("DEL")
                    .arg(RedisKeys::new(&key).lock)
                    .query_async(conn)
                    .await;
                match deleted {
                    Ok(n) => Ok(n > 0),
                    Err(e) => {
                        self.redis = None;
                        Err(e.to_string())
                    }
                }
            }
            BackendKind::RedisSentinel | BackendKind::RedisCluster => Err(
                "control 1 is not run on a replicated Redis (see Variant::not_applicable)".into(),
            ),
            BackendKind::Etcd => {
                // The seed's etcd unlock: delete the lock's key by name,
                // whoever holds it now (here: the prefix's holder entry).
                let endpoints = self.url.trim_start_matches("etcd://").trim_end_matches('/');
                let mut client =
                    etcd_client::Client::connect(endpoints.split(',').collect::<Vec<_>>(), None)
                        .await
                        .map_err(|e| e.to_string())?;
                let first = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Ascend)
                    .with_limit(1);
                let holder = client
                    .get(EtcdBackend::key_prefix(&key), Some(first))
                    .await
                    .map_err(|e| e.to_string())?;
                match holder.kvs().first() {
                    Some(kv) => {
                        let deleted = client
                            .delete(kv.key().to_vec(), None)
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok(deleted.deleted() > 0)
                    }
                    None => Ok(false),
                }
            }
        }
    }
}

fn file_dir(url: &str) -> PathBuf {
    PathBuf::from(url.strip_prefix("file://").unwrap_or(url))
}
