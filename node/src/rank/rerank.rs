//! The second phase on the node: rescore the first phase's candidates with a rank profile over
//! feature values read from this shard's own feature store, in the same request (one hop).

use std::collections::HashMap;

use super::profile::{Explained, RankProfile};
use crate::features::definition::{Entity, FeatureDef};
use crate::features::store::Wanted;
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
/// `explained` is there when the caller asked for explanations.
#[derive(Debug, Clone)]
pub struct Reranked {
    pub id: String,
    pub score: f32,
    pub explained: Option<Explained>,
}

/// What a rerank reads and for whom: the profile, the definitions it refers to, the store and
/// the (tenant, user) at time `t_ms`.
pub struct RerankContext<'a> {
    pub profile: &'a RankProfile,
    pub registry: &'a Registry,
    pub store: &'a FeatureStore,
    pub tenant: &'a str,
    pub user: &'a str,
    pub t_ms: i64,
    /// Keep each hit's explanation (its feature values and contributions).
    pub explain: bool,
}

/// Rescores every candidate and orders them by (score desc, id asc). Feature values come
/// from the store's online cache (see `features::cache`), so repeated entities (the user, the
/// user's spaces, popular documents) cost a hash lookup.
pub fn rerank(
    cx: &RerankContext<'_>,
    candidates: Vec<Candidate>,
) -> Result<Vec<Reranked>, FeatureError> {
    let RerankContext {
        profile,
        registry,
        store,
        tenant,
        user,
        t_ms,
        explain,
    } = *cx;
    let kinds = TermsByEntity::of(profile, registry)?;
    let rows = EntityRows::build(&kinds, user, &candidates)?;
    let wanted = rows.wanted(&kinds);
    let values = store.online_values(tenant, registry.version, &wanted, t_ms)?;
    let mut out = Vec::with_capacity(candidates.len());
    let mut row = vec![None; profile.terms.len()];
    for (i, c) in candidates.into_iter().enumerate() {
        for (k, kind) in kinds.0.iter().enumerate() {
            let start = rows.value_start[rows.of_candidate[i * kinds.0.len() + k]];
            for (pos, &(term, _, _)) in kind.terms.iter().enumerate() {
                row[term] = values[start + pos];
            }
        }
        let bm25 = f64::from(c.bm25);
        let (score, explained) = if explain {
            let e = profile.score(bm25, &row);
            (e.score, Some(e))
        } else {
            (profile.score_only(bm25, &row), None)
        };
        out.push(Reranked {
            id: c.id,
            score: score as f32,
            explained,
        });
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
    Ok(out)
}

/// A profile's terms grouped by the entity kind their feature is keyed by: a candidate reads
/// each group's values from one cache row.
struct TermsByEntity<'r>(Vec<KindTerms<'r>>);

struct KindTerms<'r> {
    kind: Entity,
    /// (term index in the profile, feature index in the registry, definition).
    terms: Vec<(usize, u32, &'r FeatureDef)>,
}

impl<'r> TermsByEntity<'r> {
    fn of(profile: &RankProfile, registry: &'r Registry) -> Result<Self, FeatureError> {
        let mut kinds: Vec<KindTerms<'r>> = Vec::new();
        for (term, t) in profile.terms.iter().enumerate() {
            let (feature, def) = registry
                .indexed(&t.feature)
                .ok_or_else(|| FeatureError::UnknownFeature(t.feature.clone()))?;
            match kinds.iter_mut().find(|k| k.kind == def.entity) {
                Some(k) => k.terms.push((term, feature, def)),
                None => kinds.push(KindTerms {
                    kind: def.entity,
                    terms: vec![(term, feature, def)],
                }),
            }
        }
        Ok(Self(kinds))
    }
}

/// The entities a rerank reads, one row each: per candidate, its document's (and user×doc)
/// rows, and the user's and user×space rows shared between candidates (a page spans a few
/// spaces), so each distinct entity is read once. Entity keys share one buffer: a search
/// builds hundreds of them, and one allocation each cost more than the cache lookups.
struct EntityRows {
    keys: String,
    /// (kind index, key's range in `keys`) per row.
    rows: Vec<(usize, std::ops::Range<usize>)>,
    /// Candidate `i`'s row of kind `k` is `of_candidate[i * kinds + k]`.
    of_candidate: Vec<usize>,
    /// Where each row's values start in the read's output.
    value_start: Vec<usize>,
    /// Values read in all.
    values: usize,
}

impl EntityRows {
    fn build(
        kinds: &TermsByEntity<'_>,
        user: &str,
        candidates: &[Candidate],
    ) -> Result<Self, FeatureError> {
        let mut keys = String::with_capacity(candidates.len() * kinds.0.len() * 24);
        let mut rows: Vec<(usize, std::ops::Range<usize>)> =
            Vec::with_capacity(candidates.len() * kinds.0.len());
        // User, space and user×space keys depend on the candidate's space alone.
        let mut shared: HashMap<(usize, &str), usize, foldhash::fast::RandomState> =
            HashMap::default();
        let mut of_candidate = Vec::with_capacity(candidates.len() * kinds.0.len());
        for c in candidates {
            for (k, kind) in kinds.0.iter().enumerate() {
                let per_document = matches!(kind.kind, Entity::Doc | Entity::UserDoc);
                if !per_document {
                    if let Some(&row) = shared.get(&(k, c.space.as_str())) {
                        of_candidate.push(row);
                        continue;
                    }
                }
                let from = keys.len();
                let (_, _, def) = kind.terms[0];
                kind.kind
                    .write_key(user, &c.space, &c.id, &mut keys)
                    .map_err(|missing| FeatureError::MissingEntity {
                        feature: def.name.clone(),
                        entity: def.entity.as_str(),
                        missing,
                    })?;
                rows.push((k, from..keys.len()));
                if !per_document {
                    shared.insert((k, c.space.as_str()), rows.len() - 1);
                }
                of_candidate.push(rows.len() - 1);
            }
        }
        let mut value_start = Vec::with_capacity(rows.len());
        let mut next = 0;
        for (k, _) in &rows {
            value_start.push(next);
            next += kinds.0[*k].terms.len();
        }
        Ok(Self {
            keys,
            rows,
            of_candidate,
            value_start,
            values: next,
        })
    }

    /// The values to read, row by row (so each row is looked up once).
    fn wanted<'a>(&'a self, kinds: &'a TermsByEntity<'_>) -> Vec<Wanted<'a>> {
        let mut out = Vec::with_capacity(self.values);
        for (k, range) in &self.rows {
            let entity = &self.keys[range.clone()];
            out.extend(kinds.0[*k].terms.iter().map(|&(_, feature, def)| Wanted {
                feature,
                def,
                entity,
            }));
        }
        out
    }
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
