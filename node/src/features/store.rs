//! The feature rows of a shard in RocksDB (column family `features`), the
//! applier the state machine runs for feature commands, and the online and
//! offline reads over them.
//!
//! Layout, every key starting with the group (so snapshots and range
//! deletes cover it) and the tenant:
//! - `group ++ tenant ++ SEP ++ 'R'`: the registry;
//! - `group ++ tenant ++ SEP ++ 'E' ++ entity tag ++ entity ++ SEP ++ order`:
//!   a raw event, in tie-break order;
//! - `group ++ tenant ++ SEP ++ 'T' ++ feature ++ SEP ++ entity ++ SEP ++ tile`:
//!   a tile;
//! - `group ++ tenant ++ SEP ++ 'I' ++ event id`: the event ids this shard
//!   has applied, so a retried or duplicated event counts once.

use rocksdb::{Direction, IteratorMode, WriteBatch};
use std::collections::{BTreeMap, HashMap, HashSet};
use tessera_proto::{EventKind, ShardId, ValidEvent};

use super::cache::{Definitions, RowKey, Seen, ValueKey, WriteBegun, WrittenBy};
use super::definition::{Entity, FeatureDef, Registry};
use super::engine::{evaluate, evaluate_all_time, has_reusable_prefix, valid_until, FeatureSource};
use super::historical::historical_value;
use super::tiles::{tile_of, EventRow, Order, Tile};
use super::{ImportBatch, RowSet};
use crate::storage::{decode, encode, keys::SEP, Storage, StorageError, CF_FEATURES};
use std::sync::Arc;

/// An `i64` as 8 bytes that sort like the number.
fn enc_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

/// The prefix every feature row of `tenant` on `group` starts with.
fn tenant_rows_prefix(group: ShardId, tenant: &str) -> Vec<u8> {
    let mut k = group.to_be_bytes().to_vec();
    k.extend_from_slice(tenant.as_bytes());
    k.push(SEP);
    k
}

fn tenant_prefix(group: ShardId, tenant: &str, tag: u8) -> Vec<u8> {
    let mut k = tenant_rows_prefix(group, tenant);
    k.push(tag);
    k
}

/// The registry row of a tenant.
pub fn registry_key(group: ShardId, tenant: &str) -> Vec<u8> {
    tenant_prefix(group, tenant, b'R')
}

/// The marker that `tenant`'s event `id` has been applied on `group`.
pub fn event_id_key(group: ShardId, tenant: &str, id: &str) -> Vec<u8> {
    let mut k = tenant_prefix(group, tenant, b'I');
    k.extend_from_slice(id.as_bytes());
    k
}

/// The prefix of one entity's raw events.
pub fn event_prefix(group: ShardId, tenant: &str, kind: Entity, entity: &str) -> Vec<u8> {
    let mut k = tenant_prefix(group, tenant, b'E');
    k.push(kind.tag());
    k.extend_from_slice(entity.as_bytes());
    k.push(SEP);
    k
}

/// Bytes of an [`Order`] inside an event key.
const ORDER_BYTES: usize = 28;

/// The key of one raw event: its order, then (when known) the cluster map
/// epoch it was written with. The epoch sits after the order, so it never
/// changes how events sort; it lets a resize's mover skip the events a
/// router already sent to the new placement itself (see
/// [`FeatureStore::export_events`]). Rows written before epochs were kept,
/// and writes made without one, have no suffix and read as epoch 0.
pub fn event_key(prefix: &[u8], o: &Order, map_epoch: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&enc_i64(o.event_ts));
    k.extend_from_slice(&enc_i64(o.ingest_ts));
    k.extend_from_slice(&o.index.to_be_bytes());
    k.extend_from_slice(&o.seq.to_be_bytes());
    if map_epoch > 0 {
        k.extend_from_slice(&map_epoch.to_be_bytes());
    }
    k
}

/// The map epoch stored in an event key (0 when it has none), given the
/// length of the key's prefix up to its entity kind tag. Entity values never
/// contain `SEP`, so the first one after the tag ends the entity.
fn event_key_epoch(key: &[u8], tagged_prefix: usize) -> u64 {
    let Some(rest) = key.get(tagged_prefix..) else {
        return 0;
    };
    let Some(sep) = rest.iter().position(|b| *b == SEP) else {
        return 0;
    };
    let tail = &rest[sep + 1..];
    match tail.get(ORDER_BYTES..) {
        Some(epoch) => epoch.try_into().map(u64::from_be_bytes).unwrap_or(0),
        None => 0,
    }
}

/// The prefix of every tile of one feature (all entities).
pub fn feature_tiles_prefix(group: ShardId, tenant: &str, feature: &str) -> Vec<u8> {
    let mut k = tenant_prefix(group, tenant, b'T');
    k.extend_from_slice(feature.as_bytes());
    k.push(SEP);
    k
}

/// The prefix of one feature's tiles for one entity.
pub fn tile_prefix(group: ShardId, tenant: &str, feature: &str, entity: &str) -> Vec<u8> {
    let mut k = feature_tiles_prefix(group, tenant, feature);
    k.extend_from_slice(entity.as_bytes());
    k.push(SEP);
    k
}

fn with_i64(prefix: &[u8], i: i64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&enc_i64(i));
    k
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.push(0xff);
    k.push(0xff);
    k
}

