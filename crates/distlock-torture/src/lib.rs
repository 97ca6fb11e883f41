//! # distlock-torture
//!
//! Evidence that distlock keeps mutual exclusion under faults: real client
//! processes contend for a few keys and write to a **fenced register** under
//! their locks while a seeded **nemesis** pauses and kills clients, kills,
//! pauses and restarts the server, and resets or black-holes connections
//! through a fault proxy. Everything is recorded with system-wide monotonic
//! timestamps; an offline **checker** reads the history and reports every
//! violation. Deliberately broken **negative controls** prove the checker
//! can fail.
//!
//! ```text
//! distlock-torture run --backend redis --duration-s 60 --out /tmp/t1     # one run, checked
//! distlock-torture check /tmp/t1                                         # re-check a run
//! distlock-torture campaign --backends memory,file,redis --out /tmp/c    # runs + every control
//! scripts/torture --long                                                 # the long campaign
//! ```
//!
//! ## Pieces
//!
//! * [`client`] — the workload of one client (a process, or a task for the
//!   memory backend);
//! * [`register`] — the fenced register;
//! * [`history`] — the recorded events and files of a run;
//! * [`nemesis`] — the fault schedule;
//! * [`orchestrator`] — one run, end to end;
//! * [`checker`] — the offline checks and the summary table;
//! * [`variant`] — the correct workload and the negative controls;
//! * [`store`] — everything backend-specific;
//! * [`campaign`] — runs and controls over several backends.
//!
//! ## Adding a backend (etcd)
//!
//! Everything backend-specific is in [`store`]. For etcd (testkit feature
//! `etcd`, with `distlock_testkit::etcd::{EtcdCluster, raw_client,
//! holder_entry}`), the additions are:
//!
//! ```text
//! Cargo.toml   distlock features += "etcd"; distlock-testkit features += "etcd"
//! BackendKind  + Etcd; name "etcd"; ALL += Etcd; ttl_expiry true; client_processes true;
//!              faults: the Redis list (client stop/kill, server kill/stop, proxy reset/black hole)
//! Store        + etcd: Option<EtcdCluster>;
//!   start      let cluster = block_in_place(|| EtcdCluster::start(1));
//!              let proxy = FaultProxy::start(cluster.members[0].endpoint.parse()?).await?;
//!              client_url = format!("etcd://{}", proxy.addr())
//!   leftover   Locker::from_url(format!("etcd://{endpoint}?namespace={ns}")) + inspect each key
//!   server_*   cluster.members[0].process.restart() / .pause() / .resume()
//! ClientStore::delete_by_name
//!              let mut c = raw_client(&[endpoint]).await;
//!              if let Some(kv) = holder_entry(&mut c, ns, key).await { c.delete(kv.key().to_vec(), None).await }
//! ```
//!
//! and runs use `--ttl-ms 2000` (etcd's lease floor is about 1.5 s). Leader
//! kill and isolation need a 3-member cluster and a proxy per member: a
//! second step.
#![deny(missing_docs)]

pub mod campaign;
pub mod checker;
pub mod client;
pub mod clock;
pub mod history;
pub mod nemesis;
pub mod orchestrator;
pub mod register;
pub mod store;
pub mod variant;
