//! Raft groups: the openraft type configuration, the log store, the state
//! machine, the network adapter, and the registry of groups on this node.
//!
//! openraft 0.9 runs one `Raft` instance per group; multi-raft here means
//! many instances sharing one RocksDB (see `storage`) and one QUIC transport
//! (see `network`), multiplexed by group id.

// openraft's trait signatures fix `StorageError` as the error type; it is
// large, but boxing it would only add conversions at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod export;
pub mod guard;
pub mod log_store;
pub mod network;
pub mod registry;
pub mod state_machine;

use serde::{Deserialize, Serialize};
use std::io::Cursor;
use tessera_proto::NodeId;

use crate::meta::{MetaCommand, MetaOutcome};

openraft::declare_raft_types!(
    /// Tessera's openraft configuration, shared by the meta group and every shard group.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft instance type of one group.
pub type Raft = openraft::Raft<TypeConfig>;
/// openraft's storage error for our node id type.
pub type RaftStorageError = openraft::StorageError<NodeId>;

/// A command replicated through a group's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Documents and memberships of one tenant in a shard group.
    Shard(ShardCommand),
    /// A change to the cluster map (meta group only).
    Meta(MetaCommand),
    /// Feature store events or definitions of one tenant (shard groups only).
    /// Appended last so the encoding of the other variants is unchanged.
    Features(crate::features::FeatureCommand),
    /// Commands checked against the tenant's resize fence on this shard
    /// (see [`guard`]). Appended last, like `Features`.
    Guarded(guard::GuardedCommand),
}

/// One write batch of one tenant. Documents travel as their validated JSON
/// so the log holds exactly what the client sent (bincode cannot carry the
/// optional fields of the JSON schema faithfully).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardCommand {
    pub tenant: String,
    pub upserts: Vec<Vec<u8>>,
    pub deletes: Vec<(String, u64)>,
    pub memberships: Vec<(String, Vec<String>)>,
    /// `(page, page version, restriction set)` of pages stored on other
    /// partitions of the tenant, so descendants here are recompiled.
    pub restrictions: Vec<(String, u64, Vec<String>)>,
}

/// What applying a command did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub enum Response {
    /// Membership and blank entries.
    #[default]
    Empty,
    /// A shard write: how many operations changed state and how many were
    /// no-ops because a newer version was already stored.
    Shard { applied_ops: u32, noop_ops: u32 },
    /// A meta command's outcome.
    Meta(MetaOutcome),
    /// A feature command's outcome: the registry version in force, whether
    /// the definitions changed, and how many events were stored.
    Features {
        version: u64,
        changed: bool,
        events: u32,
    },
    /// The command was made with a cluster map older than the tenant's
    /// fence on this shard; nothing changed. The sender refreshes its map.
    Stale { fence: u64 },
}

impl Response {
    /// The response to an applied feature command.
    pub fn of_features(out: crate::features::FeatureOutcome) -> Self {
        Self::Features {
            version: out.version,
            changed: out.changed,
            events: out.events,
        }
    }
}

/// Converts any error into openraft's storage error for the given subject.
pub(crate) fn io_err(
    make: fn(openraft::AnyError) -> openraft::StorageIOError<NodeId>,
    e: impl std::fmt::Display,
) -> RaftStorageError {
    make(openraft::AnyError::error(e.to_string())).into()
}
