//! The node's feature store API (`tessera.v1.Features`).
//!
//! A child module of `service` so it reuses the document handlers' checks
//! (tenant term, leader hints, session waits) without widening them.

use std::time::Duration;

use tessera_proto::pb;
use tessera_proto::pb::features_server::Features;
use tessera_proto::{partition_of, Event};
use tonic::{Request, Response, Status};

use super::{internal, timeout_of, NodeService};
use crate::features::{
    now_ms, parse_features_toml, FeatureCommand, FeatureDef, FeatureError, FeatureOp, FeatureStore,
};
use crate::node::propose_indexed;
use crate::raft::{Request as RaftRequest, Response as RaftResponse};
use tessera_proto::document::validate_tenant;
use tessera_proto::limits::{MAX_BATCH_OPS, MAX_HISTORICAL_ROWS};

fn feature_status(e: FeatureError) -> Status {
    match e {
        FeatureError::Storage(e) => internal(e),
        other => Status::invalid_argument(other.to_string()),
    }
}

/// The wire form of a definition, as its author wrote it.
pub fn def_to_pb(d: &FeatureDef) -> pb::FeatureDef {
    pb::FeatureDef {
        name: d.name.clone(),
        entity: d.entity.as_str().to_string(),
        source: d.source.as_str().to_string(),
        aggregation: d.aggregation.as_str().to_string(),
        field: d.field.clone().unwrap_or_default(),
        window: d.raw.window.clone().unwrap_or_default(),
        half_life: d.raw.half_life.clone().unwrap_or_default(),
        ttl: d.raw.ttl.clone().unwrap_or_default(),
        description: d.description.clone(),
    }
}

fn values(v: Vec<Option<f64>>) -> Vec<pb::FeatureValue> {
    v.into_iter()
        .map(|value| pb::FeatureValue { value })
        .collect()
}

impl NodeService {
    /// Proposes a feature command on `shard` and waits for its commit.
    async fn propose_features(
        &self,
        shard: u64,
        cmd: FeatureCommand,
        timeout: Duration,
    ) -> Result<(u64, RaftResponse), Status> {
        let (handle, _) = self.shard(shard)?;
        let proposal = propose_indexed(&handle.raft, RaftRequest::Features(cmd));
        tokio::time::timeout(timeout, proposal)
            .await
            .map_err(|_| {
                Status::unavailable(format!(
                    "feature write not committed within {timeout:?}; it may still apply"
                ))
            })?
            .map_err(|e| self.propose_error(e))
    }

    /// The feature rows of a local shard of `tenant`, after `min_applied`.
    async fn feature_store(
        &self,
        tenant: &str,
        shard: u64,
        min_applied: u64,
        timeout_ms: u32,
    ) -> Result<(FeatureStore, u64), Status> {
        validate_tenant(tenant).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.check_tenant_shard(tenant, shard).await?;
        let (_, data) = self.shard(shard)?;
        Self::wait_index(&data, min_applied, timeout_of(timeout_ms)).await?;
        let applied = data.index.watermark();
        Ok((FeatureStore::new(data.storage.clone(), shard), applied))
    }
}

#[tonic::async_trait]
impl Features for NodeService {
    async fn apply_features(
        &self,
        request: Request<pb::ApplyFeaturesRequest>,
    ) -> Result<Response<pb::ApplyFeaturesResponse>, Status> {
        let req = request.into_inner();
        validate_tenant(&req.tenant).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let defs =
            parse_features_toml(&req.toml).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.check_tenant_shard(&req.tenant, req.shard).await?;
        let cmd = FeatureCommand {
            tenant: req.tenant.clone(),
            ingest_ts_ms: now_ms(),
            op: FeatureOp::Registry {
                toml: req.toml,
                defs,
            },
        };
        let (index, resp) = self
            .propose_features(req.shard, cmd, timeout_of(req.timeout_ms))
            .await?;
        let RaftResponse::Features {
            version, changed, ..
        } = resp
        else {
            return Err(internal("unexpected response to a feature command"));
        };
        Ok(Response::new(pb::ApplyFeaturesResponse {
            version,
            changed,
            token: Some(pb::SessionToken {
                shard: req.shard,
                applied: index,
            }),
            token_str: String::new(),
        }))
    }

    async fn list_features(
        &self,
        request: Request<pb::ListFeaturesRequest>,
    ) -> Result<Response<pb::ListFeaturesResponse>, Status> {
        let req = request.into_inner();
        let (store, _) = self
            .feature_store(&req.tenant, req.shard, 0, req.timeout_ms)
            .await?;
        let reg = store.registry(&req.tenant).map_err(internal)?;
        Ok(Response::new(pb::ListFeaturesResponse {
            version: reg.version,
            features: reg.features.iter().map(def_to_pb).collect(),
        }))
    }

