//! What `CLUSTER NODES` says, and keys of the slots a node serves.

use crate::redis_ha::key_slot;

/// One line of `CLUSTER NODES`: one node, as the asked node sees it.
#[derive(Debug)]
pub(super) struct NodeLine {
    pub(super) id: String,
    pub(super) port: u16,
    pub(super) myself: bool,
    /// `fail`, `fail?` (suspected), `handshake` or `noaddr`.
    pub(super) unhealthy: bool,
    /// The master's id, for a replica.
    pub(super) master_id: Option<String>,
    pub(super) slots: Vec<(u16, u16)>,
    /// Whether it lists a slot being imported or migrated (`[...]`).
    pub(super) open_slots: bool,
}

impl NodeLine {
    /// `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`
    pub(super) fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (host, _bus) = fields.get(1)?.split_once('@')?;
        let port = host.rsplit_once(':')?.1.parse().ok()?;
        let flags: Vec<&str> = fields.get(2)?.split(',').collect();
        let mut slots = Vec::new();
        let mut open_slots = false;
        for range in fields.iter().skip(8) {
            if range.starts_with('[') {
                open_slots = true;
                continue;
            }
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            slots.push((start.parse().ok()?, end.parse().ok()?));
        }
        Some(NodeLine {
            id: fields[0].to_owned(),
            port,
            myself: flags.contains(&"myself"),
            unhealthy: flags
                .iter()
                .any(|f| matches!(*f, "fail" | "fail?" | "handshake" | "noaddr")),
            master_id: Some(*fields.get(3)?)
                .filter(|m| *m != "-")
                .map(str::to_owned),
            slots,
            open_slots,
        })
    }

    pub(super) fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|(start, end)| (*start..=*end).contains(&slot))
    }
}

/// A key of a slot `node` serves, if it serves any.
pub(super) fn key_served_by(node: &NodeLine) -> Option<String> {
    if node.slots.is_empty() {
        return None;
    }
    // About 16384 tries for a node of one slot, three for a third of them.
    (0..1_000_000)
        .map(|n| format!("distlock-fixture:settled:{n}"))
        .find(|key| node.serves(key_slot(key)))
}

/// The cluster as all reachable nodes agree it is.
#[derive(Debug)]
pub(super) struct View {
    pub(super) nodes: Vec<NodeLine>,
    /// Whether any node reports an open (importing or migrating) slot.
    pub(super) open_slots: bool,
}

impl View {
    pub(super) fn owner_port(&self, slot: u16) -> Option<u16> {
        self.nodes.iter().find(|n| n.serves(slot)).map(|n| n.port)
    }
}
