//! Online feature values kept in memory between searches, so that reranking 100 candidates
//! costs hash lookups instead of hundreds of RocksDB scans.
//!
//! A cached value is served only while it provably equals a fresh evaluation:
//! - **No newer writes.** Every applied batch of events bumps a version slot for each (entity,
//!   event kind) it touched (after its RocksDB write); a reader takes the slot's version
//!   *before* it evaluates, and the entry is served only while the slot still has that version.
//!   A feature reads only events of its source kind, so a view never invalidates a click
//!   count. Slots are a fixed array indexed by a hash, so memory stays bounded and a collision
//!   only costs an extra miss. Registry changes and snapshot installs bump a global epoch.
//! - **Time has not changed the answer.** An entry holds the interval `[computed_at,
//!   valid_until)` over which no event enters or leaves the window and no ttl expires (see
//!   `engine::valid_until`); a read at `t` outside it is a miss.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tessera_proto::{EventKind, ShardId};

use super::definition::{Entity, Registry};
use crate::rank::{Experiment, RankProfile};

/// Version slots; a power of two. A write invalidates every entry whose entity shares its slot,
/// so the table is sized for collisions to be rare: with 2^20 slots (8 MiB), a stream of writes
/// touching 3,000 distinct entities between two reads of an entry evicts it by collision with
/// probability 0.3% (2^16 slots measured 5% in the rerank benchmark, one miss in twenty).
const SLOTS: usize = 1 << 20;
/// A fast, fixed-seed hash: a collision only costs a miss (entries keep their whole key), so
/// the keyed SipHash of std buys nothing here, on the path of every reranked candidate.
const HASHER: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x7e55e7a);

/// Entries kept before the cache starts over.
const DEFAULT_CAPACITY: usize = 200_000;

/// What one entry is for: shard, tenant, feature, registry version, entity. Borrowed, so a
/// lookup allocates nothing; the map is keyed by its hash and each entry keeps the whole key
/// to compare, so a hash collision is a miss, never a wrong value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey<'a> {
    pub group: ShardId,
    pub tenant: &'a str,
    pub feature: &'a str,
    pub version: u64,
    pub entity: &'a str,
}

impl CacheKey<'_> {
    fn hashed(&self) -> u64 {
        HASHER.hash_one(self)
    }

    /// The key as one allocation: group, version, then the tenant and feature each behind
    /// its length, then the entity. One contiguous buffer means one memory fetch to confirm a
    /// hit (three separate strings cost three), which is most of a hit's cost when a rerank
    /// reads hundreds of entries spread over a large table.
    fn owned(&self) -> OwnedKey {
        let mut v =
            Vec::with_capacity(24 + self.tenant.len() + self.feature.len() + self.entity.len());
        v.extend_from_slice(&self.group.to_le_bytes());
        v.extend_from_slice(&self.version.to_le_bytes());
        for part in [self.tenant, self.feature] {
            v.extend_from_slice(&(part.len() as u32).to_le_bytes());
            v.extend_from_slice(part.as_bytes());
        }
        v.extend_from_slice(self.entity.as_bytes());
        v.into_boxed_slice()
    }

    /// Whether `owned` is this key's [`Self::owned`] form.
    fn is(&self, owned: &[u8]) -> bool {
        let mut rest = owned;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, tail) = rest.split_at_checked(n)?;
            rest = tail;
            Some(head)
        };
        let fixed = take(8) == Some(&self.group.to_le_bytes()[..])
            && take(8) == Some(&self.version.to_le_bytes()[..]);
        let parts = fixed
            && [self.tenant, self.feature].iter().all(|part| {
                take(4) == Some(&(part.len() as u32).to_le_bytes()[..])
                    && take(part.len()) == Some(part.as_bytes())
            });
        parts && rest == self.entity.as_bytes()
    }
}

type OwnedKey = Box<[u8]>;

/// The write state a reader saw before evaluating: the global epoch and the entity's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    epoch: u64,
    slot: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    key: OwnedKey,
    stamp: Stamp,
    computed_at: i64,
    valid_until: i64,
    value: Option<f64>,
}

