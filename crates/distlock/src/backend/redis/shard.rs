//! Release notifications on a Redis Cluster: shard channels.
//!
//! A release publishes with `SPUBLISH` on the key's channel, which shares
//! the key's hash tag, so only the nodes serving that slot carry it; the
//! supervisor subscribes each channel (`SSUBSCRIBE`) through a RESP3
//! cluster connection, which sends it to the slot's master. A session ends
//! — and the next one subscribes everything again, waking every waiter to
//! re-check its key — when a node's connection drops, or a node
//! unsubscribes a channel itself (its slot moved, or the node became a
//! replica). A master that stops answering without dropping the
//! connection (paused) is noticed by neither: its waiters poll, as every
//! wait is also bounded by the retry delay and the holder's TTL.

use ::redis::cluster::ClusterClientBuilder;
use ::redis::{ConnectionInfo, ErrorKind, PushInfo, PushKind, RedisError, Value};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::Instant;

use super::pubsub::{Ended, HEARTBEAT, LINGER, Supervisor, bounded};
use crate::backoff::Backoff;

impl Supervisor {
    pub(super) async fn shard_session(
        &self,
        nodes: &[ConnectionInfo],
        inbox: &mut UnboundedReceiver<String>,
        backoff: &mut Backoff,
    ) -> Ended {
        let (pushes, mut pushed) = unbounded_channel::<PushInfo>();
        let client = match ClusterClientBuilder::new(nodes.to_vec())
            .use_protocol(::redis::ProtocolVersion::RESP3)
            .push_sender(pushes)
            .connection_timeout(self.connection_timeout)
            .response_timeout(self.response_timeout)
            .build()
        {
            Ok(client) => client,
            Err(e) => return Ended::Failed(e),
        };
        let mut conn = match bounded(
            self.connection_timeout,
            "connect",
            client.get_async_connection(),
        )
        .await
        {
            Ok(conn) => conn,
            Err(e) => return e,
        };
        while inbox.try_recv().is_ok() {}
        let names = self.channels.names();
        // One channel per command: channels of different slots live on
        // different nodes.
        for name in &names {
            if let Err(e) = bounded(self.response_timeout, "subscribe", conn.ssubscribe(name)).await
            {
                return e;
            }
        }
        self.channels.subscribed(&names);
        backoff.reset();
        let mut heartbeat = tokio::time::interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
        loop {
            tokio::select! {
                name = inbox.recv() => {
                    let Some(name) = name else { return Ended::Closed };
                    if let Err(e) = bounded(self.response_timeout, "subscribe", conn.ssubscribe(&name)).await {
                        return e;
                    }
                    self.channels.subscribed(std::slice::from_ref(&name));
                }
                push = pushed.recv() => {
                    let Some(push) = push else {
                        return Ended::Failed(lost("the cluster subscription connection closed"));
                    };
                    match (push.kind, push.data.as_slice()) {
                        (PushKind::SMessage, [channel, payload, ..]) => {
                            let channel: String = ::redis::from_redis_value_ref(channel).unwrap_or_default();
                            let next: String = ::redis::from_redis_value_ref(payload).unwrap_or_default();
                            self.channels.released(&channel, &next);
                        }
                        (PushKind::Disconnection, _) => {
                            return Ended::Failed(lost("a cluster node's subscription connection dropped"));
                        }
                        // Still wanted, yet unsubscribed: the node gave the slot up.
                        (PushKind::SUnsubscribe, [channel, ..]) if name_of(channel).is_some_and(|c| self.channels.contains(&c)) => {
                            return Ended::Failed(lost("a cluster node gave a channel's slot up"));
                        }
                        _ => {}
                    }
                }
                _ = heartbeat.tick() => {
                    let idle = self.channels.sweep(LINGER);
                    for name in &idle {
                        if let Err(e) = bounded(self.response_timeout, "unsubscribe", conn.sunsubscribe(name)).await {
                            return e;
                        }
                    }
                }
            }
        }
    }
}

fn name_of(value: &Value) -> Option<String> {
    ::redis::from_redis_value_ref(value).ok()
}

fn lost(what: &'static str) -> RedisError {
    RedisError::from((ErrorKind::Io, what))
}
