//! The feature store beside the documents (DESIGN.md "Feature store").
//!
//! - `cache`: online values kept in memory while provably unchanged;
//! - `definition`: `features.toml` and the versioned registry;
//! - `tiles`: the mergeable aggregation state;
//! - `engine`: the one evaluation both paths run;
//! - `historical`: the offline replay;
//! - `store`: the RocksDB rows, the applier and the online reads.

pub mod cache;
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

use serde::{Deserialize, Serialize};
use tessera_proto::ValidEvent;

/// A feature write replicated through a shard's log. `ingest_ts_ms` is the
/// leader's clock when it proposed the entry, carried in the entry so that
/// every replica (and every replay) orders and filters events identically.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeatureCommand {
    pub tenant: String,
    pub ingest_ts_ms: i64,
    pub op: FeatureOp,
}

/// What a feature command does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FeatureOp {
    /// Validated events; the flag says whether this shard holds the event's
    /// document partition (decided by the proposing leader from its map).
    Events(Vec<(ValidEvent, bool)>),
    /// A new version of the definitions, validated before proposing.
    Registry { toml: String, defs: Vec<FeatureDef> },
    /// Events copied from another shard of the tenant by a resize's mover.
    /// Appended last so the encoding of the other variants is unchanged.
    Import(ImportBatch),
}

/// Which of an event's stored rows a copy carries: those kept on the
/// document's partition only (doc-keyed), or those every partition keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RowSet {
    Shared,
    Doc,
}

/// One page of a mover's copy of feature state onto a shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportBatch {
    /// The source's definitions, installed where none are yet.
    pub registry: Option<ImportedRegistry>,
    pub rows: RowSet,
    /// Events in the source's order, each with the map epoch it was written with.
    pub events: Vec<(tiles::EventRow, u64)>,
}

/// A tenant's definitions as a mover copies them: the text, parsed, and the version it has
/// on the source (kept, so every shard reports the same version).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportedRegistry {
    pub toml: String,
    pub defs: Vec<FeatureDef>,
    pub version: u64,
}

impl FeatureApplier {
    /// Applies one replicated feature command at log `index`, sent with
    /// the cluster map at `map_epoch` (0 = unknown).
    pub fn apply(
        &mut self,
        index: u64,
        cmd: &FeatureCommand,
        map_epoch: u64,
    ) -> Result<FeatureOutcome, crate::storage::StorageError> {
        match &cmd.op {
            FeatureOp::Events(events) => {
                self.apply_events(index, cmd.ingest_ts_ms, &cmd.tenant, events, map_epoch)
            }
            FeatureOp::Registry { toml, defs } => self.apply_registry(&cmd.tenant, defs, toml, 0),
            FeatureOp::Import(batch) => self.import(&cmd.tenant, batch),
        }
    }
}

/// The wall clock in epoch milliseconds: ingest time on the leader and `t`
/// of online reads.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
