//! Engine-level acceptance tests on a real RocksDB: online/offline parity
//! under a controllable clock, and the point-in-time rules.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_proto::{EventKind, ValidEvent};

use super::definition::{parse_features_toml, Aggregation, FeatureDef};
use super::store::{FeatureApplier, FeatureStore, Wanted};
use super::tiles::{decay, EventRow};
use super::{ImportBatch, ImportedRegistry, RowSet};
use crate::storage::Storage;

const GROUP: u64 = 7;
const TENANT: &str = "acme";

const DEFS: &str = r#"
[[feature]]
name = "us_views_5s"
entity = "user+space"
source = "view"
aggregation = "count"
window = "5s"

[[feature]]
name = "doc_edits_sum_20s"
entity = "doc"
source = "edit"
aggregation = "sum"
window = "20s"
ttl = "3s"

[[feature]]
name = "user_last_click"
entity = "user"
source = "click"
aggregation = "last"
ttl = "4s"

[[feature]]
name = "doc_viewers_10s"
entity = "doc"
source = "view"
aggregation = "distinct_users"
window = "10s"

[[feature]]
name = "doc_popularity"
entity = "doc"
source = "view"
aggregation = "decayed_count"
half_life = "4s"

[[feature]]
name = "space_views_7s"
entity = "space"
source = "view"
aggregation = "decayed_count"
half_life = "2s"
window = "7s"

[[feature]]
name = "ud_clicks"
entity = "user+doc"
source = "click"
aggregation = "count"
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    storage: Storage,
    store: FeatureStore,
    index: u64,
    defs: Vec<FeatureDef>,
}

impl Fixture {
    /// A shard with no definitions registered (`toml` only names the features to read).
    fn empty(toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open rocksdb");
        let store = FeatureStore::new(storage.clone(), GROUP);
        let defs = parse_features_toml(toml).expect("valid definitions");
        Self {
            _dir: dir,
            storage,
            store,
            index: 0,
            defs,
        }
    }

    fn new(toml: &str) -> Self {
        let mut f = Self::empty(toml);
        let defs = f.defs.clone();
        f.commit(|a, _| {
            a.apply_registry(TENANT, &defs, toml, 0)
                .expect("apply registry");
        });
        f
    }

    /// One state-machine apply call with one log entry.
    fn commit(&mut self, f: impl FnOnce(&mut FeatureApplier, u64)) {
        self.index += 1;
        let mut applier = FeatureApplier::new(self.storage.clone(), GROUP);
        f(&mut applier, self.index);
        let mut batch = rocksdb::WriteBatch::default();
        let touched = applier.finish(&mut batch).expect("finish");
        let begun = touched.begin(&self.storage);
        self.storage.write(batch).expect("write");
        touched.publish(&self.storage, GROUP, begun);
    }

    fn ingest(&mut self, ingest_ts: i64, events: Vec<ValidEvent>) {
        self.ingest_at(ingest_ts, events, 0);
    }

    /// Ingests events sent with the cluster map at `map_epoch`.
    fn ingest_at(&mut self, ingest_ts: i64, events: Vec<ValidEvent>, map_epoch: u64) {
        let events: Vec<(ValidEvent, bool)> = events.into_iter().map(|e| (e, true)).collect();
        self.commit(|a, index| {
            a.apply_events(index, ingest_ts, TENANT, &events, map_epoch)
                .expect("apply events");
        });
    }

    /// Every row of `rows` written with a map older than `before_epoch`, read page by page.
    fn export_all(&self, rows: RowSet, before_epoch: u64) -> Vec<(EventRow, u64)> {
        let (mut out, mut after) = (Vec::new(), Vec::new());
        loop {
            let page = self
                .store
                .export_events(TENANT, rows, &after, 7, before_epoch)
                .expect("export");
            out.extend(page.events);
            match page.next {
                Some(next) => after = next,
                None => return out,
            }
        }
    }

    /// Imports `events` as one mover page would, with this fixture's definitions text.
    fn import(&mut self, rows: RowSet, events: Vec<(EventRow, u64)>, toml: &str) -> u32 {
        let registry = ImportedRegistry {
            toml: toml.to_string(),
            defs: parse_features_toml(toml).expect("valid"),
            version: 4,
        };
        let mut stored = 0;
        self.commit(|a, _| {
            let batch = ImportBatch {
                registry: Some(registry),
                rows,
                events,
            };
            stored = a.import(TENANT, &batch).expect("import").events;
        });
        stored
    }

    fn def(&self, name: &str) -> &FeatureDef {
        self.defs.iter().find(|d| d.name == name).expect("defined")
    }

    fn online(&self, name: &str, (u, s, d): (&str, &str, &str), t: i64) -> Option<f64> {
        let (_, v) = self
            .store
            .online(TENANT, &[name.to_string()], u, s, d, t)
            .expect("online");
        v[0]
    }

    fn offline(
        &self,
        names: &[&str],
        rows: &[(&str, &str, &str, i64)],
        as_of_known: bool,
    ) -> Vec<Vec<Option<f64>>> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let rows: Vec<(String, String, String, i64)> = rows
            .iter()
            .map(|(u, s, d, t)| (u.to_string(), s.to_string(), d.to_string(), *t))
            .collect();
        self.store
            .historical(TENANT, &names, &rows, as_of_known)
            .expect("historical")
            .1
    }
}

