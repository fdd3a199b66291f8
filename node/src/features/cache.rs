//! Online feature values kept in memory between searches, so that reranking 100 candidates
//! costs hash lookups instead of hundreds of RocksDB scans.
//!
//! Values are kept in **rows, one per entity** (a document, a user, a user×space pair...):
//! reranking a candidate reads every feature of its document with one lookup, not one per
//! feature, and a write invalidates the entity's values where they are, with no separate
//! table of write versions to consult on every read.
//!
//! A cached value is served only while it provably equals a fresh evaluation:
//! - **No newer writes.** A write batch, once visible, takes the next number of a sequence and
//!   marks the rows of the entities it touched with it, dropping their values of the event
//!   kinds it wrote (a feature reads only events of its source kind, so a view never
//!   invalidates a click count). A reader takes the sequence number *before* it evaluates, and
//!   its value is kept only if no write marked the row after that number; a write is marked
//!   after it became visible, so a value computed from before the write is either refused or
//!   dropped by the mark. Rows evicted for capacity, registry changes and snapshot installs
//!   raise a floor that older readers' values must clear too.
//! - **Counts follow live events.** A plain count (no ttl) is not dropped by a write of its
//!   source kind but updated in place, as streaming aggregation would: each new event either
//!   adds one (it is at or before the value's `computed_at`, and inside the window there) or
//!   caps the validity at its own time (it enters later). This is only done for values stored
//!   before the writer announced the write ([`OnlineCache::begin_write`]), whose evaluation
//!   therefore could not have seen the event; any other value of that kind is dropped. Live
//!   traffic then stops turning every search after a view into RocksDB reads.
//! - **Time has not changed the answer.** A value holds the interval `[computed_at,
//!   valid_until)` over which no event enters or leaves the window and no ttl expires (see
//!   `engine::valid_until`); a read at `t` outside it is a miss.
//!
//! A row also keeps, per all-time feature, its **full tiles already merged** (see
//! `engine::evaluate_all_time`): a miss after a fresh event then reads only the current tile,
//! not every day since the first event. Live events land in the current tile and leave the
//! merge alone; a write drops it only if one of its events is at or before the merge's end
//! (a late event), and a merge computed before a write is refused if any write recorded in
//! the row since reached that far back.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use smallvec::SmallVec;
use tessera_proto::{EventKind, ShardId};

use super::definition::{Entity, Registry};
use super::engine::MergedPrefix;
use super::tiles::Acc;
use crate::rank::{Experiment, RankProfile};

/// A fast, fixed-seed hash: a collision only costs a miss (rows keep their whole key), so the
/// keyed SipHash of std buys nothing here, on the path of every reranked candidate.
const HASHER: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x7e55e7a);

/// Entity rows kept before the cache starts over: about 330 bytes each, so at most ~45 MB.
/// The rerank benchmark's working set (5,000 documents, 20 users' user×document rows for 8
/// queries) is about 21,000 rows.
const DEFAULT_CAPACITY: usize = 1 << 17;

/// Whose values a row holds: shard, tenant, entity kind and entity. Borrowed, so a lookup
/// allocates nothing; the map is keyed by its hash and each row keeps the whole key to
/// compare, so a hash collision is a miss, never a wrong value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowKey<'a> {
    pub group: ShardId,
    pub tenant: &'a str,
    pub kind: Entity,
    pub entity: &'a str,
}

impl RowKey<'_> {
    fn hashed(&self) -> u64 {
        HASHER.hash_one((self.group, self.tenant, self.kind.tag(), self.entity))
    }

    /// The key as one buffer: group, kind, the tenant behind its length, then the entity.
    /// One contiguous buffer means one memory fetch to confirm a hit.
    fn owned(&self) -> OwnedKey {
        let mut v = OwnedKey::with_capacity(13 + self.tenant.len() + self.entity.len());
        v.extend_from_slice(&self.group.to_le_bytes());
        v.push(self.kind.tag());
        v.extend_from_slice(&(self.tenant.len() as u32).to_le_bytes());
        v.extend_from_slice(self.tenant.as_bytes());
        v.extend_from_slice(self.entity.as_bytes());
        v
    }

    /// Whether `owned` is this key's [`Self::owned`] form.
    fn is(&self, owned: &[u8]) -> bool {
        let tenant_len = (self.tenant.len() as u32).to_le_bytes();
        let head = 13 + self.tenant.len();
        owned.len() == head + self.entity.len()
            && owned[..8] == self.group.to_le_bytes()
            && owned[8] == self.kind.tag()
            && owned[9..13] == tenant_len
            && &owned[13..head] == self.tenant.as_bytes()
            && &owned[head..] == self.entity.as_bytes()
    }
}

