//! An indexed, immutable snapshot of the cluster map.
//!
//! Requests take an `Arc<Topology>` once and use it throughout, so one
//! request never mixes two epochs; a newer map simply replaces the Arc.

use crate::select::Replica;
use std::collections::{BTreeMap, HashMap};
use tessera_proto::keys::KeyRecord;
use tessera_proto::pb::{ClusterMap, NodeInfo, ShardInfo, TenantInfo, UserTokenPolicy};
use tessera_proto::{partition_of, NodeId, ShardId};

/// The cluster map, indexed by id.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    epoch: u64,
    nodes: HashMap<NodeId, NodeInfo>,
    shards: HashMap<ShardId, ShardInfo>,
    tenants: HashMap<String, TenantInfo>,
    /// API keys by id (hashes; revoked ones as tombstones).
    keys: HashMap<String, KeyRecord>,
    /// User-token policies by tenant.
    user_tokens: HashMap<String, UserTokenPolicy>,
    map: ClusterMap,
}

impl Topology {
    /// Indexes a map received from a node.
    pub fn from_map(map: ClusterMap) -> Self {
        Topology {
            epoch: map.epoch,
            nodes: map.nodes.iter().map(|n| (n.id, n.clone())).collect(),
            shards: map.shards.iter().map(|s| (s.id, s.clone())).collect(),
            tenants: map
                .tenants
                .iter()
                .map(|t| (t.id.clone(), t.clone()))
                .collect(),
            keys: map
                .keys
                .iter()
                .filter_map(|k| match KeyRecord::from_proto(k) {
                    Ok(r) => Some((r.id.clone(), r)),
                    Err(e) => {
                        // Dropping it refuses the key: the safe direction.
                        tracing::warn!(key = %k.id, error = %e, "ignoring an unreadable key record");
                        None
                    }
                })
                .collect(),
            user_tokens: map
                .user_tokens
                .iter()
                .map(|p| (p.tenant.clone(), p.clone()))
                .collect(),
            map,
        }
    }

    /// The key with public id `id`, live or revoked.
    pub fn key(&self, id: &str) -> Option<&KeyRecord> {
        self.keys.get(id)
    }

    /// Every key record, for `keys list`.
    pub fn keys(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.values()
    }

    /// The tenant's user-token policy, if it set one.
    pub fn user_token_policy(&self, tenant: &str) -> Option<&UserTokenPolicy> {
        self.user_tokens.get(tenant)
    }

    /// Indexes `map`, reaching the nodes named in `routes` at the given
    /// address instead of their `grpc_addr` (a proxy on that link).
    pub fn from_map_routed(map: ClusterMap, routes: &BTreeMap<NodeId, String>) -> Self {
        let mut t = Self::from_map(map);
        for (id, addr) in routes {
            if let Some(n) = t.nodes.get_mut(id) {
                n.grpc_addr = addr.clone();
            }
        }
        t
    }

    /// The map's epoch (0 = no map yet).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The map as received.
    pub fn map(&self) -> &ClusterMap {
        &self.map
    }

    /// A tenant's directory entry.
    pub fn tenant(&self, id: &str) -> Option<&TenantInfo> {
        self.tenants.get(id)
    }

    /// A shard's placement.
    pub fn shard(&self, id: ShardId) -> Option<&ShardInfo> {
        self.shards.get(&id)
    }