    async fn put_events(
        &self,
        request: Request<pb::PutEventsRequest>,
    ) -> Result<Response<pb::PutEventsResponse>, Status> {
        let req = request.into_inner();
        validate_tenant(&req.tenant).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if req.events_json.len() > MAX_BATCH_OPS {
            return Err(Status::invalid_argument(format!(
                "batch has {} events, over the limit of {MAX_BATCH_OPS} (MAX_BATCH_OPS)",
                req.events_json.len()
            )));
        }
        // Every line must be valid, or nothing is written.
        let mut events = Vec::with_capacity(req.events_json.len());
        for (i, line) in req.events_json.iter().enumerate() {
            let ev = Event::from_json_bytes(line)
                .map_err(|e| Status::invalid_argument(format!("event {i}: {e}")))?;
            events.push(ev);
        }
        self.check_tenant_shard(&req.tenant, req.shard).await?;
        let map = self.node.meta.map();
        let partitions = map
            .tenants
            .get(&req.tenant)
            .map(|t| t.partitions.clone())
            .unwrap_or_default();
        let p = partitions.len() as u32;
        let events = events
            .into_iter()
            .map(|ev| {
                let home = partitions.get(partition_of(&ev.doc, p) as usize) == Some(&req.shard);
                (ev, home)
            })
            .collect::<Vec<_>>();
        let n = events.len() as u32;
        let cmd = FeatureCommand {
            tenant: req.tenant.clone(),
            ingest_ts_ms: now_ms(),
            op: FeatureOp::Events(events),
        };
        let (index, _) = self
            .propose_features(req.shard, cmd, timeout_of(req.timeout_ms))
            .await?;
        metrics::counter!("tessera_feature_events_total").increment(u64::from(n));
        Ok(Response::new(pb::PutEventsResponse {
            acked: n,
            rejected: Vec::new(),
            token: Some(pb::SessionToken {
                shard: req.shard,
                applied: index,
            }),
            token_str: String::new(),
        }))
    }

    async fn online_features(
        &self,
        request: Request<pb::OnlineFeaturesRequest>,
    ) -> Result<Response<pb::OnlineFeaturesResponse>, Status> {
        let req = request.into_inner();
        let (store, applied) = self
            .feature_store(&req.tenant, req.shard, req.min_applied, req.timeout_ms)
            .await?;
        let entity = req.entity.unwrap_or_default();
        let t = now_ms();
        let tenant = req.tenant.clone();
        let features = req.features.clone();
        let (version, vals) = tokio::task::spawn_blocking(move || {
            store.online(
                &tenant,
                &features,
                &entity.user,
                &entity.space,
                &entity.doc,
                t,
            )
        })
        .await
        .map_err(internal)?
        .map_err(feature_status)?;
        Ok(Response::new(pb::OnlineFeaturesResponse {
            values: values(vals),
            as_of_ms: t,
            applied,
            registry_version: version,
        }))
    }

    async fn historical_features(
        &self,
        request: Request<pb::HistoricalFeaturesRequest>,
    ) -> Result<Response<pb::HistoricalFeaturesResponse>, Status> {
        let req = request.into_inner();
        if req.rows.len() > MAX_HISTORICAL_ROWS {
            return Err(Status::invalid_argument(format!(
                "request has {} rows, over the limit of {MAX_HISTORICAL_ROWS} (MAX_HISTORICAL_ROWS)",
                req.rows.len()
            )));
        }
        let (store, _) = self
            .feature_store(&req.tenant, req.shard, req.min_applied, req.timeout_ms)
            .await?;
        let rows: Vec<(String, String, String, i64)> = req
            .rows
            .into_iter()
            .map(|r| {
                let e = r.entity.unwrap_or_default();
                (e.user, e.space, e.doc, r.ts_ms)
            })
            .collect();
        let tenant = req.tenant.clone();
        let features = req.features.clone();
        let as_of_known = req.as_of_known;
        let (version, out) = tokio::task::spawn_blocking(move || {
            store.historical(&tenant, &features, &rows, as_of_known)
        })
        .await
        .map_err(internal)?
        .map_err(feature_status)?;
        Ok(Response::new(pb::HistoricalFeaturesResponse {
            rows: out
                .into_iter()
                .map(|v| pb::HistoricalValues { values: values(v) })
                .collect(),
            registry_version: version,
        }))
    }
}