/// Failures of feature reads and applies.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(
        "unknown feature {0:?}: it is not in the tenant's registry (see `tessera features list`)"
    )]
    UnknownFeature(String),
    #[error("feature {feature:?} is keyed by {entity} and needs the entity field {missing:?}")]
    MissingEntity {
        feature: String,
        entity: &'static str,
        missing: &'static str,
    },
    /// Profiles are checked when definitions are applied, so this is a stored registry
    /// that no longer parses.
    #[error("the tenant's rank profiles do not parse: {0}")]
    Profiles(String),
}

/// One row of feature values; `None` is null.
pub type FeatureRow = Vec<Option<f64>>;

/// Read access to one shard's feature rows.
#[derive(Clone)]
pub struct FeatureStore {
    storage: Storage,
    group: ShardId,
}

impl FeatureStore {
    /// Reads over `group`'s rows in `storage`.
    pub fn new(storage: Storage, group: ShardId) -> Self {
        Self { storage, group }
    }

    /// The tenant's registry (version 0 when nothing is registered).
    pub fn registry(&self, tenant: &str) -> Result<Registry, StorageError> {
        Ok(self
            .storage
            .get(CF_FEATURES, &registry_key(self.group, tenant))?
            .map(|b| decode(CF_FEATURES, &b))
            .transpose()?
            .unwrap_or_default())
    }

    /// `tenant`'s registry with its profiles and experiments parsed, from the node's cache
    /// while no definitions changed (see [`Definitions`]).
    pub fn definitions(&self, tenant: &str) -> Result<Arc<Definitions>, FeatureError> {
        self.storage.online_cache().definitions(
            self.group,
            tenant,
            || -> Result<_, FeatureError> {
                let registry = self.registry(tenant)?;
                let profiles = registry
                    .profiles()
                    .map_err(|e| FeatureError::Profiles(e.to_string()))?;
                let experiments = registry.experiments().map_err(|e| e.to_string());
                Ok(Definitions {
                    registry,
                    profiles,
                    experiments,
                })
            },
        )
    }

