//! The residency invariant (DESIGN.md): no replica of a tenant's shard sits
//! in a region the tenant does not allow. Checked two ways, because either
//! alone can be wrong: the map's placement (voters, learners and nodes
//! joining, for the current placement and a resize's target) and what the
//! nodes really host (a replica the map forgot, or one a failed drop left
//! behind, holds data just the same).

use std::collections::{BTreeMap, BTreeSet};

use tessera_proto::pb::{ClusterMap, ResidencyViolation};
use tessera_proto::{NodeId, ShardId, META_GROUP};

/// What one check found.
#[derive(Debug, Default, PartialEq)]
pub struct Residency {
    /// Tenant shards checked.
    pub shards: u32,
    /// Replicas checked, in the map and hosted.
    pub replicas: u32,
    /// Every replica outside its tenant's regions, sorted.
    pub violations: Vec<ResidencyViolation>,
}

/// Checks `map` and, for each node that answered, the groups it hosts.
pub fn check(map: &ClusterMap, hosted: &BTreeMap<NodeId, Vec<ShardId>>) -> Residency {
    let region_of = |node: NodeId| {
        map.nodes
            .iter()
            .find(|n| n.id == node)
            .map_or("?", |n| n.region.as_str())
    };
    let tenants_of = tenants_by_shard(map);
    let mut out = Residency {
        shards: tenants_of.len() as u32,
        ..Residency::default()
    };
    let mut found = BTreeSet::new();
    let mut judge = |shard: ShardId, node: NodeId, seen_in: &'static str, out: &mut Residency| {
        out.replicas += 1;
        let region = region_of(node);
        for (tenant, allowed) in tenants_of.get(&shard).into_iter().flatten() {
            if !allowed.iter().any(|a| a == region) {
                found.insert((tenant.clone(), shard, node, region.to_string(), seen_in));
            }
        }
    };
    for shard in &map.shards {
        if !tenants_of.contains_key(&shard.id) {
            continue;
        }
        let placed = shard
            .voters
            .iter()
            .chain(&shard.learners)
            .chain(&shard.joining);
        for &node in placed {
            judge(shard.id, node, "map", &mut out);
        }
    }
    for (&node, groups) in hosted {
        for &shard in groups.iter().filter(|&&g| g != META_GROUP) {
            judge(shard, node, "node", &mut out);
        }
    }
    out.violations = found
        .into_iter()
        .map(
            |(tenant, shard, node, region, seen_in)| ResidencyViolation {
                tenant,
                shard,
                node,
                region,
                seen_in: seen_in.to_string(),
            },
        )
        .collect();
    out
}

/// For each shard holding tenant data (a tenant's partitions, and a
/// resize's target placement), its tenants and their allowed regions.
fn tenants_by_shard(map: &ClusterMap) -> BTreeMap<ShardId, Vec<(String, Vec<String>)>> {
    let mut out: BTreeMap<ShardId, Vec<(String, Vec<String>)>> = BTreeMap::new();
    for t in &map.tenants {
        let target = t.resize.iter().flat_map(|r| r.to.iter());
        let shards: BTreeSet<ShardId> = t.partitions.iter().chain(target).copied().collect();
        for shard in shards {
            out.entry(shard)
                .or_default()
                .push((t.id.clone(), t.regions.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::pb::{NodeInfo, ResizeInfo, ShardInfo, TenantInfo};

    fn node(id: NodeId, region: &str) -> NodeInfo {
        NodeInfo {
            id,
            region: region.into(),
            ..Default::default()
        }
    }

    fn map() -> ClusterMap {
        ClusterMap {
            epoch: 9,
            nodes: vec![node(1, "us"), node(2, "us"), node(3, "eu"), node(4, "ap")],
            shards: vec![
                ShardInfo {
                    id: 1,
                    voters: vec![1, 2, 3],
                    ..Default::default()
                },
                ShardInfo {
                    id: 2,
                    voters: vec![1, 2],
                    learners: vec![3],
                    ..Default::default()
                },
                ShardInfo {
                    id: 5,
                    voters: vec![1],
                    joining: vec![4],
                    ..Default::default()
                },
            ],
            tenants: vec![
                TenantInfo {
                    id: "both".into(),
                    regions: vec!["us".into(), "eu".into()],
                    partitions: vec![1],
                    ..Default::default()
                },
                TenantInfo {
                    id: "us-only".into(),
                    regions: vec!["us".into()],
                    partitions: vec![2],
                    resize: Some(ResizeInfo {
                        to: vec![2, 5],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn seen(r: &Residency) -> Vec<(String, ShardId, NodeId, String)> {
        r.violations
            .iter()
            .map(|v| (v.tenant.clone(), v.shard, v.node, v.seen_in.clone()))
            .collect()
    }

    #[test]
    fn finds_map_replicas_outside_the_tenants_regions_learners_and_joiners_included() {
        let r = check(&map(), &BTreeMap::new());
        assert_eq!(r.shards, 3);
        assert_eq!(r.replicas, 3 + 3 + 2);
        assert_eq!(
            seen(&r),
            vec![
                ("us-only".into(), 2, 3, "map".into()),
                ("us-only".into(), 5, 4, "map".into()),
            ]
        );
        assert_eq!(r.violations[0].region, "eu");
    }

    #[test]
    fn finds_replicas_a_node_hosts_that_the_map_does_not_place() {
        let mut m = map();
        m.shards[1].learners.clear();
        m.shards[2].joining.clear();
        let hosted = BTreeMap::from([(1, vec![0, 1, 2, 5]), (3, vec![0, 1, 2])]);
        let r = check(&m, &hosted);
        assert_eq!(seen(&r), vec![("us-only".into(), 2, 3, "node".into())]);
    }

    #[test]
    fn a_clean_cluster_has_no_violation_and_shared_shards_judge_every_tenant() {
        let mut m = map();
        m.shards[1].learners.clear();
        m.shards[2].joining.clear();
        assert!(check(&m, &BTreeMap::from([(1, vec![1, 2, 5])]))
            .violations
            .is_empty());
        // A second tenant on shard 1 allowing only "us": node 3 (eu) breaks it, not "both".
        m.tenants.push(TenantInfo {
            id: "small".into(),
            regions: vec!["us".into()],
            partitions: vec![1],
            ..Default::default()
        });
        assert_eq!(
            seen(&check(&m, &BTreeMap::new())),
            vec![("small".into(), 1, 3, "map".into())]
        );
    }
}
