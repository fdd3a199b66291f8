//! The node's one RocksDB: column families, key layout and the synced,
//! group-committed writer that makes Raft log appends durable.
//!
//! One database per node (not per group) lets one WAL fsync cover appends of
//! every Raft group at once, which is what makes many small groups cheap.

pub mod keys;
pub mod sync_writer;

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB};
use std::path::Path;
use std::sync::Arc;
use tessera_proto::ShardId;

pub use sync_writer::SyncWriter;

/// Raft log entries: `group ++ index`.
pub const CF_RAFT_LOG: &str = "raft_log";
/// Raft vote, committed and purged ids: `group ++ suffix`.
pub const CF_RAFT_META: &str = "raft_meta";
/// State machine metadata: applied id, membership, tenant stats, cluster map.
pub const CF_SM_META: &str = "sm_meta";
/// Documents and tombstones: `group ++ tenant ++ SEP ++ doc id`.
pub const CF_DOCS: &str = "docs";
/// Group memberships: `group ++ tenant ++ SEP ++ user`.
pub const CF_MEMBERS: &str = "members";
/// Change sequence for the index: `group ++ applied index ++ seq`.
pub const CF_CHANGES: &str = "changes";
/// The newest built snapshot of each group.
pub const CF_SNAPSHOTS: &str = "snapshots";
/// Feature store rows (registry, raw events, tiles): see `features::store`.
pub const CF_FEATURES: &str = "features";

/// Column families that make up a shard's replicated state (what a snapshot carries).
/// New tables go at the end: a snapshot row names its table by position.
pub const STATE_CFS: [&str; 4] = [CF_SM_META, CF_DOCS, CF_MEMBERS, CF_FEATURES];

const ALL_CFS: [&str; 8] = [
    CF_RAFT_LOG,
    CF_RAFT_META,
    CF_SM_META,
    CF_DOCS,
    CF_MEMBERS,
    CF_CHANGES,
    CF_SNAPSHOTS,
    CF_FEATURES,
];

/// Storage failures. RocksDB errors carry their own message; the wrapper
/// says which operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb {op}: {source}")]
    Rocks {
        op: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error("missing column family {0}")]
    MissingCf(&'static str),
    #[error("corrupt row in {cf}: {reason}")]
    Corrupt { cf: &'static str, reason: String },
    #[error("the synced writer thread has stopped")]
    WriterStopped,
}

fn rocks(op: &'static str) -> impl FnOnce(rocksdb::Error) -> StorageError {
    move |source| StorageError::Rocks { op, source }
}

/// Key/value rows read by a range scan, in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Shared handle to the node's RocksDB.
#[derive(Clone)]
pub struct Storage {
    db: Arc<DB>,
    writer: SyncWriter,
    /// Online feature values derived from this database's rows, shared by its shards.
    online: Arc<crate::features::cache::OnlineCache>,
}

impl Storage {
    /// Opens (or creates) the database under `dir` and starts the synced writer.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_options()));
        let db = Arc::new(DB::open_cf_descriptors(&opts, dir, cfs).map_err(rocks("open"))?);
        let writer = SyncWriter::start(db.clone());
        Ok(Self {
            db,
            writer,
            online: Arc::default(),
        })
    }

    /// The in-memory cache of online feature values computed from these rows: whoever
    /// changes feature rows must touch or invalidate it once the write is visible.
    pub fn online_cache(&self) -> &crate::features::cache::OnlineCache {
        &self.online
    }

    /// The raw database, for modules that build their own batches.
    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// The group-commit writer for writes that must be durable before they return.
    pub fn sync_writer(&self) -> &SyncWriter {
        &self.writer
    }

    /// A column family handle.
    pub fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db.cf_handle(name).ok_or(StorageError::MissingCf(name))
    }

    /// Reads one row.
    pub fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db.get_cf(self.cf(cf)?, key).map_err(rocks("get"))
    }

    /// Writes a batch without an fsync: used by state machine applies, whose
    /// durability comes from the synced Raft log they are replayed from.
    pub fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.db.write(batch).map_err(rocks("write"))
    }

    /// Every `(key, value)` of `cf` whose key is in `[start, end)`, in key order.
    pub fn scan(&self, cf: &'static str, start: &[u8], end: &[u8]) -> Result<Rows, StorageError> {
        let mut out = Vec::new();
        self.for_each(cf, start, end, |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })?;
        Ok(out)
    }

    /// Visits `(key, value)` rows of `cf` in `[start, end)` until `f` returns false.
    pub fn for_each(
        &self,
        cf: &'static str,
        start: &[u8],
        end: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let iter = self
            .db
            .iterator_cf(self.cf(cf)?, IteratorMode::From(start, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(rocks("iterate"))?;
            if k.as_ref() >= end || !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    /// Adds deletion of every row of `group` in `cf` to `batch`.
    pub fn delete_group_range(
        &self,
        batch: &mut WriteBatch,
        cf: &'static str,
        group: ShardId,
    ) -> Result<(), StorageError> {
        batch.delete_range_cf(
            self.cf(cf)?,
            keys::group_prefix(group).as_slice(),
            keys::group_end(group).as_slice(),
        );
        Ok(())
    }
}

fn cf_options() -> Options {
    let mut o = Options::default();
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o
}

/// Encodes a value with bincode; failures are storage corruption bugs.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    bincode::serialize(value).map_err(|e| StorageError::Corrupt {
        cf: "encode",
        reason: e.to_string(),
    })
}

/// Decodes a bincode value read from `cf`.
pub fn decode<T: serde::de::DeserializeOwned>(
    cf: &'static str,
    bytes: &[u8],
) -> Result<T, StorageError> {
    bincode::deserialize(bytes).map_err(|e| StorageError::Corrupt {
        cf,
        reason: e.to_string(),
    })
}
