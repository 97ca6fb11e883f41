//! # distlock-torture
//!
//! Evidence that distlock keeps mutual exclusion under faults: real client
//! processes contend for a few keys — as locks, as semaphore permits, as
//! read and write locks, or as candidates for their leadership (the
//! [`variant::Workload`]) — and act on a **fenced register** under them
//! while a seeded **nemesis** pauses and kills clients (waiters too, past
//! their lease; leaders, in the leadership workload), kills, pauses and restarts the server, makes
//! Redis lose its data, and resets or black-holes connections through a
//! fault proxy. Everything is recorded with system-wide monotonic
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
//!   memory backend), in three profiles: one Locker; several Lockers on one
//!   shared backend, closed and rebuilt mid-run; `distlock run` (`distlock
//!   elect`) around each critical section;
//! * [`register`] — the fenced register;
//! * [`history`] — the recorded events and files of a run;
//! * [`nemesis`] — the fault schedule;
//! * [`orchestrator`] — one run, end to end;
//! * [`checker`] — the offline checks and the summary table;
//! * [`variant`] — the workloads, the correct behaviour, the negative
//!   controls and which profile each client runs;
//! * [`store`] — everything backend-specific;
//! * [`campaign`] — runs and controls over several backends, and their
//!   minimums.
//!
//! ## Backends, and adding one
//!
//! Memory, file, Redis and etcd, and Redis replicated: a Sentinel set and
//! a Cluster (`redis-sentinel`, `redis-cluster`), whose nemesis fails
//! masters over — and, in the `no-ack` control, makes failovers that lose
//! writes (see the `store` module's `redis_ha`). Their fixtures save
//! configuration files on every failover: run them with `TMPDIR` on a tmpfs
//! (`TMPDIR=/dev/shm`). Everything backend-specific is in
//! [`store`]; etcd took these additions (the template for the next one):
//!
//! ```text
//! Cargo.toml   distlock features += "etcd"; distlock-testkit features += "etcd"
//! BackendKind  + Etcd; name "etcd"; ALL += Etcd; faults: client stop/kill,
//!              leader kill/isolate, leader SIGSTOP, proxy reset/black hole;
//!              settle_time: a killed client's lease (max(5 s, 1.5 × TTL))
//! Store        + etcd: Option<EtcdCluster>;
//!   start      three members: a tagging FaultProxy in front of each peer
//!              port (peers dial each other through them), a FaultProxy
//!              in front of each client port; clients get etcd://<p0>,<p1>,<p2>
//!   leftover   inspect each key directly, plus any key under /<namespace>/
//!   faults     kill_server: SIGKILL the leader, await a new one, restart it;
//!              pause_server: SIGSTOP the leader; isolate_leader: black-hole
//!              its peer proxy, its X-Server-From tag at the other peer
//!              proxies, and its client proxy
//! ClientStore::delete_by_name
//!              delete the holder entry (lowest create revision) of the
//!              key's prefix, as the seed's etcd unlock did
//! ```
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
