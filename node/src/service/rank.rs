//! The search handler's second phase: resolving the requested rank profile (directly, or
//! through an experiment's assignment of the user) and reranking the first phase's candidates
//! with this shard's feature values.

use tessera_proto::pb;
use tonic::Status;

use super::{internal, NodeService};
use std::sync::Arc;

use crate::features::cache::Definitions;
use crate::features::{FeatureError, FeatureStore};
use crate::index::Candidates;
use crate::raft::state_machine::ShardData;
use crate::rank::{self, experiment, RankProfile};

/// What ranks one search.
pub(super) struct RankPlan {
    pub(super) definitions: Arc<Definitions>,
    /// The profile whose ranking is served.
    pub(super) served: RankProfile,
    /// Shadow mode: the variant's profile, ranked and returned apart, never served.
    pub(super) shadow: Option<RankProfile>,
    /// With an experiment, the user's variant.
    pub(super) variant: String,
}

/// A profile that ranks by BM25 alone (`score = bm25` exactly, in f32): how a BM25 control
/// takes part in a shadow comparison over the same candidates.
fn bm25_profile(candidates: u32) -> RankProfile {
    RankProfile {
        name: experiment::BM25.to_string(),
        version: 0,
        candidates,
        bm25: 1.0,
        terms: Vec::new(),
    }
}

impl NodeService {
    /// How to rank: `None` for plain BM25. `profile` names a profile; `experiment` names an
    /// experiment whose assignment of `user` picks it (exclusive). Shadow rankings are only
    /// computed for a first page (`first_page`): they are logged per impression, and later
    /// pages then page the served order exactly as plain searches do. Unknown names are the
    /// caller's error, listing the registered ones.
    pub(super) fn rank_plan(
        data: &ShardData,
        tenant: &str,
        profile: &str,
        experiment_name: &str,
        user: &str,
        first_page: bool,
    ) -> Result<Option<RankPlan>, Status> {
        if profile.is_empty() && experiment_name.is_empty() {
            return Ok(None);
        }
        if !profile.is_empty() && !experiment_name.is_empty() {
            return Err(Status::invalid_argument(
                "profile and experiment are exclusive: an experiment picks the profile",
            ));
        }
        let defs = FeatureStore::new(data.storage.clone(), data.group)
            .definitions(tenant)
            .map_err(|e| match e {
                FeatureError::Storage(e) => internal(e),
                other => internal(other.to_string()),
            })?;
        let profiles = &defs.profiles;
        let resolve = |spec: &str| -> Result<Option<RankProfile>, Status> {
            if spec == experiment::BM25 {
                return Ok(None);
            }
            rank::select(profiles, spec)
                .map(|p| Some(p.clone()))
                .map_err(|e| Status::invalid_argument(e.to_string()))
        };
        if experiment_name.is_empty() {
            return Ok(resolve(profile)?.map(|served| RankPlan {
                definitions: defs.clone(),
                served,
                shadow: None,
                variant: String::new(),
            }));
        }
        let experiments = defs
            .experiments
            .as_ref()
            .map_err(|e| Status::failed_precondition(e.clone()))?;
        let assignment = experiment::find(experiments, experiment_name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .assign(user);
        let served = resolve(&assignment.served)?;
        let shadow = match (&assignment.shadow, first_page) {
            (Some(spec), true) => resolve(spec)?,
            _ => None,
        };
        let served = match (served, &shadow) {
            (Some(p), _) => p,
            (None, Some(s)) => bm25_profile(s.candidates),
            (None, None) => {
                // Plain BM25 for this user; the variant is still reported.
                return Ok(Some(RankPlan {
                    definitions: defs.clone(),
                    served: bm25_profile(0),
                    shadow: None,
                    variant: assignment.variant,
                }));
            }
        };
        Ok(Some(RankPlan {
            definitions: defs.clone(),
            served,
            shadow,
            variant: assignment.variant,
        }))
    }
}

impl RankPlan {
    /// Whether the served ranking is plain BM25 with no shadow: the ordinary search path, which
    /// pages without a candidate cap.
    pub(super) fn is_plain_bm25(&self) -> bool {
        self.served.candidates == 0 && self.shadow.is_none()
    }

