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
//! distlock-torture campaign --backends memory,file,redis,etcd --out /tmp/c  # runs + every control
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
//! ## Backends, and adding one
//!
//! Memory, file, Redis and etcd. Everything backend-specific is in
//! [`store`]; etcd took these additions (the template for the next one):
//!
//! ```text
//! Cargo.toml   distlock features += "etcd"; distlock-testkit features += "etcd"
//! BackendKind  + Etcd; name "etcd"; ALL += Etcd; faults: the Redis list
//!              (client stop/kill, server kill/stop, proxy reset/black hole);
//!              settle_time: a killed client's lease (max(5 s, 1.5 × TTL))
//! Store        + etcd: Option<EtcdCluster>;
//!   start      EtcdCluster::start(1), a FaultProxy in front of member 0,
//!              clients get etcd://<proxy>
//!   leftover   inspect each key directly, plus any key under /<namespace>/
//!   server_*   cluster.members[0].process: restart / pause / resume
//! ClientStore::delete_by_name
//!              delete the holder entry (lowest create revision) of the
//!              key's prefix, as the seed's etcd unlock did
//! ```
//!
//! Not yet: etcd leader kill and isolation need a 3-member cluster with a
//! proxy per member.
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
