//! The router's feature store API (`tessera.v1.FeatureRouter`).
//!
//! Routing (DESIGN.md "Colocation"): definitions and events go to every
//! shard of the tenant, because user, space and user×space features live on
//! every partition (each node decides per event whether it also holds the
//! document's partition). Reads go to one shard: the document's partition
//! when the entity names a document, else the partition the user id hashes
//! to. Online and historical reads use the same rule, so both answer from
//! the same shard's log.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tessera_proto::pb::feature_router_server::FeatureRouter;
use tessera_proto::pb::features_client::FeaturesClient;
use tessera_proto::pb::{self, TenantInfo};
use tessera_proto::{partition_of, Event, NodeId, ShardId};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::auth::Need;
use crate::backend::Backend;
use crate::deadline::Deadline;
use crate::error::RouterError;
use crate::pool::MAX_NODE_MESSAGE;
use crate::session::SessionToken;
use crate::topology::Topology;
use crate::validate;
use crate::write::not_leader_hint;
use tessera_proto::keys::Scope;
use tessera_proto::limits::MAX_BATCH_OPS;

/// Rounds of "your map is stale" answers a write of events retries, refreshing the map each time.
const STALE_MAP_RETRIES: u32 = 3;

/// The feature store front door.
pub struct FeatureRouterService {
    backend: Arc<Backend>,
}

impl FeatureRouterService {
    /// A service over the router's shared backend (map, pool, leaders).
    pub fn new(backend: Arc<Backend>) -> Self {
        Self { backend }
    }

    /// Logs the acknowledged click events that cite an impression (see `impressions`).
    fn log_clicks(&self, tenant: &str, lines: &[Vec<u8>]) {
        let Some(log) = &self.backend.impressions else {
            return;
        };
        for line in lines {
            let Ok(ev) = serde_json::from_slice::<Event>(line) else {
                continue;
            };
            let (tessera_proto::EventKind::Click, Some(impression)) = (ev.kind, &ev.impression)
            else {
                continue;
            };
            log.click(crate::impressions::Click {
                impression,
                ts_ms: tessera_proto::event::parse_ts_millis(&ev.ts).unwrap_or(0),
                tenant,
                user: &ev.user,
                doc: &ev.doc,
            });
        }
    }

    /// Authorises `rpc` with `scope` on the tenant the request names, and
    /// hands back its body.
    async fn authorized<T: NamesTenant>(
        &self,
        rpc: &'static str,
        request: Request<T>,
        scope: Scope,
        deadline: Deadline,
    ) -> Result<T, Status> {
        let need = Need::tenant(request.get_ref().tenant(), scope);
        crate::auth::guard::authorize(&self.backend, rpc, request.metadata(), need, deadline)
            .await?;
        Ok(request.into_inner())
    }

    fn deadline<T>(&self, req: &Request<T>, timeout_ms: u32) -> Deadline {
        let c = &self.backend.cfg;
        Deadline::for_request(
            req.metadata(),
            timeout_ms,
            c.default_write_timeout,
            c.max_timeout,
        )
    }

    async fn tenant(&self, id: &str, deadline: Deadline) -> Result<TenantInfo, RouterError> {
        self.tenant_at(id, deadline).await.map(|(_, t)| t)
    }

    fn client(&self, topo: &Topology, node: NodeId) -> Option<FeaturesClient<Channel>> {
        let addr = self
            .backend
            .cfg
            .node_routes
            .get(&node)
            .cloned()
            .or_else(|| topo.node(node).map(|n| n.grpc_addr.clone()))?;
        let ch = self.backend.pool.channel(&addr).ok()?;
        Some(
            FeaturesClient::new(ch)
                .max_decoding_message_size(MAX_NODE_MESSAGE)
                .max_encoding_message_size(MAX_NODE_MESSAGE),
        )
    }

