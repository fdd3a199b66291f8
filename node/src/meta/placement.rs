//! Placement: which shards a tenant's partitions go to, and which nodes
//! hold a new shard's voters and learners.
//!
//! Shards are only shared between tenants with the same residency policy,
//! so a replica can never end up outside a tenant's allowed regions.

use super::{ClusterMap, NodeEntry, Policy, ShardEntry, Survival};
use std::collections::{BTreeMap, BTreeSet};
use tessera_proto::{NodeId, ShardId};

/// Voters every shard aims for, so that losing one node never stops writes.
pub const TARGET_VOTERS: usize = 3;

/// Most partitions of one tenant a single shard takes when the tenant
/// grows: growth is meant to spread a tenant's load, so a new partition
/// goes to a shard holding fewer of the tenant's partitions, or to a new
/// shard once every shard of the ring holds this many.
pub const MAX_TENANT_PARTITIONS_PER_SHARD: usize = 2;

/// Virtual nodes per shard on the ring: enough that tenants spread evenly
/// over a few dozen shards.
const RING_VNODES: usize = 64;

/// Picks (and creates where needed) `partitions` distinct shards for a new
/// tenant. Small tenants share existing shards of the same policy: a
/// consistent hash ring over the policy's shards that are not full picks
/// them, so the choice is stable and spread, and adding a shard moves no
/// existing tenant.
pub fn assign_partitions(
    map: &mut ClusterMap,
    tenant: &str,
    policy: &Policy,
    partitions: u32,
) -> Result<Vec<ShardId>, String> {
    let want = partitions as usize;
    while policy_shards(map, policy).len() < map.settings.min_shards as usize {
        create_shard(map, policy)?;
    }
    let mut open = open_shards(map, policy);
    while open.len() < want {
        open.push(create_shard(map, policy)?);
    }
    Ok(ring_order(&open, tenant).into_iter().take(want).collect())
}

/// Shards for the partitions `old.len()..total` of a growing tenant,
/// spread by the ring over shards that hold fewer of its partitions.
pub fn assign_growth(
    map: &mut ClusterMap,
    tenant: &str,
    policy: &Policy,
    old: &[ShardId],
    total: usize,
) -> Result<Vec<ShardId>, String> {
    let mut held: BTreeMap<ShardId, usize> = BTreeMap::new();
    for s in old {
        *held.entry(*s).or_default() += 1;
    }
    let mut out = old.to_vec();
    while out.len() < total {
        let mut candidates = open_shards(map, policy);
        let extra: Vec<ShardId> = held
            .keys()
            .filter(|s| !candidates.contains(s))
            .copied()
            .collect();
        candidates.extend(extra);
        let order = ring_order(&candidates, tenant);
        let count = |s: &ShardId| held.get(s).copied().unwrap_or(0);
        let pick = match order.iter().find(|s| count(s) == 0) {
            Some(s) => *s,
            None => match order
                .iter()
                .filter(|s| count(s) < MAX_TENANT_PARTITIONS_PER_SHARD)
                .min_by_key(|s| count(s))
            {
                Some(s) => *s,
                None => create_shard(map, policy)?,
            },
        };
        *held.entry(pick).or_default() += 1;
        out.push(pick);
    }
    Ok(out)
}

/// The shard a moving partition goes to when the operator names none: of
/// the policy's open shards that hold none of the tenant's partitions, the
/// one with the fewest tenants (ties to the lowest id); a new shard when
/// every open shard already holds some of the tenant.
pub fn assign_move_target(
    map: &mut ClusterMap,
    policy: &Policy,
    current: &[ShardId],
) -> Result<ShardId, String> {
    let tenants = tenants_per_shard(map);
    let pick = open_shards(map, policy)
        .into_iter()
        .filter(|s| !current.contains(s))
        .min_by_key(|s| (tenants.get(s).copied().unwrap_or(0), *s));
    match pick {
        Some(s) => Ok(s),
        None => create_shard(map, policy),
    }
}