    /// Every raw event of one entity, in tie-break order.
    pub fn raw_events(
        &self,
        tenant: &str,
        kind: Entity,
        entity: &str,
    ) -> Result<Vec<EventRow>, StorageError> {
        let p = event_prefix(self.group, tenant, kind, entity);
        let mut out = Vec::new();
        let mut err = None;
        self.storage
            .for_each(CF_FEATURES, &p, &prefix_end(&p), |_, v| {
                match decode(CF_FEATURES, v) {
                    Ok(e) => {
                        out.push(e);
                        true
                    }
                    Err(e) => {
                        err = Some(e);
                        false
                    }
                }
            })?;
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// A page of `tenant`'s stored events for a resize's mover: the rows of `rows` (each
    /// event once), in key order after the opaque position `after` (empty = from the start),
    /// scanning at most `limit` rows, each listed with the map epoch it was written with. With `before_epoch > 0`
    /// only events written with an older map are listed: a router with a newer map sent the
    /// event to the new placement too, so copying it would count it twice.
    pub fn export_events(
        &self,
        tenant: &str,
        rows: RowSet,
        after: &[u8],
        limit: usize,
        before_epoch: u64,
    ) -> Result<ExportedEvents, StorageError> {
        let tag = match rows {
            RowSet::Doc => Entity::Doc.tag(),
            RowSet::Shared => Entity::User.tag(),
        };
        let mut prefix = tenant_prefix(self.group, tenant, b'E');
        prefix.push(tag);
        let start = if after.starts_with(&prefix) {
            after.to_vec()
        } else {
            prefix.clone()
        };
        let mut page = ExportedEvents::default();
        let (mut scanned, mut last, mut full) = (0usize, Vec::new(), false);
        let mut failure = None;
        self.storage
            .for_each(CF_FEATURES, &start, &prefix_end(&prefix), |k, v| {
                if k == after {
                    return true;
                }
                if scanned >= limit {
                    full = true;
                    return false;
                }
                scanned += 1;
                last = k.to_vec();
                let epoch = event_key_epoch(k, prefix.len());
                if before_epoch > 0 && epoch >= before_epoch {
                    return true;
                }
                match decode(CF_FEATURES, v) {
                    Ok(row) => page.events.push((row, epoch)),
                    Err(e) => failure = Some(e),
                }
                failure.is_none()
            })?;
        if let Some(e) = failure {
            return Err(e);
        }
        page.next = full.then_some(last);
        Ok(page)
    }

    /// The online value `wanted` (of registry `version`) at `t`: persisted tiles plus edge
    /// events, served from the online cache while it provably equals a fresh evaluation.
    pub fn online_value(
        &self,
        tenant: &str,
        version: u64,
        wanted: Wanted<'_>,
        t: i64,
    ) -> Result<Option<f64>, StorageError> {
        let read = RowRead {
            kind: wanted.def.entity,
            entity: wanted.entity,
            values: &[ValueKey {
                version,
                feature: wanted.feature,
            }],
            defs: &[wanted.def],
        };
        Ok(self.online_rows(tenant, &[read], t)?.pop().flatten())
    }

    /// [`Self::online_value`] for many rows of values at once, in order (each read's values in
    /// turn): the path of reranking, which asks for hundreds per search. The cache is
    /// consulted under one lock, one lookup per row, and only the misses are evaluated.
    pub fn online_rows(
        &self,
        tenant: &str,
        reads: &[RowRead<'_>],
        t: i64,
    ) -> Result<Vec<Option<f64>>, StorageError> {
        let cache = self.storage.online_cache();
        // Read before evaluating: a write after this makes a value stale, never wrong.
        let seen = cache.seen();
        let asked: Vec<(RowKey<'_>, &[ValueKey])> = reads
            .iter()
            .map(|r| {
                let key = RowKey {
                    group: self.group,
                    tenant,
                    kind: r.kind,
                    entity: r.entity,
                };
                (key, r.values)
            })
            .collect();
        let (mut out, missing) = cache.get_rows(&asked, t);
        if missing.is_empty() {
            return Ok(out);
        }
        let mut missing = missing.into_iter().peekable();
        let mut at = 0;
        for r in reads {
            for (value, def) in r.values.iter().zip(r.defs) {
                if missing.next_if_eq(&at).is_some() {
                    let wanted = Wanted {
                        feature: value.feature,
                        def,
                        entity: r.entity,
                    };
                    out[at] = self.evaluate_and_keep(tenant, value.version, &wanted, seen, t)?;
                }
                at += 1;
            }
        }
        Ok(out)
    }

    /// A cache miss: evaluates from RocksDB and offers the value to the cache. An all-time
    /// feature starts from its merged full tiles when the cache has them, and leaves them
    /// there for the next miss.
    fn evaluate_and_keep(
        &self,
        tenant: &str,
        version: u64,
        w: &Wanted<'_>,
        seen: Seen,
        t: i64,
    ) -> Result<Option<f64>, StorageError> {
        let def = w.def;
        let cache = self.storage.online_cache();
        let key = RowKey {
            group: self.group,
            tenant,
            kind: def.entity,
            entity: w.entity,
        };
        let value_key = ValueKey {
            version,
            feature: w.feature,
        };
        let src = RocksSource::new(self, tenant, t);
        let value = if has_reusable_prefix(def) {
            let last_full = t.div_euclid(def.tile_ms()) - 1;
            let known = cache.prefix(&key, value_key, last_full);
            let (value, merged) = evaluate_all_time(def, &src, w.entity, t, known)?;
            cache.put_prefix(&key, value_key, def.source, seen, def.tile_ms(), merged);
            value
        } else {
            evaluate(def, &src, w.entity, t)?
        };
        let until = valid_until(def, &src, w.entity, t)?;
        cache.put(&key, value_key, WrittenBy::of(def), seen, t, until, value);
        Ok(value)
    }

    /// [`Self::online_value`] without the cache, for tests that check the cache against it.
    pub fn evaluate_uncached(
        &self,
        tenant: &str,
        def: &FeatureDef,
        entity: &str,
        t: i64,
    ) -> Result<Option<f64>, StorageError> {
        evaluate(def, &RocksSource::new(self, tenant, t), entity, t)
    }

    /// Online values of `names` for one entity at `t`.
    pub fn online(
        &self,
        tenant: &str,
        names: &[String],
        user: &str,
        space: &str,
        doc: &str,
        t: i64,
    ) -> Result<(u64, Vec<Option<f64>>), FeatureError> {
        let registry = self.registry(tenant)?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let (feature, def) = registry
                .indexed(name)
                .ok_or_else(|| FeatureError::UnknownFeature(name.clone()))?;
            let entity = entity_of(def, user, space, doc)?;
            let wanted = Wanted {
                feature,
                def,
                entity: &entity,
            };
            out.push(self.online_value(tenant, registry.version, wanted, t)?);
        }
        Ok((registry.version, out))
    }

    /// Offline values: one row of values per `(user, space, doc, t)` row,
    /// in input order, never dropping a row.
    pub fn historical(
        &self,
        tenant: &str,
        names: &[String],
        rows: &[(String, String, String, i64)],
        as_of_known: bool,
    ) -> Result<(u64, Vec<FeatureRow>), FeatureError> {
        let registry = self.registry(tenant)?;
        let defs: Vec<&FeatureDef> = names
            .iter()
            .map(|n| {
                registry
                    .get(n)
                    .ok_or_else(|| FeatureError::UnknownFeature(n.clone()))
            })
            .collect::<Result<_, _>>()?;
        let mut cache: HashMap<(Entity, String), Vec<EventRow>> = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for (user, space, doc, t) in rows {
            let mut values = Vec::with_capacity(defs.len());
            for def in &defs {
                let entity = entity_of(def, user, space, doc)?;
                let key = (def.entity, entity);
                if !cache.contains_key(&key) {
                    let raw = self.raw_events(tenant, key.0, &key.1)?;
                    cache.insert(key.clone(), raw);
                }
                let raw = cache.get(&key).map(Vec::as_slice).unwrap_or(&[]);
                values.push(historical_value(def, raw, &key.1, *t, as_of_known));
            }
            out.push(values);
        }
        Ok((registry.version, out))
    }
}

/// Online values of one entity to read together: they share the entity's cache row, so a
/// rerank reads a candidate's document features with one lookup.
#[derive(Debug, Clone, Copy)]
pub struct RowRead<'a> {
    /// The entity kind every value of the row is keyed by.
    pub kind: Entity,
    pub entity: &'a str,
    /// Registry version and feature index of each value wanted.
    pub values: &'a [ValueKey],
    /// Each value's definition, aligned with `values`.
    pub defs: &'a [&'a FeatureDef],
}

