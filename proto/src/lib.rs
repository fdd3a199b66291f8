//! The contract every Tessera crate shares: the generated gRPC code, the id
//! types, the document and event schema, and the input limits.
//!
//! Keeping the JSON schema and its validation here means the CLI, the router
//! and the node reject bad input with the same message, and the node never
//! has to trust that an upstream layer validated anything.

pub mod document;
pub mod event;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod query_syntax;
pub mod transport;

/// Generated protobuf messages and tonic services (package `tessera.v1`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("tessera.v1");
}

pub use document::{Document, DocumentError, Permissions};
pub use event::{Event, EventKind, ValidEvent};
pub use ids::{partition_of, NodeId, Region, ShardId, TenantId, META_GROUP};

/// Metadata naming the current leader's node id on a node's `not leader`
/// answer, so a caller (router, mover) goes straight to the leader.
pub const LEADER_ID_HEADER: &str = "x-tessera-leader-id";
/// Metadata naming the current leader's gRPC address on the same answer.
pub const LEADER_ADDR_HEADER: &str = "x-tessera-leader-addr";