/// A distinct event (its own id, as separate real events have).
fn ev(kind: EventKind, user: &str, space: &str, doc: &str, ts: i64, value: f64) -> ValidEvent {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ValidEvent {
        kind,
        user: user.into(),
        doc: doc.into(),
        space: space.into(),
        event_ts_ms: ts,
        value,
        id: format!("e-{n}"),
    }
}

/// A brute-force reading of DESIGN.md's rules, independent of tiles:
/// `(event_ts, ingest_ts, index, seq, event)` in any order.
fn oracle(
    def: &FeatureDef,
    log: &[(i64, i64, u64, u32, ValidEvent)],
    key: (&str, &str, &str),
    t: i64,
    as_of_known: bool,
) -> Option<f64> {
    let entity = def.entity.key(key.0, key.1, key.2).ok()?;
    let mut known: Vec<&(i64, i64, u64, u32, ValidEvent)> = log
        .iter()
        .filter(|(ets, its, _, _, e)| {
            e.kind == def.source
                && *ets <= t
                && (!as_of_known || *its <= t)
                && def.entity.key(&e.user, &e.space, &e.doc).ok().as_deref()
                    == Some(entity.as_str())
        })
        .collect();
    known.sort_by_key(|(a, b, c, d, _)| (*a, *b, *c, *d));
    if let Some(ttl) = def.ttl_ms {
        match known.last() {
            Some((ets, ..)) if t - ets <= ttl => {}
            _ => return None,
        }
    }
    let in_window: Vec<_> = known
        .into_iter()
        .filter(|(ets, ..)| def.window_ms.is_none_or(|w| *ets > t - w))
        .collect();
    match def.aggregation {
        Aggregation::Count => Some(in_window.len() as f64),
        Aggregation::Sum => Some(
            in_window
                .iter()
                .map(|x| (x.4.value * 1e6).round() as i128)
                .sum::<i128>() as f64
                / 1e6,
        ),
        Aggregation::Last => in_window.last().map(|x| x.4.value),
        Aggregation::DistinctUsers => Some(
            in_window
                .iter()
                .map(|x| x.4.user.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .len() as f64,
        ),
        Aggregation::DecayedCount => Some(
            in_window
                .iter()
                .map(|x| decay(t - x.0, def.half_life_ms.unwrap_or(1)))
                .sum(),
        ),
    }
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * (1.0 + x.abs().max(y.abs())),
        _ => false,
    }
}

/// 10,000 random (entity, t) pairs: the online value read at clock t (from
/// tiles updated incrementally, late and out-of-order events included)
/// equals, bit for bit, the offline replay at t with `as_of_known`; and
/// both agree with a brute-force oracle of the rules.
#[test]
fn parity_online_equals_offline_on_10000_random_pairs() {
    let mut fx = Fixture::new(DEFS);
    let mut rng = StdRng::seed_from_u64(0x7e55e7a);
    let users = ["u:a", "u:b", "u:c", "u:d"];
    let spaces = ["ENG", "OPS", "HR"];
    let docs = ["p-1", "p-2", "p-3", "p-4", "p-5"];
    let kinds = [EventKind::View, EventKind::Edit, EventKind::Click];
    // Query times, sorted, so the clock passes each one once.
    let mut queries: Vec<(i64, usize, usize, usize)> = (0..10_000)
        .map(|_| {
            (
                rng.random_range(0..60_000),
                rng.random_range(0..users.len()),
                rng.random_range(0..spaces.len()),
                rng.random_range(0..docs.len()),
            )
        })
        .collect();
    queries.sort();
    let mut log: Vec<(i64, i64, u64, u32, ValidEvent)> = Vec::new();
    let mut online: Vec<Vec<Option<f64>>> = Vec::with_capacity(queries.len());
    let mut q = 0usize;
    let mut clock = 0i64;
    let names: Vec<&str> = fx.defs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    while q < queries.len() {
        clock += rng.random_range(1..40);
        // Answer every query whose time the clock has reached, before
        // anything ingested later is applied.
        while q < queries.len() && queries[q].0 < clock {
            let (t, u, s, d) = queries[q];
            let mut row = Vec::with_capacity(names.len());
            for name in &names {
                row.push(fx.online(name, (users[u], spaces[s], docs[d]), t));
            }
            online.push(row);
            q += 1;
        }
        let n = rng.random_range(1..4);
        let mut batch = Vec::new();
        for _ in 0..n {
            // Mostly on time, some late by up to 15 s, some exact ties.
            let lateness = match rng.random_range(0..10) {
                0..=5 => 0,
                6..=8 => rng.random_range(0..15_000),
                _ => rng.random_range(0..3) * 1000,
            };
            let ts = (clock - lateness).max(0) / 10 * 10;
            batch.push(ev(
                kinds[rng.random_range(0..kinds.len())],
                users[rng.random_range(0..users.len())],
                spaces[rng.random_range(0..spaces.len())],
                docs[rng.random_range(0..docs.len())],
                ts,
                f64::from(rng.random_range(-50..200)) / 4.0,
            ));
        }
        for (seq, e) in batch.iter().enumerate() {
            log.push((e.event_ts_ms, clock, fx.index + 1, seq as u32, e.clone()));
        }
        fx.ingest(clock, batch);
    }
    let rows: Vec<(&str, &str, &str, i64)> = queries
        .iter()
        .map(|(t, u, s, d)| (users[*u], spaces[*s], docs[*d], *t))
        .collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let offline = fx.offline(&name_refs, &rows, true);
    assert_eq!(offline.len(), rows.len(), "rows are never dropped");
    let mut compared = 0usize;
    let mut non_null = 0usize;
    for (i, (on, off)) in online.iter().zip(&offline).enumerate() {
        for (j, def) in fx.defs.iter().enumerate() {
            let (on, off) = (on[j], off[j]);
            assert_eq!(
                on.map(f64::to_bits),
                off.map(f64::to_bits),
                "row {i} {:?} feature {}: online {on:?} != offline {off:?}",
                rows[i],
                def.name
            );
            let (u, s, d, t) = rows[i];
            let want = oracle(def, &log, (u, s, d), t, true);
            assert!(
                close(on, want),
                "row {i} {:?} {}: {on:?} vs oracle {want:?}",
                rows[i],
                def.name
            );
            compared += 1;
            non_null += usize::from(on.is_some_and(|v| v != 0.0));
        }
    }
    assert_eq!(compared, 10_000 * fx.defs.len());
    assert!(
        non_null > compared / 5,
        "the sample exercises real values: {non_null}/{compared}"
    );
    // Without as_of_known, late events count too; the oracle agrees.
    let all = fx.offline(&name_refs, &rows[..2000], false);
    for (i, vals) in all.iter().enumerate() {
        let (u, s, d, t) = rows[i];
        for (j, def) in fx.defs.iter().enumerate() {
            let want = oracle(def, &log, (u, s, d), t, false);
            assert!(
                close(vals[j], want),
                "{:?} {}: {:?} vs {want:?}",
                rows[i],
                def.name,
                vals[j]
            );
        }
    }
}