    /// A node's addresses and location.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id)
    }

    /// Every node, in id order.
    pub fn nodes(&self) -> Vec<&NodeInfo> {
        let mut v: Vec<&NodeInfo> = self.nodes.values().collect();
        v.sort_by_key(|n| n.id);
        v
    }

    /// Every shard holding the tenant's data, each once: while a resize
    /// runs, the old placement and the new one (reads cover both and
    /// deduplicate by id; memberships and restrictions go to all).
    pub fn tenant_shards(tenant: &TenantInfo) -> Vec<ShardId> {
        let moving = tenant.resize.iter().flat_map(|r| r.to.iter());
        let mut out: Vec<ShardId> = Vec::with_capacity(tenant.partitions.len());
        for s in tenant.partitions.iter().chain(moving) {
            if !out.contains(s) {
                out.push(*s);
            }
        }
        out
    }

    /// The shards a search reads. While a resize copies, the old placement
    /// alone is complete (writes go to both placements and the shards are
    /// fenced), and the new shards may still be opening, so reads stay on
    /// it; once shards start dropping what they no longer own, reads cover
    /// both placements.
    pub fn read_shards(tenant: &TenantInfo) -> Vec<ShardId> {
        match &tenant.resize {
            Some(r) if r.phase == "copying" => Self::current_shards(tenant),
            _ => Self::tenant_shards(tenant),
        }
    }

    /// Shards that together hold exactly one copy of every document of the
    /// tenant, for BM25 statistics and match counts, so that neither counts
    /// a moving document twice and a document scores the same on either
    /// placement and on every page of a search paged across the cut-over.
    ///
    /// While a resize copies, that is the old placement. Once shards drop,
    /// each old partition is counted on its old shard until that shard has
    /// dropped (until then it still holds the partition whole), then on the
    /// new shards it split into: new partition `q` holds part of old
    /// partition `q % old` (`partition_of` is a hash modulo the count, and
    /// counts only grow by multiples).
    pub fn complete_shards(tenant: &TenantInfo) -> Vec<ShardId> {
        let old = Self::current_shards(tenant);
        let Some(r) = tenant.resize.as_ref().filter(|r| r.phase != "copying") else {
            return old;
        };
        let n_old = tenant.partitions.len();
        if n_old == 0 || r.to.is_empty() || r.to.len() % n_old != 0 {
            return old;
        }
        let mut out: Vec<ShardId> = Vec::with_capacity(r.to.len());
        let mut add = |s: ShardId| {
            if !out.contains(&s) {
                out.push(s);
            }
        };
        for (p, &shard) in tenant.partitions.iter().enumerate() {
            if r.dropped.contains(&shard) {
                for (q, &child) in r.to.iter().enumerate() {
                    if q % n_old == p {
                        add(child);
                    }
                }
            } else {
                add(shard);
            }
        }
        out
    }

    /// The shards of the current placement, each once.
    pub fn current_shards(tenant: &TenantInfo) -> Vec<ShardId> {
        let mut out: Vec<ShardId> = Vec::with_capacity(tenant.partitions.len());
        for s in &tenant.partitions {
            if !out.contains(s) {
                out.push(*s);
            }
        }
        out
    }

    /// The log index a replica of `shard` must have applied to serve the
    /// tenant (0 = none): a resize's copies are not in any client's token.
    pub fn read_floor(tenant: &TenantInfo, shard: ShardId) -> u64 {
        tenant
            .read_floors
            .iter()
            .find(|f| f.shard == shard)
            .map_or(0, |f| f.applied)
    }

    /// The shard of document `id` under the tenant's current placement.
    pub fn shard_for_doc(tenant: &TenantInfo, id: &str) -> Option<ShardId> {
        placed(&tenant.partitions, id)
    }

    /// The shards a write of document `id` goes to: its shard, and while a
    /// resize runs, its shard under the new placement first. Both copies
    /// stay current, so a read of either placement is right.
    pub fn write_shards_for_doc(tenant: &TenantInfo, id: &str) -> Vec<ShardId> {
        let mut out = Vec::with_capacity(2);
        if let Some(r) = &tenant.resize {
            out.extend(placed(&r.to, id));
        }
        if let Some(s) = placed(&tenant.partitions, id) {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }

    /// Every replica (voters, then learners) of a shard on a known node.
    pub fn replicas(&self, shard: ShardId) -> Vec<Replica> {
        let Some(info) = self.shards.get(&shard) else {
            return Vec::new();
        };
        info.voters
            .iter()
            .chain(info.learners.iter())
            .filter_map(|n| {
                self.nodes.get(n).map(|ni| Replica {
                    node: *n,
                    region: ni.region.clone(),
                })
            })
            .collect()
    }

    /// A shard's voters (possible leaders), those in `region` first.
    pub fn voters_local_first(&self, shard: ShardId, region: &str) -> Vec<NodeId> {
        let Some(info) = self.shards.get(&shard) else {
            return Vec::new();
        };
        let mut v = info.voters.clone();
        v.sort_by_key(|n| {
            let remote = self.nodes.get(n).is_none_or(|ni| ni.region != region);
            (remote, *n)
        });
        v
    }
}

