//! Spreading replicas evenly over the nodes in service: how a joining node (or one returned to
//! service by `undrain`) receives replicas.
//!
//! The meta leader proposes [`super::MetaCommand::Rebalance`] whenever [`ClusterMap::rebalance_plan`]
//! is not empty. Each planned move is an ordinary [`Swap`] (the replica on the most loaded
//! node of a region is replaced by one on the least loaded node of the same region), so it
//! follows the drain's protocol: the joining node is added as a learner, catches up, takes the
//! leaving node's place in the map, and only then does the leaving node close its copy.
//! Routers never read from a replica that is still catching up, and residency holds because a
//! replica only ever moves within its region.
//!
//! Moves go in waves: nothing is planned while any swap or resize is in flight, and a wave
//! holds at most `max_swaps` moves, so that rebalancing never competes with repairs and
//! moves only a bounded amount of data at once.

use std::collections::{BTreeMap, BTreeSet};

use super::placement::loads;
use super::{ClusterMap, MetaOutcome, Swap};
use tessera_proto::{NodeId, ShardId};

impl ClusterMap {
    /// The next wave of moves: within each region, replicas move from the most to the least
    /// loaded node in service until their loads differ by at most one, or `max_swaps` moves
    /// are planned. A move never puts two replicas of a shard on one node and never leaves a
    /// shard's voters in fewer zones than before. Empty while a swap or a resize runs.
    pub fn rebalance_plan(&self, max_swaps: usize) -> Vec<(ShardId, Swap)> {
        let busy = self.shards.values().any(|s| !s.incoming.is_empty())
            || self.tenants.values().any(|t| t.resize.is_some());
        if max_swaps == 0 || busy {
            return Vec::new();
        }
        let mut load = loads(self);
        let regions: BTreeSet<&str> = self.nodes.values().map(|n| n.region.as_str()).collect();
        let mut plan: Vec<(ShardId, Swap)> = Vec::new();
        for region in regions {
            while plan.len() < max_swaps {
                let Some(next) = self.next_move(region, &load, &plan) else {
                    break;
                };
                if let Some(l) = load.get_mut(&next.1.leaving) {
                    *l -= 1;
                }
                *load.entry(next.1.joining).or_default() += 1;
                plan.push(next);
            }
        }
        plan
    }

