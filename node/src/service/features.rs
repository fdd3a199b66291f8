//! The node's feature store API (`tessera.v1.Features`).
//!
//! A child module of `service` so it reuses the document handlers' checks
//! (tenant term, leader hints, session waits) without widening them.

use std::time::Duration;

use tessera_proto::pb;
use tessera_proto::pb::features_server::Features;
use tessera_proto::{Event, EventKind, ValidEvent};
use tonic::{Request, Response, Status};

use super::resize::{stale_map, MAX_EXPORT_PAGE};
use super::{internal, timeout_of, NodeService};
use crate::features::tiles::{EventRow, Order};
use crate::features::{
    now_ms, parse_features_toml, FeatureCommand, FeatureDef, FeatureError, FeatureOp, FeatureStore,
    ImportBatch, ImportedRegistry, RowSet,
};
use crate::node::propose_indexed;
use crate::raft::guard::{owner, GuardedCommand};
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

/// Refuses a batch of events for a malformed tenant name or over the batch limit, before
/// anything is proposed.
fn check_event_batch(tenant: &str, events: usize) -> Result<(), Status> {
    validate_tenant(tenant).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if events > MAX_BATCH_OPS {
        return Err(Status::invalid_argument(format!(
            "batch has {events} events, over the limit of {MAX_BATCH_OPS} (MAX_BATCH_OPS)"
        )));
    }
    Ok(())
}

/// A stored event as the mover carries it.
fn stored_event(row: EventRow, map_epoch: u64) -> pb::StoredEvent {
    pb::StoredEvent {
        kind: row.kind.as_str().to_string(),
        user: row.user,
        doc: row.doc,
        space: row.space,
        value: row.value,
        event_ts_ms: row.order.event_ts,
        ingest_ts_ms: row.order.ingest_ts,
        index: row.order.index,
        seq: row.order.seq,
        map_epoch,
        id: row.id,
    }
}

