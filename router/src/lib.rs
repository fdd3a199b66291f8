//! Tessera's router: the stateless front door of the cluster.
//!
//! A router caches the cluster map, sends each write to its shard's Raft
//! leader and each read to the best replica of every shard the tenant lives
//! on, then merges the answers. It owns the cluster's admission control
//! (per-tenant token buckets, a global in-flight limit) and its failure
//! handling (per-node circuit breakers, hedged reads, deadlines, cross-region
//! failover), so storage nodes can stay simple.
//!
//! Tests start a router in-process with [`Router::start`], which returns a
//! [`RouterHandle`] carrying the bound address and a `shutdown()`.

#![warn(missing_docs)]

pub mod auth;
pub mod backend;
pub mod breaker;
pub mod config;
pub mod deadline;
pub mod error;
pub mod features;
pub mod impressions;
pub mod limits;
pub mod map_cache;
pub mod merge;
pub mod pool;
pub mod read;
pub mod residency;
pub mod select;
pub mod server;
pub mod service;
pub mod session;
pub mod telemetry;
pub mod topology;
pub mod validate;
pub mod write;

pub use config::{RouterConfig, SelectionPolicy};
pub use error::RouterError;
pub use server::{Router, RouterHandle};