/// The value the online path serves (through the cache) for `def` of `entity` at `t` equals
/// a fresh evaluation from RocksDB bit for bit.
fn assert_served_is_fresh(
    fx: &Fixture,
    registry: &super::Registry,
    def: &FeatureDef,
    entity: &str,
    t: i64,
) {
    let (feature, _) = registry.indexed(&def.name).expect("registered");
    let wanted = Wanted {
        feature,
        def,
        entity,
    };
    let served = fx
        .store
        .online_value(TENANT, registry.version, wanted, t)
        .expect("served");
    let fresh = fx
        .store
        .evaluate_uncached(TENANT, def, entity, t)
        .expect("fresh");
    assert_eq!(
        served.map(f64::to_bits),
        fresh.map(f64::to_bits),
        "{} {entity} at {t}: served {served:?}, fresh {fresh:?}",
        def.name
    );
}

/// The online cache against fresh evaluations: after a random stream, a clock sweeping
/// forward in small steps (with some steps back) reads every feature of every entity through
/// the cache and directly; windows empty, ttls expire and tile boundaries pass meanwhile, and
/// late events land between sweeps. Every served value must equal the fresh one bit for bit,
/// and the cache must actually serve (or the test proves nothing).
#[test]
fn online_cache_serves_exactly_the_fresh_value() {
    let mut fx = Fixture::new(DEFS);
    let mut rng = StdRng::seed_from_u64(0xcac4e);
    let users = ["u:a", "u:b", "u:c"];
    let spaces = ["ENG", "OPS"];
    let docs = ["p-1", "p-2", "p-3"];
    let kinds = [EventKind::View, EventKind::Edit, EventKind::Click];
    let mut clock = 0i64;
    let mut compared = 0usize;
    let registry = fx.store.registry(TENANT).expect("registry");
    for round in 0..6 {
        for _ in 0..40 {
            clock += rng.random_range(1..200);
            let ts = (clock - rng.random_range(0..8_000)).max(0);
            let e = ev(
                kinds[rng.random_range(0..kinds.len())],
                users[rng.random_range(0..users.len())],
                spaces[rng.random_range(0..spaces.len())],
                docs[rng.random_range(0..docs.len())],
                // Some events from the future of the sweep below.
                if round % 2 == 0 { ts } else { ts + 3_000 },
                f64::from(rng.random_range(-50..200)) / 3.0,
            );
            fx.ingest(clock, vec![e]);
        }
        let start = clock - 10_000;
        let mut t = start;
        while t < clock + 30_000 {
            t += if rng.random_range(0..10) == 0 {
                -700
            } else {
                rng.random_range(1..400)
            };
            for def in &fx.defs {
                for (u, s, d) in [(0, 0, 0), (1, 1, 1), (2, 0, 2)] {
                    let entity = def
                        .entity
                        .key(users[u], spaces[s], docs[d])
                        .expect("entity");
                    assert_served_is_fresh(&fx, &registry, def, &entity, t);
                    compared += 1;
                }
            }
        }
    }
    let (hits, misses) = fx.storage.online_cache().stats();
    assert!(compared > 10_000, "{compared}");
    assert!(
        hits > misses,
        "the cache served: {hits} hits, {misses} misses"
    );
}