/// Keys of typical entities fit inline, so confirming a hit reads no other allocation.
type OwnedKey = SmallVec<[u8; 56]>;

/// The write sequence number a reader saw before evaluating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen(u64);

/// One feature's value in a row. Kept to 56 bytes, with no `Option` or enum padding: a rerank
/// reads a row per candidate from a table far larger than the CPU caches, so each byte of a
/// row is memory traffic on the search path.
#[derive(Debug, Clone, Copy)]
struct Cached {
    /// Registry version and the feature's index in it.
    version: u64,
    computed_at: i64,
    valid_until: i64,
    /// The value, if `present` (a feature with no events is null).
    value: f64,
    /// [`Rows::begun`] when the value was stored: writes announced later may already be in it.
    stored_at: u64,
    /// [`WrittenBy::counts`].
    counts: PackedWindow,
    feature: u32,
    /// [`WrittenBy::source`].
    source: EventKind,
    present: bool,
}

/// An `Option<CountWindow>` in one word: `i64::MIN` for none, `i64::MAX` for all time, else
/// the window in ms. (A window of `i64::MAX` ms reads back as all time, which counts exactly
/// alike since window ends saturate.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PackedWindow(i64);

impl PackedWindow {
    fn pack(counts: Option<CountWindow>) -> Self {
        Self(match counts {
            None => i64::MIN,
            Some(CountWindow::AllTime) => i64::MAX,
            Some(CountWindow::Ms(w)) => w,
        })
    }

    fn unpack(self) -> Option<CountWindow> {
        match self.0 {
            i64::MIN => None,
            i64::MAX => Some(CountWindow::AllTime),
            w => Some(CountWindow::Ms(w)),
        }
    }
}

impl Cached {
    fn value(&self) -> Option<f64> {
        self.present.then_some(self.value)
    }

    /// Folds new events of the value's source (their event times) into a count. The value
    /// then describes `[c', valid_until)` with `c'` the newest of `computed_at` and the events'
    /// times: at any such `t` every new event is at or before `t`, so a count over all time
    /// gains one per event, and a windowed count one per event still inside the window at `c'`
    /// (until it leaves). Events at or after `valid_until` do not touch that interval. `false`
    /// when the value cannot follow them.
    fn absorb(&mut self, events: &[i64]) -> bool {
        let (Some(window), Some(mut n)) = (self.counts.unpack(), self.value()) else {
            return false;
        };
        let inside = || events.iter().copied().filter(|&e| e < self.valid_until);
        let from = inside().fold(self.computed_at, i64::max);
        let mut until = self.valid_until;
        for e in inside() {
            match window {
                CountWindow::AllTime => n += 1.0,
                CountWindow::Ms(w) => {
                    // In the window `(t - w, t]` while `t < e + w`.
                    let leaves = e.saturating_add(w);
                    if leaves > from {
                        n += 1.0;
                        until = until.min(leaves);
                    }
                }
            }
        }
        self.value = n;
        self.computed_at = from;
        self.valid_until = until;
        from < until
    }
}

/// What writes do to a cached value: events of `source` change it, and a plain count
/// (`counts`) can absorb them instead of being dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenBy {
    pub source: EventKind,
    pub counts: Option<CountWindow>,
}

/// The window of a count that absorbs events (see [`WrittenBy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountWindow {
    AllTime,
    Ms(i64),
}