    /// Calls `f` on the shard's leader (writes) or on any voter (reads),
    /// following leader hints and retrying transient failures until the
    /// deadline. Bad input and unknown tenants are returned at once.
    async fn call<T, F, Fut>(
        &self,
        shard: ShardId,
        deadline: Deadline,
        f: F,
    ) -> Result<T, RouterError>
    where
        F: Fn(FeaturesClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut last = String::from("no replica reachable");
        let mut hint: Option<NodeId> = self.backend.leader(shard);
        loop {
            if deadline.expired() {
                return Err(RouterError::Unavailable(format!(
                    "shard {shard}: no answer before the deadline; retrying is safe (last error: {last})"
                )));
            }
            let topo = self.backend.map.current();
            let mut order: Vec<NodeId> = hint.take().into_iter().collect();
            order.extend(topo.voters_local_first(shard, &self.backend.cfg.region));
            let mut followed = false;
            for node in order {
                let Some(c) = self.client(&topo, node) else {
                    continue;
                };
                let budget = deadline.downstream(Some(Duration::from_secs(5)));
                match tokio::time::timeout(budget, f(c, budget)).await {
                    Ok(Ok(v)) => {
                        self.backend.set_leader(shard, node);
                        return Ok(v);
                    }
                    Ok(Err(status)) => {
                        if let Some(h) = not_leader_hint(&status) {
                            self.backend.forget_leader(shard, node);
                            last = format!("node {node}: {}", status.message());
                            if let Some(l) = h.id.filter(|l| *l != node) {
                                hint = Some(l);
                                followed = true;
                                break;
                            }
                            continue;
                        }
                        match status.code() {
                            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => {
                                return Err(RouterError::from_node_status(
                                    &format!("shard {shard}"),
                                    &status,
                                ))
                            }
                            _ => last = format!("node {node}: {}", status.message()),
                        }
                    }
                    Err(_) => last = format!("node {node}: no answer within {budget:?}"),
                }
            }
            if !followed {
                tick.tick().await;
                self.backend.map.refresh(deadline).await;
            }
        }
    }

    /// The shard that answers reads for an entity.
    fn read_shard(tenant: &TenantInfo, e: &pb::EntityKey) -> Result<ShardId, RouterError> {
        let key = if e.doc.is_empty() { &e.user } else { &e.doc };
        let key = if key.is_empty() { &e.space } else { key };
        let p = tenant.partitions.len() as u32;
        if p == 0 {
            return Err(RouterError::Unavailable(format!(
                "tenant {} has no partitions assigned yet",
                tenant.id
            )));
        }
        let by = if e.doc.is_empty() {
            key.as_str()
        } else {
            e.doc.as_str()
        };
        Ok(tenant.partitions[partition_of(by, p) as usize])
    }

