//! How many replicas a grant must wait for by default, counted from the
//! topology's own view of its replicas: the sentinels' replica list, the
//! cluster's node table, one server's `INFO replication`.
//!
//! Not from the master's connected replicas: a master cut off from its
//! replicas has none connected, and would grant alone while one of them
//! is promoted over it (torture found 25 overlapping grants in 60 s that
//! way). A replica counts while the topology deems it alive, down or not
//! linked to the master, because that is what may be promoted.

use std::collections::HashMap;
use std::time::Duration;

use ::redis::Value;
use ::redis::cluster_routing::Slot;

/// How old a count may be before an acknowledgement counts again: a
/// replica that joins a master without one is waited for within this.
pub(super) const MAX_AGE: Duration = Duration::from_secs(1);

/// Replicas to wait for, as last counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Counted {
    /// One master: how many replicas it has.
    Whole(usize),
    /// A cluster: which node serves each slot, and each node.
    Shards(Shards),
}

/// A cluster's masters and the slots they serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Shards {
    owner: HashMap<Slot, usize>,
    nodes: Vec<Node>,
}

/// One cluster node, as `CLUSTER NODES` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Node {
    pub(super) id: String,
    pub(super) host: String,
    pub(super) port: u16,
    /// Replicas of this node the cluster does not deem failed.
    pub(super) replicas: usize,
}

impl Counted {
    /// Replicas of the master that serves `key`; a slot no master is
    /// known to serve counts one, so its grant is not handed out unseen.
    pub(super) fn for_key(&self, key: &str) -> usize {
        match self {
            Counted::Whole(n) => *n,
            Counted::Shards(shards) => shards.owner_of(key).map_or(1, |node| node.replicas),
        }
    }

    /// The most replicas any master has.
    pub(super) fn most(&self) -> usize {
        match self {
            Counted::Whole(n) => *n,
            Counted::Shards(shards) => shards.nodes.iter().map(|n| n.replicas).max().unwrap_or(0),
        }
    }
}

impl Shards {
    pub(super) fn owner_of(&self, key: &str) -> Option<&Node> {
        self.owner.get(&Slot::for_key(key)).map(|&i| &self.nodes[i])
    }

    pub(super) fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Reads a `CLUSTER NODES` reply: every node, with its replicas not
    /// flagged `fail` (a replica only suspected, `fail?`, may still be
    /// promoted, so it counts), and the slots each master serves.
    pub(super) fn parse(text: &str) -> Option<Shards> {
        struct Line<'a> {
            id: &'a str,
            addr: &'a str,
            flags: Vec<&'a str>,
            master: &'a str,
            slots: Vec<&'a str>,
        }
        let lines: Vec<Line> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                (fields.len() >= 8).then(|| Line {
                    id: fields[0],
                    addr: fields[1],
                    flags: fields[2].split(',').collect(),
                    master: fields[3],
                    slots: fields[8..].to_vec(),
                })
            })
            .collect::<Option<_>>()?;
        let mut shards = Shards {
            owner: HashMap::new(),
            nodes: Vec::new(),
        };
        for line in &lines {
            // ip:port@cport[,hostname]; the clients dial ip:port.
            let (host, port) = line.addr.split('@').next()?.rsplit_once(':')?;
            let replicas = lines
                .iter()
                .filter(|r| r.master == line.id && !r.flags.contains(&"fail"))
                .count();
            let index = shards.nodes.len();
            shards.nodes.push(Node {
                id: line.id.to_owned(),
                host: host.to_owned(),
                port: port.parse().ok()?,
                replicas,
            });
            // Ranges `a-b` or single slots; `[...]` marks a migration.
            let served = line.slots.iter().filter(|s| !s.starts_with('['));
            for range in served.filter(|_| line.flags.contains(&"master")) {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                for slot in a.parse::<u16>().ok()?..=b.parse::<u16>().ok()? {
                    shards.owner.insert(Slot::new(slot)?, index);
                }
            }
        }
        Some(shards)
    }
}

/// Counts the replicas in a `SENTINEL REPLICAS` reply that the sentinels
/// do not deem down or disconnected.
pub(super) fn live_sentinel_replicas(reply: &Value) -> Option<usize> {
    let entries: Vec<Value> = ::redis::from_redis_value_ref(reply).ok()?;
    let mut live = 0;
    for entry in &entries {
        let fields: HashMap<String, Value> = ::redis::from_redis_value_ref(entry).ok()?;
        let flags: String = ::redis::from_redis_value_ref(fields.get("flags")?).ok()?;
        if !flags
            .split(',')
            .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"))
        {
            live += 1;
        }
    }
    Some(live)
}

/// One field of an `INFO` reply.
pub(super) fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922 [10923->-a3]
a3 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383
r1 127.0.0.1:7003@17003 slave a1 0 0 1 connected
r2 127.0.0.1:7004@17004 slave,fail a2 0 0 2 disconnected
r3 127.0.0.1:7005@17005 slave,fail? a3 0 0 3 connected
";

    #[test]
    fn a_cluster_counts_each_master_s_replicas_but_failed_ones() {
        let shards = Shards::parse(NODES).expect("parses");
        let counted = Counted::Shards(shards.clone());
        let replicas = |id: &str| shards.node(id).expect("node").replicas;
        assert_eq!((replicas("a1"), replicas("a2"), replicas("a3")), (1, 0, 1));
        assert_eq!(counted.most(), 1);
        // {a} is slot 15495, {b} 3300, {c} 7365.
        assert_eq!(shards.owner_of("{a}x").expect("owner").id, "a3");
        assert_eq!(shards.owner_of("{b}x").expect("owner").id, "a1");
        assert_eq!(counted.for_key("{c}x"), 0);
        // Replicas are known too (one may be promoted before a recount).
        assert_eq!(shards.node("r1").expect("r1").replicas, 0);
        let node = shards.node("a2").expect("a2");
        assert_eq!((node.host.as_str(), node.port), ("127.0.0.1", 7001));
    }

    #[test]
    fn a_slot_no_master_serves_waits_for_one() {
        let counted = Counted::Shards(Shards::parse(&NODES.replace("10923-16383", "")).unwrap());
        assert_eq!(counted.for_key("{a}x"), 1);
    }

    #[test]
    fn a_garbled_node_table_is_not_read() {
        assert_eq!(Shards::parse("a1 127.0.0.1:7000@17000 master"), None);
    }

    #[test]
    fn sentinels_count_replicas_not_down() {
        let replica = |flags: &str| {
            Value::Array(vec![
                Value::BulkString(b"name".to_vec()),
                Value::BulkString(b"127.0.0.1:6380".to_vec()),
                Value::BulkString(b"flags".to_vec()),
                Value::BulkString(flags.as_bytes().to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            replica("slave"),
            replica("s_down,slave,disconnected"),
            replica("slave"),
        ]);
        assert_eq!(live_sentinel_replicas(&reply), Some(2));
        assert_eq!(live_sentinel_replicas(&Value::Array(vec![])), Some(0));
    }
}
