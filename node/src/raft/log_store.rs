//! The Raft log of one group, in the node's shared RocksDB.
//!
//! Appends, truncations, purges and votes all go through the node's
//! `SyncWriter`, which keeps them in submission order and acknowledges them
//! only after an fsync: an entry never counts toward a quorum before it is
//! durable (openraft's own 0.9 RocksDB example reports before syncing).

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageIOError, Vote};
use rocksdb::WriteBatch;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tessera_proto::{NodeId, ShardId};

use super::{io_err, RaftStorageError, TypeConfig};
use crate::storage::sync_writer::Completion;
use crate::storage::{decode, encode, keys, Storage, CF_RAFT_LOG, CF_RAFT_META};

/// Log storage of one Raft group.
#[derive(Clone)]
pub struct LogStore {
    group: ShardId,
    storage: Storage,
    /// Purging never passes this index: the tantivy watermark of the shard
    /// (u64::MAX for groups without an index).
    purge_limit: Arc<AtomicU64>,
}

impl LogStore {
    /// A log store for `group`; `purge_limit` is read at every purge.
    pub fn new(group: ShardId, storage: Storage, purge_limit: Arc<AtomicU64>) -> Self {
        Self {
            group,
            storage,
            purge_limit,
        }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        suffix: u8,
    ) -> Result<Option<T>, RaftStorageError> {
        let key = keys::meta_key(self.group, suffix);
        let raw = self
            .storage
            .get(CF_RAFT_META, &key)
            .map_err(|e| io_err(StorageIOError::read, e))?;
        raw.map(|b| decode(CF_RAFT_META, &b))
            .transpose()
            .map_err(|e| io_err(StorageIOError::read, e))
    }

    fn meta_batch<T: serde::Serialize>(
        &self,
        suffix: u8,
        value: &T,
    ) -> Result<WriteBatch, RaftStorageError> {
        let mut batch = WriteBatch::default();
        let cf = self
            .storage
            .cf(CF_RAFT_META)
            .map_err(|e| io_err(StorageIOError::write, e))?;
        let bytes = encode(value).map_err(|e| io_err(StorageIOError::write, e))?;
        batch.put_cf(cf, keys::meta_key(self.group, suffix), bytes);
        Ok(batch)
    }

    fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, RaftStorageError> {
        let cf = self
            .storage
            .cf(CF_RAFT_LOG)
            .map_err(|e| io_err(StorageIOError::read_logs, e))?;
        let end = keys::group_end(self.group);
        let mut iter = self.storage.db().iterator_cf(
            cf,
            rocksdb::IteratorMode::From(&end, rocksdb::Direction::Reverse),
        );
        // The reverse seek may land on `end` itself (the next group's first key).
        for item in iter.by_ref() {
            let (k, v) = item.map_err(|e| io_err(StorageIOError::read_logs, e))?;
            if k.as_ref() >= end.as_slice() {
                continue;
            }
            if !k.starts_with(&keys::group_prefix(self.group)) {
                return Ok(None);
            }
            let entry: Entry<TypeConfig> =
                decode(CF_RAFT_LOG, &v).map_err(|e| io_err(StorageIOError::read_logs, e))?;
            return Ok(Some(entry.log_id));
        }
        Ok(None)
    }

    async fn durable(&self, batch: WriteBatch) -> Result<(), RaftStorageError> {
        self.storage
            .sync_writer()
            .write(batch)
            .await
            .map_err(|e| io_err(StorageIOError::write_logs, e))
    }
}

fn range_start(range: &impl RangeBounds<u64>) -> u64 {
    match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    }
}

fn range_end(range: &impl RangeBounds<u64>) -> Option<u64> {
    match range.end_bound() {
        Bound::Included(i) => i.checked_add(1),
        Bound::Excluded(i) => Some(*i),
        Bound::Unbounded => None,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStorageError> {
        let start = keys::log_key(self.group, range_start(&range));
        let end = match range_end(&range) {
            Some(e) => keys::log_key(self.group, e).to_vec(),
            None => keys::group_end(self.group),
        };
        let mut entries = Vec::new();
        let mut failure = None;
        self.storage
            .for_each(CF_RAFT_LOG, &start, &end, |_, v| {
                match decode::<Entry<TypeConfig>>(CF_RAFT_LOG, v) {
                    Ok(e) => {
                        entries.push(e);
                        true
                    }
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                }
            })
            .map_err(|e| io_err(StorageIOError::read_logs, e))?;
        match failure {
            Some(e) => Err(io_err(StorageIOError::read_logs, e)),
            None => Ok(entries),
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged: Option<LogId<NodeId>> = self.read_meta(keys::suffix::PURGED)?;
        let last = self.last_log_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftStorageError> {
        let batch = self.meta_batch(keys::suffix::VOTE, vote)?;
        self.storage
            .sync_writer()
            .write(batch)
            .await
            .map_err(|e| io_err(StorageIOError::write_vote, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftStorageError> {
        self.read_meta(keys::suffix::VOTE)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), RaftStorageError> {
        let batch = self.meta_batch(keys::suffix::COMMITTED, &committed)?;
        // Ordered behind the appends it refers to; no fsync of its own needed
        // because openraft treats the committed id as a hint after restart.
        self.storage
            .sync_writer()
            .submit(batch, Completion::Callback(Box::new(|_| {})));
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, RaftStorageError> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(keys::suffix::COMMITTED)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let cf = self
            .storage
            .cf(CF_RAFT_LOG)
            .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = encode(&entry).map_err(|e| io_err(StorageIOError::write_logs, e))?;
            batch.put_cf(cf, keys::log_key(self.group, entry.log_id.index), bytes);
        }
        self.storage.sync_writer().submit(
            batch,
            Completion::Callback(Box::new(move |result| {
                callback.log_io_completed(result.map_err(std::io::Error::other));
            })),
        );
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), RaftStorageError> {
        let cf = self
            .storage
            .cf(CF_RAFT_LOG)
            .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf,
            keys::log_key(self.group, log_id.index).as_slice(),
            keys::group_end(self.group).as_slice(),
        );
        self.durable(batch).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), RaftStorageError> {
        let mut batch = self.meta_batch(keys::suffix::PURGED, &log_id)?;
        let limit = self.purge_limit.load(Ordering::Acquire);
        let upto = log_id.index.min(limit);
        let cf = self
            .storage
            .cf(CF_RAFT_LOG)
            .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        batch.delete_range_cf(
            cf,
            keys::log_key(self.group, 0),
            keys::log_key(self.group, upto.saturating_add(1)),
        );
        self.durable(batch).await
    }
}
