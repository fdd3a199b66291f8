//! The Raft groups hosted by this node, by group id.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;
use tessera_proto::ShardId;

use super::state_machine::GroupData;
use super::Raft;

/// One hosted group: its Raft instance and its readable data.
pub struct GroupHandle {
    pub raft: Raft,
    pub data: GroupData,
    /// When this node opened the group; used to decide when a voter other
    /// than the first may initialise a group nobody initialised.
    pub opened_at: Instant,
    /// The log store never purges past this index (the shard's index
    /// watermark); refreshed by the node's maintenance loop.
    pub purge_limit: Arc<AtomicU64>,
}

/// Every group on the node. Inbound Raft RPCs and API calls look groups up
/// here; the reconciler adds them as the cluster map assigns replicas.
#[derive(Default)]
pub struct Registry {
    groups: RwLock<HashMap<ShardId, Arc<GroupHandle>>>,
}

impl Registry {
    /// The group, if hosted here.
    pub fn get(&self, group: ShardId) -> Option<Arc<GroupHandle>> {
        self.groups.read().get(&group).cloned()
    }

    /// The group's Raft instance, if hosted here.
    pub fn raft(&self, group: ShardId) -> Option<Raft> {
        self.get(group).map(|g| g.raft.clone())
    }

    /// Whether the group is hosted here.
    pub fn contains(&self, group: ShardId) -> bool {
        self.groups.read().contains_key(&group)
    }

    /// Forgets a group (its replica left this node); returns its handle so
    /// the caller can shut the Raft instance down.
    pub fn remove(&self, group: ShardId) -> Option<Arc<GroupHandle>> {
        self.groups.write().remove(&group)
    }

    /// Adds a group (replacing none: the caller checks `contains` first).
    pub fn insert(&self, group: ShardId, handle: Arc<GroupHandle>) {
        self.groups.write().entry(group).or_insert(handle);
    }

    /// Every hosted group, sorted by id.
    pub fn all(&self) -> Vec<(ShardId, Arc<GroupHandle>)> {
        let mut v: Vec<_> = self
            .groups
            .read()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Removes every group (shutdown).
    pub fn drain(&self) -> Vec<Arc<GroupHandle>> {
        self.groups.write().drain().map(|(_, v)| v).collect()
    }
}
