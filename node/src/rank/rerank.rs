//! The second phase on the node: rescore the first phase's candidates with a rank profile over
//! feature values read from this shard's own feature store, in the same request (one hop).

use std::collections::HashMap;

use super::profile::{Explained, RankProfile};
use crate::features::store::entity_of;
use crate::features::{FeatureError, FeatureStore, Registry};

/// One first-phase candidate: its id, BM25 score and space (for user×space features).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub bm25: f32,
    pub space: String,
}

/// A reranked hit. `score` is the profile's score in `f32`, the precision hits travel in, so
/// that the order here, the router's merge and the cursor all compare the same numbers.
#[derive(Debug, Clone)]
pub struct Reranked {
    pub id: String,
    pub score: f32,
    pub explained: Explained,
}

/// Rescores every candidate for `user` at time `t_ms` and orders them by (score desc, id asc).
/// Feature values come from the store's online cache (see `features::cache`), so repeated
/// entities (the user, the user's spaces, popular documents) cost a hash lookup.
pub fn rerank(
    profile: &RankProfile,
    registry: &Registry,
    store: &FeatureStore,
    tenant: &str,
    user: &str,
    candidates: Vec<Candidate>,
    t_ms: i64,
) -> Result<Vec<Reranked>, FeatureError> {
    let mut defs = Vec::with_capacity(profile.terms.len());
    for term in &profile.terms {
        let def = registry
            .get(&term.feature)
            .ok_or_else(|| FeatureError::UnknownFeature(term.feature.clone()))?;
        defs.push(def);
    }
    // Each distinct (feature, entity) once: user and user×space values repeat across
    // candidates (a page spans a few spaces).
    let mut entities: Vec<Vec<usize>> = Vec::with_capacity(candidates.len());
    let mut distinct: HashMap<(usize, String), usize, foldhash::fast::RandomState> =
        HashMap::default();
    let mut wanted_keys: Vec<(usize, String)> = Vec::new();
    for c in &candidates {
        let mut slots = Vec::with_capacity(defs.len());
        for (d, def) in defs.iter().enumerate() {
            let key = (d, entity_of(def, user, &c.space, &c.id)?);
            let slot = match distinct.get(&key) {
                Some(&slot) => slot,
                None => {
                    let slot = wanted_keys.len();
                    wanted_keys.push(key.clone());
                    distinct.insert(key, slot);
                    slot
                }
            };
            slots.push(slot);
        }
        entities.push(slots);
    }
    let wanted: Vec<_> = wanted_keys
        .iter()
        .map(|(d, entity)| (defs[*d], entity.as_str()))
        .collect();
    let values = store.online_values(tenant, registry.version, &wanted, t_ms)?;
    let mut out = Vec::with_capacity(candidates.len());
    for (c, slots) in candidates.into_iter().zip(entities) {
        let row: Vec<Option<f64>> = slots.iter().map(|&i| values[i]).collect();
        let explained = profile.score(f64::from(c.bm25), &row);
        out.push(Reranked {
            id: c.id,
            score: explained.score as f32,
            explained,
        });
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
    Ok(out)
}

/// The hits strictly after a `(score, id)` cursor in (score desc, id asc) order.
pub fn after_cursor(hits: Vec<Reranked>, after: Option<&(f32, String)>) -> Vec<Reranked> {
    match after {
        None => hits,
        Some((score, id)) => hits
            .into_iter()
            .filter(|h| h.score < *score || (h.score == *score && h.id > *id))
            .collect(),
    }
}
