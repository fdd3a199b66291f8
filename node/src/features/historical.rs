//! The offline path: `historical_features` replays a entity's raw events
//! into tiles as of each row's time, then runs the same evaluation as the
//! online path.

use std::collections::BTreeMap;
use std::convert::Infallible;

use super::definition::FeatureDef;
use super::engine::{evaluate, FeatureSource};
use super::tiles::{tile_of, EventRow, Tile};

/// Tiles and edge events of one feature and entity, rebuilt from raw events
/// known as of `t`.
pub struct ReplaySource<'a> {
    events: Vec<&'a EventRow>,
    tiles: BTreeMap<i64, Tile>,
}

impl<'a> ReplaySource<'a> {
    /// Keeps the events of `def`'s source kind (and, with `as_of_known`,
    /// only those ingested by `t`) and folds them into tiles. Events after
    /// `t` may stay: evaluation never reads past `t`.
    pub fn new(def: &FeatureDef, raw: &'a [EventRow], t: i64, as_of_known: bool) -> Self {
        let events: Vec<&EventRow> = raw
            .iter()
            .filter(|e| e.kind == def.source && (!as_of_known || e.order.ingest_ts <= t))
            .collect();
        let tile_ms = def.tile_ms();
        let mut tiles: BTreeMap<i64, Tile> = BTreeMap::new();
        for ev in &events {
            let i = tile_of(ev.order.event_ts, tile_ms);
            tiles.entry(i).or_default().add(def, i, ev);
        }
        Self { events, tiles }
    }
}

impl FeatureSource for ReplaySource<'_> {
    type Error = Infallible;

    fn tiles(
        &self,
        _def: &FeatureDef,
        _entity: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Tile)>, Infallible> {
        if from > to {
            return Ok(Vec::new());
        }
        Ok(self
            .tiles
            .range(from..=to)
            .map(|(i, t)| (*i, t.clone()))
            .collect())
    }

    fn events(
        &self,
        _def: &FeatureDef,
        _entity: &str,
        lo: i64,
        hi: i64,
    ) -> Result<Vec<EventRow>, Infallible> {
        // `raw` is in key order, which is the tie-break order.
        Ok(self
            .events
            .iter()
            .filter(|e| e.order.event_ts > lo && e.order.event_ts <= hi)
            .map(|e| (*e).clone())
            .collect())
    }

    fn newest_tile(
        &self,
        _def: &FeatureDef,
        _entity: &str,
        to: i64,
    ) -> Result<Option<(i64, Tile)>, Infallible> {
        Ok(self
            .tiles
            .range(..=to)
            .next_back()
            .map(|(i, t)| (*i, t.clone())))
    }
}

/// The offline value of `def` at `t` over `raw` (one entity's events, in
/// tie-break order).
pub fn historical_value(
    def: &FeatureDef,
    raw: &[EventRow],
    entity: &str,
    t: i64,
    as_of_known: bool,
) -> Option<f64> {
    let src = ReplaySource::new(def, raw, t, as_of_known);
    match evaluate(def, &src, entity, t) {
        Ok(v) => v,
        Err(never) => match never {},
    }
}
