//! Moving replicas off a node: an operator's drain, or the repair of a node
//! declared dead.
//!
//! Each of the node's replicas gets a [`Swap`]: an eligible node to take
//! its place (same allowed regions, the leaving node's region first, least
//! loaded, another zone where possible). Then, driven by the shard's leader
//! (see `crate::node`):
//! 1. the joining node is added as a Raft learner and catches up;
//! 2. `CompleteSwap` puts it in the leaving node's place in the map (so
//!    routers only ever read from replicas that have caught up);
//! 3. the leader makes the Raft voters follow the map, and the leaving node
//!    closes its copy once the map no longer lists it.
//!
//! Residency holds at every step: candidates come only from the shard's
//! allowed regions.

use super::placement::{loads, region_candidates};
use super::{ClusterMap, MetaOutcome, Swap};
use serde::{Deserialize, Serialize};
use tessera_proto::{NodeId, ShardId};

/// Why a node takes no new replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// An operator asked for its replicas to move elsewhere.
    Draining,
    /// The meta leader could not reach it for `dead_after_secs`.
    Dead,
}

impl NodeState {
    /// The name `tessera status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draining => "draining",
            Self::Dead => "dead",
        }
    }
}

impl ClusterMap {
    /// Marks `node` and replaces each of its replicas. A drain is refused
    /// (and changes nothing) when some replica has nowhere to go; a dead
    /// node's replicas are replaced where possible.
    pub(super) fn retire_node(
        &mut self,
        node: NodeId,
        state: NodeState,
    ) -> Result<MetaOutcome, String> {
        if !self.nodes.contains_key(&node) {
            return Err(format!("unknown node {node}"));
        }
        let pending = |m: &ClusterMap| {
            m.shards_on(node)
                .into_iter()
                .filter(|s| !m.shards[s].incoming.iter().any(|w| w.leaving == node))
                .collect::<Vec<_>>()
        };
        if self.node_states.get(&node) == Some(&state) && pending(self).is_empty() {
            return Ok(MetaOutcome::Ok { epoch: self.epoch });
        }
        let before = self.clone();
        self.node_states.insert(node, state);
        for shard in pending(self) {
            match self.replacement(shard, node) {
                Some(joining) => {
                    if let Some(entry) = self.shards.get_mut(&shard) {
                        entry.incoming.push(Swap {
                            leaving: node,
                            joining,
                        });
                    }
                }
                None if state == NodeState::Draining => {
                    *self = before;
                    return Err(format!(
                        "cannot drain node {node}: shard {shard} has no other eligible node \
                         in its allowed regions; add a node first"
                    ));
                }
                None => {}
            }
        }
        let epoch = self.bump();
        Ok(MetaOutcome::Ok { epoch })
    }

    /// Shards with a replica on `node`.
    pub fn shards_on(&self, node: NodeId) -> Vec<ShardId> {
        self.shards
            .values()
            .filter(|s| s.replicas().any(|r| r == node))
            .map(|s| s.id)
            .collect()
    }

    /// The node to take `leaving`'s replica of `shard`: not already a
    /// replica, usable, in an allowed region (the leaver's first), least
    /// loaded, preferring a zone the shard's voters do not use.
    fn replacement(&self, shard: ShardId, leaving: NodeId) -> Option<NodeId> {
        let entry = self.shards.get(&shard)?;
        let home = self.nodes.get(&leaving).map(|n| n.region.clone());
        let load = loads(self);
        let zones: Vec<&str> = entry
            .voters
            .iter()
            .filter(|v| **v != leaving)
            .filter_map(|v| self.nodes.get(v).map(|n| n.zone.as_str()))
            .collect();
        let regions = home
            .iter()
            .filter(|r| entry.policy.regions.contains(r))
            .chain(
                entry
                    .policy
                    .regions
                    .iter()
                    .filter(|r| Some(*r) != home.as_ref()),
            );
        for region in regions {
            let mut candidates: Vec<_> = region_candidates(self, region, &load)
                .into_iter()
                .filter(|n| !entry.replicas().any(|r| r == n.id))
                .collect();
            let joining: Vec<NodeId> = entry.incoming.iter().map(|w| w.joining).collect();
            candidates.retain(|n| !joining.contains(&n.id));
            candidates.sort_by_key(|n| {
                let same_zone = zones.contains(&n.zone.as_str());
                (same_zone, load.get(&n.id).copied().unwrap_or(0), n.id)
            });
            if let Some(n) = candidates.first() {
                return Some(n.id);
            }
        }
        None
    }

