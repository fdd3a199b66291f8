//! Shared harness for the integration tests: real nodes (in-process or as
//! `tessera-node` processes) with real RocksDB, tantivy, QUIC and gRPC, each
//! on its own 127.x.y.z address.
//!
//! Waiting is always "poll a condition until a deadline", never a fixed sleep.

pub mod cluster;
pub mod docs;
pub mod eval;
pub mod load;
pub mod routers;
pub mod wait;

pub use cluster::{Layout, NodeSlot, TestCluster};
pub use wait::eventually;