const ALL_TIME: &str = r#"
[[feature]]
name = "views"
entity = "user+space"
source = "view"
aggregation = "count"

[[feature]]
name = "edit_sum"
entity = "doc"
source = "edit"
aggregation = "sum"

[[feature]]
name = "readers"
entity = "doc"
source = "view"
aggregation = "distinct_users"

[[feature]]
name = "last_click"
entity = "user"
source = "click"
aggregation = "last"
ttl = "30h"
"#;

/// The merged full tiles an all-time feature's cache row keeps, against fresh evaluations,
/// on a clock of days: live events (the current day), late ones (days back, into tiles
/// already merged) and future ones land between reads, and the clock crosses day boundaries
/// (so merges are extended) and sometimes steps back (so they are not used). Every served
/// value must equal the fresh one bit for bit, and merges must actually be reused.
#[test]
fn merged_full_tiles_serve_exactly_the_fresh_value_across_days() {
    const DAY: i64 = 86_400_000;
    let mut fx = Fixture::new(ALL_TIME);
    let mut rng = StdRng::seed_from_u64(0xda75);
    let users = ["u:a", "u:b"];
    let spaces = ["ENG", "OPS"];
    let docs = ["p-1", "p-2"];
    let kinds = [EventKind::View, EventKind::Edit, EventKind::Click];
    let registry = fx.store.registry(TENANT).expect("registry");
    let mut clock = 3 * DAY;
    let mut compared = 0usize;
    for step in 0..400 {
        clock += if rng.random_range(0..12) == 0 {
            -rng.random_range(0..DAY)
        } else {
            rng.random_range(0..DAY / 6)
        };
        let ts = match rng.random_range(0..10) {
            0 => clock - rng.random_range(DAY..4 * DAY),
            1 => clock + rng.random_range(1..DAY),
            _ => clock - rng.random_range(0..DAY / 24),
        };
        let e = ev(
            kinds[rng.random_range(0..kinds.len())],
            users[rng.random_range(0..users.len())],
            spaces[rng.random_range(0..spaces.len())],
            docs[rng.random_range(0..docs.len())],
            ts.max(0),
            f64::from(rng.random_range(-50..200)) / 7.0,
        );
        if step % 3 != 2 {
            fx.ingest(clock, vec![e]);
        }
        for def in &fx.defs {
            for (u, s, d) in [(0, 0, 0), (1, 1, 1)] {
                let entity = def
                    .entity
                    .key(users[u], spaces[s], docs[d])
                    .expect("entity");
                assert_served_is_fresh(&fx, &registry, def, &entity, clock);
                compared += 1;
            }
        }
    }
    let reused = fx.storage.online_cache().merged_reuses();
    assert!(compared >= 3_200, "{compared}");
    assert!(reused > 100, "merged tiles were reused {reused} times");
}

const SIMPLE: &str = r#"
[[feature]]
name = "views_10s"
entity = "user"
source = "view"
aggregation = "count"
window = "10s"

[[feature]]
name = "last_value"
entity = "user"
source = "view"
aggregation = "last"

[[feature]]
name = "views_ttl"
entity = "user"
source = "view"
aggregation = "count"
ttl = "5s"
"#;

fn view(ts: i64, value: f64) -> ValidEvent {
    ev(EventKind::View, "u:a", "ENG", "p-1", ts, value)
}

const A: (&str, &str, &str) = ("u:a", "ENG", "p-1");

#[test]
fn window_includes_t_and_excludes_t_minus_w() {
    let mut fx = Fixture::new(SIMPLE);
    fx.ingest(100_000, vec![view(20_000, 1.0), view(30_000, 1.0)]);
    // At t = 30 s: the event at 30 s (== t) is in, the one at 20 s (== t - w) is out.
    assert_eq!(fx.online("views_10s", A, 30_000), Some(1.0));
    assert_eq!(fx.online("views_10s", A, 29_999), Some(1.0));
    assert_eq!(fx.online("views_10s", A, 20_000), Some(1.0));
    assert_eq!(fx.online("views_10s", A, 19_999), Some(0.0));
    assert_eq!(fx.online("views_10s", A, 40_000), Some(0.0));
    assert_eq!(fx.online("views_10s", A, 39_999), Some(1.0));
    let off = fx.offline(
        &["views_10s"],
        &[
            ("u:a", "", "", 30_000),
            ("u:a", "", "", 40_000),
            ("u:a", "", "", 39_999),
        ],
        false,
    );
    assert_eq!(off, vec![vec![Some(1.0)], vec![Some(0.0)], vec![Some(1.0)]]);
}