/// [`stored_event`] read back, with the epoch it carries.
fn event_row(e: &pb::StoredEvent) -> Result<(EventRow, u64), Status> {
    let kind = EventKind::parse(&e.kind)
        .ok_or_else(|| Status::invalid_argument(format!("unknown event kind {:?}", e.kind)))?;
    let row = EventRow {
        order: Order {
            event_ts: e.event_ts_ms,
            ingest_ts: e.ingest_ts_ms,
            index: e.index,
            seq: e.seq,
        },
        kind,
        user: e.user.clone(),
        doc: e.doc.clone(),
        space: e.space.clone(),
        value: e.value,
        id: e.id.clone(),
    };
    Ok((row, e.map_epoch))
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
        self.propose_feature_request(shard, RaftRequest::Features(cmd), timeout)
            .await
    }

    /// Proposes `request` (a feature command, fenced or not) on `shard` and waits for its commit.
    async fn propose_feature_request(
        &self,
        shard: u64,
        request: RaftRequest,
        timeout: Duration,
    ) -> Result<(u64, RaftResponse), Status> {
        let (handle, _) = self.shard(shard)?;
        let proposal = propose_indexed(&handle.raft, request);
        tokio::time::timeout(timeout, proposal)
            .await
            .map_err(|_| {
                Status::unavailable(format!(
                    "feature write not committed within {timeout:?}; it may still apply"
                ))
            })?
            .map_err(|e| self.propose_error(e))
    }

    /// Whether `shard` holds each event's document, by this node's map: under the tenant's
    /// placement, or under the one a resize is moving it to (both keep their rows current).
    fn home_flags(&self, tenant: &str, shard: u64, events: &[ValidEvent]) -> Vec<bool> {
        let map = self.node.meta.map();
        let Some(t) = map.tenants.get(tenant) else {
            return vec![false; events.len()];
        };
        let placements: Vec<&[u64]> = std::iter::once(t.partitions.as_slice())
            .chain(t.resize.as_ref().map(|r| r.to.as_slice()))
            .collect();
        events
            .iter()
            .map(|ev| placements.iter().any(|p| owner(p, &ev.doc) == Some(shard)))
            .collect()
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
        check_event_batch(&req.tenant, req.events_json.len())?;
        // Every line must be valid, or nothing is written.
        let mut events = Vec::with_capacity(req.events_json.len());
        for (i, line) in req.events_json.iter().enumerate() {
            let ev = Event::from_json_bytes(line)
                .map_err(|e| Status::invalid_argument(format!("event {i}: {e}")))?;
            events.push(ev);
        }
        if !req.home.is_empty() && req.home.len() != events.len() {
            return Err(Status::invalid_argument(format!(
                "{} home flags for {} events",
                req.home.len(),
                events.len()
            )));
        }
        self.check_tenant_shard(&req.tenant, req.shard).await?;
        let home = if req.home.is_empty() {
            self.home_flags(&req.tenant, req.shard, &events)
        } else {
            req.home.clone()
        };
        let events = events.into_iter().zip(home).collect::<Vec<_>>();
        let n = events.len() as u32;
        let cmd = FeatureCommand {
            tenant: req.tenant.clone(),
            ingest_ts_ms: now_ms(),
            op: FeatureOp::Events(events),
        };
        let request = if req.map_epoch > 0 {
            RaftRequest::Guarded(GuardedCommand::Events {
                map_epoch: req.map_epoch,
                cmd,
            })
        } else {
            RaftRequest::Features(cmd)
        };
        let (index, resp) = self
            .propose_feature_request(req.shard, request, timeout_of(req.timeout_ms))
            .await?;
        if let RaftResponse::Stale { fence } = resp {
            return Err(stale_map(&req.tenant, req.map_epoch, fence));
        }
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

    async fn export_events(
        &self,
        request: Request<pb::ExportEventsRequest>,
    ) -> Result<Response<pb::ExportEventsResponse>, Status> {
        let req = request.into_inner();
        validate_tenant(&req.tenant).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let data = self.applied_at_least(req.shard, req.min_applied).await?;
        let store = FeatureStore::new(data.storage.clone(), req.shard);
        let limit = req.limit.clamp(1, MAX_EXPORT_PAGE) as usize;
        let rows = if req.doc_rows {
            RowSet::Doc
        } else {
            RowSet::Shared
        };
        let (page, registry) = tokio::task::spawn_blocking(move || {
            let page =
                store.export_events(&req.tenant, rows, &req.after, limit, req.before_epoch)?;
            let registry = store.registry(&req.tenant)?;
            Ok::<_, crate::storage::StorageError>((page, registry))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        Ok(Response::new(pb::ExportEventsResponse {
            events: page
                .events
                .into_iter()
                .map(|(row, epoch)| stored_event(row, epoch))
                .collect(),
            next: page.next.unwrap_or_default(),
            registry_toml: registry.toml,
            registry_version: registry.version,
        }))
    }

    async fn import_events(
        &self,
        request: Request<pb::ImportEventsRequest>,
    ) -> Result<Response<pb::ImportEventsResponse>, Status> {
        let req = request.into_inner();
        check_event_batch(&req.tenant, req.events.len())?;
        let registry = if req.registry_toml.is_empty() {
            None
        } else {
            let defs = parse_features_toml(&req.registry_toml)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            Some(ImportedRegistry {
                toml: req.registry_toml.clone(),
                defs,
                version: req.registry_version,
            })
        };
        let events = req
            .events
            .iter()
            .map(event_row)
            .collect::<Result<Vec<_>, Status>>()?;
        self.check_tenant_shard(&req.tenant, req.shard).await?;
        let cmd = FeatureCommand {
            tenant: req.tenant.clone(),
            ingest_ts_ms: now_ms(),
            op: FeatureOp::Import(ImportBatch {
                registry,
                rows: if req.doc_rows {
                    RowSet::Doc
                } else {
                    RowSet::Shared
                },
                events,
            }),
        };
        let (index, resp) = self
            .propose_features(req.shard, cmd, timeout_of(req.timeout_ms))
            .await?;
        let imported = match resp {
            RaftResponse::Features { events, .. } => events,
            _ => 0,
        };
        Ok(Response::new(pb::ImportEventsResponse {
            imported,
            token: Some(pb::SessionToken {
                shard: req.shard,
                applied: index,
            }),
        }))
    }
}