    /// Candidates the first phase fetches.
    pub(super) fn candidates(&self) -> u32 {
        self.served
            .candidates
            .max(self.shadow.as_ref().map_or(0, |s| s.candidates))
    }
}

/// Everything the second phase needs, moved onto a blocking thread (it reads RocksDB).
pub(super) struct SecondPhase {
    pub(super) data: std::sync::Arc<ShardData>,
    pub(super) definitions: Arc<Definitions>,
    pub(super) profile: RankProfile,
    /// Shadow mode: ranked over the same candidates and returned apart.
    pub(super) shadow: Option<RankProfile>,
    pub(super) tenant: String,
    pub(super) user: String,
    pub(super) after: Option<(f32, String)>,
    pub(super) limit: usize,
    pub(super) explain: bool,
}

impl SecondPhase {
    /// Reranks every candidate, applies the cursor, and keeps the first `limit` hits in the
    /// new order that `visible` confirms (the stored-row re-check: existence, version and
    /// permissions as of now). Checking after reranking costs `limit` row reads instead of
    /// one per candidate, and every returned hit is still checked. Explanations are attached
    /// when asked.
    pub(super) fn run(
        self,
        candidates: &Candidates,
        mut visible: impl FnMut(&str) -> Result<bool, Status>,
    ) -> Result<(Vec<pb::Hit>, Vec<pb::Hit>), Status> {
        let started = std::time::Instant::now();
        let shadow = match &self.shadow {
            Some(profile) => self
                .page(profile, candidates, None, false, &mut visible)?
                .into_iter()
                .map(|h| pb::Hit {
                    id: candidates.get(h.candidate).id.to_string(),
                    score: h.score,
                    ..Default::default()
                })
                .collect(),
            None => Vec::new(),
        };
        let served = self
            .page(
                &self.profile,
                candidates,
                self.after.as_ref(),
                self.explain,
                &mut visible,
            )?
            .into_iter()
            .map(|h| self.hit(h, candidates))
            .collect();
        metrics::histogram!("tessera_node_rerank_seconds").record(started.elapsed().as_secs_f64());
        Ok((served, shadow))
    }

    /// `profile`'s ranking of the candidates after `after`: its first `limit` hits that
    /// `visible` confirms.
    fn page(
        &self,
        profile: &RankProfile,
        candidates: &Candidates,
        after: Option<&(f32, String)>,
        explain: bool,
        visible: &mut impl FnMut(&str) -> Result<bool, Status>,
    ) -> Result<Vec<rank::Reranked>, Status> {
        let store = FeatureStore::new(self.data.storage.clone(), self.data.group);
        let reranked = rank::rerank(
            &rank::RerankContext {
                profile,
                registry: &self.definitions.registry,
                store: &store,
                tenant: &self.tenant,
                user: &self.user,
                t_ms: crate::features::now_ms(),
                explain,
            },
            candidates,
        )
        .map_err(|e| match e {
            FeatureError::Storage(e) => internal(e),
            other => Status::failed_precondition(other.to_string()),
        })?;
        let mut hits = Vec::with_capacity(self.limit);
        for h in rank::after_cursor(reranked, after, candidates) {
            if hits.len() == self.limit {
                break;
            }
            if visible(candidates.get(h.candidate).id)? {
                hits.push(h);
            }
        }
        Ok(hits)
    }

    fn hit(&self, h: rank::Reranked, candidates: &Candidates) -> pb::Hit {
        pb::Hit {
            explanation: h.explained.map(|explained| pb::HitExplanation {
                profile: self.profile.name.clone(),
                version: self.profile.version,
                bm25: explained.bm25,
                score: explained.score,
                features: self
                    .profile
                    .terms
                    .iter()
                    .zip(&explained.terms)
                    .map(|(term, (value, contribution))| pb::FeatureContribution {
                        name: term.feature.clone(),
                        value: *value,
                        contribution: *contribution,
                    })
                    .collect(),
            }),
            id: candidates.get(h.candidate).id.to_string(),
            score: h.score,
            ..Default::default()
        }
    }
}