#[test]
fn ties_break_by_event_ts_then_ingest_ts_then_log_index() {
    let mut fx = Fixture::new(SIMPLE);
    // Same event_ts everywhere: ingest_ts decides, then the log index
    // (entries 2 and 3 share ingest_ts), then the position in the entry.
    fx.ingest(50_000, vec![view(10_000, 1.0), view(10_000, 2.0)]);
    fx.ingest(50_000, vec![view(10_000, 3.0)]);
    fx.ingest(40_000, vec![view(10_000, 4.0)]);
    // (10 s, 50 s, index 3, 0) is the greatest tuple: value 3.
    assert_eq!(fx.online("last_value", A, 60_000), Some(3.0));
    assert_eq!(
        fx.offline(&["last_value"], &[("u:a", "", "", 60_000)], false),
        vec![vec![Some(3.0)]]
    );
    // Known only by 45 s: just the event ingested at 40 s.
    assert_eq!(
        fx.offline(&["last_value"], &[("u:a", "", "", 45_000)], true),
        vec![vec![Some(4.0)]]
    );
    // A later event_ts beats any ingest order.
    fx.ingest(30_000, vec![view(10_001, 5.0)]);
    assert_eq!(fx.online("last_value", A, 60_000), Some(5.0));
}

#[test]
fn ttl_expires_identically_online_and_offline() {
    let mut fx = Fixture::new(SIMPLE);
    fx.ingest(10_000, vec![view(10_000, 1.0)]);
    let rows = [
        ("u:a", "", "", 15_000),
        ("u:a", "", "", 15_001),
        ("u:a", "", "", 9_999),
    ];
    assert_eq!(fx.online("views_ttl", A, 15_000), Some(1.0));
    assert_eq!(fx.online("views_ttl", A, 15_001), None);
    assert_eq!(fx.online("views_ttl", A, 9_999), None);
    assert_eq!(
        fx.offline(&["views_ttl"], &rows, false),
        vec![vec![Some(1.0)], vec![None], vec![None]]
    );
    // A new event revives it.
    fx.ingest(20_000, vec![view(19_000, 1.0)]);
    assert_eq!(fx.online("views_ttl", A, 20_000), Some(2.0));
}

#[test]
fn rows_before_any_event_are_null_and_kept_in_order() {
    let mut fx = Fixture::new(SIMPLE);
    fx.ingest(10_000, vec![view(10_000, 7.0)]);
    let rows = [
        ("u:a", "", "", 5_000),
        ("u:zz", "", "", 50_000),
        ("u:a", "", "", 11_000),
        ("u:a", "", "", 5_000),
    ];
    let out = fx.offline(&["last_value", "views_10s"], &rows, false);
    assert_eq!(
        out,
        vec![
            vec![None, Some(0.0)],
            vec![None, Some(0.0)],
            vec![Some(7.0), Some(1.0)],
            vec![None, Some(0.0)],
        ]
    );
}

#[test]
fn late_events_count_offline_unless_as_of_known() {
    let mut fx = Fixture::new(SIMPLE);
    fx.ingest(10_000, vec![view(10_000, 1.0)]);
    // Seen at 10 s: one event.
    assert_eq!(fx.online("views_10s", A, 12_000), Some(1.0));
    // An event that happened at 11 s but arrives at 30 s.
    fx.ingest(30_000, vec![view(11_000, 1.0)]);
    let rows = [("u:a", "", "", 12_000)];
    assert_eq!(
        fx.offline(&["views_10s"], &rows, false),
        vec![vec![Some(2.0)]]
    );
    assert_eq!(
        fx.offline(&["views_10s"], &rows, true),
        vec![vec![Some(1.0)]]
    );
    // Online now sees it too, in the old tile.
    assert_eq!(fx.online("views_10s", A, 12_000), Some(2.0));
}

#[test]
fn redefining_a_feature_rebuilds_its_tiles_from_stored_events() {
    let mut fx = Fixture::new(SIMPLE);
    fx.ingest(10_000, vec![view(1_000, 1.0), view(9_000, 1.0)]);
    let wider = SIMPLE.replace("window = \"10s\"", "window = \"1m\"");
    let defs = parse_features_toml(&wider).expect("valid");
    fx.commit(|a, _| {
        let out = a.apply_registry(TENANT, &defs, &wider, 0).expect("apply");
        assert!(out.changed);
        assert_eq!(out.version, 2);
    });
    fx.defs = defs;
    assert_eq!(fx.online("views_10s", A, 60_000), Some(2.0));
    assert_eq!(fx.store.registry(TENANT).expect("registry").version, 2);
    assert!(fx.def("views_10s").window_ms == Some(60_000));
}

