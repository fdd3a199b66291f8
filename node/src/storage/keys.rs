//! Key encoding for every RocksDB table, after TiKV's `keys` module.
//!
//! Every key starts with the big-endian Raft group id so that one group's
//! rows are one contiguous range per column family: a snapshot is a range
//! scan and dropping a group is a range delete. Big-endian integers sort
//! numerically under RocksDB's bytewise comparator.

use tessera_proto::ShardId;

/// Separates tenant and document id (or user) inside a key. It cannot occur
/// in either, because validation rejects control characters.
pub const SEP: u8 = 0x1f;

/// Suffix bytes of the per-group metadata rows.
pub mod suffix {
    /// The current vote (raft_meta).
    pub const VOTE: u8 = b'v';
    /// The last purged log id (raft_meta).
    pub const PURGED: u8 = b'p';
    /// The last committed log id (raft_meta).
    pub const COMMITTED: u8 = b'c';
    /// The last applied log id (sm_meta).
    pub const APPLIED: u8 = b'a';
    /// The last applied membership (sm_meta).
    pub const MEMBERSHIP: u8 = b'm';
    /// Per-tenant collection statistics (sm_meta), followed by the tenant.
    pub const TENANT_STATS: u8 = b't';
    /// A page's current restriction set (sm_meta), followed by
    /// `tenant ++ SEP ++ page id`.
    pub const RESTRICTION: u8 = b'r';
    /// The descendant index (sm_meta), followed by
    /// `tenant ++ SEP ++ ancestor id ++ SEP ++ doc id`.
    pub const DESCENDANT: u8 = b'd';
    /// A tenant's resize guard on a shard (sm_meta), followed by the tenant.
    pub const GUARD: u8 = b'g';
    /// The cluster map of the meta group (sm_meta).
    pub const CLUSTER_MAP: u8 = b'M';
    /// The newest snapshot (snapshots).
    pub const SNAPSHOT: u8 = b's';
}

/// The 8-byte prefix every row of `group` starts with.
pub fn group_prefix(group: ShardId) -> [u8; 8] {
    group.to_be_bytes()
}

/// The first key after every row of `group` (exclusive upper bound).
pub fn group_end(group: ShardId) -> Vec<u8> {
    match group.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 9],
    }
}

/// `group ++ index`: a Raft log entry.
pub fn log_key(group: ShardId, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Decodes a `log_key` back into `(group, index)`.
pub fn decode_log_key(key: &[u8]) -> Option<(ShardId, u64)> {
    if key.len() != 16 {
        return None;
    }
    let group = u64::from_be_bytes(key[..8].try_into().ok()?);
    let index = u64::from_be_bytes(key[8..].try_into().ok()?);
    Some((group, index))
}

/// `group ++ suffix`: a single metadata row.
pub fn meta_key(group: ShardId, suffix: u8) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8] = suffix;
    k
}

/// `group ++ 't' ++ tenant`: a tenant's collection statistics.
pub fn tenant_stats_key(group: ShardId, tenant: &str) -> Vec<u8> {
    let mut k = meta_key(group, suffix::TENANT_STATS).to_vec();
    k.extend_from_slice(tenant.as_bytes());
    k
}

/// `group ++ 'r' ++ tenant ++ SEP ++ page`: the page's current restriction set.
pub fn restriction_key(group: ShardId, tenant: &str, page: &str) -> Vec<u8> {
    let mut k = meta_key(group, suffix::RESTRICTION).to_vec();
    k.extend_from_slice(tenant.as_bytes());
    k.push(SEP);
    k.extend_from_slice(page.as_bytes());
    k
}

/// `group ++ 'd' ++ tenant ++ SEP ++ ancestor ++ SEP`: the prefix under
/// which every document having `ancestor` among its ancestors is listed.
pub fn descendant_prefix(group: ShardId, tenant: &str, ancestor: &str) -> Vec<u8> {
    let mut k = meta_key(group, suffix::DESCENDANT).to_vec();
    k.extend_from_slice(tenant.as_bytes());
    k.push(SEP);
    k.extend_from_slice(ancestor.as_bytes());
    k.push(SEP);
    k
}

