//! The state machine of a group: the cluster map for the meta group, and
//! documents, memberships and the change sequence for a shard group.
//!
//! RocksDB is the truth. Applying an entry writes its rows, the change
//! sequence and the applied id in one batch; the shard's tantivy index then
//! follows from the change sequence and records the applied index it covers.

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Cursor;
use std::sync::Arc;
use tessera_proto::{Document, NodeId, ShardId};
use tokio::sync::watch;

use super::guard::{owner, GuardedCommand};
use super::{io_err, RaftStorageError, Request, Response, ShardCommand, TypeConfig};
use crate::acl;
use crate::acl::cache::AllowedCache;
use crate::features::FeatureApplier;
use crate::index::{count_tokens, IndexError, IndexOp, IndexedDoc, ShardIndex};
use crate::meta::{ClusterMap, MetaCommand, MetaOutcome};
use crate::storage::{
    decode, encode, keys, Storage, StorageError, CF_CHANGES, CF_DOCS, CF_MEMBERS, CF_SM_META,
    CF_SNAPSHOTS, STATE_CFS,
};

mod guarded;

/// A stored document or tombstone. Tombstones keep the delete's version so
/// that a late retry of an older upsert stays a no-op.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredDoc {
    pub version: u64,
    pub deleted: bool,
    /// The document as accepted, in the input schema.
    pub json: Vec<u8>,
    /// Compiled permission tokens (DNF conjuncts).
    pub acl: Vec<String>,
    pub title_tokens: u64,
    pub body_tokens: u64,
}

impl StoredDoc {
    /// The document's space, read from its JSON without decoding the rest (rank profiles need
    /// it for user×space features). Empty when the JSON has none.
    pub fn space(&self) -> String {
        #[derive(serde::Deserialize)]
        struct SpaceOnly {
            #[serde(default)]
            space: String,
        }
        serde_json::from_slice::<SpaceOnly>(&self.json)
            .map(|d| d.space)
            .unwrap_or_default()
    }
}

/// A tenant's collection statistics in one shard, kept exactly so BM25 over
/// a shared shard scores as if the tenant had its own index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantStats {
    pub docs: u64,
    pub title_tokens: u64,
    pub body_tokens: u64,
    /// The live documents' JSON as written, in bytes: what growth by size measures.
    pub bytes: u64,
}

/// [`TenantStats`] as stored before it counted bytes.
#[derive(Deserialize)]
struct TenantStatsWithoutBytes {
    docs: u64,
    title_tokens: u64,
    body_tokens: u64,
}

impl TenantStats {
    /// Reads a stored row. Rows written before bytes were counted read as 0 bytes, which
    /// only delays a split by size until the tenant's documents are rewritten.
    fn decode_stored(bytes: &[u8]) -> Result<Self, StorageError> {
        decode::<TenantStats>(CF_SM_META, bytes).or_else(|_| {
            let old: TenantStatsWithoutBytes = decode(CF_SM_META, bytes)?;
            Ok(TenantStats {
                docs: old.docs,
                title_tokens: old.title_tokens,
                body_tokens: old.body_tokens,
                bytes: 0,
            })
        })
    }
}

/// A page's current restriction set as this shard knows it: written when
/// the page itself is upserted here, or fanned out from the partition that
/// stores it. The version is the page's document version, so an older
/// fan-out never overwrites a newer set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restriction {
    pub version: u64,
    /// Sorted, without duplicates; empty means "restricts nothing".
    pub principals: Vec<String>,
}

/// The meta group's state as the rest of the node sees it.
pub struct MetaState {
    map: watch::Sender<Arc<ClusterMap>>,
}

impl MetaState {
    /// Loads the persisted map (or an empty one).
    pub fn load(storage: &Storage) -> Result<Self, StorageError> {
        let map = match storage.get(CF_SM_META, &keys::meta_key(0, keys::suffix::CLUSTER_MAP))? {
            Some(bytes) => {
                ClusterMap::decode_stored(&bytes).map_err(|reason| StorageError::Corrupt {
                    cf: CF_SM_META,
                    reason,
                })?
            }
            None => ClusterMap::default(),
        };
        let (tx, _) = watch::channel(Arc::new(map));
        Ok(Self { map: tx })
    }

    /// The current map.
    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.borrow().clone()
    }

    /// A receiver that sees every newer map.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterMap>> {
        self.map.subscribe()
    }
}

/// A shard group's data as readers (search, get, digest) see it.
pub struct ShardData {
    pub group: ShardId,
    pub storage: Storage,
    pub index: Arc<ShardIndex>,
}

impl ShardData {
    /// `tenant`'s resize guard on this shard (see [`crate::raft::guard`]).
    pub fn guard(&self, tenant: &str) -> Result<crate::raft::guard::TenantGuard, StorageError> {
        crate::raft::guard::TenantGuard::load(&self.storage, self.group, tenant)
    }

    /// The stored row of a document (live or tombstone).
    pub fn doc(&self, tenant: &str, id: &str) -> Result<Option<StoredDoc>, StorageError> {
        self.storage
            .get(CF_DOCS, &keys::entity_key(self.group, tenant, id))?
            .map(|b| decode(CF_DOCS, &b))
            .transpose()
    }