    /// The joining node has caught up: it replaces the leaving one.
    /// Repeating it is a no-op.
    pub(super) fn complete_swap(
        &mut self,
        shard: ShardId,
        swap: Swap,
    ) -> Result<MetaOutcome, String> {
        let entry = self
            .shards
            .get_mut(&shard)
            .ok_or_else(|| format!("unknown shard {shard}"))?;
        let Some(pos) = entry.incoming.iter().position(|w| *w == swap) else {
            return Ok(MetaOutcome::Ok { epoch: self.epoch });
        };
        entry.incoming.remove(pos);
        for r in entry.voters.iter_mut().chain(entry.learners.iter_mut()) {
            if *r == swap.leaving {
                *r = swap.joining;
            }
        }
        let epoch = self.bump();
        Ok(MetaOutcome::Ok { epoch })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MetaCommand, NodeEntry, TenantSpec};
    use super::*;

    fn cluster(nodes: &[(NodeId, &str, &str)]) -> ClusterMap {
        let mut m = ClusterMap::default();
        m.apply(&MetaCommand::RegisterNodes(
            nodes
                .iter()
                .map(|(id, region, zone)| NodeEntry {
                    id: *id,
                    region: region.to_string(),
                    zone: zone.to_string(),
                    raft_addr: format!("127.0.0.{id}:7000"),
                    grpc_addr: format!("127.0.0.{id}:8000"),
                })
                .collect(),
        ));
        m.apply(&MetaCommand::CreateTenant(TenantSpec {
            id: "acme".into(),
            regions: vec!["us".into()],
            home: "us".into(),
            survival: "zone".into(),
            partitions: 2,
        }));
        m
    }

    #[test]
    fn draining_moves_every_replica_within_the_allowed_regions() {
        let mut m = cluster(&[
            (1, "us", "a"),
            (2, "us", "b"),
            (3, "us", "c"),
            (4, "us", "a"),
            (5, "eu", "a"),
        ]);
        let on_three = m.shards_on(3);
        assert!(!on_three.is_empty());
        let out = m.apply(&MetaCommand::DrainNode(3));
        assert!(matches!(out, MetaOutcome::Ok { .. }), "{out:?}");
        assert_eq!(
            m.shards_on(3),
            on_three,
            "replicas stay until the joiner caught up"
        );
        assert!(m.residency_violations().is_empty());
        for s in &on_three {
            let swap = m.shards[s].incoming[0];
            assert_eq!(swap.leaving, 3);
            m.apply(&MetaCommand::CompleteSwap { shard: *s, swap });
            m.apply(&MetaCommand::CompleteSwap { shard: *s, swap });
        }
        assert!(m.shards_on(3).is_empty());
        for s in on_three {
            assert_eq!(m.shards[&s].voters.len(), 3);
            assert!(
                m.shards[&s].voters.contains(&4),
                "the spare us node takes it"
            );
        }
        // Drained nodes take no new shards.
        m.apply(&MetaCommand::CreateTenant(TenantSpec {
            id: "later".into(),
            regions: vec!["us".into()],
            home: "us".into(),
            survival: "zone".into(),
            partitions: 8,
        }));
        assert!(m.shards_on(3).is_empty());
    }

    #[test]
    fn a_drain_with_nowhere_to_go_is_refused_and_changes_nothing() {
        let mut m = cluster(&[
            (1, "us", "a"),
            (2, "us", "b"),
            (3, "us", "c"),
            (5, "eu", "a"),
        ]);
        let before = m.clone();
        let out = m.apply(&MetaCommand::DrainNode(3));
        assert!(matches!(out, MetaOutcome::Rejected(_)), "{out:?}");
        assert_eq!(m, before);
        // A dead node's replicas are replaced where possible; none here.
        let out = m.apply(&MetaCommand::MarkDead(3));
        assert!(matches!(out, MetaOutcome::Ok { .. }));
        assert!(m.residency_violations().is_empty());
    }
}
