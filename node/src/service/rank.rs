//! The search handler's second phase: resolving the requested rank profile and reranking the
//! first phase's (permission-checked) candidates with this shard's feature values.

use tessera_proto::pb;
use tonic::Status;

use super::{internal, NodeService};
use crate::features::{FeatureError, FeatureStore, Registry};
use crate::raft::state_machine::ShardData;
use crate::rank::{self, Candidate, ProfileError, RankProfile};

impl NodeService {
    /// The tenant's registry and the profile `wanted` names; `None` for plain BM25. An unknown
    /// profile is the caller's error, with the registered ones listed.
    pub(super) fn rank_profile(
        data: &ShardData,
        tenant: &str,
        wanted: &str,
    ) -> Result<Option<(Registry, RankProfile)>, Status> {
        if wanted.is_empty() {
            return Ok(None);
        }
        let registry = FeatureStore::new(data.storage.clone(), data.group)
            .registry(tenant)
            .map_err(internal)?;
        let profiles = registry.profiles().map_err(internal)?;
        let profile = rank::select(&profiles, wanted)
            .map_err(|e: ProfileError| Status::invalid_argument(e.to_string()))?
            .clone();
        Ok(Some((registry, profile)))
    }
}

/// Everything the second phase needs, moved onto a blocking thread (it reads RocksDB).
pub(super) struct SecondPhase {
    pub(super) data: std::sync::Arc<ShardData>,
    pub(super) registry: Registry,
    pub(super) profile: RankProfile,
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
        candidates: Vec<Candidate>,
        mut visible: impl FnMut(&str) -> Result<bool, Status>,
    ) -> Result<Vec<pb::Hit>, Status> {
        let started = std::time::Instant::now();
        let store = FeatureStore::new(self.data.storage.clone(), self.data.group);
        let reranked = rank::rerank(
            &self.profile,
            &self.registry,
            &store,
            &self.tenant,
            &self.user,
            candidates,
            crate::features::now_ms(),
        )
        .map_err(|e| match e {
            FeatureError::Storage(e) => internal(e),
            other => Status::failed_precondition(other.to_string()),
        })?;
        let mut hits = Vec::with_capacity(self.limit);
        for h in rank::after_cursor(reranked, self.after.as_ref()) {
            if hits.len() == self.limit {
                break;
            }
            if visible(&h.id)? {
                hits.push(self.hit(h));
            }
        }
        metrics::histogram!("tessera_node_rerank_seconds").record(started.elapsed().as_secs_f64());
        Ok(hits)
    }

    fn hit(&self, h: rank::Reranked) -> pb::Hit {
        pb::Hit {
            explanation: self.explain.then(|| pb::HitExplanation {
                profile: self.profile.name.clone(),
                version: self.profile.version,
                bm25: h.explained.bm25,
                score: h.explained.score,
                features: self
                    .profile
                    .terms
                    .iter()
                    .zip(&h.explained.terms)
                    .map(|(term, (value, contribution))| pb::FeatureContribution {
                        name: term.feature.clone(),
                        value: *value,
                        contribution: *contribution,
                    })
                    .collect(),
            }),
            id: h.id,
            score: h.score,
        }
    }
}
