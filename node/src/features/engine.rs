//! The one evaluation both paths run: merge the tiles wholly inside the
//! window, fold the raw edge events around them, then apply the ttl.
//!
//! Point-in-time rules (DESIGN.md "features.toml"): a window `w` at `t`
//! covers `t - w < event_ts <= t`; ttl makes a value null when the newest
//! event at or before `t` is older than `t - ttl`; ties are ordered by
//! (event_ts, ingest_ts, Raft log index).

use super::definition::{Aggregation, FeatureDef};
use super::tiles::{Acc, EventRow, Tile};

/// Where evaluation reads tiles and raw events from: RocksDB online, an
/// in-memory replay offline. Both hold tiles built by `Tile::add`.
pub trait FeatureSource {
    type Error;

    /// Tiles of `def` for `entity` with index in `[from, to]`, ascending.
    fn tiles(
        &self,
        def: &FeatureDef,
        entity: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Tile)>, Self::Error>;

    /// Raw events of `def`'s source kind for `entity` with
    /// `lo < event_ts <= hi`, in tie-break order.
    fn events(
        &self,
        def: &FeatureDef,
        entity: &str,
        lo: i64,
        hi: i64,
    ) -> Result<Vec<EventRow>, Self::Error>;

    /// The event time of the first event of `def`'s source kind for `entity` with
    /// `event_ts > t`, if any: an event that will enter the value as time passes. A source
    /// that cannot tell answers `Some(t + 1)`, which makes a value valid at `t` only.
    fn first_event_after(
        &self,
        def: &FeatureDef,
        entity: &str,
        t: i64,
    ) -> Result<Option<i64>, Self::Error> {
        let _ = (def, entity);
        Ok(Some(t.saturating_add(1)))
    }

    /// The newest non-empty tile with index `<= to`.
    fn newest_tile(
        &self,
        def: &FeatureDef,
        entity: &str,
        to: i64,
    ) -> Result<Option<(i64, Tile)>, Self::Error>;
}

/// The value of `def` for `entity` at time `t` (epoch ms); `None` is null.
pub fn evaluate<S: FeatureSource>(
    def: &FeatureDef,
    src: &S,
    entity: &str,
    t: i64,
) -> Result<Option<f64>, S::Error> {
    if has_reusable_prefix(def) {
        return Ok(evaluate_all_time(def, src, entity, t, None)?.0);
    }
    let tile = def.tile_ms();
    // Tiles up to `last_full` end at or before t.
    let last_full = t.div_euclid(tile) - 1;
    let right_edge_lo = last_full.saturating_add(1).saturating_mul(tile);
    let mut acc = Acc::default();
    match def.window_ms {
        Some(w) => {
            let lo = t.saturating_sub(w);
            // The first tile starting at or after lo.
            let first_full = lo.div_euclid(tile) + i64::from(lo.rem_euclid(tile) != 0);
            if first_full > last_full {
                for ev in src.events(def, entity, lo, t)? {
                    acc.add_event(def, &ev, t);
                }
            } else {
                let current = merge_tiles(def, src, entity, first_full, last_full, t, &mut acc)?;
                for ev in src.events(def, entity, lo, first_full.saturating_mul(tile))? {
                    acc.add_event(def, &ev, t);
                }
                fold_right_edge(def, src, entity, t, right_edge_lo, current, &mut acc)?;
            }
        }
        None => {
            let current = merge_tiles(def, src, entity, i64::MIN, last_full, t, &mut acc)?;
            fold_right_edge(def, src, entity, t, right_edge_lo, current, &mut acc)?;
        }
    }
    with_ttl(def, src, entity, t, acc.value(def))
}

/// Whether `def`'s full tiles, once merged, stay valid as time passes: an all-time window
/// keeps every full tile, and every aggregation but the decayed count merges tiles without
/// regard to when it is read. Only new events in those tiles (late ones) change the merge.
pub fn has_reusable_prefix(def: &FeatureDef) -> bool {
    def.window_ms.is_none() && def.aggregation != Aggregation::DecayedCount
}

/// The full tiles of an all-time feature merged up to tile index `.0` (inclusive).
pub type MergedPrefix = (i64, Acc);

/// [`evaluate`] for a feature with [`has_reusable_prefix`], starting from `known` (full tiles
/// already merged, from an earlier evaluation) instead of reading every tile again. Returns
/// the value and the full tiles merged up to `t`'s last full tile, to reuse next time.
pub fn evaluate_all_time<S: FeatureSource>(
    def: &FeatureDef,
    src: &S,
    entity: &str,
    t: i64,
    known: Option<MergedPrefix>,
) -> Result<(Option<f64>, MergedPrefix), S::Error> {
    let tile = def.tile_ms();
    let last_full = t.div_euclid(tile) - 1;
    let right_edge_lo = last_full.saturating_add(1).saturating_mul(tile);
    let (from, mut acc) = match known {
        Some((merged_to, acc)) if merged_to <= last_full => (merged_to.saturating_add(1), acc),
        _ => (i64::MIN, Acc::default()),
    };
    let current = merge_tiles(def, src, entity, from, last_full, t, &mut acc)?;
    let prefix = (last_full, acc.clone());
    fold_right_edge(def, src, entity, t, right_edge_lo, current, &mut acc)?;
    Ok((with_ttl(def, src, entity, t, acc.value(def))?, prefix))
}