/// `descendant_prefix ++ doc`: one row of the descendant index.
pub fn descendant_key(group: ShardId, tenant: &str, ancestor: &str, doc: &str) -> Vec<u8> {
    let mut k = descendant_prefix(group, tenant, ancestor);
    k.extend_from_slice(doc.as_bytes());
    k
}

/// The first key after every row starting with `prefix` (exclusive bound).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// `group ++ tenant ++ SEP ++ name`: a document (name = doc id) or a
/// membership row (name = user).
pub fn entity_key(group: ShardId, tenant: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + tenant.len() + 1 + name.len());
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(tenant.as_bytes());
    k.push(SEP);
    k.extend_from_slice(name.as_bytes());
    k
}

/// `group ++ tenant ++ SEP`: the prefix of one tenant's rows in a group.
pub fn tenant_prefix(group: ShardId, tenant: &str) -> Vec<u8> {
    let mut k = group.to_be_bytes().to_vec();
    k.extend_from_slice(tenant.as_bytes());
    k.push(SEP);
    k
}

/// Decodes an `entity_key` into `(group, tenant, name)`.
pub fn decode_entity_key(key: &[u8]) -> Option<(ShardId, &str, &str)> {
    if key.len() < 9 {
        return None;
    }
    let group = u64::from_be_bytes(key[..8].try_into().ok()?);
    let rest = &key[8..];
    let sep = rest.iter().position(|b| *b == SEP)?;
    let tenant = std::str::from_utf8(&rest[..sep]).ok()?;
    let name = std::str::from_utf8(&rest[sep + 1..]).ok()?;
    Some((group, tenant, name))
}

/// `group ++ applied index ++ seq`: one change-sequence row.
pub fn change_key(group: ShardId, index: u64, seq: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..16].copy_from_slice(&index.to_be_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Decodes a `change_key` into `(group, index, seq)`.
pub fn decode_change_key(key: &[u8]) -> Option<(ShardId, u64, u32)> {
    if key.len() != 20 {
        return None;
    }
    Some((
        u64::from_be_bytes(key[..8].try_into().ok()?),
        u64::from_be_bytes(key[8..16].try_into().ok()?),
        u32::from_be_bytes(key[16..].try_into().ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn descendant_rows_sit_under_their_prefix_only() {
        let prefix = descendant_prefix(3, "acme", "p-1");
        let end = prefix_end(&prefix);
        let inside = descendant_key(3, "acme", "p-1", "p-9");
        assert!(inside.as_slice() >= prefix.as_slice() && inside < end);
        // "p-10" shares the text prefix "p-1" but not the separator.
        let other = descendant_key(3, "acme", "p-10", "p-9");
        assert!(other >= end || other.as_slice() < prefix.as_slice());
        assert_ne!(restriction_key(3, "acme", "p-1"), inside);
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
    }

    #[test]
    fn log_keys_sort_by_group_then_index() {
        assert!(log_key(1, 9) < log_key(1, 10));
        assert!(log_key(1, u64::MAX) < log_key(2, 0));
        assert_eq!(decode_log_key(&log_key(7, 42)), Some((7, 42)));
        assert!(group_prefix(3).as_slice() < group_end(3).as_slice());
        assert!(log_key(3, u64::MAX).as_slice() < group_end(3).as_slice());
    }

    #[test]
    fn entity_keys_round_trip_and_stay_in_group() {
        let k = entity_key(5, "acme", "p-17");
        assert_eq!(decode_entity_key(&k), Some((5, "acme", "p-17")));
        assert!(k.starts_with(&tenant_prefix(5, "acme")));
        assert!(!entity_key(5, "acme2", "x").starts_with(&tenant_prefix(5, "acme")));
        assert!(k.as_slice() < group_end(5).as_slice());
    }

    proptest! {
        #[test]
        fn change_keys_round_trip_and_order(g in 0u64..1000, a in any::<u64>(), b in any::<u64>(), s in any::<u32>()) {
            prop_assert_eq!(decode_change_key(&change_key(g, a, s)), Some((g, a, s)));
            prop_assert_eq!(a.cmp(&b), change_key(g, a, s).cmp(&change_key(g, b, s)));
        }

        #[test]
        fn log_keys_order_matches_numbers(g in 0u64..1000, a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(a.cmp(&b), log_key(g, a).cmp(&log_key(g, b)));
            prop_assert_eq!(decode_log_key(&log_key(g, a)), Some((g, a)));
        }
    }
}
