//! A tenant's resize guard on one shard: the fence that refuses requests
//! made with a map from before a resize began, and, once the shard has
//! dropped what a new placement gives to other shards, that placement, so
//! that writes of documents the shard no longer owns are ignored.
//!
//! Both are replicated state (set by log entries), so every replica of the
//! shard refuses and ignores exactly the same writes. See
//! `crate::meta::resize` for the protocol they serve.

use serde::{Deserialize, Serialize};
use tessera_proto::{partition_of, ShardId};

use super::ShardCommand;
use crate::storage::{decode, encode, keys, Storage, StorageError, CF_SM_META};

/// Log entries of the resize protocol, and writes made under it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum GuardedCommand {
    /// A write made with the cluster map at `map_epoch`. With
    /// `keep_memberships` (the mover's copies), a membership already
    /// present is never replaced: a copy is older than any write it races.
    Write {
        map_epoch: u64,
        keep_memberships: bool,
        cmd: ShardCommand,
    },
    /// From here on, refuse `tenant`'s requests made with a map older than `fence`.
    Fence { tenant: String, fence: u64 },
    /// Delete `tenant`'s rows this shard does not own under the placement
    /// `to`, and ignore later writes of documents it does not own.
    Drop {
        tenant: String,
        fence: u64,
        to: Vec<ShardId>,
    },
    /// Feature events sent with the map at `map_epoch`, refused like a
    /// write when that map is older than the fence: a router that does not
    /// know of a resize sends events to the old placement only, and after
    /// the fence the mover no longer copies what arrives there. Appended
    /// last so the encoding of the other variants is unchanged.
    Events {
        map_epoch: u64,
        cmd: crate::features::FeatureCommand,
    },
    /// A [`GuardedCommand::Write`] made while a resize runs, with the
    /// resize's target `placement`: the shard keeps every document that
    /// placement gives it, even one an earlier drop's placement gave to
    /// another shard (a tenant coming back to a shard it left, or growth
    /// giving an old shard a partition it did not hold). Without it such
    /// writes were skipped as not owned, yet acknowledged: lost. Appended
    /// last so the encoding of the other variants is unchanged.
    WriteUnder {
        map_epoch: u64,
        keep_memberships: bool,
        cmd: ShardCommand,
        placement: Vec<ShardId>,
    },
}

/// One tenant's guard on one shard. The default admits everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantGuard {
    /// Requests made with a cluster map older than this epoch are refused.
    pub fence: u64,
    /// The placement this shard keeps only its own documents of.
    pub owned_under: Option<Vec<ShardId>>,
}

impl TenantGuard {
    /// Whether a request made with the map at `map_epoch` may proceed.
    pub fn admits(&self, map_epoch: u64) -> bool {
        map_epoch >= self.fence
    }

    /// Whether `shard` keeps document `id`.
    pub fn owns(&self, shard: ShardId, id: &str) -> bool {
        match &self.owned_under {
            None => true,
            Some(to) => owner(to, id) == Some(shard),
        }
    }

    /// Whether `shard` keeps document `id` written under a resize to
    /// `placement` (empty: no resize): its own placement or the resize's.
    pub fn owns_under(&self, shard: ShardId, id: &str, placement: &[ShardId]) -> bool {
        self.owns(shard, id) || owner(placement, id) == Some(shard)
    }

    /// Reads the guard of `tenant` on `group` (the default when none is stored).
    pub fn load(storage: &Storage, group: ShardId, tenant: &str) -> Result<Self, StorageError> {
        storage
            .get(CF_SM_META, &key(group, tenant))?
            .map(|b| decode(CF_SM_META, &b))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// The row that stores it.
    pub fn row(&self, group: ShardId, tenant: &str) -> Result<(Vec<u8>, Vec<u8>), StorageError> {
        Ok((key(group, tenant), encode(self)?))
    }
}

/// The shard that owns document `id` under placement `to`.
pub fn owner(to: &[ShardId], id: &str) -> Option<ShardId> {
    let p = u32::try_from(to.len()).ok().filter(|p| *p > 0)?;
    to.get(partition_of(id, p) as usize).copied()
}

fn key(group: ShardId, tenant: &str) -> Vec<u8> {
    let mut k = keys::meta_key(group, keys::suffix::GUARD).to_vec();
    k.extend_from_slice(tenant.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_admits_everything_and_owns_everything() {
        let g = TenantGuard::default();
        assert!(g.admits(0));
        assert!(g.owns(7, "p-1"));
    }

    #[test]
    fn fence_refuses_older_maps_and_ownership_follows_the_hash() {
        let to = vec![1, 2, 3, 4];
        let g = TenantGuard {
            fence: 10,
            owned_under: Some(to.clone()),
        };
        assert!(!g.admits(9));
        assert!(g.admits(10));
        for i in 0..200 {
            let id = format!("p-{i}");
            let home = owner(&to, &id).expect("owner");
            assert!(g.owns(home, &id));
            assert_eq!(to.iter().filter(|s| g.owns(**s, &id)).count(), 1);
        }
    }
}