/// One online value to read: a feature of a registry (its definition and its position in the
/// registry, which names it in the cache) for one entity.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub feature: u32,
    pub def: &'a FeatureDef,
    pub entity: &'a str,
}

/// The entity value `def` is keyed by, from the request's parts.
pub fn entity_of(
    def: &FeatureDef,
    user: &str,
    space: &str,
    doc: &str,
) -> Result<String, FeatureError> {
    def.entity
        .key(user, space, doc)
        .map_err(|missing| FeatureError::MissingEntity {
            feature: def.name.clone(),
            entity: def.entity.as_str(),
            missing,
        })
}

/// Reads one evaluation's tiles and events from RocksDB.
///
/// The raw events of the current tile are read once, through to the newest event: evaluation
/// folds those up to `t`, and the cache's validity bound needs the first one after `t`
/// ([`FeatureSource::first_event_after`]), so a cache miss costs one scan of them, not two.
struct RocksSource<'a> {
    store: &'a FeatureStore,
    tenant: &'a str,
    /// The evaluation time: reads that end here are extended to the entity's newest event.
    t: i64,
    /// Every event of the entity with `event_ts > .0`, of any kind, once read.
    tail: std::cell::RefCell<Option<(i64, Vec<EventRow>)>>,
}

impl<'a> RocksSource<'a> {
    fn new(store: &'a FeatureStore, tenant: &'a str, t: i64) -> Self {
        Self {
            store,
            tenant,
            t,
            tail: std::cell::RefCell::new(None),
        }
    }

    /// Raw events of the entity with `lo < event_ts <= hi`, of any kind, in key order.
    fn scan_events(
        &self,
        def: &FeatureDef,
        entity: &str,
        lo: i64,
        hi: Option<i64>,
    ) -> Result<Vec<EventRow>, StorageError> {
        let p = event_prefix(self.store.group, self.tenant, def.entity, entity);
        let start = with_i64(&p, lo.saturating_add(1));
        let end = match hi {
            Some(hi) => {
                let mut end = with_i64(&p, hi);
                end.extend_from_slice(&[0xff; 21]);
                end
            }
            None => prefix_end(&p),
        };
        self.store
            .storage
            .scan(CF_FEATURES, &start, &end)?
            .into_iter()
            .map(|(_, v)| decode(CF_FEATURES, &v))
            .collect()
    }

    /// The memoised tail if it covers everything after `lo`.
    fn with_tail<R>(&self, lo: i64, f: impl FnOnce(&[EventRow]) -> R) -> Option<R> {
        match &*self.tail.borrow() {
            Some((from, rows)) if *from <= lo => Some(f(rows)),
            _ => None,
        }
    }
}

impl FeatureSource for RocksSource<'_> {
    type Error = StorageError;

    fn tiles(
        &self,
        def: &FeatureDef,
        entity: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Tile)>, StorageError> {
        if from > to {
            return Ok(Vec::new());
        }
        let p = tile_prefix(self.store.group, self.tenant, &def.name, entity);
        let start = with_i64(&p, from);
        if from == to {
            // One tile (the current one, after merged full tiles): a point read.
            return match self.store.storage.get(CF_FEATURES, &start)? {
                Some(v) => Ok(vec![(from, decode(CF_FEATURES, &v)?)]),
                None => Ok(Vec::new()),
            };
        }
        let mut end = with_i64(&p, to);
        end.push(0);
        let mut out = Vec::new();
        for (k, v) in self.store.storage.scan(CF_FEATURES, &start, &end)? {
            let Some(i) = decode_tile_index(&p, &k) else {
                continue;
            };
            out.push((i, decode(CF_FEATURES, &v)?));
        }
        Ok(out)
    }

    fn events(
        &self,
        def: &FeatureDef,
        entity: &str,
        lo: i64,
        hi: i64,
    ) -> Result<Vec<EventRow>, StorageError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        let of_source = |rows: &[EventRow]| -> Vec<EventRow> {
            rows.iter()
                .filter(|ev| {
                    ev.kind == def.source && lo < ev.order.event_ts && ev.order.event_ts <= hi
                })
                .cloned()
                .collect()
        };
        if let Some(rows) = self.with_tail(lo, of_source) {
            return Ok(rows);
        }
        if hi != self.t {
            return Ok(of_source(&self.scan_events(def, entity, lo, Some(hi))?));
        }
        let rows = self.scan_events(def, entity, lo, None)?;
        let out = of_source(&rows);
        *self.tail.borrow_mut() = Some((lo, rows));
        Ok(out)
    }

    fn first_event_after(
        &self,
        def: &FeatureDef,
        entity: &str,
        t: i64,
    ) -> Result<Option<i64>, StorageError> {
        let first = |rows: &[EventRow]| {
            rows.iter()
                .find(|ev| ev.kind == def.source && ev.order.event_ts > t)
                .map(|ev| ev.order.event_ts)
        };
        if let Some(found) = self.with_tail(t, first) {
            return Ok(found);
        }
        Ok(first(&self.scan_events(def, entity, t, None)?))
    }

    fn newest_tile(
        &self,
        def: &FeatureDef,
        entity: &str,
        to: i64,
    ) -> Result<Option<(i64, Tile)>, StorageError> {
        let p = tile_prefix(self.store.group, self.tenant, &def.name, entity);
        let mut from = with_i64(&p, to);
        from.push(0);
        let cf = self.store.storage.cf(CF_FEATURES)?;
        let iter = self
            .store
            .storage
            .db()
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Reverse));
        for item in iter {
            let (k, v) = item.map_err(|source| StorageError::Rocks {
                op: "iterate",
                source,
            })?;
            let Some(i) = decode_tile_index(&p, &k) else {
                return Ok(None);
            };
            if i > to {
                continue;
            }
            return Ok(Some((i, decode(CF_FEATURES, &v)?)));
        }
        Ok(None)
    }
}

