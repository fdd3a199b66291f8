//! The second phase on the node: rescore the first phase's candidates with a rank profile over
//! feature values read from this shard's own feature store, in the same request (one hop).

use std::collections::HashMap;

use super::profile::{Explained, RankProfile};
use crate::features::cache::ValueKey;
use crate::features::definition::{Entity, FeatureDef};
use crate::features::store::RowRead;
use crate::features::{FeatureError, FeatureStore, Registry};
use crate::index::{CandidateRef, Candidates};

/// A reranked hit: candidate number `candidate` of the first phase's page (its id stays there
/// until the hit makes the returned page). `score` is the profile's score in `f32`, the
/// precision hits travel in, so that the order here, the router's merge and the cursor all
/// compare the same numbers. `explained` is there when the caller asked for explanations.
#[derive(Debug, Clone)]
pub struct Reranked {
    pub candidate: usize,
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
    candidates: &Candidates,
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
    let rows = EntityRows::build(&kinds, user, candidates)?;
    let values = store.online_rows(tenant, &rows.reads(&kinds), t_ms)?;
    let mut out = Vec::with_capacity(candidates.len());
    let mut row = vec![None; profile.terms.len()];
    for (i, c) in candidates.iter().enumerate() {
        for (k, kind) in kinds.0.iter().enumerate() {
            let start = rows.value_start[rows.of_candidate[i * kinds.0.len() + k]];
            for (pos, &term) in kind.terms.iter().enumerate() {
                row[term] = values[start + pos];
            }
        }
        let bm25 = f64::from(c.score);
        let (score, explained) = if explain {
            let e = profile.score(bm25, &row);
            (e.score, Some(e))
        } else {
            (profile.score_only(bm25, &row), None)
        };
        out.push(Reranked {
            candidate: i,
            score: score as f32,
            explained,
        });
    }
    let id = |h: &Reranked| candidates.get(h.candidate).id;
    out.sort_unstable_by(|a, b| b.score.total_cmp(&a.score).then_with(|| id(a).cmp(id(b))));
    Ok(out)
}

/// A profile's terms grouped by the entity kind their feature is keyed by: a candidate reads
/// each group's values from one cache row.
struct TermsByEntity<'r>(Vec<KindTerms<'r>>);

struct KindTerms<'r> {
    kind: Entity,
    /// The terms' indexes in the profile.
    terms: Vec<usize>,
    /// The terms' values as the cache names them, and their definitions: what each row of
    /// this kind reads.
    values: Vec<ValueKey>,
    defs: Vec<&'r FeatureDef>,
}

impl<'r> TermsByEntity<'r> {
    fn of(profile: &RankProfile, registry: &'r Registry) -> Result<Self, FeatureError> {
        let mut kinds: Vec<KindTerms<'r>> = Vec::new();
        for (term, t) in profile.terms.iter().enumerate() {
            let (feature, def) = registry
                .indexed(&t.feature)
                .ok_or_else(|| FeatureError::UnknownFeature(t.feature.clone()))?;
            let value = ValueKey {
                version: registry.version,
                feature,
            };
            match kinds.iter_mut().find(|k| k.kind == def.entity) {
                Some(k) => {
                    k.terms.push(term);
                    k.values.push(value);
                    k.defs.push(def);
                }
                None => kinds.push(KindTerms {
                    kind: def.entity,
                    terms: vec![term],
                    values: vec![value],
                    defs: vec![def],
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
}

impl EntityRows {
    fn build(
        kinds: &TermsByEntity<'_>,
        user: &str,
        candidates: &Candidates,
    ) -> Result<Self, FeatureError> {
        let mut keys = String::with_capacity(candidates.len() * kinds.0.len() * 24);
        let mut rows: Vec<(usize, std::ops::Range<usize>)> =
            Vec::with_capacity(candidates.len() * kinds.0.len());
        // User, space and user×space keys depend on the candidate's space alone.
        let mut shared: HashMap<(usize, &str), usize, foldhash::fast::FixedState> =
            HashMap::default();
        let mut of_candidate = Vec::with_capacity(candidates.len() * kinds.0.len());
        for c in candidates.iter() {
            let CandidateRef { id, space, .. } = c;
            for (k, kind) in kinds.0.iter().enumerate() {
                let per_document = matches!(kind.kind, Entity::Doc | Entity::UserDoc);
                if !per_document {
                    if let Some(&row) = shared.get(&(k, space)) {
                        of_candidate.push(row);
                        continue;
                    }
                }
                let from = keys.len();
                let def = kind.defs[0];
                kind.kind
                    .write_key(user, space, id, &mut keys)
                    .map_err(|missing| FeatureError::MissingEntity {
                        feature: def.name.clone(),
                        entity: def.entity.as_str(),
                        missing,
                    })?;
                rows.push((k, from..keys.len()));
                if !per_document {
                    shared.insert((k, space), rows.len() - 1);
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
        })
    }

    /// The reads, one per row (so each row is looked up once), its values in term order.
    fn reads<'a>(&'a self, kinds: &'a TermsByEntity<'_>) -> Vec<RowRead<'a>> {
        self.rows
            .iter()
            .map(|(k, range)| {
                let kind = &kinds.0[*k];
                RowRead {
                    kind: kind.kind,
                    entity: &self.keys[range.clone()],
                    values: &kind.values,
                    defs: &kind.defs,
                }
            })
            .collect()
    }
}

/// The hits strictly after a `(score, id)` cursor in (score desc, id asc) order.
pub fn after_cursor(
    hits: Vec<Reranked>,
    after: Option<&(f32, String)>,
    candidates: &Candidates,
) -> Vec<Reranked> {
    match after {
        None => hits,
        Some((score, id)) => hits
            .into_iter()
            .filter(|h| {
                h.score < *score
                    || (h.score == *score && candidates.get(h.candidate).id > id.as_str())
            })
            .collect(),
    }
}