    /// A user's groups in this tenant.
    pub fn groups_of(&self, tenant: &str, user: &str) -> Result<Vec<String>, StorageError> {
        Ok(self
            .storage
            .get(CF_MEMBERS, &keys::entity_key(self.group, tenant, user))?
            .map(|b| decode(CF_MEMBERS, &b))
            .transpose()?
            .unwrap_or_default())
    }

    /// A user's principals in a tenant: the user plus the groups this
    /// shard's membership rows give them. Read per request, so a membership
    /// change takes effect without recompiling any document.
    pub fn principals(&self, tenant: &str, user: &str) -> Result<BTreeSet<String>, StorageError> {
        Ok(acl::principals(user, &self.groups_of(tenant, user)?))
    }

    /// The acl tokens of `tenant` that `principals` satisfy, for the search
    /// filter: listed from the index's term dictionary (never its
    /// documents) and cached per principal set and index watermark.
    pub fn allowed_tokens(
        &self,
        cache: &AllowedCache,
        tenant: &str,
        principals: &BTreeSet<String>,
    ) -> Result<Arc<Vec<String>>, IndexError> {
        // Read before listing: see `AllowedCache::allowed`.
        let watermark = self.index.watermark();
        cache.allowed(self.group, tenant, principals, watermark, || {
            self.index.acl_tokens(tenant)
        })
    }

    /// Drops hits whose stored row (RocksDB, which the Raft apply updates
    /// before the index) no longer admits `principals`. The index trails
    /// the apply by up to one commit interval; this makes a tightening
    /// that is applied on this replica hide the document from search at
    /// once, as it does from `get`. Costs one point read per returned hit;
    /// the rows read are returned beside the hits for the second phase.
    pub fn recheck_hits<T>(
        &self,
        tenant: &str,
        principals: &BTreeSet<String>,
        hits: Vec<T>,
        id: impl Fn(&T) -> &str,
    ) -> Result<Vec<(T, StoredDoc)>, StorageError> {
        let mut kept = Vec::with_capacity(hits.len());
        for hit in hits {
            if let Some(stored) = self.doc(tenant, id(&hit))? {
                if doc_visible(tenant, &stored, principals) {
                    kept.push((hit, stored));
                }
            }
        }
        Ok(kept)
    }

    /// The stored document if `principals` may see it: the `get` path.
    pub fn visible_doc(
        &self,
        tenant: &str,
        id: &str,
        principals: &BTreeSet<String>,
    ) -> Result<Option<StoredDoc>, StorageError> {
        Ok(self
            .doc(tenant, id)?
            .filter(|d| doc_visible(tenant, d, principals)))
    }

    /// A page's current restriction set as this shard knows it.
    pub fn restriction(
        &self,
        tenant: &str,
        page: &str,
    ) -> Result<Option<Restriction>, StorageError> {
        self.storage
            .get(CF_SM_META, &keys::restriction_key(self.group, tenant, page))?
            .map(|b| decode(CF_SM_META, &b))
            .transpose()
    }

    /// A tenant's document count and token totals in this shard.
    pub fn tenant_stats(&self, tenant: &str) -> Result<TenantStats, StorageError> {
        Ok(self
            .storage
            .get(CF_SM_META, &keys::tenant_stats_key(self.group, tenant))?
            .map(|b| TenantStats::decode_stored(&b))
            .transpose()?
            .unwrap_or_default())
    }

    /// Every tenant's statistics in this shard, by tenant id: what the meta
    /// leader's growth check reads.
    pub fn all_tenant_stats(&self) -> Result<Vec<(String, TenantStats)>, StorageError> {
        let start = keys::meta_key(self.group, keys::suffix::TENANT_STATS);
        let end = keys::meta_key(self.group, keys::suffix::TENANT_STATS + 1);
        let mut rows = Vec::new();
        self.storage.for_each(CF_SM_META, &start, &end, |k, v| {
            rows.push((k[start.len()..].to_vec(), v.to_vec()));
            true
        })?;
        rows.into_iter()
            .map(|(tenant, value)| {
                let tenant = String::from_utf8(tenant).map_err(|e| StorageError::Corrupt {
                    cf: CF_SM_META,
                    reason: format!("tenant stats key is not UTF-8: {e}"),
                })?;
                Ok((tenant, TenantStats::decode_stored(&value)?))
            })
            .collect()
    }

    /// The last applied log id as persisted.
    pub fn applied(&self) -> Result<Option<LogId<NodeId>>, StorageError> {
        read_applied(&self.storage, self.group)
    }

    /// Live document count and a digest over every document and membership
    /// row, so replicas can be compared byte for byte.
    pub fn digest(&self) -> Result<(u64, String), StorageError> {
        let mut hasher = blake3::Hasher::new();
        let mut live = 0u64;
        let start = keys::group_prefix(self.group);
        let end = keys::group_end(self.group);
        self.storage.for_each(CF_DOCS, &start, &end, |k, v| {
            hasher.update(&(k.len() as u64).to_be_bytes());
            hasher.update(k);
            hasher.update(&(v.len() as u64).to_be_bytes());
            hasher.update(v);
            if let Ok(doc) = decode::<StoredDoc>(CF_DOCS, v) {
                live += u64::from(!doc.deleted);
            }
            true
        })?;
        hasher.update(b"members");
        self.storage.for_each(CF_MEMBERS, &start, &end, |k, v| {
            hasher.update(k);
            hasher.update(v);
            true
        })?;
        Ok((live, hasher.finalize().to_hex().to_string()))
    }

