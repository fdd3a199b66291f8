//! Maps stored before the map became JSON: bincode of the map as it was
//! then (no placement settings, no resize state). Kept so that a node's
//! existing data directory still opens after an upgrade.

use super::{ClusterMap, NodeEntry, PlacementSettings, Policy, ShardEntry, Survival, TenantEntry};
use serde::Deserialize;
use std::collections::BTreeMap;
use tessera_proto::{NodeId, ShardId};

#[derive(Deserialize)]
struct LegacyTenant {
    id: String,
    regions: Vec<String>,
    home: String,
    survival: Survival,
    partitions: Vec<ShardId>,
}

#[derive(Deserialize)]
struct LegacyShard {
    id: ShardId,
    voters: Vec<NodeId>,
    learners: Vec<NodeId>,
    policy: Policy,
}

#[derive(Deserialize)]
struct LegacyMap {
    epoch: u64,
    nodes: BTreeMap<NodeId, NodeEntry>,
    shards: BTreeMap<ShardId, LegacyShard>,
    tenants: BTreeMap<String, LegacyTenant>,
}

/// Decodes a bincode map of the old layout.
pub fn decode(bytes: &[u8]) -> Result<ClusterMap, String> {
    let old: LegacyMap = bincode::deserialize(bytes)
        .map_err(|e| format!("stored cluster map is neither JSON nor the old bincode form: {e}"))?;
    Ok(ClusterMap {
        epoch: old.epoch,
        nodes: old.nodes,
        shards: old
            .shards
            .into_iter()
            .map(|(id, s)| {
                let entry = ShardEntry {
                    id: s.id,
                    voters: s.voters,
                    learners: s.learners,
                    policy: s.policy,
                    incoming: Vec::new(),
                };
                (id, entry)
            })
            .collect(),
        tenants: old
            .tenants
            .into_iter()
            .map(|(id, t)| {
                let entry = TenantEntry {
                    id: t.id,
                    regions: t.regions,
                    home: t.home,
                    survival: t.survival,
                    partitions: t.partitions,
                    resize: None,
                    read_floors: BTreeMap::new(),
                };
                (id, entry)
            })
            .collect(),
        settings: PlacementSettings::default(),
        node_states: BTreeMap::new(),
        growth: Default::default(),
        keys: BTreeMap::new(),
        user_tokens: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    struct OldTenant<'a> {
        id: &'a str,
        regions: Vec<&'a str>,
        home: &'a str,
        survival: Survival,
        partitions: Vec<ShardId>,
    }

    #[derive(Serialize)]
    struct OldShard {
        id: ShardId,
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
        policy: Policy,
    }

    #[derive(Serialize)]
    struct OldMap<'a> {
        epoch: u64,
        nodes: BTreeMap<NodeId, NodeEntry>,
        shards: BTreeMap<ShardId, OldShard>,
        tenants: BTreeMap<&'a str, OldTenant<'a>>,
    }

    #[test]
    fn an_old_bincode_map_still_reads_and_round_trips_as_json() {
        let old = OldMap {
            epoch: 9,
            nodes: BTreeMap::new(),
            shards: [(
                3,
                OldShard {
                    id: 3,
                    voters: vec![1, 2],
                    learners: vec![],
                    policy: Policy {
                        regions: vec!["us".into()],
                        home: "us".into(),
                        survival: Survival::Zone,
                    },
                },
            )]
            .into_iter()
            .collect(),
            tenants: [(
                "acme",
                OldTenant {
                    id: "acme",
                    regions: vec!["us"],
                    home: "us",
                    survival: Survival::Zone,
                    partitions: vec![3, 4],
                },
            )]
            .into_iter()
            .collect(),
        };
        let bytes = bincode::serialize(&old).expect("encode");
        let map = ClusterMap::decode_stored(&bytes).expect("legacy decode");
        assert_eq!(map.epoch, 9);
        assert_eq!(map.tenants["acme"].partitions, vec![3, 4]);
        assert_eq!(map.shards[&3].voters, vec![1, 2]);
        let again = ClusterMap::decode_stored(&map.encode_stored().expect("json")).expect("json");
        assert_eq!(again, map);
        assert!(ClusterMap::decode_stored(b"garbage").is_err());
    }
}