/// A tenant's definitions as a search uses them: the registry with its rank profiles and
/// experiments already parsed out of `features.toml`. Parsing them costs more than the rest of
/// a reranked search's feature work, so it is done once per registry change, not per search.
#[derive(Debug)]
pub struct Definitions {
    pub registry: Registry,
    pub profiles: Vec<RankProfile>,
    /// The experiments, or why they do not parse (reported when one is asked for).
    pub experiments: Result<Vec<Experiment>, String>,
}

/// Parsed definitions with the cache epoch they were read at.
type DefinitionsEntry = (u64, Arc<Definitions>);

/// The node-wide cache (one per RocksDB instance, shared by all its shards).
pub struct OnlineCache {
    slots: Box<[AtomicU64]>,
    epoch: AtomicU64,
    /// Keyed by [`CacheKey::hashed`], already a good hash: foldhash only mixes it again.
    entries: Mutex<HashMap<u64, Entry, foldhash::fast::RandomState>>,
    /// Parsed definitions per (shard, tenant), with the epoch they were read at: valid while
    /// the epoch is unchanged (a registry write bumps it once the write is visible).
    definitions: Mutex<HashMap<(ShardId, String), DefinitionsEntry>>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for OnlineCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineCache")
            .field("entries", &self.entries.lock().len())
            .finish_non_exhaustive()
    }
}

impl Default for OnlineCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl OnlineCache {
    /// A cache of at most `capacity` values.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            entries: Mutex::new(HashMap::default()),
            definitions: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn slot(group: ShardId, tenant: &str, kind: Entity, source: EventKind, entity: &str) -> usize {
        (HASHER.hash_one((group, tenant, kind.tag(), source, entity)) as usize) & (SLOTS - 1)
    }

    /// The current write state of an entity's events of kind `source`; read it before
    /// evaluating a feature with that source.
    pub fn stamp(
        &self,
        group: ShardId,
        tenant: &str,
        kind: Entity,
        source: EventKind,
        entity: &str,
    ) -> Stamp {
        let slot = &self.slots[Self::slot(group, tenant, kind, source, entity)];
        Stamp {
            epoch: self.epoch.load(Ordering::Acquire),
            slot: slot.load(Ordering::Acquire),
        }
    }

    /// The cached value at `t` if it is still exact for `stamp` (the current one).
    pub fn get(&self, key: &CacheKey<'_>, stamp: Stamp, t: i64) -> Option<Option<f64>> {
        self.get_many(std::slice::from_ref(key), &[stamp], t)
            .pop()
            .flatten()
    }

    /// The entry's value if it is `key`'s and still exact for `stamp` at `t`.
    fn served(
        entry: Option<&Entry>,
        key: &CacheKey<'_>,
        stamp: Stamp,
        t: i64,
    ) -> Option<Option<f64>> {
        entry
            .filter(|e| key.is(&e.key))
            .filter(|e| e.stamp == stamp && e.computed_at <= t && t < e.valid_until)
            .map(|e| e.value)
    }

    /// [`Self::get`] for many keys under one lock, in order.
    pub fn get_many(
        &self,
        keys: &[CacheKey<'_>],
        stamps: &[Stamp],
        t: i64,
    ) -> Vec<Option<Option<f64>>> {
        let hashes: Vec<u64> = keys.iter().map(CacheKey::hashed).collect();
        let entries = self.entries.lock();
        let out: Vec<_> = keys
            .iter()
            .zip(stamps)
            .zip(hashes)
            .map(|((key, stamp), hashed)| Self::served(entries.get(&hashed), key, *stamp, t))
            .collect();
        drop(entries);
        let hits = out.iter().filter(|v| v.is_some()).count() as u64;
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses
            .fetch_add(out.len() as u64 - hits, Ordering::Relaxed);
        out
    }

    /// `(hits, misses)` since start, for tests and status pages.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Keeps a value evaluated at `t` under `stamp` (read before evaluating).
    pub fn put(
        &self,
        key: &CacheKey<'_>,
        stamp: Stamp,
        t: i64,
        valid_until: i64,
        value: Option<f64>,
    ) {
        if valid_until <= t {
            return;
        }
        let hashed = key.hashed();
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&hashed) {
            entries.clear();
        }
        entries.insert(
            hashed,
            Entry {
                key: key.owned(),
                stamp,
                computed_at: t,
                valid_until,
                value,
            },
        );
    }