    /// Re-indexes every change after the index watermark: the path that
    /// repairs a crash between the RocksDB apply and the tantivy commit, and
    /// that rebuilds the index after a snapshot install.
    pub fn catch_up_index(&self) -> Result<u64, StorageError> {
        let watermark = self.index.watermark();
        let start = keys::change_key(self.group, watermark.saturating_add(1), 0);
        let end = keys::group_end(self.group);
        let mut pending: Vec<(u64, String)> = Vec::new();
        self.storage.for_each(CF_CHANGES, &start, &end, |k, v| {
            if let (Some((_, index, _)), Ok(doc_key)) =
                (keys::decode_change_key(k), String::from_utf8(v.to_vec()))
            {
                pending.push((index, doc_key));
            }
            true
        })?;
        let replayed = pending.len() as u64;
        for chunk in pending.chunks(1000) {
            let mut ops = Vec::with_capacity(chunk.len());
            for (_, doc_key) in chunk {
                let mut parts = doc_key.splitn(2, keys::SEP as char);
                let (Some(tenant), Some(id)) = (parts.next(), parts.next()) else {
                    continue;
                };
                ops.push(self.index_op(tenant, id)?);
            }
            let upto = chunk.last().map(|(i, _)| *i).unwrap_or(watermark);
            self.index.submit(upto, ops);
        }
        if let Some(applied) = self.applied()? {
            self.index.submit(applied.index, Vec::new());
        }
        Ok(replayed)
    }

    fn index_op(&self, tenant: &str, id: &str) -> Result<IndexOp, StorageError> {
        Ok(match self.doc(tenant, id)? {
            Some(stored) if !stored.deleted => match indexed_doc(tenant, &stored) {
                Some(doc) => IndexOp::Upsert(doc),
                None => IndexOp::Delete {
                    tenant: tenant.to_string(),
                    id: id.to_string(),
                },
            },
            _ => IndexOp::Delete {
                tenant: tenant.to_string(),
                id: id.to_string(),
            },
        })
    }

    /// Deletes change rows the index already covers; they are never needed again.
    pub fn gc_changes(&self) -> Result<(), StorageError> {
        let watermark = self.index.watermark();
        if watermark == 0 {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.storage.cf(CF_CHANGES)?,
            keys::change_key(self.group, 0, 0),
            keys::change_key(self.group, watermark.saturating_add(1), 0),
        );
        self.storage.write(batch)
    }
}

/// Builds the index form of a stored document.
fn indexed_doc(tenant: &str, stored: &StoredDoc) -> Option<IndexedDoc> {
    let doc: Document = serde_json::from_slice(&stored.json).ok()?;
    let updated_at_ms = doc.updated_at_millis().unwrap_or(0);
    Some(IndexedDoc {
        tenant: tenant.to_string(),
        id: doc.id,
        space: doc.space,
        title: doc.title,
        body: doc.body,
        ancestors: doc.ancestors,
        labels: doc.labels,
        contributors: doc.contributors,
        acl_tokens: stored.acl.clone(),
        updated_at_ms,
    })
}

/// The applied id row holds an `Option<LogId>` (what `apply` writes).
fn read_applied(storage: &Storage, group: ShardId) -> Result<Option<LogId<NodeId>>, StorageError> {
    let row = storage.get(CF_SM_META, &keys::meta_key(group, keys::suffix::APPLIED))?;
    Ok(row
        .map(|b| decode::<Option<LogId<NodeId>>>(CF_SM_META, &b))
        .transpose()?
        .flatten())
}

/// What kind of group this state machine serves.
#[derive(Clone)]
pub enum GroupData {
    /// Group 0.
    Meta(Arc<MetaState>),
    /// A document shard.
    Shard(Arc<ShardData>),
}

/// The openraft state machine of one group.
pub struct StateMachine {
    group: ShardId,
    storage: Storage,
    data: GroupData,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
}

/// A snapshot's payload: every state row of the group.
#[derive(Serialize, Deserialize)]
struct SnapshotRows {
    rows: Vec<(u8, Vec<u8>, Vec<u8>)>,
}

/// The persisted newest snapshot.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

impl StateMachine {
    /// Opens the state machine of `group` over its persisted rows.
    pub fn open(group: ShardId, storage: Storage, data: GroupData) -> Result<Self, StorageError> {
        let last_applied = read_applied(&storage, group)?;
        let membership = storage
            .get(CF_SM_META, &keys::meta_key(group, keys::suffix::MEMBERSHIP))?
            .map(|b| decode::<StoredMembership<NodeId, openraft::BasicNode>>(CF_SM_META, &b))
            .transpose()?
            .unwrap_or_default();
        Ok(Self {
            group,
            storage,
            data,
            last_applied,
            membership,
        })
    }

    fn sm_err(e: impl std::fmt::Display) -> RaftStorageError {
        io_err(StorageIOError::write_state_machine, e)
    }