    /// One move in `region` that narrows the gap between its most and least loaded nodes by
    /// two, trying the most loaded nodes first.
    fn next_move(
        &self,
        region: &str,
        load: &BTreeMap<NodeId, usize>,
        planned: &[(ShardId, Swap)],
    ) -> Option<(ShardId, Swap)> {
        let mut in_service: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.region == region && !self.node_states.contains_key(&n.id))
            .map(|n| n.id)
            .collect();
        let load_of = |n: &NodeId| load.get(n).copied().unwrap_or(0);
        in_service.sort_by_key(|n| (load_of(n), *n));
        let coldest = *in_service.first()?;
        for hot in in_service.iter().rev() {
            if load_of(hot) < load_of(&coldest) + 2 {
                return None;
            }
            let moved: BTreeSet<ShardId> = planned.iter().map(|(s, _)| *s).collect();
            let shard = self.shards.values().find(|s| {
                !moved.contains(&s.id)
                    && s.replicas().any(|r| r == *hot)
                    && !s.replicas().any(|r| r == coldest)
                    && s.policy.regions.iter().any(|r| r == region)
                    && self.keeps_zones(s, *hot, coldest)
            });
            if let Some(s) = shard {
                let swap = Swap {
                    leaving: *hot,
                    joining: coldest,
                };
                return Some((s.id, swap));
            }
        }
        None
    }

    /// Whether replacing `leaving` by `joining` keeps the shard's voters in as many zones.
    fn keeps_zones(&self, shard: &super::ShardEntry, leaving: NodeId, joining: NodeId) -> bool {
        let zone = |n: &NodeId| {
            self.nodes
                .get(n)
                .map(|e| (e.region.as_str(), e.zone.as_str()))
        };
        if !shard.voters.contains(&leaving) {
            return true;
        }
        let before: BTreeSet<_> = shard.voters.iter().filter_map(zone).collect();
        let after: BTreeSet<_> = shard
            .voters
            .iter()
            .map(|v| if *v == leaving { joining } else { *v })
            .filter_map(|v| zone(&v))
            .collect();
        after.len() >= before.len()
    }

    /// Starts the next wave of moves (see [`Self::rebalance_plan`]); a no-op when balanced.
    pub(super) fn rebalance(&mut self, max_swaps: u32) -> Result<MetaOutcome, String> {
        let plan = self.rebalance_plan(max_swaps as usize);
        if plan.is_empty() {
            return Ok(MetaOutcome::Ok { epoch: self.epoch });
        }
        for (shard, swap) in plan {
            if let Some(entry) = self.shards.get_mut(&shard) {
                entry.incoming.push(swap);
            }
        }
        let epoch = self.bump();
        Ok(MetaOutcome::Ok { epoch })
    }

    /// Returns a drained or dead node to service: it takes new replicas again (rebalancing
    /// gives it its share), and the moves of a drain still under way are called off.
    pub(super) fn undrain_node(&mut self, node: NodeId) -> Result<MetaOutcome, String> {
        if !self.nodes.contains_key(&node) {
            return Err(format!("unknown node {node}"));
        }
        let cancelled = self
            .shards
            .values()
            .any(|s| s.incoming.iter().any(|w| w.leaving == node));
        if self.node_states.remove(&node).is_none() && !cancelled {
            return Ok(MetaOutcome::Ok { epoch: self.epoch });
        }
        for s in self.shards.values_mut() {
            s.incoming.retain(|w| w.leaving != node);
        }
        let epoch = self.bump();
        Ok(MetaOutcome::Ok { epoch })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MetaCommand, NodeEntry, TenantSpec};
    use super::*;

    fn node(id: NodeId, zone: &str) -> NodeEntry {
        NodeEntry {
            id,
            region: "us".into(),
            zone: zone.into(),
            raft_addr: format!("127.0.0.{id}:7000"),
            grpc_addr: format!("127.0.0.{id}:8000"),
        }
    }

    /// Three nodes holding every replica of eight shards, then a fourth that joins.
    fn three_then_a_fourth() -> ClusterMap {
        let mut m = ClusterMap::default();
        m.apply(&MetaCommand::RegisterNodes(vec![
            node(1, "a"),
            node(2, "b"),
            node(3, "c"),
        ]));
        m.apply(&MetaCommand::CreateTenant(TenantSpec {
            id: "acme".into(),
            regions: vec!["us".into()],
            home: "us".into(),
            survival: "zone".into(),
            partitions: 8,
        }));
        m.apply(&MetaCommand::RegisterNodes(vec![node(4, "d")]));
        m
    }

    /// Completes every swap of the current wave, as the shard leaders would.
    fn complete_wave(m: &mut ClusterMap) {
        let swaps: Vec<(ShardId, Swap)> = m
            .shards
            .values()
            .flat_map(|s| s.incoming.iter().map(move |w| (s.id, *w)))
            .collect();
        for (shard, swap) in swaps {
            m.apply(&MetaCommand::CompleteSwap { shard, swap });
        }
    }

    fn spread(m: &ClusterMap) -> (usize, usize) {
        let load = loads(m);
        let in_service = load.iter().filter(|(n, _)| !m.node_states.contains_key(n));
        let max = in_service.clone().map(|(_, l)| *l).max().unwrap_or(0);
        let min = in_service.map(|(_, l)| *l).min().unwrap_or(0);
        (min, max)
    }

    #[test]
    fn a_joining_node_receives_its_share_in_bounded_waves() {
        let mut m = three_then_a_fourth();
        assert_eq!(m.shards_on(4).len(), 0);
        let replicas: usize = m.shards.values().map(|s| s.replicas().count()).sum();
        let mut waves = 0;
        while !m.rebalance_plan(2).is_empty() {
            let before = m.epoch;
            m.apply(&MetaCommand::Rebalance { max_swaps: 2 });
            assert!(m.epoch > before);
            let in_flight: usize = m.shards.values().map(|s| s.incoming.len()).sum();
            assert!(in_flight <= 2, "a wave holds at most max_swaps moves");
            assert!(
                m.rebalance_plan(2).is_empty(),
                "nothing more is planned while a wave runs"
            );
            complete_wave(&mut m);
            assert!(m.residency_violations().is_empty());
            waves += 1;
            assert!(waves < 50, "rebalancing converges");
        }
        let (min, max) = spread(&m);
        assert!(max - min <= 1, "balanced: {min}..{max}");
        assert_eq!(m.shards_on(4).len(), 6, "24 replicas over 4 nodes");
        let after: usize = m.shards.values().map(|s| s.replicas().count()).sum();
        assert_eq!(after, replicas, "moves, never adds or drops, replicas");
        for s in m.shards.values() {
            let distinct: BTreeSet<NodeId> = s.replicas().collect();
            assert_eq!(distinct.len(), s.replicas().count(), "shard {}", s.id);
            let zones: BTreeSet<&str> = s.voters.iter().map(|v| m.nodes[v].zone.as_str()).collect();
            assert_eq!(zones.len(), 3, "shard {} keeps three zones", s.id);
        }
    }

    #[test]
    fn undrain_calls_off_a_drain_and_returns_the_node_to_service() {
        let mut m = three_then_a_fourth();
        while !m.rebalance_plan(4).is_empty() {
            m.apply(&MetaCommand::Rebalance { max_swaps: 4 });
            complete_wave(&mut m);
        }
        let held = m.shards_on(4);
        m.apply(&MetaCommand::DrainNode(4));
        assert!(m.shards.values().any(|s| !s.incoming.is_empty()));
        assert!(m.rebalance_plan(4).is_empty(), "no rebalancing mid-drain");
        let out = m.apply(&MetaCommand::UndrainNode(4));
        assert!(matches!(out, MetaOutcome::Ok { .. }), "{out:?}");
        assert!(m.node_states.is_empty());
        assert!(m.shards.values().all(|s| s.incoming.is_empty()));
        assert_eq!(m.shards_on(4), held, "nothing moved");
        let epoch = m.epoch;
        m.apply(&MetaCommand::UndrainNode(4));
        assert_eq!(m.epoch, epoch, "repeating it changes nothing");
        let out = m.apply(&MetaCommand::UndrainNode(9));
        assert!(matches!(out, MetaOutcome::Rejected(_)), "{out:?}");
    }

    #[test]
    fn no_move_costs_a_shard_a_zone() {
        let mut m = three_then_a_fourth();
        // The newcomer shares zone a with node 1: only node 1's replicas may move to it.
        m.apply(&MetaCommand::RegisterNodes(vec![node(4, "a")]));
        while !m.rebalance_plan(8).is_empty() {
            m.apply(&MetaCommand::Rebalance { max_swaps: 8 });
            complete_wave(&mut m);
        }
        assert_eq!(m.shards_on(4).len(), 4, "half of node 1's eight");
        assert_eq!(m.shards_on(1).len(), 4);
        for s in m.shards.values() {
            let zones: BTreeSet<&str> = s.voters.iter().map(|v| m.nodes[v].zone.as_str()).collect();
            assert_eq!(zones.len(), 3, "shard {}", s.id);
        }
    }

    #[test]
    fn a_balanced_cluster_plans_nothing() {
        let mut m = three_then_a_fourth();
        m.apply(&MetaCommand::DrainNode(4));
        assert!(m.rebalance_plan(8).is_empty(), "a drained node takes none");
        let mut m = three_then_a_fourth();
        m.apply(&MetaCommand::Rebalance { max_swaps: 0 });
        assert!(m.shards.values().all(|s| s.incoming.is_empty()));
    }
}
