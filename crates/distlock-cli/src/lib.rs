//! The library behind the `distlock` command: exit codes, how a holder is
//! described, and the supervision of a command that runs under a lock
//! ([`supervise`]), kept here so it can be tested in-process against any
//! backend, including ones whose locks expire.
#![deny(missing_docs)]

pub mod exit;
mod holder;
pub mod job;
pub mod say;
pub mod show;
pub mod store;
mod supervise;
pub mod terminal;

pub use holder::{
    CliMetadata, describe_holder, describe_leader, describe_sharing, holders_json, leader_json,
};
pub use supervise::{Ending, KillPolicy, become_subreaper, group_alive, supervise};