    fn put_meta<T: Serialize>(
        &self,
        batch: &mut WriteBatch,
        suffix: u8,
        value: &T,
    ) -> Result<(), RaftStorageError> {
        let cf = self.storage.cf(CF_SM_META).map_err(Self::sm_err)?;
        batch.put_cf(
            cf,
            keys::meta_key(self.group, suffix),
            encode(value).map_err(Self::sm_err)?,
        );
        Ok(())
    }

    /// Collects every state row of the group, for a snapshot.
    fn collect_rows(&self) -> Result<Vec<u8>, StorageError> {
        let start = keys::group_prefix(self.group);
        let end = keys::group_end(self.group);
        let mut rows = Vec::new();
        for (i, cf) in STATE_CFS.iter().enumerate() {
            for (k, v) in self.storage.scan(cf, &start, &end)? {
                rows.push((i as u8, k, v));
            }
        }
        encode(&SnapshotRows { rows })
    }
}

/// Applies shard commands of one `apply` call, reading through its own
/// pending writes so that two writes of one document in a batch see each other.
///
/// Permission changes are part of the same apply: when a page's own
/// restriction set changes, every descendant stored on this shard (found
/// through the descendant index, `keys::descendant_prefix`) is recompiled
/// in the same RocksDB batch, so every replica switches atomically at the
/// same log index and `get` never sees a half-applied change.
struct ShardApplier<'a> {
    data: &'a ShardData,
    batch: &'a mut WriteBatch,
    pending_docs: HashMap<Vec<u8>, StoredDoc>,
    pending_stats: HashMap<String, TenantStats>,
    /// Restriction and descendant-index rows written in this batch
    /// (`None` = deleted), so later commands of the batch read them.
    pending_meta: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Resize guards written in this batch.
    pending_guards: HashMap<String, crate::raft::guard::TenantGuard>,
    /// Membership rows written in this batch.
    pending_members: std::collections::HashSet<Vec<u8>>,
    index_ops: Vec<IndexOp>,
}

/// The ancestors of a stored document (none for tombstones and rows that no
/// longer parse).
fn stored_ancestors(stored: Option<&StoredDoc>) -> Vec<String> {
    stored
        .filter(|d| !d.deleted)
        .and_then(|d| serde_json::from_slice::<Document>(&d.json).ok())
        .map(|d| d.ancestors)
        .unwrap_or_default()
}

