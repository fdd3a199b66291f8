//! Identifier types shared by every crate.
//!
//! They are plain aliases rather than newtypes because they cross the wire
//! as protobuf scalars and as openraft's `NodeId`; the names document intent.

/// A storage node; also the openraft node id.
pub type NodeId = u64;
/// A shard; also the Raft group id of the shard.
pub type ShardId = u64;
/// A tenant (one customer site).
pub type TenantId = String;
/// A failure and latency domain such as `us-east`.
pub type Region = String;

/// Raft group 0 holds the cluster map, never documents.
pub const META_GROUP: ShardId = 0;

/// Partition of a document within its tenant: `hash(doc id) % p`.
///
/// xxh3 is stable across versions and platforms, which matters because the
/// router and a future mover must agree on it forever.
pub fn partition_of(doc_id: &str, partitions: u32) -> u32 {
    let p = u64::from(partitions.max(1));
    (xxhash_rust::xxh3::xxh3_64(doc_id.as_bytes()) % p) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_stable_and_in_range() {
        assert_eq!(partition_of("p-17", 1), 0);
        let a = partition_of("p-17", 8);
        assert_eq!(a, partition_of("p-17", 8));
        assert!(a < 8);
        let spread: std::collections::HashSet<u32> = (0..200)
            .map(|i| partition_of(&format!("d{i}"), 4))
            .collect();
        assert_eq!(spread.len(), 4, "200 ids should hit all 4 partitions");
    }
}