/// A resize's copy of feature state: the events a router did not also send to the new
/// placement (map epoch below the fence) are exported page by page and imported on an empty
/// shard, which then serves exactly the values of a shard that received those events live;
/// the definitions come along with their version; importing again stores nothing.
#[test]
fn exported_events_imported_elsewhere_serve_the_same_values_and_reimport_is_a_no_op() {
    const FENCE: u64 = 5;
    let mut source = Fixture::new(DEFS);
    let mut live = Fixture::new(DEFS);
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let users = ["u:a", "u:b", "u:c"];
    let spaces = ["ENG", "OPS"];
    let docs = ["p-1", "p-2", "p-3", "p-4"];
    let kinds = [EventKind::View, EventKind::Edit, EventKind::Click];
    let mut random_batch = |clock: i64| -> Vec<ValidEvent> {
        (0..3)
            .map(|_| {
                ev(
                    kinds[rng.random_range(0..kinds.len())],
                    users[rng.random_range(0..users.len())],
                    spaces[rng.random_range(0..spaces.len())],
                    docs[rng.random_range(0..docs.len())],
                    clock - rng.random_range(0..2_000),
                    f64::from(rng.random_range(0..40)),
                )
            })
            .collect()
    };
    for step in 1..=40i64 {
        let clock = step * 500;
        let old_map = random_batch(clock);
        // Before the fence: written with old maps; `live` stands for what a shard that got
        // them directly holds, at the same log positions.
        source.ingest_at(clock, old_map.clone(), FENCE - 1);
        live.ingest_at(clock, old_map, FENCE - 1);
        // Sent with the resize's map: the router wrote these to the new placement itself.
        let new_map = random_batch(clock);
        source.ingest_at(clock, new_map, FENCE);
        live.commit(|_, _| {});
    }
    let shared = source.export_all(RowSet::Shared, FENCE);
    let doc_rows = source.export_all(RowSet::Doc, FENCE);
    assert_eq!(
        shared.len(),
        40 * 3,
        "each old-map event once, new-map ones skipped"
    );
    assert_eq!(doc_rows.len(), 40 * 3);
    assert!(shared.iter().all(|(_, epoch)| *epoch == FENCE - 1));
    assert_eq!(
        source.export_all(RowSet::Shared, 0).len(),
        40 * 6,
        "no filter: all"
    );

    let mut dest = Fixture::empty(DEFS);
    let stored = dest.import(RowSet::Shared, shared.clone(), DEFS)
        + dest.import(RowSet::Doc, doc_rows.clone(), DEFS);
    assert!(stored > 0);
    assert_eq!(dest.store.registry(TENANT).expect("registry").version, 4);
    let names: Vec<String> = dest.defs.iter().map(|d| d.name.clone()).collect();
    let compare = |dest: &Fixture| {
        for t in (0..24_000).step_by(750) {
            for u in users {
                for s in spaces {
                    for d in docs {
                        for name in &names {
                            let want = live.online(name, (u, s, d), t);
                            let got = dest.online(name, (u, s, d), t);
                            assert!(
                                close(want, got),
                                "{name} for ({u}, {s}, {d}) at {t}: live {want:?}, copied {got:?}"
                            );
                        }
                    }
                }
            }
        }
    };
    compare(&dest);
    let again =
        dest.import(RowSet::Shared, shared, DEFS) + dest.import(RowSet::Doc, doc_rows, DEFS);
    assert_eq!(again, 0, "a redone copy stores nothing");
    compare(&dest);
}

const COUNTS: &str = r#"
[[feature]]
name = "views"
entity = "user+space"
source = "view"
aggregation = "count"

[[feature]]
name = "doc_views_10s"
entity = "doc"
source = "view"
aggregation = "count"
window = "10s"
"#;

/// Cached counts absorb live events instead of being dropped by them (streaming
/// aggregation): events arrive one write at a time (mostly live, some late, some out of the
/// window, some from the future) and every entity is read right after each write, through
/// the cache and fresh. Served must equal fresh bit for bit; and since each write touches the
/// entities read next, a cache that only dropped values would miss about as often as it
/// hits: absorbing must make hits clearly dominate.
#[test]
fn cached_counts_absorb_live_events_exactly() {
    let mut fx = Fixture::new(COUNTS);
    let mut rng = StdRng::seed_from_u64(0xc0_47);
    let users = ["u:a", "u:b"];
    let docs = ["p-1", "p-2"];
    let registry = fx.store.registry(TENANT).expect("registry");
    let mut clock = 100_000i64;
    let mut compared = 0usize;
    for _ in 0..600 {
        clock += rng.random_range(0..300);
        let ts = match rng.random_range(0..10) {
            0 => clock - rng.random_range(0..30_000),
            1 => clock + rng.random_range(1..5_000),
            _ => clock - rng.random_range(0..1_000),
        };
        let e = ev(
            EventKind::View,
            users[rng.random_range(0..users.len())],
            "ENG",
            docs[rng.random_range(0..docs.len())],
            ts.max(0),
            1.0,
        );
        fx.ingest(clock, vec![e]);
        for def in &fx.defs {
            for i in 0..2 {
                let entity = def.entity.key(users[i], "ENG", docs[i]).expect("entity");
                assert_served_is_fresh(&fx, &registry, def, &entity, clock);
                compared += 1;
            }
        }
    }
    let (hits, misses) = fx.storage.online_cache().stats();
    assert_eq!(compared, 2_400);
    assert!(
        hits > 3 * misses,
        "counts absorbed live events: {hits} hits, {misses} misses"
    );
}