impl WrittenBy {
    /// A feature's: a count without ttl follows events; anything else is dropped by them (a
    /// sum in floating point, a set, the newest value and a decayed count are not updated
    /// bit for bit the way a fresh evaluation computes them).
    pub fn of(def: &super::definition::FeatureDef) -> Self {
        let counts = (def.aggregation == super::definition::Aggregation::Count
            && def.ttl_ms.is_none())
        .then_some(match def.window_ms {
            None => CountWindow::AllTime,
            Some(w) => CountWindow::Ms(w),
        });
        Self {
            source: def.source,
            counts,
        }
    }
}

impl From<EventKind> for WrittenBy {
    fn from(source: EventKind) -> Self {
        Self {
            source,
            counts: None,
        }
    }
}

/// A write announced to the cache before it became visible (see [`OnlineCache::begin_write`]).
#[derive(Debug, Clone, Copy)]
#[must_use = "pass it to touch once the write is visible"]
pub struct WriteBegun(u64);

/// An all-time feature's full tiles merged, up to tile `last_full` (events up to `end_ms`).
#[derive(Debug, Clone)]
struct Prefix {
    version: u64,
    feature: u32,
    source: EventKind,
    last_full: i64,
    end_ms: i64,
    acc: Acc,
}

#[derive(Debug, Clone)]
struct Row {
    key: OwnedKey,
    /// The newest write that touched the entity (any kind): values read before it are refused.
    written: u64,
    /// The oldest event time among the writes recorded in this row: a merge of full tiles
    /// ending before it cannot have been changed by them.
    oldest_written: i64,
    values: SmallVec<[Cached; 4]>,
    prefixes: Vec<Prefix>,
}

/// One value a read asks for: feature `feature` of registry `version`, read at `t`.
#[derive(Debug, Clone, Copy)]
pub struct ValueKey {
    pub version: u64,
    pub feature: u32,
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

/// The rows and the floor below which no reader's value is kept, under one lock.
#[derive(Default)]
struct Rows {
    /// Keyed by [`RowKey::hashed`], already a good hash: foldhash only mixes it again.
    map: HashMap<u64, Row, foldhash::fast::RandomState>,
    /// Values read before this sequence number are refused: rows dropped since then may have
    /// carried the marks that would have refused them.
    floor: u64,
    /// Writes announced so far ([`OnlineCache::begin_write`]).
    begun: u64,
}

/// The node-wide cache (one per RocksDB instance, shared by all its shards).
pub struct OnlineCache {
    /// Write batches made visible so far.
    sequence: AtomicU64,
    rows: Mutex<Rows>,
    /// Bumped by registry changes and snapshot installs: parsed definitions read before are
    /// stale.
    epoch: AtomicU64,
    /// Parsed definitions per (shard, tenant), with the epoch they were read at: valid while
    /// the epoch is unchanged (a registry write bumps it once the write is visible).
    definitions: Mutex<HashMap<(ShardId, String), DefinitionsEntry>>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Misses that started from merged full tiles.
    merged_reuses: AtomicU64,
}

impl std::fmt::Debug for OnlineCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineCache")
            .field("rows", &self.rows.lock().map.len())
            .finish_non_exhaustive()
    }
}

impl Default for OnlineCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl OnlineCache {
    /// A cache of at most `capacity` entity rows.
    pub fn new(capacity: usize) -> Self {
        Self {
            sequence: AtomicU64::new(0),
            rows: Mutex::new(Rows::default()),
            epoch: AtomicU64::new(0),
            definitions: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            merged_reuses: AtomicU64::new(0),
        }
    }

    /// The write state now; read it before evaluating what will be [`Self::put`].
    pub fn seen(&self) -> Seen {
        Seen(self.sequence.load(Ordering::Acquire))
    }

    /// The cached value of `value` for the row at `t`, if it is still exact.
    pub fn get(&self, row: &RowKey<'_>, value: ValueKey, t: i64) -> Option<Option<f64>> {
        let (mut values, missing) = self.get_rows(&[(*row, &[value][..])], t);
        missing.is_empty().then(|| values.pop().flatten())
    }

