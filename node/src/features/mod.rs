//! The feature store beside the documents (DESIGN.md "Feature store").
//!
//! - `definition`: `features.toml` and the versioned registry;
//! - `tiles`: the mergeable aggregation state;
//! - `engine`: the one evaluation both paths run;
//! - `historical`: the offline replay;
//! - `store`: the RocksDB rows, the applier and the online reads.

pub mod definition;
pub mod engine;
pub mod historical;
pub mod store;
pub mod tiles;

#[cfg(test)]
mod tests;

pub use definition::{
    parse_features_toml, Aggregation, DefinitionError, Entity, FeatureDef, Registry,
};
pub use store::{FeatureApplier, FeatureError, FeatureOutcome, FeatureStore};