    /// Sends one batch of events to every shard of the tenant, each with the map epoch and
    /// per event whether the shard holds its document. When a shard answers NotFound (the
    /// router's map is stale: a resize began or ended since), the batch is sent again from a
    /// fresh map to the shards it names that have not acknowledged it yet: the new
    /// placement's, say. Shards that acknowledged it are never sent it twice, since events
    /// are counted, not versioned.
    async fn put_event_chunk(
        &self,
        tenant_id: &str,
        lines: &[Vec<u8>],
        docs: &[String],
        deadline: Deadline,
        token: &mut SessionToken,
    ) -> Result<(), RouterError> {
        let mut acked: Vec<ShardId> = Vec::new();
        for attempt in 0..=STALE_MAP_RETRIES {
            if attempt > 0 {
                self.backend.map.refresh(deadline).await;
            }
            let (epoch, tenant) = self.tenant_at(tenant_id, deadline).await?;
            let targets: Vec<ShardId> = Topology::tenant_shards(&tenant)
                .into_iter()
                .filter(|s| !acked.contains(s))
                .collect();
            let calls = targets.into_iter().map(|shard| {
                let req = pb::PutEventsRequest {
                    tenant: tenant.id.clone(),
                    shard,
                    events_json: lines.to_vec(),
                    timeout_ms: 0,
                    session: String::new(),
                    map_epoch: epoch,
                    home: docs
                        .iter()
                        .map(|d| Topology::write_shards_for_doc(&tenant, d).contains(&shard))
                        .collect(),
                };
                async move {
                    let out = self
                        .call(shard, deadline, move |mut c, budget| {
                            let req = pb::PutEventsRequest {
                                timeout_ms: ms(budget),
                                ..req.clone()
                            };
                            async move {
                                match c.put_events(req).await {
                                    Ok(r) => Ok(Some(r.into_inner())),
                                    // A stale map (a resize began), or a shard that no
                                    // longer holds the tenant (one ended): resend from a
                                    // fresh map.
                                    Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                                    Err(s) => Err(s),
                                }
                            }
                        })
                        .await;
                    (shard, out)
                }
            });
            let mut stale = false;
            let mut failure = None;
            for (shard, out) in futures::future::join_all(calls).await {
                match out {
                    Ok(Some(r)) => {
                        acked.push(shard);
                        token.observe(shard, r.token.map_or(0, |t| t.applied));
                    }
                    Ok(None) => stale = true,
                    Err(e) => failure = Some(e),
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
            if !stale {
                return Ok(());
            }
        }
        Err(RouterError::Unavailable(format!(
            "tenant {tenant_id:?}: shards kept answering that this router's map is stale; \
             retry (events already acknowledged by some shards may then count twice there)"
        )))
    }

    /// The tenant's entry and the epoch of the map it was read from.
    async fn tenant_at(
        &self,
        id: &str,
        deadline: Deadline,
    ) -> Result<(u64, TenantInfo), RouterError> {
        validate::tenant(id)?;
        let topo = self.backend.map.ready(deadline).await?;
        if let Some(t) = topo.tenant(id) {
            return Ok((topo.epoch(), t.clone()));
        }
        let topo = self.backend.map.refresh(deadline).await;
        match topo.tenant(id) {
            Some(t) => Ok((topo.epoch(), t.clone())),
            None => Err(RouterError::NotFound(format!(
                "tenant {id:?} does not exist (cluster map epoch {})",
                topo.epoch()
            ))),
        }
    }

    async fn all_shards<T, F, Fut>(
        &self,
        tenant: &TenantInfo,
        deadline: Deadline,
        f: F,
    ) -> Result<Vec<(ShardId, T)>, RouterError>
    where
        F: Fn(ShardId, FeaturesClient<Channel>, Duration) -> Fut + Clone,
        Fut: Future<Output = Result<T, Status>>,
    {
        let calls = Topology::tenant_shards(tenant).into_iter().map(|shard| {
            let f = f.clone();
            async move {
                let r = self.call(shard, deadline, move |c, b| f(shard, c, b)).await;
                r.map(|v| (shard, v))
            }
        });
        futures::future::join_all(calls).await.into_iter().collect()
    }
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn to_status(e: RouterError) -> Status {
    e.into()
}

#[tonic::async_trait]
impl FeatureRouter for FeatureRouterService {
    async fn apply_features(
        &self,
        request: Request<pb::ApplyFeaturesRequest>,
    ) -> Result<Response<pb::ApplyFeaturesResponse>, Status> {
        let deadline = self.deadline(&request, request.get_ref().timeout_ms);
        let req = self
            .authorized("apply_features", request, Scope::Features, deadline)
            .await?;
        let tenant = self
            .tenant(&req.tenant, deadline)
            .await
            .map_err(to_status)?;
        let toml = req.toml.clone();
        let out = self
            .all_shards(&tenant, deadline, |shard, mut c, budget| {
                let req = pb::ApplyFeaturesRequest {
                    tenant: tenant.id.clone(),
                    shard,
                    toml: toml.clone(),
                    timeout_ms: ms(budget),
                };
                async move { c.apply_features(req).await.map(|r| r.into_inner()) }
            })
            .await
            .map_err(to_status)?;
        let mut token = SessionToken::new();
        let mut resp = pb::ApplyFeaturesResponse::default();
        for (shard, r) in out {
            token.observe(shard, r.token.map_or(0, |t| t.applied));
            resp.version = resp.version.max(r.version);
            resp.changed |= r.changed;
        }
        resp.token_str = token.encode();
        Ok(Response::new(resp))
    }

    async fn list_features(
        &self,
        request: Request<pb::ListFeaturesRequest>,
    ) -> Result<Response<pb::ListFeaturesResponse>, Status> {
        let deadline = self.deadline(&request, request.get_ref().timeout_ms);
        let req = self
            .authorized("list_features", request, Scope::Features, deadline)
            .await?;
        let tenant = self
            .tenant(&req.tenant, deadline)
            .await
            .map_err(to_status)?;
        let Some(&shard) = tenant.partitions.first() else {
            return Err(Status::unavailable("tenant has no partitions yet"));
        };
        let resp = self
            .call(shard, deadline, |mut c, budget| {
                let req = pb::ListFeaturesRequest {
                    tenant: tenant.id.clone(),
                    shard,
                    timeout_ms: ms(budget),
                };
                async move { c.list_features(req).await.map(|r| r.into_inner()) }
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(resp))
    }

    async fn put_events(
        &self,
        request: Request<pb::PutEventsRequest>,
    ) -> Result<Response<pb::PutEventsResponse>, Status> {
        let deadline = self.deadline(&request, request.get_ref().timeout_ms);
        let req = self
            .authorized("put_events", request, Scope::Write, deadline)
            .await?;
        let mut token = SessionToken::decode(&req.session).map_err(to_status)?;
        // Validate everything first: one bad line and nothing is written.
        let mut rejected: Vec<pb::ItemRejectionF> = Vec::new();
        let mut docs: Vec<String> = Vec::with_capacity(req.events_json.len());
        for (i, line) in req.events_json.iter().enumerate() {
            match Event::from_json_bytes(line) {
                Ok(ev) => docs.push(ev.doc),
                Err(e) => rejected.push(pb::ItemRejectionF {
                    index: i as u32,
                    error: e.to_string(),
                }),
            }
        }
        if let Some(first) = rejected.first() {
            return Err(Status::invalid_argument(format!(
                "event {}: {} ({} bad events; nothing written)",
                first.index,
                first.error,
                rejected.len()
            )));
        }
        for (chunk, docs) in req
            .events_json
            .chunks(MAX_BATCH_OPS)
            .zip(docs.chunks(MAX_BATCH_OPS))
        {
            self.put_event_chunk(&req.tenant, chunk, docs, deadline, &mut token)
                .await
                .map_err(to_status)?;
        }
        self.log_clicks(&req.tenant, &req.events_json);
        Ok(Response::new(pb::PutEventsResponse {
            acked: req.events_json.len() as u32,
            rejected: Vec::new(),
            token: None,
            token_str: token.encode(),
        }))
    }

    async fn online_features(
        &self,
        request: Request<pb::OnlineFeaturesRequest>,
    ) -> Result<Response<pb::OnlineFeaturesResponse>, Status> {
        let deadline = self.deadline(&request, request.get_ref().timeout_ms);
        let req = self
            .authorized("online_features", request, Scope::Features, deadline)
            .await?;
        let session = SessionToken::decode(&req.token).map_err(to_status)?;
        let tenant = self
            .tenant(&req.tenant, deadline)
            .await
            .map_err(to_status)?;
        let entity = req.entity.clone().unwrap_or_default();
        let shard = Self::read_shard(&tenant, &entity).map_err(to_status)?;
        let min_applied = session.min_applied(shard);
        let resp = self
            .call(shard, deadline, |mut c, budget| {
                let req = pb::OnlineFeaturesRequest {
                    tenant: tenant.id.clone(),
                    shard,
                    entity: Some(entity.clone()),
                    features: req.features.clone(),
                    timeout_ms: ms(budget),
                    min_applied,
                    token: String::new(),
                };
                async move { c.online_features(req).await.map(|r| r.into_inner()) }
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(resp))
    }

    async fn historical_features(
        &self,
        request: Request<pb::HistoricalFeaturesRequest>,
    ) -> Result<Response<pb::HistoricalFeaturesResponse>, Status> {
        let deadline = self.deadline(&request, request.get_ref().timeout_ms);
        let req = self
            .authorized("historical_features", request, Scope::Features, deadline)
            .await?;
        let session = SessionToken::decode(&req.token).map_err(to_status)?;
        let tenant = self
            .tenant(&req.tenant, deadline)
            .await
            .map_err(to_status)?;
        let mut by_shard: HashMap<ShardId, Vec<usize>> = HashMap::new();
        for (i, row) in req.rows.iter().enumerate() {
            let e = row.entity.clone().unwrap_or_default();
            let shard = Self::read_shard(&tenant, &e).map_err(to_status)?;
            by_shard.entry(shard).or_default().push(i);
        }
        let calls = by_shard.into_iter().map(|(shard, idx)| {
            let rows: Vec<pb::HistoricalRow> = idx.iter().map(|i| req.rows[*i].clone()).collect();
            let min_applied = session.min_applied(shard);
            let (tenant, features, as_of_known) =
                (tenant.id.clone(), req.features.clone(), req.as_of_known);
            async move {
                let resp = self
                    .call(shard, deadline, |mut c, budget| {
                        let req = pb::HistoricalFeaturesRequest {
                            tenant: tenant.clone(),
                            shard,
                            rows: rows.clone(),
                            features: features.clone(),
                            as_of_known,
                            timeout_ms: ms(budget),
                            min_applied,
                            token: String::new(),
                        };
                        async move { c.historical_features(req).await.map(|r| r.into_inner()) }
                    })
                    .await?;
                Ok::<_, RouterError>((idx, resp))
            }
        });
        let mut rows = vec![pb::HistoricalValues::default(); req.rows.len()];
        let mut version = 0;
        for r in futures::future::join_all(calls).await {
            let (idx, resp) = r.map_err(to_status)?;
            version = version.max(resp.registry_version);
            if resp.rows.len() != idx.len() {
                return Err(Status::internal(
                    "a shard returned a different number of rows",
                ));
            }
            for (i, values) in idx.into_iter().zip(resp.rows) {
                rows[i] = values;
            }
        }
        Ok(Response::new(pb::HistoricalFeaturesResponse {
            rows,
            registry_version: version,
        }))
    }
}

/// A feature request that names the tenant it acts on, so one helper can
/// authorise all of them.
trait NamesTenant {
    fn tenant(&self) -> &str;
}

macro_rules! names_tenant {
    ($($t:ty),*) => {
        $(impl NamesTenant for $t {
            fn tenant(&self) -> &str {
                &self.tenant
            }
        })*
    };
}

names_tenant!(
    pb::ApplyFeaturesRequest,
    pb::ListFeaturesRequest,
    pb::PutEventsRequest,
    pb::OnlineFeaturesRequest,
    pb::HistoricalFeaturesRequest
);