/// Shards of `policy`, in id order.
fn policy_shards(map: &ClusterMap, policy: &Policy) -> Vec<ShardId> {
    map.shards
        .values()
        .filter(|s| &s.policy == policy)
        .map(|s| s.id)
        .collect()
}

/// Shards of `policy` that take new tenants: those holding partitions of
/// fewer than `max_tenants_per_shard` tenants.
fn open_shards(map: &ClusterMap, policy: &Policy) -> Vec<ShardId> {
    let tenants = tenants_per_shard(map);
    let cap = map.settings.max_tenants_per_shard.max(1) as usize;
    policy_shards(map, policy)
        .into_iter()
        .filter(|s| tenants.get(s).copied().unwrap_or(0) < cap)
        .collect()
}

/// How many tenants have a partition (current or being moved in) on each shard.
pub fn tenants_per_shard(map: &ClusterMap) -> BTreeMap<ShardId, usize> {
    let mut out: BTreeMap<ShardId, usize> = BTreeMap::new();
    for t in map.tenants.values() {
        let mut shards: BTreeSet<ShardId> = t.partitions.iter().copied().collect();
        if let Some(r) = &t.resize {
            shards.extend(r.to.iter().copied());
        }
        for s in shards {
            *out.entry(s).or_default() += 1;
        }
    }
    out
}

/// `shards` in the order the consistent hash ring offers them to `tenant`.
fn ring_order(shards: &[ShardId], tenant: &str) -> Vec<ShardId> {
    let nodes = shards
        .iter()
        .map(|s| consistent_hash::Node::new(*s).quantity(RING_VNODES));
    let ring = consistent_hash::StaticHashRing::new(consistent_hash::DefaultHash, nodes);
    ring.calc_candidates(&tenant).map(|n| n.key).collect()
}

/// Creates a shard with replicas placed for `policy`.
fn create_shard(map: &mut ClusterMap, policy: &Policy) -> Result<ShardId, String> {
    let (voters, learners) = place_replicas(map, policy)?;
    let id = map.shards.keys().next_back().copied().unwrap_or(0) + 1;
    map.shards.insert(
        id,
        ShardEntry {
            id,
            voters,
            learners,
            policy: policy.clone(),
            incoming: Vec::new(),
        },
    );
    Ok(id)
}

/// Replica counts per node, to place new shards on the least-loaded nodes.
pub(super) fn loads(map: &ClusterMap) -> BTreeMap<NodeId, usize> {
    let mut load: BTreeMap<NodeId, usize> = map.nodes.keys().map(|n| (*n, 0)).collect();
    for s in map.shards.values() {
        for r in s.replicas().chain(s.incoming.iter().map(|w| w.joining)) {
            *load.entry(r).or_default() += 1;
        }
    }
    load
}

/// Nodes of `region`, least loaded first, alternating zones so consecutive
/// picks land in different zones.
pub(super) fn region_candidates<'a>(
    map: &'a ClusterMap,
    region: &str,
    load: &BTreeMap<NodeId, usize>,
) -> Vec<&'a NodeEntry> {
    let mut by_zone: BTreeMap<&str, Vec<&NodeEntry>> = BTreeMap::new();
    let usable = map
        .nodes
        .values()
        .filter(|n| n.region == region && !map.node_states.contains_key(&n.id));
    for n in usable {
        by_zone.entry(n.zone.as_str()).or_default().push(n);
    }
    for nodes in by_zone.values_mut() {
        nodes.sort_by_key(|n| (load.get(&n.id).copied().unwrap_or(0), n.id));
    }
    let mut zones: Vec<Vec<&NodeEntry>> = by_zone.into_values().collect();
    zones.sort_by_key(|z| {
        z.first()
            .map(|n| (load.get(&n.id).copied().unwrap_or(0), n.id))
    });
    let mut out = Vec::new();
    let mut round = 0;
    loop {
        let before = out.len();
        for z in &zones {
            if let Some(n) = z.get(round) {
                out.push(*n);
            }
        }
        if out.len() == before {
            return out;
        }
        round += 1;
    }
}