    /// The cached values of several rows under one lock: for each row, its values in the order
    /// asked, and the positions (ascending) of the misses, whose values are `None` there.
    ///
    /// The rows are found in one pass and read in a second: a rerank's rows are spread over a
    /// table larger than the CPU caches, and a first pass that does nothing but find them lets
    /// the CPU fetch many rows from memory at once, instead of one after another while each
    /// row's values are read.
    pub fn get_rows(
        &self,
        rows: &[(RowKey<'_>, &[ValueKey])],
        t: i64,
    ) -> (Vec<Option<f64>>, Vec<usize>) {
        let hashes: Vec<u64> = rows.iter().map(|(key, _)| key.hashed()).collect();
        let mut out = Vec::with_capacity(rows.iter().map(|(_, v)| v.len()).sum());
        let mut missing = Vec::new();
        let guard = self.rows.lock();
        let found: Vec<Option<&Row>> = hashes
            .iter()
            .map(|hashed| {
                let row = guard.map.get(hashed);
                if let Some(r) = row {
                    // Starts fetching the row's values along with its key.
                    std::hint::black_box(r.values.first().map(|c| c.version));
                }
                row
            })
            .collect();
        for ((key, wanted), row) in rows.iter().zip(found) {
            let row = row.filter(|r| key.is(&r.key));
            for w in *wanted {
                match row.and_then(|r| Self::served(r, *w, t)) {
                    Some(value) => out.push(value),
                    None => {
                        missing.push(out.len());
                        out.push(None);
                    }
                }
            }
        }
        drop(guard);
        let misses = missing.len() as u64;
        self.hits
            .fetch_add(out.len() as u64 - misses, Ordering::Relaxed);
        self.misses.fetch_add(misses, Ordering::Relaxed);
        (out, missing)
    }

    fn served(row: &Row, wanted: ValueKey, t: i64) -> Option<Option<f64>> {
        row.values
            .iter()
            .find(|c| c.version == wanted.version && c.feature == wanted.feature)
            .filter(|c| c.computed_at <= t && t < c.valid_until)
            .map(Cached::value)
    }

    /// `(hits, misses)` since start, for tests and status pages.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Keeps a value of a feature with source kind `source`, evaluated at `t` by a reader that
    /// saw `seen` before evaluating; refused if a write may have changed it since.
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        &self,
        row: &RowKey<'_>,
        value: ValueKey,
        written_by: impl Into<WrittenBy>,
        seen: Seen,
        t: i64,
        valid_until: i64,
        computed: Option<f64>,
    ) {
        if valid_until <= t {
            return;
        }
        let hashed = row.hashed();
        let mut rows = self.rows.lock();
        if seen.0 < rows.floor {
            return;
        }
        let stored_at = rows.begun;
        let r = self.row_mut(&mut rows, row, hashed);
        if seen.0 < r.written {
            return;
        }
        let written_by = written_by.into();
        let cached = Cached {
            version: value.version,
            computed_at: t,
            valid_until,
            value: computed.unwrap_or(0.0),
            stored_at,
            counts: PackedWindow::pack(written_by.counts),
            feature: value.feature,
            source: written_by.source,
            present: computed.is_some(),
        };
        match r
            .values
            .iter_mut()
            .find(|c| c.version == value.version && c.feature == value.feature)
        {
            Some(slot) => *slot = cached,
            None => r.values.push(cached),
        }
    }

    /// `key`'s row, created empty if absent (dropping every row first when full).
    fn row_mut<'r>(&self, rows: &'r mut Rows, key: &RowKey<'_>, hashed: u64) -> &'r mut Row {
        let taken_by_other = rows.map.get(&hashed).is_some_and(|r| !key.is(&r.key));
        if taken_by_other || (rows.map.len() >= self.capacity && !rows.map.contains_key(&hashed)) {
            // A collision replaces the other entity's row; its marks go with it, so the floor
            // rises as for a clear. Both are rare.
            let floor = self.sequence.load(Ordering::Acquire);
            if !taken_by_other {
                rows.map.clear();
            }
            rows.floor = rows.floor.max(floor);
            rows.map.remove(&hashed);
        }
        rows.map.entry(hashed).or_insert_with(|| Row {
            key: key.owned(),
            written: 0,
            oldest_written: i64::MAX,
            values: SmallVec::new(),
            prefixes: Vec::new(),
        })
    }

    /// Announces a write of feature rows, before it becomes visible: values stored from now
    /// on may include it, so its [`Self::touch`] drops them instead of updating them.
    pub fn begin_write(&self) -> WriteBegun {
        let mut rows = self.rows.lock();
        rows.begun += 1;
        WriteBegun(rows.begun)
    }

    /// Marks entities as written with events of the given kinds (with their event times);
    /// call once per write batch, after the batch is durable and visible, with what
    /// [`Self::begin_write`] returned before it was written.
    pub fn touch<'k, 'e>(
        &self,
        begun: WriteBegun,
        touched: impl IntoIterator<Item = (RowKey<'k>, EventKind, &'e [i64])>,
    ) {
        let written = self.sequence.fetch_add(1, Ordering::AcqRel) + 1;
        let mut rows = self.rows.lock();
        for (key, source, events) in touched {
            let oldest = events.iter().copied().min().unwrap_or(i64::MIN);
            let hashed = key.hashed();
            let r = self.row_mut(&mut rows, &key, hashed);
            r.written = written;
            r.oldest_written = r.oldest_written.min(oldest);
            r.values
                .retain_mut(|c| c.source != source || (c.stored_at < begun.0 && c.absorb(events)));
            r.prefixes
                .retain(|p| p.source != source || oldest > p.end_ms);
        }
    }

    /// The merged full tiles of an all-time feature kept for the row, if they end at or
    /// before tile `last_full` (the caller merges the tiles after them).
    pub fn prefix(
        &self,
        row: &RowKey<'_>,
        value: ValueKey,
        last_full: i64,
    ) -> Option<MergedPrefix> {
        let hashed = row.hashed();
        let rows = self.rows.lock();
        let r = rows.map.get(&hashed).filter(|r| row.is(&r.key))?;
        let found = r
            .prefixes
            .iter()
            .find(|p| p.version == value.version && p.feature == value.feature)
            .filter(|p| p.last_full <= last_full)
            .map(|p| (p.last_full, p.acc.clone()));
        if found.is_some() {
            self.merged_reuses.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Misses that started from merged full tiles since start, for tests.
    pub fn merged_reuses(&self) -> u64 {
        self.merged_reuses.load(Ordering::Relaxed)
    }

    /// Keeps the merged full tiles of an all-time feature (tiles up to `prefix.0`, of
    /// `tile_ms` each), computed by a reader that saw `seen` before reading them; refused if
    /// a write since may have reached into them.
    pub fn put_prefix(
        &self,
        row: &RowKey<'_>,
        value: ValueKey,
        source: EventKind,
        seen: Seen,
        tile_ms: i64,
        prefix: MergedPrefix,
    ) {
        let (last_full, acc) = prefix;
        let end_ms = last_full.saturating_add(1).saturating_mul(tile_ms);
        let hashed = row.hashed();
        let mut rows = self.rows.lock();
        if seen.0 < rows.floor {
            return;
        }
        let r = self.row_mut(&mut rows, row, hashed);
        if seen.0 < r.written && r.oldest_written <= end_ms {
            return;
        }
        let kept = Prefix {
            version: value.version,
            feature: value.feature,
            source,
            last_full,
            end_ms,
            acc,
        };
        match r
            .prefixes
            .iter_mut()
            .find(|p| p.version == value.version && p.feature == value.feature)
        {
            Some(slot) => *slot = kept,
            None => r.prefixes.push(kept),
        }
    }

    /// Invalidates everything (a snapshot replaced a shard's rows, or definitions changed).
    pub fn invalidate_all(&self) {
        let written = self.sequence.fetch_add(1, Ordering::AcqRel) + 1;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let mut rows = self.rows.lock();
        rows.map.clear();
        rows.floor = rows.floor.max(written);
        drop(rows);
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

    fn row(entity: &str) -> RowKey<'_> {
        RowKey {
            group: 1,
            tenant: "t",
            kind: Entity::User,
            entity,
        }
    }

    /// One write of one event, announced and published as the state machine does.
    fn write(c: &OnlineCache, row: RowKey<'_>, kind: EventKind, ts: i64) {
        let begun = c.begin_write();
        c.touch(begun, [(row, kind, &[ts][..])]);
    }

    const F: ValueKey = ValueKey {
        version: 1,
        feature: 0,
    };
    const G: ValueKey = ValueKey {
        version: 1,
        feature: 1,
    };

    #[test]
    fn a_cached_value_is_one_compact_record_that_keeps_what_writes_need() {
        assert!(
            std::mem::size_of::<Cached>() <= 56,
            "a cached value stays compact"
        );
        for counts in [
            None,
            Some(CountWindow::AllTime),
            Some(CountWindow::Ms(1)),
            Some(CountWindow::Ms(86_400_000)),
        ] {
            assert_eq!(PackedWindow::pack(counts).unpack(), counts);
        }
    }

    #[test]
    fn a_key_matches_its_own_stored_form_only() {
        let base = RowKey {
            group: 7,
            tenant: "ab",
            kind: Entity::UserSpace,
            entity: "u|x",
        };
        assert!(base.is(&base.owned()));
        let others = [
            RowKey { group: 8, ..base },
            RowKey {
                kind: Entity::UserDoc,
                ..base
            },
            // The same bytes split differently between tenant and entity.
            RowKey {
                tenant: "abu",
                entity: "|x",
                ..base
            },
            RowKey {
                entity: "u|xy",
                ..base
            },
            RowKey {
                entity: "u|",
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
        let s = c.seen();
        c.put(&row("a"), F, EventKind::View, s, 100, 200, Some(3.0));
        c.put(&row("a"), G, EventKind::Click, s, 100, 200, Some(5.0));
        assert_eq!(c.get(&row("a"), F, 100), Some(Some(3.0)));
        assert_eq!(c.get(&row("a"), F, 199), Some(Some(3.0)));
        assert_eq!(c.get(&row("a"), F, 200), None, "valid_until is exclusive");
        assert_eq!(
            c.get(&row("a"), F, 99),
            None,
            "never before it was computed"
        );
        let other_version = ValueKey { version: 2, ..F };
        assert_eq!(c.get(&row("a"), other_version, 150), None);
        write(&c, row("a"), EventKind::Click, 120);
        assert_eq!(
            c.get(&row("a"), F, 150),
            Some(Some(3.0)),
            "a click leaves view features valid"
        );
        assert_eq!(c.get(&row("a"), G, 150), None, "a write invalidates");
        // A value evaluated from a state seen before the write is refused.
        c.put(&row("a"), G, EventKind::Click, s, 150, 300, Some(1.0));
        assert_eq!(c.get(&row("a"), G, 160), None);
        let now = c.seen();
        assert!(now > s);
        c.put(&row("a"), G, EventKind::Click, now, 150, 300, Some(4.0));
        assert_eq!(c.get(&row("a"), G, 160), Some(Some(4.0)));
        assert_eq!(c.get(&row("b"), G, 160), None, "rows are per entity");
        c.invalidate_all();
        assert_eq!(c.get(&row("a"), G, 160), None);
        c.put(&row("a"), G, EventKind::Click, now, 150, 300, Some(4.0));
        assert_eq!(
            c.get(&row("a"), G, 160),
            None,
            "read before the invalidation: refused"
        );
    }

    const COUNTS: WrittenBy = WrittenBy {
        source: EventKind::View,
        counts: Some(CountWindow::AllTime),
    };

    #[test]
    fn counts_absorb_events_only_when_stored_before_the_write_was_announced() {
        let c = OnlineCache::new(10);
        c.put(&row("a"), F, COUNTS, c.seen(), 100, 200, Some(3.0));
        c.put(&row("f"), F, COUNTS, c.seen(), 100, 200, Some(3.0));
        let begun = c.begin_write();
        // Evaluated while the write was being made: it may already count the event.
        c.put(&row("b"), F, COUNTS, c.seen(), 100, 200, Some(4.0));
        c.touch(
            begun,
            [
                (row("a"), EventKind::View, &[90][..]),
                (row("b"), EventKind::View, &[90][..]),
                (row("f"), EventKind::View, &[150][..]),
            ],
        );
        assert_eq!(c.get(&row("a"), F, 100), Some(Some(4.0)), "absorbed");
        assert_eq!(c.get(&row("b"), F, 150), None, "dropped, not counted twice");
        assert_eq!(c.get(&row("f"), F, 120), None, "before the event's time");
        assert_eq!(
            c.get(&row("f"), F, 160),
            Some(Some(4.0)),
            "from the event's time on"
        );
        let windowed = WrittenBy {
            counts: Some(CountWindow::Ms(50)),
            ..COUNTS
        };
        c.put(&row("w"), F, windowed, c.seen(), 100, 200, Some(1.0));
        let begun = c.begin_write();
        c.touch(begun, [(row("w"), EventKind::View, &[40, 80][..])]);
        assert_eq!(
            c.get(&row("w"), F, 110),
            Some(Some(2.0)),
            "40 left the window"
        );
        assert_eq!(c.get(&row("w"), F, 130), None, "80 leaves it at 130");
    }

    #[test]
    fn a_write_to_an_entity_without_a_row_still_refuses_older_reads() {
        let c = OnlineCache::new(10);
        let before = c.seen();
        write(&c, row("a"), EventKind::View, 5);
        c.put(&row("a"), F, EventKind::View, before, 0, 10, Some(1.0));
        assert_eq!(c.get(&row("a"), F, 5), None);
    }

    #[test]
    fn merged_tiles_survive_live_events_but_not_late_ones() {
        let c = OnlineCache::new(10);
        let day = 1_000;
        let merged = |n: i64| (n, Acc::default());
        // Tiles up to index 9 merged: events up to 10_000.
        c.put_prefix(&row("a"), F, EventKind::View, c.seen(), day, merged(9));
        assert_eq!(c.prefix(&row("a"), F, 9).map(|p| p.0), Some(9));
        assert_eq!(
            c.prefix(&row("a"), F, 12).map(|p| p.0),
            Some(9),
            "extended by the caller"
        );
        assert!(
            c.prefix(&row("a"), F, 8).is_none(),
            "never past what is asked"
        );
        assert!(c.prefix(&row("a"), G, 9).is_none());
        write(&c, row("a"), EventKind::Click, 50);
        assert!(c.prefix(&row("a"), F, 9).is_some(), "another kind");
        write(&c, row("a"), EventKind::View, 10_001);
        assert!(c.prefix(&row("a"), F, 9).is_some(), "a live event");
        write(&c, row("a"), EventKind::View, 10_000);
        assert!(c.prefix(&row("a"), F, 9).is_none(), "a late event");
        // A merge read before a late write is refused; before a live one, kept.
        let before = c.seen();
        write(&c, row("b"), EventKind::View, 20_000);
        c.put_prefix(&row("b"), F, EventKind::View, before, day, merged(9));
        assert!(c.prefix(&row("b"), F, 9).is_some());
        let before = c.seen();
        write(&c, row("b"), EventKind::View, 3_000);
        c.put_prefix(&row("b"), F, EventKind::View, before, day, merged(9));
        assert!(c.prefix(&row("b"), F, 9).is_none());
    }

    #[test]
    fn bounded_and_eviction_refuses_older_reads() {
        let c = OnlineCache::new(3);
        let before = c.seen();
        write(&c, row("x"), EventKind::View, 5);
        for i in 0..10 {
            c.put(
                &row(&format!("{i}")),
                F,
                EventKind::View,
                c.seen(),
                0,
                10,
                Some(1.0),
            );
        }
        assert!(c.rows.lock().map.len() <= 3);
        // The mark on "x" was evicted with its row; the floor still refuses the stale value.
        c.put(&row("x"), F, EventKind::View, before, 0, 10, Some(1.0));
        assert_eq!(c.get(&row("x"), F, 5), None);
    }
}