/// The shard of document `id` under `placement` (partition index → shard).
fn placed(placement: &[ShardId], id: &str) -> Option<ShardId> {
    let p = u32::try_from(placement.len()).ok().filter(|p| *p > 0)?;
    placement.get(partition_of(id, p) as usize).copied()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A map with 3 regions x 2 nodes; shard 1 has voters 1,2,3 and learners 5;
    /// shard 2 has voters 2,3,4 and learner 6. Tenant `acme` (us-east, eu-west)
    /// has partitions [1, 2, 1]; tenant `solo` lives on shard 2 only.
    pub(crate) fn sample_map() -> ClusterMap {
        let regions = [
            "us-east", "us-east", "eu-west", "eu-west", "ap-south", "ap-south",
        ];
        ClusterMap {
            epoch: 7,
            nodes: regions
                .iter()
                .enumerate()
                .map(|(i, r)| NodeInfo {
                    id: i as u64 + 1,
                    region: (*r).into(),
                    zone: "a".into(),
                    raft_addr: format!("127.0.0.{}:7101", i + 11),
                    grpc_addr: format!("127.0.0.{}:7201", i + 11),
                    state: String::new(),
                })
                .collect(),
            shards: vec![
                ShardInfo {
                    id: 1,
                    voters: vec![3, 1, 2],
                    learners: vec![5],
                    ..Default::default()
                },
                ShardInfo {
                    id: 2,
                    voters: vec![2, 3, 4],
                    learners: vec![6],
                    ..Default::default()
                },
            ],
            tenants: vec![
                TenantInfo {
                    id: "acme".into(),
                    regions: vec!["us-east".into(), "eu-west".into()],
                    home: "us-east".into(),
                    survival: "zone".into(),
                    partitions: vec![1, 2, 1],
                    resize: None,
                    read_floors: Vec::new(),
                },
                TenantInfo {
                    id: "solo".into(),
                    regions: vec!["eu-west".into()],
                    home: "eu-west".into(),
                    survival: "zone".into(),
                    partitions: vec![2],
                    resize: None,
                    read_floors: Vec::new(),
                },
            ],
            placement: None,
            keys: Vec::new(),
            user_tokens: Vec::new(),
        }
    }

    #[test]
    fn statistics_count_each_old_partition_once_until_its_shard_drops() {
        let mut t = TenantInfo {
            partitions: vec![1, 2],
            resize: Some(tessera_proto::pb::ResizeInfo {
                to: vec![1, 2, 11, 12],
                phase: "copying".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(Topology::complete_shards(&t), vec![1, 2], "copying: old");
        let set = |t: &mut TenantInfo, phase: &str, dropped: Vec<u64>| {
            if let Some(r) = t.resize.as_mut() {
                r.phase = phase.into();
                r.dropped = dropped;
            }
        };
        set(&mut t, "dropping", vec![]);
        assert_eq!(
            Topology::complete_shards(&t),
            vec![1, 2],
            "nothing dropped yet"
        );
        set(&mut t, "dropping", vec![2]);
        assert_eq!(
            Topology::complete_shards(&t),
            vec![1, 2, 12],
            "old partition 1 now lives on new partitions 1 and 3"
        );
        set(&mut t, "dropping", vec![1, 2]);
        assert_eq!(Topology::complete_shards(&t), vec![1, 11, 2, 12]);
        t.partitions = vec![1, 2, 11, 12];
        t.resize = None;
        assert_eq!(Topology::complete_shards(&t), vec![1, 2, 11, 12]);
    }

    #[test]
    fn a_resize_reads_both_placements_and_writes_both_shards_of_a_document() {
        let mut t = sample_map().tenants[1].clone();
        assert_eq!(Topology::tenant_shards(&t), vec![2]);
        t.resize = Some(tessera_proto::pb::ResizeInfo {
            to: vec![2, 5],
            phase: "copying".into(),
            ..Default::default()
        });
        assert_eq!(Topology::tenant_shards(&t), vec![2, 5]);
        assert_eq!(
            Topology::read_shards(&t),
            vec![2],
            "copying: the old placement"
        );
        if let Some(r) = t.resize.as_mut() {
            r.phase = "dropping".into();
        }
        assert_eq!(Topology::read_shards(&t), vec![2, 5]);
        let mut moving = 0;
        for i in 0..100 {
            let id = format!("p-{i}");
            let shards = Topology::write_shards_for_doc(&t, &id);
            assert_eq!(shards.last(), Some(&2), "the old shard is always written");
            if shards.len() == 2 {
                assert_eq!(shards[0], 5, "the new shard comes first");
                moving += 1;
            }
        }
        assert!(moving > 20 && moving < 80, "about half move: {moving}");
    }

    #[test]
    fn indexes_and_dedupes_shards() {
        let t = Topology::from_map(sample_map());
        assert_eq!(t.epoch(), 7);
        let acme = t.tenant("acme").expect("acme");
        assert_eq!(Topology::tenant_shards(acme), vec![1, 2]);
        let shard = Topology::shard_for_doc(acme, "p-17").expect("shard");
        assert!(shard == 1 || shard == 2);
        assert_eq!(
            shard,
            acme.partitions[partition_of("p-17", 3) as usize],
            "router and mover must agree on partition_of"
        );
        assert!(t.tenant("nope").is_none());
    }

    #[test]
    fn node_routes_replace_grpc_addresses() {
        let routes = BTreeMap::from([(2, "127.9.9.9:1234".to_string()), (99, "x:1".to_string())]);
        let t = Topology::from_map_routed(sample_map(), &routes);
        assert_eq!(
            t.node(2).map(|n| n.grpc_addr.as_str()),
            Some("127.9.9.9:1234")
        );
        assert_eq!(
            t.node(1).map(|n| n.grpc_addr.as_str()),
            Some("127.0.0.11:7201")
        );
        assert!(
            t.node(99).is_none(),
            "a route to an unknown node adds nothing"
        );
    }

    #[test]
    fn replicas_and_local_first_voters() {
        let t = Topology::from_map(sample_map());
        let nodes: Vec<NodeId> = t.replicas(1).iter().map(|r| r.node).collect();
        assert_eq!(nodes, vec![3, 1, 2, 5]);
        assert_eq!(t.voters_local_first(1, "us-east"), vec![1, 2, 3]);
        assert_eq!(t.voters_local_first(1, "eu-west"), vec![3, 1, 2]);
        assert!(t.replicas(99).is_empty());
    }
}
