//! Tessera storage node: multi-raft shard groups persisted in one RocksDB,
//! a tantivy index per shard, a QUIC transport between nodes, the meta group
//! holding the cluster map, and the gRPC API.
//!
//! Module map (DESIGN.md, "Crates and folders"): `raft` (log store, state
//! machine, network, registry), `storage` (RocksDB layout), `index`
//! (tantivy), `acl` (permission compiler and filter), `meta` (cluster map
//! and placement), `service` (gRPC handlers), `node` (assembly and control
//! loops), `config` (the static cluster file).

pub mod acl;
pub mod config;
pub mod features;
pub mod index;
pub mod meta;
pub mod node;
pub mod raft;
pub mod rank;
pub mod service;
pub mod storage;

pub use config::{ClusterConfig, NodeSpec, RaftTuning};
pub use node::{NodeConfig, NodeError, TesseraNode};
