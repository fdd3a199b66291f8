//! Mergeable aggregation tiles: the state both the online and the offline
//! path fold events into.
//!
//! A tile covers event times `(i*T, (i+1)*T]` of one feature and entity.
//! Everything in it is exact and independent of the order events arrive in
//! (integer counts, fixed-point sums, a max by the tie-break order, a set),
//! so a tile updated online as late events trickle in is bit for bit the
//! tile the offline path rebuilds from the raw events. That is what makes
//! online/offline parity hold by construction rather than by luck.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use tessera_proto::EventKind;

use super::definition::{Aggregation, FeatureDef};

/// Fixed-point scale of `sum` (micro-units).
pub const SUM_SCALE: f64 = 1e6;
/// Fixed-point scale of decayed weights inside a tile (2^40).
pub const DECAY_SCALE: f64 = 1_099_511_627_776.0;

/// The total order of events: DESIGN.md's tie-break (event_ts, ingest_ts,
/// Raft log index), then the position inside the log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Order {
    pub event_ts: i64,
    pub ingest_ts: i64,
    pub index: u64,
    pub seq: u32,
}

/// A stored raw event: what edge reads and offline replays fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    pub order: Order,
    pub kind: EventKind,
    pub user: String,
    pub doc: String,
    pub space: String,
    pub value: f64,
    /// The event's id (see `tessera_proto::Event::id`); empty for rows
    /// stored before events had ids.
    pub id: String,
}

/// Partial aggregate of one feature, entity and time slice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tile {
    pub count: u64,
    pub sum_micro: i128,
    pub last: Option<(Order, f64)>,
    pub users: BTreeSet<String>,
    /// Σ 2^(-(tile_end - event_ts)/half_life), fixed point.
    pub decayed_fp: u128,
    pub max_ts: Option<i64>,
}

/// The tile index holding `event_ts` for width `tile_ms`: tiles are closed
/// on the right like windows, so an event at exactly `i*T` belongs to tile `i-1`.
pub fn tile_of(event_ts: i64, tile_ms: i64) -> i64 {
    (event_ts - 1).div_euclid(tile_ms)
}

/// The (inclusive) end time of tile `i`.
pub fn tile_end(i: i64, tile_ms: i64) -> i64 {
    i.saturating_add(1).saturating_mul(tile_ms)
}

/// The decay weight of an event `age_ms` old.
pub fn decay(age_ms: i64, half_life_ms: i64) -> f64 {
    (-(age_ms as f64) / half_life_ms as f64).exp2()
}

impl Tile {
    /// Folds one event into the tile `i` of `def`.
    pub fn add(&mut self, def: &FeatureDef, i: i64, ev: &EventRow) {
        self.count += 1;
        self.max_ts = Some(
            self.max_ts
                .map_or(ev.order.event_ts, |m| m.max(ev.order.event_ts)),
        );
        match def.aggregation {
            Aggregation::Sum => self.sum_micro += (ev.value * SUM_SCALE).round() as i128,
            Aggregation::Last => {
                if self.last.is_none_or(|(o, _)| ev.order > o) {
                    self.last = Some((ev.order, ev.value));
                }
            }
            Aggregation::DistinctUsers => {
                self.users.insert(ev.user.clone());
            }
            Aggregation::DecayedCount => {
                let hl = def.half_life_ms.unwrap_or(1);
                let age = tile_end(i, def.tile_ms()) - ev.order.event_ts;
                self.decayed_fp += (decay(age, hl) * DECAY_SCALE).round() as u128;
            }
            Aggregation::Count => {}
        }
    }
}

/// The running fold of one evaluation: tiles first (ascending), then raw
/// edge events (ascending). Both paths call it in the same order.
#[derive(Debug, Clone, Default)]
pub struct Acc {
    count: u64,
    sum_micro: i128,
    last: Option<(Order, f64)>,
    users: BTreeSet<String>,
    decayed: f64,
}

impl Acc {
    /// Merges a whole tile evaluated at `t`.
    pub fn merge_tile(&mut self, def: &FeatureDef, i: i64, tile: &Tile, t: i64) {
        self.count += tile.count;
        self.sum_micro += tile.sum_micro;
        if let Some((o, v)) = tile.last {
            if self.last.is_none_or(|(lo, _)| o > lo) {
                self.last = Some((o, v));
            }
        }
        self.users.extend(tile.users.iter().cloned());
        if let (Aggregation::DecayedCount, Some(hl)) = (def.aggregation, def.half_life_ms) {
            let age = t - tile_end(i, def.tile_ms());
            self.decayed += (tile.decayed_fp as f64 / DECAY_SCALE) * decay(age, hl);
        }
    }

    /// Folds one raw event evaluated at `t`.
    pub fn add_event(&mut self, def: &FeatureDef, ev: &EventRow, t: i64) {
        self.count += 1;
        self.sum_micro += (ev.value * SUM_SCALE).round() as i128;
        if self.last.is_none_or(|(o, _)| ev.order > o) {
            self.last = Some((ev.order, ev.value));
        }
        if def.aggregation == Aggregation::DistinctUsers {
            self.users.insert(ev.user.clone());
        }
        if let (Aggregation::DecayedCount, Some(hl)) = (def.aggregation, def.half_life_ms) {
            self.decayed += decay(t - ev.order.event_ts, hl);
        }
    }

    /// The feature value (before ttl).
    pub fn value(&self, def: &FeatureDef) -> Option<f64> {
        match def.aggregation {
            Aggregation::Count => Some(self.count as f64),
            Aggregation::Sum => Some(self.sum_micro as f64 / SUM_SCALE),
            Aggregation::Last => self.last.map(|(_, v)| v),
            Aggregation::DistinctUsers => Some(self.users.len() as f64),
            Aggregation::DecayedCount => Some(self.decayed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_are_closed_on_the_right() {
        assert_eq!(tile_of(1000, 1000), 0);
        assert_eq!(tile_of(1001, 1000), 1);
        assert_eq!(tile_of(1, 1000), 0);
        assert_eq!(tile_of(0, 1000), -1);
        assert_eq!(tile_end(0, 1000), 1000);
        assert_eq!(tile_end(-1, 1000), 0);
    }
}