fn decode_tile_index(prefix: &[u8], key: &[u8]) -> Option<i64> {
    let rest = key.strip_prefix(prefix)?;
    let bytes: [u8; 8] = rest.try_into().ok()?;
    Some((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// A page of [`FeatureStore::export_events`].
#[derive(Debug, Default)]
pub struct ExportedEvents {
    pub events: Vec<(EventRow, u64)>,
    /// Where the next page starts; `None` when the scan is complete.
    pub next: Option<Vec<u8>>,
}

/// How an event id came to be applied on a shard (the marker's value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdMark {
    /// Sent to this shard by a router, which stored every row the shard
    /// keeps of it: the shared rows and, the shard holding the event's
    /// document, its doc-keyed rows.
    Live,
    /// Sent to this shard by a router while another shard held the event's
    /// document (or its doc-keyed rows were dropped since): only the shared
    /// rows are here, so a copy of the doc-keyed rows is still wanted.
    LiveShared,
    /// Copied here by a resize's mover.
    Copied,
}

impl IdMark {
    fn byte(self) -> u8 {
        match self {
            IdMark::Live => b'L',
            IdMark::LiveShared => b'S',
            IdMark::Copied => b'C',
        }
    }

    /// Anything unknown counts as live with every row: the stricter reading.
    fn from_byte(b: Option<u8>) -> Self {
        match b {
            Some(b'C') => IdMark::Copied,
            Some(b'S') => IdMark::LiveShared,
            _ => IdMark::Live,
        }
    }

    /// Whether a router's apply stored the shared rows.
    fn is_live(self) -> bool {
        matches!(self, IdMark::Live | IdMark::LiveShared)
    }
}

/// What applying a feature command did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeatureOutcome {
    pub version: u64,
    pub changed: bool,
    pub events: u32,
}

/// Applies the feature commands of one state machine `apply` call, reading
/// through its own pending rows so that entries of one call see each other.
pub struct FeatureApplier {
    store: FeatureStore,
    registries: HashMap<String, Registry>,
    tiles: HashMap<Vec<u8>, Tile>,
    events: BTreeMap<Vec<u8>, EventRow>,
    /// Event-id markers written in this call (see [`event_id_key`]).
    event_ids: HashMap<Vec<u8>, IdMark>,
    /// Tile prefixes whose persisted rows are being replaced in this call.
    reset: HashSet<Vec<u8>>,
    range_deletes: Vec<(Vec<u8>, Vec<u8>)>,
    /// Persisted rows a drop deletes (see [`Self::drop_documents`]).
    deletes: Vec<Vec<u8>>,
    touched: Touched,
}

/// What a batch of feature commands changed, for the online cache once the batch is written.
#[derive(Debug, Default)]
#[must_use = "publish it after the batch is written, or cached values go stale"]
pub struct Touched {
    /// Each (tenant, entity kind, event kind, entity) written, with the times of its new events.
    entities: HashMap<(String, Entity, EventKind, String), Vec<i64>>,
    registry_changed: bool,
    /// Rows were deleted (a resize's drop): no cached value can be trusted.
    rows_removed: bool,
}

impl Touched {
    /// Announces the batch to the online cache. Call just before the batch is written, and
    /// pass the result to [`Self::publish`].
    pub fn begin(&self, storage: &Storage) -> Option<WriteBegun> {
        (!self.entities.is_empty()).then(|| storage.online_cache().begin_write())
    }

    /// Brings the cached values up to date with the batch (counts absorb its events, other
    /// values of the kinds written are dropped). Call after the batch is visible.
    pub fn publish(&self, storage: &Storage, group: ShardId, begun: Option<WriteBegun>) {
        let cache = storage.online_cache();
        if self.registry_changed || self.rows_removed {
            cache.invalidate_all();
        }
        let Some(begun) = begun else {
            return;
        };
        cache.touch(
            begun,
            self.entities
                .iter()
                .map(|((tenant, kind, source, entity), events)| {
                    let key = RowKey {
                        group,
                        tenant,
                        kind: *kind,
                        entity,
                    };
                    (key, *source, events.as_slice())
                }),
        );
    }
}

impl FeatureApplier {
    /// An applier over `group`'s rows.
    pub fn new(storage: Storage, group: ShardId) -> Self {
        Self {
            store: FeatureStore::new(storage, group),
            registries: HashMap::new(),
            tiles: HashMap::new(),
            events: BTreeMap::new(),
            event_ids: HashMap::new(),
            reset: HashSet::new(),
            range_deletes: Vec::new(),
            deletes: Vec::new(),
            touched: Touched::default(),
        }
    }

    fn registry(&mut self, tenant: &str) -> Result<Registry, StorageError> {
        if let Some(r) = self.registries.get(tenant) {
            return Ok(r.clone());
        }
        let r = self.store.registry(tenant)?;
        self.registries.insert(tenant.to_string(), r.clone());
        Ok(r)
    }

    fn tile_mut(&mut self, feature_prefix: &[u8], key: Vec<u8>) -> Result<&mut Tile, StorageError> {
        if !self.tiles.contains_key(&key) {
            let persisted = if self.reset.contains(feature_prefix) {
                None
            } else {
                self.store.storage.get(CF_FEATURES, &key)?
            };
            let tile = persisted
                .map(|b| decode(CF_FEATURES, &b))
                .transpose()?
                .unwrap_or_default();
            self.tiles.insert(key.clone(), tile);
        }
        Ok(self.tiles.entry(key).or_default())
    }

    fn add_to_tile(
        &mut self,
        tenant: &str,
        def: &FeatureDef,
        entity: &str,
        row: &EventRow,
    ) -> Result<(), StorageError> {
        let group = self.store.group;
        let fp = feature_tiles_prefix(group, tenant, &def.name);
        let i = tile_of(row.order.event_ts, def.tile_ms());
        let key = with_i64(&tile_prefix(group, tenant, &def.name, entity), i);
        self.tile_mut(&fp, key)?.add(def, i, row);
        Ok(())
    }

    /// Stores a batch of events (one log entry) and folds them into the
    /// tiles of every registered feature they feed. `home[i]` says whether
    /// this shard holds event i's document partition: only then are
    /// doc-keyed rows kept here. `map_epoch` is the sender's cluster map
    /// epoch (0 = unknown), kept in each row's key. An event whose id this
    /// shard has applied before (a retried batch, a duplicate line) changes
    /// nothing; the outcome counts only the events applied now.
    pub fn apply_events(
        &mut self,
        index: u64,
        ingest_ts: i64,
        tenant: &str,
        events: &[(ValidEvent, bool)],
        map_epoch: u64,
    ) -> Result<FeatureOutcome, StorageError> {
        let registry = self.registry(tenant)?;
        let mut applied = 0u32;
        for (seq, (ev, home)) in events.iter().enumerate() {
            let how = if *home && !ev.doc.is_empty() {
                IdMark::Live
            } else {
                IdMark::LiveShared
            };
            if !self.mark_event_id(tenant, &ev.id, how, None)? {
                continue;
            }
            applied += 1;
            let row = EventRow {
                order: Order {
                    event_ts: ev.event_ts_ms,
                    ingest_ts,
                    index,
                    seq: seq as u32,
                },
                kind: ev.kind,
                user: ev.user.clone(),
                doc: ev.doc.clone(),
                space: ev.space.clone(),
                value: ev.value,
                id: ev.id.clone(),
            };
            for kind in Entity::ALL {
                if kind.doc_keyed() && !home {
                    continue;
                }
                self.add_row(tenant, &registry, kind, &row, map_epoch, false)?;
            }
        }
        Ok(FeatureOutcome {
            version: registry.version,
            changed: false,
            events: applied,
        })
    }

    /// Records that event `id` is applied here by `how`; false when its
    /// rows must not be stored. A live event is skipped once the id is
    /// known at all. A copy of `copied` rows is skipped only when a
    /// router's apply stored those rows here already: the shared rows of
    /// any live arrival, the doc-keyed rows of a [`IdMark::Live`] one. An
    /// earlier copy of the id is not a reason, since a resize copies an
    /// event's shared and document rows in separate batches (and rows
    /// already stored are skipped by key anyway). An empty id (rows from
    /// before ids existed) is never deduplicated.
    fn mark_event_id(
        &mut self,
        tenant: &str,
        id: &str,
        how: IdMark,
        copied: Option<RowSet>,
    ) -> Result<bool, StorageError> {
        if id.is_empty() {
            return Ok(true);
        }
        let key = event_id_key(self.store.group, tenant, id);
        let known = match self.event_ids.get(&key) {
            Some(m) => Some(*m),
            None => self
                .store
                .storage
                .get(CF_FEATURES, &key)?
                .map(|v| IdMark::from_byte(v.first().copied())),
        };
        let Some(known) = known else {
            self.event_ids.insert(key, how);
            return Ok(true);
        };
        Ok(match (how, copied, known) {
            (IdMark::Copied, Some(RowSet::Doc), IdMark::LiveShared) => {
                // The shared rows came live, the doc-keyed ones now.
                self.event_ids.insert(key, IdMark::Live);
                true
            }
            (IdMark::Copied, Some(RowSet::Doc), known) => known == IdMark::Copied,
            (IdMark::Copied, _, known) => !known.is_live(),
            _ => false,
        })
    }

    /// What a resize's drop takes off this shard when the tenant leaves it:
    /// every feature row (definitions, events, tiles, id markers). Cached
    /// values are dropped wholesale. The state machine applies a drop in a
    /// batch of its own, so nothing of the tenant is pending here.
    pub fn drop_tenant(&mut self, tenant: &str) {
        let p = tenant_rows_prefix(self.store.group, tenant);
        self.range_deletes.push((p.clone(), prefix_end(&p)));
        self.touched.rows_removed = true;
    }

    /// What a resize's drop takes off this shard when it keeps the tenant:
    /// the doc-keyed event rows and tiles of every document `keeps` refuses.
    /// Left behind, they would count again if the shard is given the
    /// documents back (BUG-6 in docs/reliability.md). The id markers of
    /// those events stay, since the shard keeps their shared rows, but no
    /// longer claim the doc-keyed ones, so a later copy of them is stored.
    /// Reads persisted rows only: see [`Self::drop_tenant`].
    pub fn drop_documents(
        &mut self,
        tenant: &str,
        keeps: impl Fn(&str) -> bool,
    ) -> Result<(), StorageError> {
        let group = self.store.group;
        self.touched.rows_removed = true;
        let mut given_away: Vec<(Vec<u8>, String)> = Vec::new();
        for kind in Entity::ALL.into_iter().filter(|k| k.doc_keyed()) {
            let mut p = tenant_prefix(group, tenant, b'E');
            p.push(kind.tag());
            let mut failure = None;
            self.store
                .storage
                .for_each(CF_FEATURES, &p, &prefix_end(&p), |k, v| {
                    match decode::<EventRow>(CF_FEATURES, v) {
                        Ok(row) if !keeps(&row.doc) => given_away.push((k.to_vec(), row.id)),
                        Ok(_) => {}
                        Err(e) => failure = Some(e),
                    }
                    failure.is_none()
                })?;
            if let Some(e) = failure {
                return Err(e);
            }
        }
        for (key, id) in given_away {
            self.deletes.push(key);
            if id.is_empty() {
                continue;
            }
            let marker = event_id_key(group, tenant, &id);
            let mark = self.store.storage.get(CF_FEATURES, &marker)?;
            if mark.is_some_and(|m| IdMark::from_byte(m.first().copied()) == IdMark::Live) {
                self.event_ids.insert(marker, IdMark::LiveShared);
            }
        }
        let registry = self.registry(tenant)?;
        for def in registry.features.iter().filter(|d| d.entity.doc_keyed()) {
            let fp = feature_tiles_prefix(group, tenant, &def.name);
            self.store
                .storage
                .for_each(CF_FEATURES, &fp, &prefix_end(&fp), |k, _| {
                    let entity = k[fp.len()..].split(|b| *b == SEP).next().unwrap_or(&[]);
                    let doc = std::str::from_utf8(entity)
                        .ok()
                        .and_then(|e| def.entity.doc_of(e));
                    if doc.is_some_and(|d| !keeps(d)) {
                        self.deletes.push(k.to_vec());
                    }
                    true
                })?;
        }
        Ok(())
    }

    /// Stores `row` under entity kind `kind` (if the event names that kind's parts) and folds
    /// it into the tiles of the registered features of that kind and source. Returns whether
    /// a row was added. With `dedupe`, a row already stored at the same key is left alone,
    /// which makes imports idempotent; live events skip the check, since their keys hold this
    /// log's own index and never collide.
    fn add_row(
        &mut self,
        tenant: &str,
        registry: &Registry,
        kind: Entity,
        row: &EventRow,
        map_epoch: u64,
        dedupe: bool,
    ) -> Result<bool, StorageError> {
        let Ok(entity) = kind.key(&row.user, &row.space, &row.doc) else {
            return Ok(false);
        };
        let group = self.store.group;
        let key = event_key(
            &event_prefix(group, tenant, kind, &entity),
            &row.order,
            map_epoch,
        );
        if dedupe
            && (self.events.contains_key(&key)
                || self.store.storage.get(CF_FEATURES, &key)?.is_some())
        {
            return Ok(false);
        }
        self.events.insert(key, row.clone());
        for def in &registry.features {
            if def.entity == kind && def.source == row.kind {
                self.add_to_tile(tenant, def, &entity, row)?;
            }
        }
        self.touched
            .entities
            .entry((tenant.to_string(), kind, row.kind, entity))
            .or_default()
            .push(row.order.event_ts);
        Ok(true)
    }

    /// Stores events copied from another shard of the tenant by a resize's mover, keeping
    /// their original order and epoch, and first installs the source's definitions if this
    /// shard has none (definitions applied here directly are never older: they reached every
    /// shard of both placements). Only the rows of `rows` are stored. Rows already present
    /// are skipped, so a mover that redoes a copy after a crash changes nothing.
    pub fn import(
        &mut self,
        tenant: &str,
        batch: &ImportBatch,
    ) -> Result<FeatureOutcome, StorageError> {
        if let Some(reg) = &batch.registry {
            if self.registry(tenant)?.version == 0 {
                self.apply_registry(tenant, &reg.defs, &reg.toml, reg.version)?;
            }
        }
        let registry = self.registry(tenant)?;
        let mut stored = 0u32;
        for (row, epoch) in &batch.events {
            // The copy's id is applied here from now on, so a retry of the
            // batch it came in, sent to this shard later, counts nothing;
            // and a copy of an event that already arrived here live is not
            // stored again.
            if !self.mark_event_id(tenant, &row.id, IdMark::Copied, Some(batch.rows))? {
                continue;
            }
            for kind in Entity::ALL {
                if kind.doc_keyed() == (batch.rows == RowSet::Doc)
                    && self.add_row(tenant, &registry, kind, row, *epoch, true)?
                {
                    stored += 1;
                }
            }
        }
        Ok(FeatureOutcome {
            version: registry.version,
            changed: false,
            events: stored,
        })
    }

    /// Registers a new version of the definitions, rebuilding the tiles of
    /// every new or changed feature from the raw events already stored.
    /// The new version is `at_least` when that is higher (an import keeps the source's).
    pub fn apply_registry(
        &mut self,
        tenant: &str,
        defs: &[FeatureDef],
        toml: &str,
        at_least: u64,
    ) -> Result<FeatureOutcome, StorageError> {
        let current = self.registry(tenant)?;
        if current.version > 0 && current.toml == toml {
            return Ok(FeatureOutcome {
                version: current.version,
                changed: false,
                events: 0,
            });
        }
        let group = self.store.group;
        let unchanged = |d: &FeatureDef| {
            current
                .get(&d.name)
                .is_some_and(|old| old.same_semantics(d))
        };
        let mut stale: Vec<&str> = current
            .features
            .iter()
            .filter(|old| !defs.iter().any(|d| d.name == old.name && unchanged(d)))
            .map(|d| d.name.as_str())
            .collect();
        let rebuild: Vec<&FeatureDef> = defs.iter().filter(|d| !unchanged(d)).collect();
        stale.extend(rebuild.iter().map(|d| d.name.as_str()));
        for name in stale {
            let fp = feature_tiles_prefix(group, tenant, name);
            self.tiles.retain(|k, _| !k.starts_with(&fp));
            self.range_deletes.push((fp.clone(), prefix_end(&fp)));
            self.reset.insert(fp);
        }
        for def in rebuild {
            for row in self.all_events(tenant, def.entity)? {
                if row.1.kind != def.source {
                    continue;
                }
                self.add_to_tile(tenant, def, &row.0, &row.1)?;
            }
        }
        self.touched.registry_changed = true;
        let next = Registry {
            version: (current.version + 1).max(at_least),
            toml: toml.to_string(),
            features: defs.to_vec(),
        };
        let version = next.version;
        self.registries.insert(tenant.to_string(), next);
        Ok(FeatureOutcome {
            version,
            changed: true,
            events: 0,
        })
    }

    /// Every stored raw event of an entity kind (persisted and pending),
    /// with its entity value.
    fn all_events(
        &self,
        tenant: &str,
        kind: Entity,
    ) -> Result<Vec<(String, EventRow)>, StorageError> {
        let mut p = tenant_prefix(self.store.group, tenant, b'E');
        p.push(kind.tag());
        let mut rows: BTreeMap<Vec<u8>, EventRow> = BTreeMap::new();
        for (k, v) in self.store.storage.scan(CF_FEATURES, &p, &prefix_end(&p))? {
            rows.insert(k, decode(CF_FEATURES, &v)?);
        }
        for (k, v) in self.events.range(p.clone()..prefix_end(&p)) {
            rows.insert(k.clone(), v.clone());
        }
        Ok(rows
            .into_iter()
            .filter_map(|(k, v)| {
                let rest = k.get(p.len()..)?;
                let end = rest.iter().position(|b| *b == SEP)?;
                let entity = String::from_utf8(rest[..end].to_vec()).ok()?;
                Some((entity, v))
            })
            .collect())
    }

    /// Adds every pending row to `batch`: deletes first, then puts. Returns what to
    /// [`Touched::publish`] once the batch is written.
    pub fn finish(self, batch: &mut WriteBatch) -> Result<Touched, StorageError> {
        let cf = self.store.storage.cf(CF_FEATURES)?;
        for (from, to) in &self.range_deletes {
            batch.delete_range_cf(cf, from, to);
        }
        for k in &self.deletes {
            batch.delete_cf(cf, k);
        }
        for (tenant, reg) in &self.registries {
            batch.put_cf(cf, registry_key(self.store.group, tenant), encode(reg)?);
        }
        for (k, v) in &self.events {
            batch.put_cf(cf, k, encode(v)?);
        }
        for (k, mark) in &self.event_ids {
            batch.put_cf(cf, k, [mark.byte()]);
        }
        for (k, v) in &self.tiles {
            batch.put_cf(cf, k, encode(v)?);
        }
        Ok(self.touched)
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.registries.is_empty()
            && self.events.is_empty()
            && self.tiles.is_empty()
            && self.event_ids.is_empty()
            && self.deletes.is_empty()
            && self.range_deletes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_number() {
        assert!(enc_i64(-5) < enc_i64(-1));
        assert!(enc_i64(-1) < enc_i64(0));
        assert!(enc_i64(0) < enc_i64(7));
        let p = tile_prefix(3, "t", "f", "u:a");
        let k = with_i64(&p, -42);
        assert_eq!(decode_tile_index(&p, &k), Some(-42));
        assert!(!tile_prefix(3, "t", "f", "u:a").starts_with(&tile_prefix(3, "t", "f", "u:ab")));
    }
}