/// Chooses voters and learners for a new shard under `policy`.
///
/// Zone survival puts voters in the home region across zones, topping up
/// from the other allowed regions (in their listed order) when the home
/// region has fewer than three nodes. Region survival puts one voter in each
/// of three allowed regions. Every other allowed region gets one learner.
/// A cluster with fewer than three eligible nodes gets as many voters as it
/// has, so that a one-node development cluster still works.
pub fn place_replicas(
    map: &ClusterMap,
    policy: &Policy,
) -> Result<(Vec<NodeId>, Vec<NodeId>), String> {
    let load = loads(map);
    let others: Vec<&String> = policy
        .regions
        .iter()
        .filter(|r| **r != policy.home)
        .collect();
    let mut voters: Vec<NodeId> = Vec::new();
    match policy.survival {
        Survival::Zone => {
            let ordered = std::iter::once(&policy.home).chain(others.iter().copied());
            for region in ordered {
                for n in region_candidates(map, region, &load) {
                    if voters.len() < TARGET_VOTERS {
                        voters.push(n.id);
                    }
                }
            }
        }
        Survival::Region => {
            if policy.regions.len() < 3 {
                return Err(format!(
                    "region survival needs at least 3 allowed regions, got {:?}",
                    policy.regions
                ));
            }
            let ordered = std::iter::once(&policy.home).chain(others.iter().copied());
            for region in ordered.take(TARGET_VOTERS) {
                if let Some(n) = region_candidates(map, region, &load).first() {
                    voters.push(n.id);
                }
            }
        }
    }
    if voters.is_empty() {
        return Err(format!(
            "no nodes in the allowed regions {:?}",
            policy.regions
        ));
    }
    let voter_regions: BTreeSet<&str> = voters
        .iter()
        .filter_map(|v| map.nodes.get(v).map(|n| n.region.as_str()))
        .collect();
    let learners = policy
        .regions
        .iter()
        .filter(|r| !voter_regions.contains(r.as_str()))
        .filter_map(|r| region_candidates(map, r, &load).first().map(|n| n.id))
        .collect();
    Ok((voters, learners))
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    fn map_with(nodes: &[(NodeId, &str, &str)]) -> ClusterMap {
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
        m
    }

    fn spec(id: &str, regions: &[&str], survival: &str, p: u32) -> MetaCommand {
        MetaCommand::CreateTenant(TenantSpec {
            id: id.into(),
            regions: regions.iter().map(|s| s.to_string()).collect(),
            home: regions[0].to_string(),
            survival: survival.into(),
            partitions: p,
        })
    }

    fn six() -> ClusterMap {
        map_with(&[
            (1, "us", "a"),
            (2, "us", "b"),
            (3, "eu", "a"),
            (4, "eu", "b"),
            (5, "ap", "a"),
            (6, "ap", "b"),
        ])
    }

    #[test]
    fn zone_survival_tops_up_from_next_region_and_respects_residency() {
        let mut m = six();
        let out = m.apply(&spec("acme", &["us", "eu"], "zone", 1));
        let MetaOutcome::Tenant { tenant, .. } = out else {
            panic!("expected a tenant, got {out:?}");
        };
        let shard = &m.shards[&tenant.partitions[0]];
        assert_eq!(shard.voters.len(), 3);
        assert!(shard.voters.contains(&1) && shard.voters.contains(&2));
        assert!(
            m.residency_violations().is_empty(),
            "{:?}",
            m.residency_violations()
        );
        assert!(shard.replicas().all(|r| r <= 4), "no replica in ap");
    }

    /// Chaos BUG-3: the top-up voter came from the alphabetically first
    /// other region ("ap"), not the next listed (nearest) one.
    #[test]
    fn zone_tenant_tops_up_voters_from_the_next_listed_region() {
        for (listed, top_up) in [(["us", "eu", "ap"], "eu"), (["us", "ap", "eu"], "ap")] {
            let mut m = six();
            let MetaOutcome::Tenant { tenant, .. } = m.apply(&spec("zt", &listed, "zone", 1))
            else {
                panic!("expected a tenant");
            };
            let shard = &m.shards[&tenant.partitions[0]];
            let voter_regions: Vec<&str> = shard
                .voters
                .iter()
                .map(|v| m.nodes[v].region.as_str())
                .collect();
            assert_eq!(
                voter_regions.iter().filter(|r| **r == top_up).count(),
                1,
                "listed {listed:?}: voters in {voter_regions:?}"
            );
            assert_eq!(voter_regions.iter().filter(|r| **r == "us").count(), 2);
        }
    }

    #[test]
    fn region_survival_spreads_voters_and_adds_learners() {
        let mut m = map_with(&[
            (1, "us", "a"),
            (2, "eu", "a"),
            (3, "ap", "a"),
            (4, "sa", "a"),
        ]);
        let MetaOutcome::Tenant { tenant, .. } =
            m.apply(&spec("g", &["us", "eu", "ap", "sa"], "region", 1))
        else {
            panic!("expected tenant");
        };
        let shard = &m.shards[&tenant.partitions[0]];
        assert_eq!(shard.voters.len(), 3);
        assert_eq!(shard.learners, vec![4]);
        let err = m.apply(&spec("h", &["us", "eu"], "region", 1));
        assert!(
            matches!(err, MetaOutcome::Rejected(ref e) if e.contains("3 allowed regions")),
            "{err:?}"
        );
    }

    #[test]
    fn small_tenants_share_and_partitions_are_distinct() {
        let mut m = six();
        m.apply(&spec("big", &["us", "eu"], "zone", 4));
        let epoch = m.epoch;
        // Same policy with the regions listed in another order.
        let small = MetaCommand::CreateTenant(TenantSpec {
            id: "small".into(),
            regions: vec!["eu".into(), "us".into()],
            home: "us".into(),
            survival: "zone".into(),
            partitions: 1,
        });
        let MetaOutcome::Tenant { tenant, .. } = m.apply(&small) else {
            panic!("expected tenant");
        };
        assert!(m.epoch > epoch);
        assert_eq!(m.shards.len(), 4, "the small tenant reuses a shard");
        let big = &m.tenants["big"].partitions;
        let distinct: BTreeSet<_> = big.iter().collect();
        assert_eq!(distinct.len(), 4);
        assert!(
            big.contains(&tenant.partitions[0]),
            "same policy (regions given in another order) shares"
        );
    }

    #[test]
    fn bad_specs_are_rejected_without_change() {
        let mut m = six();
        let before = m.clone();
        for cmd in [
            spec("x", &["mars"], "zone", 1),
            spec("x|y", &["us"], "zone", 1),
            spec("x", &["us"], "cloud", 1),
            spec("x", &["us"], "zone", MAX_PARTITIONS + 1),
        ] {
            assert!(matches!(m.apply(&cmd), MetaOutcome::Rejected(_)));
        }
        assert_eq!(m, before);
    }

    #[test]
    fn add_learner_checks_residency() {
        let mut m = six();
        let MetaOutcome::Tenant { tenant, .. } = m.apply(&spec("t", &["us", "eu"], "zone", 1))
        else {
            panic!("expected tenant");
        };
        let s = tenant.partitions[0];
        assert!(matches!(
            m.apply(&MetaCommand::AddLearner { shard: s, node: 5 }),
            MetaOutcome::Rejected(_)
        ));
        assert!(m.residency_violations().is_empty());
    }
}