/// Events exactly once: a shard that receives every batch twice (a client's
/// retry after a lost acknowledgement), some again much later, and some
/// events twice within one batch, serves the same value of every feature,
/// online and offline, as a shard that received each event once; the
/// duplicate applications report zero events applied.
#[test]
fn replayed_batches_and_duplicate_events_change_no_feature_value() {
    let mut once = Fixture::new(DEFS);
    let mut twice = Fixture::new(DEFS);
    let mut rng = StdRng::seed_from_u64(0x1d_e0);
    let users = ["u:a", "u:b"];
    let spaces = ["ENG", "OPS"];
    let docs = ["p-1", "p-2", "p-3"];
    let kinds = [EventKind::View, EventKind::Edit, EventKind::Click];
    let mut batches = Vec::new();
    for step in 1..=30i64 {
        let clock = step * 400;
        let batch: Vec<ValidEvent> = (0..4)
            .map(|_| {
                ev(
                    kinds[rng.random_range(0..kinds.len())],
                    users[rng.random_range(0..users.len())],
                    spaces[rng.random_range(0..spaces.len())],
                    docs[rng.random_range(0..docs.len())],
                    clock - rng.random_range(0..1_500),
                    f64::from(rng.random_range(1..30)),
                )
            })
            .collect();
        once.ingest(clock, batch.clone());
        let mut doubled = batch.clone();
        doubled.push(batch[0].clone());
        twice.ingest(clock, doubled);
        let again = apply_counting(&mut twice, clock + 1, batch.clone());
        assert_eq!(again, 0, "a retried batch applies nothing");
        batches.push((clock, batch));
    }
    for (clock, batch) in batches.iter().step_by(7) {
        assert_eq!(apply_counting(&mut twice, clock + 9_000, batch.clone()), 0);
    }
    let names: Vec<String> = once.defs.iter().map(|d| d.name.clone()).collect();
    let mut rows = Vec::new();
    for t in (0..14_000).step_by(500) {
        for u in users {
            for s in spaces {
                for d in docs {
                    for name in &names {
                        let (want, got) = (
                            once.online(name, (u, s, d), t),
                            twice.online(name, (u, s, d), t),
                        );
                        assert!(
                            close(want, got),
                            "{name} for ({u}, {s}, {d}) at {t}: once {want:?}, replayed {got:?}"
                        );
                    }
                    rows.push((u, s, d, t));
                }
            }
        }
    }
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for as_of_known in [false, true] {
        let want = once.offline(&name_refs, &rows, as_of_known);
        let got = twice.offline(&name_refs, &rows, as_of_known);
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert!(
                w.iter().zip(g).all(|(a, b)| close(*a, *b)),
                "training row {i} {:?} (as_of_known {as_of_known}): once {w:?}, replayed {g:?}",
                rows[i]
            );
        }
    }
}

/// A resize's copy carries event ids: after a shard imports a batch's rows,
/// the same batch sent to it live (a client retrying across the resize)
/// changes nothing.
#[test]
fn an_imported_event_is_not_counted_again_when_its_batch_is_retried() {
    let mut source = Fixture::new(DEFS);
    let batch: Vec<ValidEvent> = (0..5)
        .map(|i| ev(EventKind::View, "u:a", "ENG", "p-1", 1_000 + i * 100, 1.0))
        .collect();
    source.ingest(2_000, batch.clone());
    let mut dest = Fixture::empty(DEFS);
    let shared = source.export_all(RowSet::Shared, 0);
    let doc_rows = source.export_all(RowSet::Doc, 0);
    assert!(
        dest.import(RowSet::Shared, shared, DEFS) + dest.import(RowSet::Doc, doc_rows, DEFS) > 0
    );
    let before: Vec<Option<f64>> = ["us_views_5s", "doc_viewers_10s", "doc_popularity"]
        .iter()
        .map(|n| dest.online(n, ("u:a", "ENG", "p-1"), 2_500))
        .collect();
    assert_eq!(before[0], Some(5.0), "the copy counts each view once");
    assert_eq!(apply_counting(&mut dest, 3_000, batch), 0);
    let after: Vec<Option<f64>> = ["us_views_5s", "doc_viewers_10s", "doc_popularity"]
        .iter()
        .map(|n| dest.online(n, ("u:a", "ENG", "p-1"), 2_500))
        .collect();
    assert_eq!(before, after);
}

/// Applies `events` as one log entry; returns how many the shard applied.
fn apply_counting(fx: &mut Fixture, ingest_ts: i64, events: Vec<ValidEvent>) -> u32 {
    let events: Vec<(ValidEvent, bool)> = events.into_iter().map(|e| (e, true)).collect();
    let mut applied = 0;
    fx.commit(|a, index| {
        applied = a
            .apply_events(index, ingest_ts, TENANT, &events, 0)
            .expect("apply events")
            .events;
    });
    applied
}

/// The other order of a resize: the new shard receives a retried batch live
/// before the mover copies the original from the old shard. The copy is not
/// stored again (the live apply stored what this shard keeps of it).
#[test]
fn a_copy_of_an_event_that_arrived_live_is_not_stored_again() {
    let mut source = Fixture::new(DEFS);
    let batch: Vec<ValidEvent> = (0..4)
        .map(|i| ev(EventKind::View, "u:a", "ENG", "p-1", 1_000 + i * 100, 1.0))
        .collect();
    source.ingest(2_000, batch.clone());
    let mut dest = Fixture::new(DEFS);
    assert_eq!(apply_counting(&mut dest, 2_100, batch), 4);
    let shared = source.export_all(RowSet::Shared, 0);
    let doc_rows = source.export_all(RowSet::Doc, 0);
    let stored =
        dest.import(RowSet::Shared, shared, DEFS) + dest.import(RowSet::Doc, doc_rows, DEFS);
    assert_eq!(stored, 0, "every copied row arrived live already");
    assert_eq!(
        dest.online("us_views_5s", ("u:a", "ENG", "p-1"), 2_500),
        Some(4.0)
    );
}