fn normalized(set: &[String]) -> Vec<String> {
    set.iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

impl<'a> ShardApplier<'a> {
    fn new(data: &'a ShardData, batch: &'a mut WriteBatch) -> Self {
        Self {
            data,
            batch,
            pending_docs: HashMap::new(),
            pending_stats: HashMap::new(),
            pending_meta: BTreeMap::new(),
            pending_guards: HashMap::new(),
            pending_members: std::collections::HashSet::new(),
            index_ops: Vec::new(),
        }
    }

    fn current(&self, key: &[u8]) -> Result<Option<StoredDoc>, StorageError> {
        if let Some(d) = self.pending_docs.get(key) {
            return Ok(Some(d.clone()));
        }
        self.data
            .storage
            .get(CF_DOCS, key)?
            .map(|b| decode(CF_DOCS, &b))
            .transpose()
    }

    fn stats(&mut self, tenant: &str) -> Result<&mut TenantStats, StorageError> {
        if !self.pending_stats.contains_key(tenant) {
            let s = self.data.tenant_stats(tenant)?;
            self.pending_stats.insert(tenant.to_string(), s);
        }
        Ok(self.pending_stats.entry(tenant.to_string()).or_default())
    }

    fn put_meta_row(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StorageError> {
        self.batch
            .put_cf(self.data.storage.cf(CF_SM_META)?, &key, &value);
        self.pending_meta.insert(key, Some(value));
        Ok(())
    }

    fn delete_meta_row(&mut self, key: Vec<u8>) -> Result<(), StorageError> {
        self.batch
            .delete_cf(self.data.storage.cf(CF_SM_META)?, &key);
        self.pending_meta.insert(key, None);
        Ok(())
    }

    fn restriction(&self, tenant: &str, page: &str) -> Result<Option<Restriction>, StorageError> {
        let key = keys::restriction_key(self.data.group, tenant, page);
        let raw = match self.pending_meta.get(&key) {
            Some(pending) => pending.clone(),
            None => self.data.storage.get(CF_SM_META, &key)?,
        };
        raw.map(|b| decode(CF_SM_META, &b)).transpose()
    }

    /// Ids of every document of this shard that lists `page` among its
    /// ancestors, including rows written earlier in this batch.
    fn descendants(&self, tenant: &str, page: &str) -> Result<Vec<String>, StorageError> {
        let prefix = keys::descendant_prefix(self.data.group, tenant, page);
        let end = keys::prefix_end(&prefix);
        let mut found: BTreeSet<Vec<u8>> = BTreeSet::new();
        self.data
            .storage
            .for_each(CF_SM_META, &prefix, &end, |k, _| {
                found.insert(k.to_vec());
                true
            })?;
        for (k, v) in self.pending_meta.range(prefix.clone()..end) {
            if v.is_some() {
                found.insert(k.clone());
            } else {
                found.remove(k);
            }
        }
        Ok(found
            .into_iter()
            .filter_map(|k| String::from_utf8(k[prefix.len()..].to_vec()).ok())
            .collect())
    }

    /// The acl tokens of `doc` under the current restriction sets of its
    /// ancestors (see [`acl::effective`]). Permissions that compile to more
    /// than `MAX_CONJUNCTS` get no token at all: the document is hidden
    /// rather than indexed with a weaker filter.
    fn compile(&self, tenant: &str, doc: &Document) -> Result<Vec<String>, StorageError> {
        let current = doc
            .ancestors
            .iter()
            .map(|a| Ok(self.restriction(tenant, a)?.map(|r| r.principals)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        let perms = acl::effective(&doc.permissions, &current);
        Ok(acl::tokens(tenant, &perms).unwrap_or_default())
    }

    fn apply(&mut self, index: u64, cmd: &ShardCommand) -> Result<Response, StorageError> {
        let mut applied = 0u32;
        let mut noop = 0u32;
        let mut seq = 0u32;
        // Memberships first: they never touch documents (principals are
        // expanded at query time), so their order among the batch is free.
        for (user, groups) in &cmd.memberships {
            let key = keys::entity_key(self.data.group, &cmd.tenant, user);
            self.batch
                .put_cf(self.data.storage.cf(CF_MEMBERS)?, &key, encode(groups)?);
            self.pending_members.insert(key);
            applied += 1;
        }
        for (page, version, principals) in &cmd.restrictions {
            if self.set_restriction(index, &mut seq, &cmd.tenant, page, *version, principals)? {
                applied += 1;
            } else {
                noop += 1;
            }
        }
        for json in &cmd.upserts {
            // Validated at the edge; a row that no longer parses is skipped, not fatal.
            let Ok(doc) = Document::from_json_bytes(json) else {
                noop += 1;
                continue;
            };
            if self.upsert(index, &mut seq, &cmd.tenant, doc, json)? {
                applied += 1;
            } else {
                noop += 1;
            }
        }
        for (id, version) in &cmd.deletes {
            if self.delete(index, &mut seq, &cmd.tenant, id, *version)? {
                applied += 1;
            } else {
                noop += 1;
            }
        }
        Ok(Response::Shard {
            applied_ops: applied,
            noop_ops: noop,
        })
    }

    fn record_change(
        &mut self,
        index: u64,
        seq: &mut u32,
        tenant: &str,
        id: &str,
    ) -> Result<(), StorageError> {
        let mut doc_key = tenant.as_bytes().to_vec();
        doc_key.push(keys::SEP);
        doc_key.extend_from_slice(id.as_bytes());
        self.batch.put_cf(
            self.data.storage.cf(CF_CHANGES)?,
            keys::change_key(self.data.group, index, *seq),
            doc_key,
        );
        *seq += 1;
        Ok(())
    }

    /// Moves the descendant-index rows of `id` from its old ancestors to
    /// its new ones.
    fn reindex_ancestors(
        &mut self,
        tenant: &str,
        id: &str,
        old: &[String],
        new: &[String],
    ) -> Result<(), StorageError> {
        let group = self.data.group;
        for a in old.iter().filter(|a| !new.contains(a)) {
            self.delete_meta_row(keys::descendant_key(group, tenant, a, id))?;
        }
        for a in new.iter().filter(|a| !old.contains(a)) {
            self.put_meta_row(keys::descendant_key(group, tenant, a, id), Vec::new())?;
        }
        Ok(())
    }

    /// Records `page`'s restriction set at `version` and, when the set
    /// changed, recompiles every descendant on this shard. Returns false
    /// when a newer version is already recorded.
    fn set_restriction(
        &mut self,
        index: u64,
        seq: &mut u32,
        tenant: &str,
        page: &str,
        version: u64,
        principals: &[String],
    ) -> Result<bool, StorageError> {
        let old = self.restriction(tenant, page)?;
        if old.as_ref().is_some_and(|o| o.version >= version) {
            return Ok(false);
        }
        let new = Restriction {
            version,
            principals: normalized(principals),
        };
        let old_set = old.map(|o| o.principals).unwrap_or_default();
        if old_set.is_empty() && new.principals.is_empty() {
            // Nothing restricted before or after: no row needed.
            return Ok(true);
        }
        self.put_meta_row(
            keys::restriction_key(self.data.group, tenant, page),
            encode(&new)?,
        )?;
        if old_set != new.principals {
            for id in self.descendants(tenant, page)? {
                self.recompile(index, seq, tenant, &id)?;
            }
        }
        Ok(true)
    }

    /// Recompiles one stored document's tokens after an ancestor changed.
    fn recompile(
        &mut self,
        index: u64,
        seq: &mut u32,
        tenant: &str,
        id: &str,
    ) -> Result<(), StorageError> {
        let key = keys::entity_key(self.data.group, tenant, id);
        let Some(mut stored) = self.current(&key)?.filter(|d| !d.deleted) else {
            return Ok(());
        };
        let Ok(doc) = serde_json::from_slice::<Document>(&stored.json) else {
            return Ok(());
        };
        let acl = self.compile(tenant, &doc)?;
        if acl == stored.acl {
            return Ok(());
        }
        stored.acl = acl;
        self.batch
            .put_cf(self.data.storage.cf(CF_DOCS)?, &key, encode(&stored)?);
        self.record_change(index, seq, tenant, id)?;
        if let Some(indexed) = indexed_doc(tenant, &stored) {
            self.index_ops.push(IndexOp::Upsert(indexed));
        }
        self.pending_docs.insert(key, stored);
        metrics::counter!("tessera_acl_recompiled_total").increment(1);
        Ok(())
    }

    fn upsert(
        &mut self,
        index: u64,
        seq: &mut u32,
        tenant: &str,
        doc: Document,
        json: &[u8],
    ) -> Result<bool, StorageError> {
        let key = keys::entity_key(self.data.group, tenant, &doc.id);
        let old = self.current(&key)?;
        if old.as_ref().is_some_and(|o| o.version >= doc.version) {
            return Ok(false);
        }
        let acl = self.compile(tenant, &doc)?;
        let stored = StoredDoc {
            version: doc.version,
            deleted: false,
            json: json.to_vec(),
            acl,
            title_tokens: count_tokens(&doc.title),
            body_tokens: count_tokens(&doc.body),
        };
        self.adjust_stats(tenant, old.as_ref(), Some(&stored))?;
        self.reindex_ancestors(
            tenant,
            &doc.id,
            &stored_ancestors(old.as_ref()),
            &doc.ancestors,
        )?;
        self.batch
            .put_cf(self.data.storage.cf(CF_DOCS)?, &key, encode(&stored)?);
        self.record_change(index, seq, tenant, &doc.id)?;
        if let Some(indexed) = indexed_doc(tenant, &stored) {
            self.index_ops.push(IndexOp::Upsert(indexed));
        }
        self.pending_docs.insert(key, stored);
        // The page's own set is the restriction its descendants inherit.
        self.set_restriction(
            index,
            seq,
            tenant,
            &doc.id,
            doc.version,
            &doc.permissions.page,
        )?;
        Ok(true)
    }

    fn delete(
        &mut self,
        index: u64,
        seq: &mut u32,
        tenant: &str,
        id: &str,
        version: u64,
    ) -> Result<bool, StorageError> {
        let key = keys::entity_key(self.data.group, tenant, id);
        let old = self.current(&key)?;
        if old.as_ref().is_some_and(|o| o.version >= version) {
            return Ok(false);
        }
        let tombstone = StoredDoc {
            version,
            deleted: true,
            json: Vec::new(),
            acl: Vec::new(),
            title_tokens: 0,
            body_tokens: 0,
        };
        self.adjust_stats(tenant, old.as_ref(), None)?;
        // The page's restriction row stays: descendants that still name it
        // keep the last known (stricter) set until they are re-sent.
        self.reindex_ancestors(tenant, id, &stored_ancestors(old.as_ref()), &[])?;
        self.batch
            .put_cf(self.data.storage.cf(CF_DOCS)?, &key, encode(&tombstone)?);
        self.record_change(index, seq, tenant, id)?;
        self.index_ops.push(IndexOp::Delete {
            tenant: tenant.to_string(),
            id: id.to_string(),
        });
        self.pending_docs.insert(key, tombstone);
        Ok(true)
    }

    fn adjust_stats(
        &mut self,
        tenant: &str,
        old: Option<&StoredDoc>,
        new: Option<&StoredDoc>,
    ) -> Result<(), StorageError> {
        let s = self.stats(tenant)?;
        if let Some(o) = old.filter(|o| !o.deleted) {
            s.docs = s.docs.saturating_sub(1);
            s.title_tokens = s.title_tokens.saturating_sub(o.title_tokens);
            s.body_tokens = s.body_tokens.saturating_sub(o.body_tokens);
            s.bytes = s.bytes.saturating_sub(o.json.len() as u64);
        }
        if let Some(n) = new {
            s.docs += 1;
            s.title_tokens += n.title_tokens;
            s.body_tokens += n.body_tokens;
            s.bytes += n.json.len() as u64;
        }
        Ok(())
    }

    fn finish(self) -> Result<Vec<IndexOp>, StorageError> {
        let cf = self.data.storage.cf(CF_SM_META)?;
        for (tenant, stats) in &self.pending_stats {
            self.batch.put_cf(
                cf,
                keys::tenant_stats_key(self.data.group, tenant),
                encode(stats)?,
            );
        }
        Ok(self.index_ops)
    }
}

/// Splits entries so that every resize drop is applied alone. A drop deletes
/// rows the appliers of its batch may still hold pending (and would write
/// after the deletes), and the entries after it must read what it left; a
/// batch of its own, written with its own `last_applied`, gives both, and a
/// crash between batches replays only what was not written.
fn runs_split_at_drops(
    entries: Vec<openraft::Entry<TypeConfig>>,
) -> Vec<Vec<openraft::Entry<TypeConfig>>> {
    let mut runs: Vec<Vec<openraft::Entry<TypeConfig>>> = Vec::new();
    let mut current = Vec::new();
    for entry in entries {
        let is_drop = matches!(
            &entry.payload,
            EntryPayload::Normal(Request::Guarded(GuardedCommand::Drop { .. }))
        );
        if is_drop {
            if !current.is_empty() {
                runs.push(std::mem::take(&mut current));
            }
            runs.push(vec![entry]);
        } else {
            current.push(entry);
        }
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

impl StateMachine {
    /// Applies `entries` in one write batch (see [`runs_split_at_drops`]).
    fn apply_run(
        &mut self,
        entries: Vec<openraft::Entry<TypeConfig>>,
    ) -> Result<Vec<Response>, RaftStorageError> {
        let mut batch = WriteBatch::default();
        let mut responses = Vec::new();
        let mut meta_map: Option<ClusterMap> = None;
        let shard = match &self.data {
            GroupData::Shard(s) => Some(s.clone()),
            GroupData::Meta(_) => None,
        };
        let mut applier = shard.as_deref().map(|s| ShardApplier::new(s, &mut batch));
        let mut features = shard
            .as_deref()
            .map(|s| FeatureApplier::new(s.storage.clone(), s.group));
        let mut last = None;
        for entry in entries {
            last = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => Response::Empty,
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Response::Empty
                }
                EntryPayload::Normal(Request::Shard(cmd)) => match applier.as_mut() {
                    Some(a) => a.apply(entry.log_id.index, cmd).map_err(Self::sm_err)?,
                    None => Response::Empty,
                },
                EntryPayload::Normal(Request::Guarded(GuardedCommand::Events {
                    map_epoch,
                    cmd,
                })) => match (applier.as_ref(), features.as_mut()) {
                    (Some(a), Some(f)) => match a.refusal(&cmd.tenant, *map_epoch) {
                        Ok(Some(fence)) => Response::Stale { fence },
                        Ok(None) => f
                            .apply(entry.log_id.index, cmd, *map_epoch)
                            .map(Response::of_features)
                            .map_err(Self::sm_err)?,
                        Err(e) => return Err(Self::sm_err(e)),
                    },
                    _ => Response::Empty,
                },
                EntryPayload::Normal(Request::Guarded(
                    cmd @ GuardedCommand::Drop { tenant, to, .. },
                )) => match (applier.as_mut(), features.as_mut()) {
                    (Some(a), Some(f)) => {
                        let response = a
                            .apply_guarded(entry.log_id.index, cmd)
                            .map_err(Self::sm_err)?;
                        let group = self.group;
                        if to.contains(&group) {
                            f.drop_documents(tenant, |doc| owner(to, doc) == Some(group))
                                .map_err(Self::sm_err)?;
                        } else {
                            f.drop_tenant(tenant);
                        }
                        response
                    }
                    _ => Response::Empty,
                },
                EntryPayload::Normal(Request::Guarded(cmd)) => match applier.as_mut() {
                    Some(a) => a
                        .apply_guarded(entry.log_id.index, cmd)
                        .map_err(Self::sm_err)?,
                    None => Response::Empty,
                },
                EntryPayload::Normal(Request::Features(cmd)) => match features.as_mut() {
                    Some(f) => f
                        .apply(entry.log_id.index, cmd, 0)
                        .map(Response::of_features)
                        .map_err(Self::sm_err)?,
                    None => Response::Empty,
                },
                EntryPayload::Normal(Request::Meta(cmd)) => match &self.data {
                    GroupData::Meta(state) => {
                        let map = meta_map.get_or_insert_with(|| (*state.map()).clone());
                        Response::Meta(map.apply(cmd))
                    }
                    GroupData::Shard(_) => Response::Meta(MetaOutcome::Rejected(
                        "meta command sent to a shard group".into(),
                    )),
                },
            };
            responses.push(response);
        }
        let index_ops = match applier {
            Some(a) => a.finish().map_err(Self::sm_err)?,
            None => Vec::new(),
        };
        let touched = match features {
            Some(f) => Some(f.finish(&mut batch).map_err(Self::sm_err)?),
            None => None,
        };
        let Some(last) = last else {
            return Ok(responses);
        };
        self.last_applied = Some(last);
        self.put_meta(&mut batch, keys::suffix::APPLIED, &self.last_applied)?;
        self.put_meta(&mut batch, keys::suffix::MEMBERSHIP, &self.membership)?;
        if let Some(map) = &meta_map {
            let bytes = map.encode_stored().map_err(Self::sm_err)?;
            batch.put_cf(
                self.storage.cf(CF_SM_META).map_err(Self::sm_err)?,
                keys::meta_key(self.group, keys::suffix::CLUSTER_MAP),
                bytes,
            );
        }
        let begun = touched.as_ref().and_then(|t| t.begin(&self.storage));
        self.storage.write(batch).map_err(Self::sm_err)?;
        if let Some(touched) = touched {
            touched.publish(&self.storage, self.group, begun);
        }
        match &self.data {
            GroupData::Shard(s) => s.index.submit(last.index, index_ops),
            GroupData::Meta(state) => {
                if let Some(map) = meta_map {
                    state.map.send_replace(Arc::new(map));
                }
            }
        }
        Ok(responses)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, openraft::BasicNode>,
        ),
        RaftStorageError,
    > {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, RaftStorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        for run in runs_split_at_drops(entries.into_iter().collect()) {
            responses.extend(self.apply_run(run)?);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let rows = self.collect_rows();
        SnapshotBuilder {
            group: self.group,
            storage: self.storage.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            rows,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let data = snapshot.into_inner();
        let rows: SnapshotRows = decode(CF_SNAPSHOTS, &data).map_err(Self::sm_err)?;
        let mut batch = WriteBatch::default();
        for cf in STATE_CFS.iter().chain([&CF_CHANGES]) {
            self.storage
                .delete_group_range(&mut batch, cf, self.group)
                .map_err(Self::sm_err)?;
        }
        let mut seq = 0u32;
        for (cf_idx, k, v) in rows.rows {
            let Some(cf_name) = STATE_CFS.get(cf_idx as usize) else {
                return Err(Self::sm_err(format!(
                    "snapshot row for unknown table {cf_idx}"
                )));
            };
            let cf = self.storage.cf(cf_name).map_err(Self::sm_err)?;
            if *cf_name == CF_DOCS {
                // Every document becomes a change so the index rebuild is the
                // ordinary catch-up path, and survives a crash half-way.
                if let Some((_, tenant, id)) = keys::decode_entity_key(&k) {
                    let mut doc_key = tenant.as_bytes().to_vec();
                    doc_key.push(keys::SEP);
                    doc_key.extend_from_slice(id.as_bytes());
                    let changes = self.storage.cf(CF_CHANGES).map_err(Self::sm_err)?;
                    let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
                    batch.put_cf(changes, keys::change_key(self.group, index, seq), doc_key);
                    seq = seq.wrapping_add(1);
                }
            }
            batch.put_cf(cf, k, v);
        }
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.put_meta(&mut batch, keys::suffix::APPLIED, &self.last_applied)?;
        self.put_meta(&mut batch, keys::suffix::MEMBERSHIP, &self.membership)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        batch.put_cf(
            self.storage.cf(CF_SNAPSHOTS).map_err(Self::sm_err)?,
            keys::meta_key(self.group, keys::suffix::SNAPSHOT),
            encode(&stored).map_err(Self::sm_err)?,
        );
        self.storage.write(batch).map_err(Self::sm_err)?;
        // Every feature row of the shard may have changed.
        self.storage.online_cache().invalidate_all();
        match &self.data {
            GroupData::Shard(s) => {
                s.index.reset(0).map_err(Self::sm_err)?;
                s.catch_up_index().map_err(Self::sm_err)?;
            }
            GroupData::Meta(state) => {
                let loaded = MetaState::load(&self.storage).map_err(Self::sm_err)?;
                state.map.send_replace(loaded.map());
            }
        }
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let raw = self
            .storage
            .get(
                CF_SNAPSHOTS,
                &keys::meta_key(self.group, keys::suffix::SNAPSHOT),
            )
            .map_err(|e| io_err(StorageIOError::read, e))?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let stored: StoredSnapshot =
            decode(CF_SNAPSHOTS, &raw).map_err(|e| io_err(StorageIOError::read, e))?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

/// Builds a snapshot from the rows copied when openraft asked for it.
pub struct SnapshotBuilder {
    group: ShardId,
    storage: Storage,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    rows: Result<Vec<u8>, StorageError>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let data = std::mem::replace(&mut self.rows, Ok(Vec::new()))
            .map_err(|e| io_err(StorageIOError::read_state_machine, e))?;
        let snapshot_id = format!(
            "{}-{}-{}",
            self.group,
            self.last_applied.map(|l| l.index).unwrap_or(0),
            rand::random::<u32>()
        );
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let mut batch = WriteBatch::default();
        let cf = self
            .storage
            .cf(CF_SNAPSHOTS)
            .map_err(|e| io_err(StorageIOError::write, e))?;
        batch.put_cf(
            cf,
            keys::meta_key(self.group, keys::suffix::SNAPSHOT),
            encode(&stored).map_err(|e| io_err(StorageIOError::write, e))?,
        );
        self.storage
            .write(batch)
            .map_err(|e| io_err(StorageIOError::write, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

/// The doc's compiled ACL check for `get`: any conjunct satisfied.
pub fn doc_visible(tenant: &str, stored: &StoredDoc, principals: &BTreeSet<String>) -> bool {
    !stored.deleted
        && stored
            .acl
            .iter()
            .any(|t| acl::token_allows(tenant, t, principals))
}

/// Reserved so `MetaCommand` stays referenced from this module's docs.
#[allow(dead_code)]
fn _meta_command_marker(_: &MetaCommand) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_rows_written_before_bytes_were_counted_still_read() {
        #[derive(Serialize)]
        struct Before {
            docs: u64,
            title_tokens: u64,
            body_tokens: u64,
        }
        let old = encode(&Before {
            docs: 3,
            title_tokens: 7,
            body_tokens: 11,
        })
        .expect("encode");
        let read = TenantStats::decode_stored(&old).expect("old row");
        assert_eq!(
            read,
            TenantStats {
                docs: 3,
                title_tokens: 7,
                body_tokens: 11,
                bytes: 0
            }
        );
        let now = TenantStats { bytes: 42, ..read };
        let stored = encode(&now).expect("encode");
        assert_eq!(TenantStats::decode_stored(&stored).expect("new row"), now);
        assert!(TenantStats::decode_stored(&[1, 2, 3]).is_err(), "garbage");
    }
}