    /// Marks an entity as written with an event of kind `source`; call after the write is
    /// durable and visible.
    pub fn touch(
        &self,
        group: ShardId,
        tenant: &str,
        kind: Entity,
        source: EventKind,
        entity: &str,
    ) {
        self.slots[Self::slot(group, tenant, kind, source, entity)].fetch_add(1, Ordering::AcqRel);
    }

    /// Invalidates everything (a snapshot replaced a shard's rows, or definitions changed).
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.lock().clear();
        self.definitions.lock().clear();
    }

    /// A tenant's parsed definitions: cached ones while no registry write or snapshot install
    /// happened since they were read, else `load`'s (then cached). The epoch is read before
    /// `load` runs, so a write racing with it makes the entry stale, never wrong.
    pub fn definitions<E>(
        &self,
        group: ShardId,
        tenant: &str,
        load: impl FnOnce() -> Result<Definitions, E>,
    ) -> Result<Arc<Definitions>, E> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let key = (group, tenant.to_string());
        if let Some((at, defs)) = self.definitions.lock().get(&key) {
            if *at == epoch {
                return Ok(defs.clone());
            }
        }
        let defs = Arc::new(load()?);
        let mut map = self.definitions.lock();
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(key, (epoch, defs.clone()));
        Ok(defs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(entity: &str) -> CacheKey<'_> {
        CacheKey {
            group: 1,
            tenant: "t",
            feature: "f",
            version: 1,
            entity,
        }
    }

    #[test]
    fn a_key_matches_its_own_stored_form_only() {
        let base = CacheKey {
            group: 7,
            tenant: "ab",
            feature: "c",
            version: 3,
            entity: "u:x",
        };
        assert!(base.is(&base.owned()));
        let others = [
            CacheKey { group: 8, ..base },
            CacheKey { version: 4, ..base },
            // The same bytes split differently between tenant and feature.
            CacheKey {
                tenant: "a",
                feature: "bc",
                ..base
            },
            CacheKey {
                entity: "u:xy",
                ..base
            },
            CacheKey {
                entity: "u:",
                ..base
            },
        ];
        for other in others {
            assert!(!other.is(&base.owned()), "{other:?}");
            assert!(!base.is(&other.owned()), "{other:?}");
        }
    }

    #[test]
    fn serves_only_within_validity_and_until_touched() {
        let c = OnlineCache::new(10);
        let s = c.stamp(1, "t", Entity::User, EventKind::View, "u:a");
        c.put(&key("u:a"), s, 100, 200, Some(3.0));
        assert_eq!(c.get(&key("u:a"), s, 100), Some(Some(3.0)));
        assert_eq!(c.get(&key("u:a"), s, 199), Some(Some(3.0)));
        assert_eq!(c.get(&key("u:a"), s, 200), None, "valid_until is exclusive");
        assert_eq!(
            c.get(&key("u:a"), s, 99),
            None,
            "never before it was computed"
        );
        c.touch(1, "t", Entity::User, EventKind::Click, "u:a");
        assert_eq!(
            c.get(
                &key("u:a"),
                c.stamp(1, "t", Entity::User, EventKind::View, "u:a"),
                150
            ),
            Some(Some(3.0)),
            "a click leaves view features valid"
        );
        c.touch(1, "t", Entity::User, EventKind::View, "u:a");
        let now = c.stamp(1, "t", Entity::User, EventKind::View, "u:a");
        assert_ne!(now, s);
        assert_eq!(c.get(&key("u:a"), now, 150), None, "a write invalidates");
        // A value evaluated from a stamp read before the write stays invalid.
        c.put(&key("u:a"), s, 150, 300, Some(1.0));
        assert_eq!(c.get(&key("u:a"), now, 160), None);
        c.put(&key("u:a"), now, 150, 300, Some(4.0));
        assert_eq!(c.get(&key("u:a"), now, 160), Some(Some(4.0)));
        c.invalidate_all();
        let after = c.stamp(1, "t", Entity::User, EventKind::View, "u:a");
        assert_eq!(c.get(&key("u:a"), after, 160), None);
    }

    #[test]
    fn bounded() {
        let c = OnlineCache::new(3);
        let s = c.stamp(1, "t", Entity::User, EventKind::View, "u:a");
        for i in 0..10 {
            c.put(&key(&format!("u:{i}")), s, 0, 10, Some(1.0));
        }
        assert!(c.entries.lock().len() <= 3);
    }
}
