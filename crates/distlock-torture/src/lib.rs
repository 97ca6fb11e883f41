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
//! Everything backend-specific is in [`store`]: a [`store::BackendKind`]
//! variant with its name, `ttl_expiry` and fault kinds; how
//! [`store::Store::start`] starts its server and proxy and which URL
//! clients get; how [`store::Store::leftover`] reads held keys directly;
//! how [`store::ClientStore::delete_by_name`] deletes a lock by name; and
//! its server faults in `server_kill_restart` / `server_pause`.
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
