//! `distlock status` and `distlock leader`: read-only looks at a key.

use std::time::Duration;

use distlock::{Leader, Locker};
use futures::StreamExt;

use crate::exit::{self, Failure};
use crate::holder::{
    CliMetadata, describe_holder, describe_leader, describe_sharing, holders_json, leader_json,
};
use crate::job::forward_signals;
use crate::say::say;

/// `distlock status`: every holder of `key`; 0 when held, 1 when free.
///
/// # Errors
///
/// The store's, as a [`Failure`].
pub async fn status(locker: &Locker, key: &str, json: bool) -> Result<u8, Failure> {
    let holders = locker.holders(key).await?;
    if json {
        println!("{}", holders_json(key, &holders));
    } else if holders.is_empty() {
        println!("{key:?} is free");
    } else {
        match describe_sharing(&holders) {
            Some(sharing) => println!("{key:?} is held by {sharing}:"),
            None => print!("{key:?} is held by "),
        }
        let indent = if holders.limit.is_some() { "  " } else { "" };
        for h in &holders.holders {
            println!("{indent}{}", describe_holder(h));
            let left = match h.expires_in {
                Some(left) => {
                    humantime::format_duration(Duration::from_millis(left.as_millis() as u64))
                        .to_string()
                }
                None => "until the holder releases it or exits (no TTL)".into(),
            };
            println!("{indent}  time left: {left}");
            if let Some(metadata) = h.metadata.as_deref()
                && CliMetadata::from_json(metadata).is_none()
            {
                println!("{indent}  metadata: {metadata}");
            }
        }
    }
    Ok(if holders.is_empty() {
        exit::FREE
    } else {
        exit::HELD
    })
}

/// `distlock leader`: the current leader, and with `watch` every change
/// until SIGINT or SIGTERM (then exit 0).
///
/// # Errors
///
/// The store's, as a [`Failure`]; while watching, transient ones are
/// reported and watching goes on.
pub async fn show_leader(
    locker: &Locker,
    key: &str,
    json: bool,
    watch: bool,
) -> Result<u8, Failure> {
    let print = |leader: Option<&Leader>| {
        if json {
            println!("{}", leader_json(key, leader));
        } else {
            println!("{}", describe_leader(key, leader));
        }
    };
    if !watch {
        let leader = locker.leader(key).await?;
        print(leader.as_ref());
        return Ok(if leader.is_some() {
            exit::HELD
        } else {
            exit::FREE
        });
    }
    let mut signals = forward_signals()?;
    let mut changes = Box::pin(locker.observe(key)?);
    loop {
        tokio::select! {
            change = changes.next() => match change {
                Some(Ok(leader)) => print(leader.as_ref()),
                Some(Err(e)) if e.is_transient() => say(format!("reading the leader failed (will retry): {e}")),
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(0),
            },
            Some(_) = signals.recv() => return Ok(0),
        }
    }
}