/// `value`, or null when `def`'s ttl has passed since the newest event at or before `t`.
fn with_ttl<S: FeatureSource>(
    def: &FeatureDef,
    src: &S,
    entity: &str,
    t: i64,
    value: Option<f64>,
) -> Result<Option<f64>, S::Error> {
    if let Some(ttl) = def.ttl_ms {
        let newest = newest_event_ts(def, src, entity, t)?;
        match newest {
            Some(ts) if t.saturating_sub(ts) <= ttl => {}
            _ => return Ok(None),
        }
    }
    Ok(value)
}

/// Merges the full tiles `from..=last_full` into `acc` and returns the current (partial) tile,
/// `last_full + 1`, if the source has one: both come from one read.
fn merge_tiles<S: FeatureSource>(
    def: &FeatureDef,
    src: &S,
    entity: &str,
    from: i64,
    last_full: i64,
    t: i64,
    acc: &mut Acc,
) -> Result<Option<Tile>, S::Error> {
    let mut current = None;
    for (i, tl) in src.tiles(def, entity, from, last_full.saturating_add(1))? {
        if i > last_full {
            current = Some(tl);
        } else {
            acc.merge_tile(def, i, &tl, t);
        }
    }
    Ok(current)
}

/// Folds the events of the current tile up to `t`. When every event of that tile is at or
/// before `t` and the aggregation does not depend on where in the tile an event fell (all but
/// the decayed count, whose tile weights are relative to the tile's end), merging the tile is
/// bit for bit the same as folding its events (tiles are exact: integer counts, fixed-point
/// sums, the tie-break max, a set) and costs one row instead of every event of the day.
fn fold_right_edge<S: FeatureSource>(
    def: &FeatureDef,
    src: &S,
    entity: &str,
    t: i64,
    right_edge_lo: i64,
    current: Option<Tile>,
    acc: &mut Acc,
) -> Result<(), S::Error> {
    if let Some(tl) = current {
        if def.aggregation != Aggregation::DecayedCount && tl.max_ts.is_some_and(|m| m <= t) {
            acc.merge_tile(def, right_edge_lo.div_euclid(def.tile_ms()), &tl, t);
            return Ok(());
        }
    }
    for ev in src.events(def, entity, right_edge_lo, t)? {
        acc.add_event(def, &ev, t);
    }
    Ok(())
}

/// The event time of the newest event at or before `t` (what a ttl is measured from): the
/// current tile's raw events, else the newest earlier tile.
fn newest_event_ts<S: FeatureSource>(
    def: &FeatureDef,
    src: &S,
    entity: &str,
    t: i64,
) -> Result<Option<i64>, S::Error> {
    let tile = def.tile_ms();
    let last_full = t.div_euclid(tile) - 1;
    let right_edge_lo = last_full.saturating_add(1).saturating_mul(tile);
    Ok(match src.events(def, entity, right_edge_lo, t)?.last() {
        Some(ev) => Some(ev.order.event_ts),
        None => src
            .newest_tile(def, entity, last_full)?
            .and_then(|(_, tl)| tl.max_ts),
    })
}

/// The first time after `t` at which `evaluate(def, src, entity, ·)` may return something
/// else than at `t`, given the events stored now (exclusive bound; `t + 1` when it cannot
/// say). Between `t` and that bound no event enters or leaves the window and no ttl expires,
/// and count, sum, last and distinct users depend only on which events are in; a decayed
/// count changes with every instant, so it is never valid past `t`.
pub fn valid_until<S: FeatureSource>(
    def: &FeatureDef,
    src: &S,
    entity: &str,
    t: i64,
) -> Result<i64, S::Error> {
    let instant = t.saturating_add(1);
    if def.aggregation == Aggregation::DecayedCount {
        return Ok(instant);
    }
    let mut bound = src
        .first_event_after(def, entity, t)?
        .unwrap_or(i64::MAX)
        .max(instant);
    let tile = def.tile_ms();
    let last_full = t.div_euclid(tile) - 1;
    let right_edge_lo = last_full.saturating_add(1).saturating_mul(tile);
    // At the next tile boundary the current tile's raw events are read as a tile instead:
    // the same events, but a float sum may round differently, and a served value must equal
    // a fresh evaluation bit for bit.
    bound = bound.min(right_edge_lo.saturating_add(tile));
    if let Some(w) = def.window_ms {
        // An event at `e` leaves the window at `e + w`.
        let lo = t.saturating_sub(w);
        let first_full = lo.div_euclid(tile) + i64::from(lo.rem_euclid(tile) != 0);
        let raw_hi = if first_full > last_full {
            t
        } else {
            // Tiled events are no older than the first full tile's start.
            bound = bound.min(first_full.saturating_mul(tile).saturating_add(w));
            first_full.saturating_mul(tile)
        };
        if let Some(oldest) = src.events(def, entity, lo, raw_hi)?.first() {
            bound = bound.min(oldest.order.event_ts.saturating_add(w));
        }
    }
    if let Some(ttl) = def.ttl_ms {
        let newest = newest_event_ts(def, src, entity, t)?;
        if let Some(ts) = newest {
            if t.saturating_sub(ts) <= ttl {
                // Null from the first instant more than `ttl` after the newest event.
                bound = bound.min(ts.saturating_add(ttl).saturating_add(1));
            }
        }
    }
    Ok(bound.max(instant))
}