/// Applies `events` as one log entry, telling the shard it holds an event's
/// document when `home` says so (what a router computes from its map).
fn ingest_homed(
    fx: &mut Fixture,
    ingest_ts: i64,
    events: &[ValidEvent],
    home: impl Fn(&str) -> bool,
) {
    let events: Vec<(ValidEvent, bool)> =
        events.iter().map(|e| (e.clone(), home(&e.doc))).collect();
    fx.commit(|a, index| {
        a.apply_events(index, ingest_ts, TENANT, &events, 0)
            .expect("apply events");
    });
}

/// The doc-keyed rows of `doc` exported from `fx`, as a mover sends them to its new shard.
fn doc_rows_of(fx: &Fixture, doc: &str) -> Vec<(EventRow, u64)> {
    fx.export_all(RowSet::Doc, 0)
        .into_iter()
        .filter(|(row, _)| row.doc == doc)
        .collect()
}

/// BUG-6 (docs/reliability.md): shard A gives document p-1 to shard B (a
/// partial drop), events keep flowing to both, then p-1 comes back to A.
/// Every doc-keyed value on A must then equal a shard's that held p-1 all
/// along. Before the fix A kept p-1's old rows and tiles through the drop
/// (so they counted again), and its id markers said "stored here" for the
/// events it got while B held p-1 (so their copies were refused).
#[test]
fn a_shard_given_a_document_back_counts_each_of_its_events_once() {
    let mut a = Fixture::new(DEFS);
    let mut b = Fixture::new(DEFS);
    let mut all_along = Fixture::new(DEFS);
    let mut rng = StdRng::seed_from_u64(0xb0_66);
    let docs = ["p-1", "p-2"];
    let kinds = [EventKind::View, EventKind::Click, EventKind::Edit];
    let mut batch = |clock: i64| -> Vec<ValidEvent> {
        (0..6)
            .map(|_| {
                ev(
                    kinds[rng.random_range(0..kinds.len())],
                    ["u:a", "u:b"][rng.random_range(0..2)],
                    "ENG",
                    docs[rng.random_range(0..docs.len())],
                    clock - rng.random_range(0..1_000),
                    f64::from(rng.random_range(1..9)),
                )
            })
            .collect()
    };
    let mut clock = 0;
    let mut phase = |a: &mut Fixture, b: &mut Fixture, all: &mut Fixture, a_has_p1: bool| {
        for _ in 0..8 {
            clock += 400;
            let events = batch(clock);
            ingest_homed(a, clock, &events, |d| d == "p-2" || a_has_p1);
            ingest_homed(b, clock, &events, |d| d == "p-1" && !a_has_p1);
            ingest_homed(all, clock, &events, |_| true);
        }
    };
    phase(&mut a, &mut b, &mut all_along, true);
    let moved = doc_rows_of(&a, "p-1");
    assert!(!moved.is_empty());
    b.import(RowSet::Doc, moved, DEFS);
    a.commit(|f, _| f.drop_documents(TENANT, |d| d != "p-1").expect("drop"));
    assert!(
        doc_rows_of(&a, "p-1").is_empty(),
        "the drop took p-1's rows"
    );
    phase(&mut a, &mut b, &mut all_along, false);
    let back = doc_rows_of(&b, "p-1");
    let stored = a.import(RowSet::Doc, back.clone(), DEFS);
    assert_eq!(
        stored as usize,
        back.len() * 2,
        "every event's doc and user×doc rows"
    );
    b.commit(|f, _| f.drop_documents(TENANT, |d| d != "p-1").expect("drop"));
    phase(&mut a, &mut b, &mut all_along, true);
    let doc_keyed: Vec<&FeatureDef> = DEFS_DOC_KEYED.iter().map(|n| all_along.def(n)).collect();
    let mut compared = 0;
    for t in (0..clock + 30_000).step_by(700) {
        for d in docs {
            for u in ["u:a", "u:b"] {
                for def in &doc_keyed {
                    let want = all_along.online(&def.name, (u, "ENG", d), t);
                    let got = a.online(&def.name, (u, "ENG", d), t);
                    assert!(
                        close(want, got),
                        "{} for ({u}, {d}) at {t}: held all along {want:?}, given back {got:?}",
                        def.name
                    );
                    compared += usize::from(want.is_some());
                }
            }
        }
    }
    assert!(compared > 100, "only {compared} non-null values compared");
    assert!(
        doc_rows_of(&b, "p-1").is_empty(),
        "B dropped p-1 when it went back"
    );
}

/// The doc-keyed features of [`DEFS`].
const DEFS_DOC_KEYED: [&str; 4] = [
    "doc_edits_sum_20s",
    "doc_viewers_10s",
    "doc_popularity",
    "ud_clicks",
];
