//! The public `Router` gRPC service: each RPC validates its input, passes
//! admission control, resolves the tenant in the cached map and then reads
//! or writes through the [`Backend`].

use crate::auth::guard::check_acting_user;
use crate::auth::{Caller, Need};
use crate::backend::Backend;
use crate::config::SelectionPolicy;
use crate::deadline::{as_timeout_ms, Deadline};
use crate::error::RouterError;
use crate::limits::{self, Limits};
use crate::merge::{merge, Cursor};
use crate::read::{ReadOutcome, ReadPlan, BEHIND_HEADER};
use crate::session::SessionToken;
use crate::telemetry::record_request;
use crate::topology::Topology;
use crate::validate;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::keys::{self, KeyRecord, Scope};
use tessera_proto::limits::{MAX_BATCH_OPS, MAX_PAGE_SIZE};
use tessera_proto::pb::node_client::NodeClient;
use tessera_proto::pb::router_server::Router as RouterApi;
use tessera_proto::pb::{
    CheckResidencyRequest, CheckResidencyResponse, CreateKeyRequest, CreateKeyResponse,
    ListKeysRequest, ListKeysResponse, PutKeyRequest, RevokeKeyRequest, SecurityResponse,
    SetUserTokensRequest, StatusResponse,
};
use tessera_proto::pb::{
    CreateTenantRequest, CreateTenantResponse, DeleteOp, DrainNodeRequest, DrainNodeResponse,
    GetRequest, GetTenantRequest, GetTenantResponse, GlobalStats, Hit, ItemKind, ItemRejection,
    Membership, MoveTenantRequest, PutDocumentsRequest, PutDocumentsResponse, PutGroupsRequest,
    PutGroupsResponse, ReplicaSelection, ResizeTenantRequest, Restriction, RouterGetRequest,
    RouterGetResponse, RouterNodeStatus, RouterSearchRequest, RouterSearchResponse,
    RouterShardStatus, RouterStatusRequest, RouterStatusResponse, SearchFilters, SearchRequest,
    ServedBy, StatsRequest, StatusRequest, TenantInfo, TermStat, WriteRequest,
};
use tessera_proto::{NodeId, ShardId};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

/// The service behind the router's gRPC endpoint.
#[derive(Debug, Clone)]
pub struct RouterService {
    backend: Arc<Backend>,
    limits: Arc<Limits>,
}

/// How many times a request is retried after a node said the router's
/// cluster map is stale (a resize began or cut over since): each retry
/// refreshes the map first.
const STALE_MAP_RETRIES: u32 = 3;

/// One accepted write item, remembered so a rejection by the node can be
/// reported against the caller's index.
#[derive(Debug, Clone)]
enum Item {
    Doc {
        index: u32,
        id: String,
        json: Vec<u8>,
    },
    Delete {
        index: u32,
        op: DeleteOp,
    },
    /// Not a caller's item: the restriction set of document `index`, fanned
    /// out to the tenant's other shards so that descendants stored there are
    /// recompiled (DESIGN.md "Permissions"). Never counted as acknowledged.
    Restriction {
        index: u32,
        r: Restriction,
    },
    /// Not counted either: the second copy of a caller's document or delete
    /// while a resize runs, for the other placement.
    Copy(Box<Item>),
}

impl Item {
    /// The same item as an uncounted copy for another shard.
    fn as_copy(&self) -> Item {
        match self {
            Item::Copy(_) => self.clone(),
            other => Item::Copy(Box::new(other.clone())),
        }
    }

    fn size(&self) -> usize {
        match self {
            Item::Copy(inner) => inner.size(),
            Item::Doc { json, .. } => json.len(),
            Item::Delete { op, .. } => op.id.len() + 16,
            Item::Restriction { r, .. } => {
                r.page.len() + 16 + r.principals.iter().map(|p| p.len() + 2).sum::<usize>()
            }
        }
    }

    /// Whether the caller sent this item (and counts it as acknowledged).
    fn is_callers(&self) -> bool {
        !matches!(self, Item::Restriction { .. } | Item::Copy(_))
    }

    fn rejection(&self, error: &str) -> ItemRejection {
        let (index, kind) = match self {
            Item::Copy(inner) => return inner.rejection(error),
            Item::Doc { index, .. } | Item::Restriction { index, .. } => (*index, ItemKind::Doc),
            Item::Delete { index, .. } => (*index, ItemKind::Delete),
        };
        ItemRejection {
            index,
            kind: kind as i32,
            error: error.to_string(),
        }
    }
}

/// Splits one shard's items into batches under the op and byte limits.
fn chunk(items: Vec<Item>, max_bytes: usize) -> Vec<Vec<Item>> {
    let mut out = Vec::new();
    let mut cur: Vec<Item> = Vec::new();
    let mut bytes = 0usize;
    for it in items {
        let sz = it.size();
        if !cur.is_empty() && (cur.len() >= MAX_BATCH_OPS || bytes + sz > max_bytes) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += sz;
        cur.push(it);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Sums per-shard collection statistics into global ones (DFS), so BM25
/// computed on any shard equals BM25 over the tenant's whole corpus.
pub fn sum_stats(parts: impl IntoIterator<Item = GlobalStats>) -> GlobalStats {
    let mut out = GlobalStats::default();
    let mut terms: BTreeMap<(String, String), u64> = BTreeMap::new();
    for p in parts {
        out.num_docs += p.num_docs;
        out.title_tokens += p.title_tokens;
        out.body_tokens += p.body_tokens;
        for t in p.terms {
            *terms.entry((t.field, t.term)).or_insert(0) += t.doc_freq;
        }
    }
    out.terms = terms
        .into_iter()
        .map(|((field, term), doc_freq)| TermStat {
            field,
            term,
            doc_freq,
        })
        .collect();
    out
}

/// What the reads of one request share.
#[derive(Debug, Clone, Copy)]
struct ReadScope<'a> {
    topo: &'a Topology,
    tenant: &'a TenantInfo,
    policy: SelectionPolicy,
    deadline: Deadline,
}

/// The status a replica's answer is turned into when it has not applied
/// the index a session token requires (the node should have said so itself).
fn behind_status(applied: u64) -> Status {
    let mut s = Status::unavailable(format!("replica behind: applied {applied}"));
    if let Ok(v) = MetadataValue::try_from(applied.to_string()) {
        s.metadata_mut().insert(BEHIND_HEADER, v);
    }
    s
}

fn served_by<T>(backend: &Backend, shard: ShardId, out: &ReadOutcome<T>, applied: u64) -> ServedBy {
    let behind = backend.staleness(shard, applied);
    backend.observe_applied(shard, applied);
    ServedBy {
        shard,
        node: out.replica.node,
        region: out.replica.region.clone(),
        applied,
        behind,
        hedged: out.hedged,
    }
}

impl RouterService {
    /// A service over `backend` with admission control `limits`.
    pub fn new(backend: Arc<Backend>, limits: Arc<Limits>) -> Self {
        RouterService { backend, limits }
    }

    fn policy(&self, requested: ReplicaSelection) -> SelectionPolicy {
        match requested {
            ReplicaSelection::Default => self.backend.cfg.selection,
            ReplicaSelection::Adaptive => SelectionPolicy::Adaptive,
            ReplicaSelection::RoundRobin => SelectionPolicy::RoundRobin,
        }
    }

    fn read_deadline<T>(&self, req: &Request<T>, timeout_ms: u32) -> Deadline {
        let c = &self.backend.cfg;
        Deadline::for_request(
            req.metadata(),
            timeout_ms,
            c.default_read_timeout,
            c.max_timeout,
        )
    }

    fn write_deadline<T>(&self, req: &Request<T>, timeout_ms: u32) -> Deadline {
        let c = &self.backend.cfg;
        Deadline::for_request(
            req.metadata(),
            timeout_ms,
            c.default_write_timeout,
            c.max_timeout,
        )
    }

    /// Authenticates the caller and checks that it may do `need`.
    async fn guard<T>(
        &self,
        rpc: &'static str,
        request: &Request<T>,
        need: Need<'_>,
        deadline: Deadline,
    ) -> Result<Caller, Status> {
        crate::auth::guard::authorize(&self.backend, rpc, request.metadata(), need, deadline).await
    }

    /// Writes the outcome of an admin operation to the audit log.
    fn audited<T>(
        &self,
        rpc: &str,
        caller: &Caller,
        target: &str,
        result: Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
        };
        crate::auth::guard::audit(&self.backend, rpc, Some(caller), target, &outcome);
        result
    }

    /// Admission, metrics and error conversion around one RPC.
    async fn run<T, Fut>(
        &self,
        rpc: &'static str,
        tenant: Option<&str>,
        fut: Fut,
    ) -> Result<Response<T>, Status>
    where
        Fut: Future<Output = Result<T, RouterError>>,
    {
        let started = Instant::now();
        let result = match self.limits.admit(tenant) {
            Ok(admission) => {
                let r = fut.await;
                drop(admission);
                r
            }
            Err(e) => Err(e),
        };
        let code = result.as_ref().map_or_else(RouterError::code, |_| Code::Ok);
        record_request(rpc, code, started.elapsed());
        match result {
            Ok(v) => Ok(Response::new(v)),
            Err(e) => {
                match code {
                    Code::Internal => tracing::error!(rpc, error = %e, "request failed"),
                    Code::Unavailable | Code::DeadlineExceeded => {
                        tracing::warn!(rpc, error = %e, "request failed")
                    }
                    _ => tracing::debug!(rpc, error = %e, "request refused"),
                }
                Err(e.into())
            }
        }
    }

    /// The tenant's directory entry, refreshing the map once if it is unknown
    /// (it may have been created through another router a moment ago).
    async fn tenant(
        &self,
        id: &str,
        deadline: Deadline,
    ) -> Result<(Arc<Topology>, TenantInfo), RouterError> {
        let topo = self.backend.map.ready(deadline).await?;
        if let Some(t) = topo.tenant(id) {
            let t = t.clone();
            return Ok((topo, t));
        }
        let topo = self.backend.map.refresh(deadline).await;
        match topo.tenant(id) {
            Some(t) => {
                let t = t.clone();
                Ok((topo, t))
            }
            None => Err(RouterError::NotFound(format!(
                "tenant {id:?} does not exist (cluster map epoch {})",
                topo.epoch()
            ))),
        }
    }

    /// The plan for reading `shard` in `scope`.
    fn plan(
        &self,
        scope: &ReadScope<'_>,
        shard: ShardId,
        min_applied: u64,
    ) -> Result<ReadPlan, RouterError> {
        Ok(ReadPlan {
            shard,
            candidates: self.backend.read_candidates(
                scope.topo,
                scope.tenant,
                shard,
                scope.policy,
            )?,
            deadline: scope.deadline,
            min_applied,
            // Round-robin is the benchmarks' naive baseline: no hedging.
            hedge: scope.policy == SelectionPolicy::Adaptive,
        })
    }

    async fn shard_stats(
        &self,
        scope: &ReadScope<'_>,
        shard: ShardId,
        query: &str,
        filters: Option<SearchFilters>,
        min_applied: u64,
    ) -> Result<GlobalStats, RouterError> {
        let plan = self.plan(scope, shard, min_applied)?;
        let req = StatsRequest {
            tenant: scope.tenant.id.clone(),
            shard,
            query: query.to_string(),
            filters,
            min_applied,
            map_epoch: scope.topo.epoch(),
        };
        let out = self
            .backend
            .hedged_read(scope.topo, plan, |mut c, budget| {
                let mut r = Request::new(req.clone());
                r.set_timeout(budget);
                async move { c.stats(r).await }
            })
            .await?;
        Ok(out.value.stats.unwrap_or_default())
    }

    async fn search_once(
        &self,
        scope: &ReadScope<'_>,
        req: &RouterSearchRequest,
        limit: u32,
        after: Option<&Cursor>,
        token: &SessionToken,
    ) -> Result<(RouterSearchResponse, Vec<Hit>), RouterError> {
        let started = Instant::now();
        let tenant = scope.tenant;
        let shards = Topology::read_shards(tenant);
        if shards.is_empty() {
            return Err(RouterError::Unavailable(format!(
                "tenant {} has no partitions assigned yet",
                tenant.id
            )));
        }
        // Statistics over one complete copy of the tenant (see
        // `Topology::complete_shards`), sent whenever more than one shard is
        // read or a resize runs, so scores do not shift at its cut-over.
        let complete = Topology::complete_shards(tenant);
        let global_stats = if shards.len() > 1 || tenant.resize.is_some() {
            let parts = futures::future::try_join_all(complete.iter().map(|&shard| {
                self.shard_stats(
                    scope,
                    shard,
                    &req.query,
                    req.filters.clone(),
                    token
                        .min_applied(shard)
                        .max(Topology::read_floor(tenant, shard)),
                )
            }))
            .await?;
            Some(sum_stats(parts))
        } else {
            None
        };
        // One extra hit per shard tells whether a next page exists.
        let ask = (limit + 1).min(MAX_PAGE_SIZE);
        let results = futures::future::try_join_all(shards.iter().map(|&shard| {
            let min_applied = token
                .min_applied(shard)
                .max(Topology::read_floor(tenant, shard));
            let node_req = SearchRequest {
                tenant: tenant.id.clone(),
                shard,
                user: req.user.clone(),
                query: req.query.clone(),
                filters: req.filters.clone(),
                limit: ask,
                after: after.map(Cursor::to_search_after),
                min_applied,
                global_stats: global_stats.clone(),
                timeout_ms: 0,
                profile: req.profile.clone(),
                explain: req.explain,
                experiment: req.experiment.clone(),
                map_epoch: scope.topo.epoch(),
                ids_only: req.ids_only,
            };
            async move {
                let plan = self.plan(scope, shard, min_applied)?;
                let out = self
                    .backend
                    .hedged_read(scope.topo, plan, |mut c, budget| {
                        let mut r = node_req.clone();
                        r.timeout_ms = as_timeout_ms(budget);
                        let mut r = Request::new(r);
                        r.set_timeout(budget);
                        async move {
                            let resp = c.search(r).await?;
                            if min_applied > 0 && resp.get_ref().applied < min_applied {
                                return Err(behind_status(resp.get_ref().applied));
                            }
                            Ok(resp)
                        }
                    })
                    .await?;
                Ok::<_, RouterError>((shard, out))
            }
        }))
        .await?;

        let mut pages = Vec::with_capacity(results.len());
        let mut shadow_pages = Vec::with_capacity(results.len());
        let mut served = Vec::with_capacity(results.len());
        let mut more = false;
        let mut total = 0u64;
        let mut variant = String::new();
        for (shard, out) in results {
            served.push(served_by(&self.backend, shard, &out, out.value.applied));
            more |= out.value.hits.len() >= ask as usize;
            if complete.contains(&shard) {
                total += out.value.total_matches;
            }
            if variant.is_empty() {
                variant = out.value.variant;
            }
            pages.push(out.value.hits);
            shadow_pages.push(out.value.shadow_hits);
        }
        let page = merge(pages, after, limit as usize, more);
        let shadow = merge(shadow_pages, None, limit as usize, false).hits;
        Ok((
            RouterSearchResponse {
                hits: page.hits,
                cursor: page.next.map(|c| c.encode()).unwrap_or_default(),
                served_by: served,
                took_ms: started.elapsed().as_secs_f64() * 1000.0,
                total_matches: total,
                variant,
                impression: String::new(),
            },
            shadow,
        ))
    }

    /// Logs a page served under an experiment and names it in the response, so that clicks
    /// can cite it. Nothing happens without an experiment or without a log.
    fn log_impression(
        &self,
        req: &RouterSearchRequest,
        resp: &mut RouterSearchResponse,
        shadow: &[Hit],
    ) {
        let Some(log) = &self.backend.impressions else {
            return;
        };
        if req.experiment.is_empty() {
            return;
        }
        let id = crate::impressions::new_id();
        log.impression(crate::impressions::Impression {
            id: &id,
            ts_ms: crate::impressions::now_ms(),
            tenant: &req.tenant,
            user: &req.user,
            query: &req.query,
            experiment: &req.experiment,
            variant: &resp.variant,
            shadow: !shadow.is_empty(),
            hits: resp.hits.iter().map(|h| h.id.as_str()).collect(),
            shadow_hits: shadow.iter().map(|h| h.id.as_str()).collect(),
        });
        resp.impression = id;
    }

    async fn search_inner(
        &self,
        req: RouterSearchRequest,
        deadline: Deadline,
    ) -> Result<RouterSearchResponse, RouterError> {
        let started = Instant::now();
        validate::tenant(&req.tenant)?;
        validate::user(&req.user)?;
        limits::query(&req.query)?;
        if let Some(f) = &req.filters {
            validate::filters(f)?;
        }
        let limit = limits::page_size(req.limit)?;
        let after = if req.cursor.is_empty() {
            None
        } else {
            Some(Cursor::decode(&req.cursor)?)
        };
        let token = SessionToken::decode(&req.token)?;
        let policy = self.policy(req.selection());
        let mut attempt = 0;
        loop {
            let (topo, tenant) = self.tenant(&req.tenant, deadline).await?;
            let scope = ReadScope {
                topo: &topo,
                tenant: &tenant,
                policy,
                deadline,
            };
            match self
                .search_once(&scope, &req, limit, after.as_ref(), &token)
                .await
            {
                Err(e) if e.is_not_found() && attempt < STALE_MAP_RETRIES => {
                    attempt += 1;
                    self.backend.map.refresh(deadline).await;
                }
                Ok((mut resp, shadow)) => {
                    self.log_impression(&req, &mut resp, &shadow);
                    resp.took_ms = started.elapsed().as_secs_f64() * 1000.0;
                    return Ok(resp);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn get_inner(
        &self,
        req: RouterGetRequest,
        deadline: Deadline,
    ) -> Result<RouterGetResponse, RouterError> {
        validate::tenant(&req.tenant)?;
        validate::doc_id(&req.id)?;
        validate::user(&req.user)?;
        let token = SessionToken::decode(&req.token)?;
        let mut attempt = 0;
        loop {
            let (topo, tenant) = self.tenant(&req.tenant, deadline).await?;
            let shards = Topology::write_shards_for_doc(&tenant, &req.id);
            if shards.is_empty() {
                return Err(RouterError::Unavailable(format!(
                    "tenant {} has no partitions assigned yet",
                    tenant.id
                )));
            }
            let scope = ReadScope {
                topo: &topo,
                tenant: &tenant,
                policy: self.backend.cfg.selection,
                deadline,
            };
            // While a resize runs the document may not have reached its new
            // shard yet: ask the new one first, then the old one.
            let mut result = Err(RouterError::Unavailable("no shard asked".into()));
            for shard in shards {
                result = self.get_from(&scope, shard, &req, &token).await;
                if matches!(&result, Ok(r) if r.found) {
                    break;
                }
            }
            match result {
                Err(e) if e.is_not_found() && attempt < STALE_MAP_RETRIES => {
                    attempt += 1;
                    self.backend.map.refresh(deadline).await;
                }
                other => return other,
            }
        }
    }

    async fn get_from(
        &self,
        scope: &ReadScope<'_>,
        shard: ShardId,
        req: &RouterGetRequest,
        token: &SessionToken,
    ) -> Result<RouterGetResponse, RouterError> {
        let min_applied = token
            .min_applied(shard)
            .max(Topology::read_floor(scope.tenant, shard));
        let node_req = GetRequest {
            tenant: scope.tenant.id.clone(),
            shard,
            id: req.id.clone(),
            user: req.user.clone(),
            min_applied,
            map_epoch: scope.topo.epoch(),
        };
        let plan = self.plan(scope, shard, min_applied)?;
        let out = self
            .backend
            .hedged_read(scope.topo, plan, |mut c, budget| {
                let mut r = Request::new(node_req.clone());
                r.set_timeout(budget);
                async move {
                    let resp = c.get(r).await?;
                    if min_applied > 0 && resp.get_ref().applied < min_applied {
                        return Err(behind_status(resp.get_ref().applied));
                    }
                    Ok(resp)
                }
            })
            .await?;
        let sb = served_by(&self.backend, shard, &out, out.value.applied);
        Ok(RouterGetResponse {
            found: out.value.found,
            doc_json: if out.value.found {
                out.value.doc_json
            } else {
                Vec::new()
            },
            served_by: Some(sb),
        })
    }

    async fn get_tenant_inner(
        &self,
        req: GetTenantRequest,
        deadline: Deadline,
    ) -> Result<GetTenantResponse, RouterError> {
        validate::tenant(&req.id)?;
        let (topo, tenant) = self.tenant(&req.id, deadline).await?;
        let scope = ReadScope {
            topo: &topo,
            tenant: &tenant,
            policy: self.backend.cfg.selection,
            deadline,
        };
        // While a resize runs both placements hold the moving documents:
        // count one complete copy only (the old placement loses documents
        // as it drops them).
        let parts = futures::future::try_join_all(
            Topology::complete_shards(&tenant)
                .into_iter()
                .map(|shard| self.shard_stats(&scope, shard, "", None, 0)),
        )
        .await?;
        let docs = parts.iter().map(|p| p.num_docs).sum();
        let shards = Topology::tenant_shards(&tenant)
            .into_iter()
            .filter_map(|s| topo.shard(s).cloned())
            .collect();
        Ok(GetTenantResponse {
            epoch: topo.epoch(),
            tenant: Some(tenant),
            docs,
            shards,
        })
    }

    async fn create_tenant_inner(
        &self,
        mut req: CreateTenantRequest,
        deadline: Deadline,
    ) -> Result<CreateTenantResponse, RouterError> {
        validate::tenant(&req.id)?;
        if req.regions.is_empty() {
            return Err(RouterError::InvalidArgument(
                "regions is required: the regions the tenant's data may live in (e.g. us-east,eu-west)".into(),
            ));
        }
        for r in &req.regions {
            tessera_proto::document::check_name("region", r)
                .map_err(|e| RouterError::InvalidArgument(e.to_string()))?;
        }
        if req.home.is_empty() {
            req.home = req.regions[0].clone();
        }
        if !req.regions.contains(&req.home) {
            return Err(RouterError::InvalidArgument(format!(
                "home region {:?} is not among the allowed regions {:?}",
                req.home, req.regions
            )));
        }
        if !matches!(req.survival.as_str(), "" | "zone" | "region") {
            return Err(RouterError::InvalidArgument(format!(
                "survival {:?} must be `zone` or `region`",
                req.survival
            )));
        }
        let topo = self.backend.map.current();
        let mut addrs: Vec<(bool, String)> = topo
            .nodes()
            .iter()
            .map(|n| (n.region != self.backend.cfg.region, n.grpc_addr.clone()))
            .collect();
        addrs.sort();
        let mut addrs: Vec<String> = addrs.into_iter().map(|(_, a)| a).collect();
        for s in &self.backend.cfg.seeds {
            if !addrs.contains(s) {
                addrs.push(s.clone());
            }
        }
        let mut last = String::from("no node to send it to");
        let mut maybe_applied = false;
        for addr in addrs {
            if deadline.expired() {
                break;
            }
            let mut client = self.backend.pool.client(&addr)?;
            let budget = deadline.downstream(None);
            let mut r = Request::new(req.clone());
            r.set_timeout(budget);
            match tokio::time::timeout(budget, client.create_tenant(r)).await {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    self.await_epoch(resp.epoch, deadline).await;
                    return Ok(resp);
                }
                Ok(Err(s)) if s.code() == Code::AlreadyExists && maybe_applied => {
                    // An earlier attempt whose answer was lost may have created it.
                    let topo = self.backend.map.refresh(deadline).await;
                    if let Some(t) = topo.tenant(&req.id) {
                        return Ok(CreateTenantResponse {
                            tenant: Some(t.clone()),
                            epoch: topo.epoch(),
                        });
                    }
                    return Err(RouterError::from_node_status("create tenant", &s));
                }
                Ok(Err(s))
                    if matches!(
                        s.code(),
                        Code::Unavailable
                            | Code::DeadlineExceeded
                            | Code::Cancelled
                            | Code::Unknown
                    ) =>
                {
                    maybe_applied = true;
                    last = format!("{addr}: {}", s.message());
                }
                Ok(Err(s)) => return Err(RouterError::from_node_status("create tenant", &s)),
                Err(_) => {
                    maybe_applied = true;
                    last = format!("{addr}: no answer in time");
                }
            }
        }
        Err(RouterError::Unavailable(format!(
            "create tenant {}: no node could reach the meta leader ({last})",
            req.id
        )))
    }

    /// Sends a meta-group request to the nodes in turn until one answers (a
    /// follower forwards it to the meta leader). The node's refusals
    /// (`InvalidArgument`, `NotFound`) are final; anything else tries the
    /// next node. The commands are idempotent, so a retry after a lost
    /// answer is safe. `epoch_of` names the map epoch the answer reflects,
    /// which the cached map is brought up to before returning.
    async fn via_meta<Req, Resp, F, Fut>(
        &self,
        what: &str,
        req: Req,
        deadline: Deadline,
        epoch_of: impl Fn(&Resp) -> u64,
        call: F,
    ) -> Result<Resp, RouterError>
    where
        Req: Clone,
        F: Fn(NodeClient<Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let topo = self.backend.map.ready(deadline).await?;
        let mut last = String::from("no node to send it to");
        for node in topo.nodes() {
            if deadline.expired() {
                break;
            }
            let client = self.backend.pool.client(&node.grpc_addr)?;
            let budget = deadline.downstream(None);
            let mut r = Request::new(req.clone());
            r.set_timeout(budget);
            match tokio::time::timeout(budget, call(client, r)).await {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    self.await_epoch(epoch_of(&resp), deadline).await;
                    return Ok(resp);
                }
                Ok(Err(s)) if s.code() == Code::InvalidArgument || s.code() == Code::NotFound => {
                    return Err(RouterError::from_node_status(what, &s))
                }
                Ok(Err(s)) => last = format!("{}: {}", node.grpc_addr, s.message()),
                Err(_) => last = format!("{}: no answer in time", node.grpc_addr),
            }
        }
        Err(RouterError::Unavailable(format!(
            "{what}: no node could reach the meta leader ({last}); retrying is safe"
        )))
    }

    /// Generates a key, stores its hash through the meta group, and returns
    /// its text: the only time anyone sees it.
    async fn create_key_inner(
        &self,
        req: CreateKeyRequest,
        deadline: Deadline,
    ) -> Result<CreateKeyResponse, RouterError> {
        let scopes = req
            .scopes
            .iter()
            .map(|s| keys::Scope::parse(s))
            .collect::<Result<std::collections::BTreeSet<_>, _>>()
            .map_err(|e| RouterError::InvalidArgument(e.to_string()))?;
        KeyRecord::validate_grant(&req.tenant, &scopes)
            .map_err(|e| RouterError::InvalidArgument(e.to_string()))?;
        if !req.tenant.is_empty() {
            self.tenant(&req.tenant, deadline).await?;
        }
        let new = keys::generate().map_err(|e| RouterError::Internal(e.to_string()))?;
        let record = KeyRecord {
            id: new.id.clone(),
            tenant: req.tenant,
            scopes,
            hash: new.hash,
            name: req.name,
            created_ms: crate::auth::audit::now_ms(),
            revoked_ms: 0,
        };
        let put = PutKeyRequest {
            key: Some(record.to_proto(true)),
        };
        let resp = self
            .via_meta(
                "create key",
                put,
                deadline,
                |r: &SecurityResponse| r.epoch,
                |mut c, r| async move { c.put_key(r).await },
            )
            .await?;
        Ok(CreateKeyResponse {
            key: new.token,
            info: Some(record.to_proto(false)),
            epoch: resp.epoch,
        })
    }

    /// Every key (of one tenant, when named), without hashes.
    async fn list_keys_inner(
        &self,
        tenant: String,
        deadline: Deadline,
    ) -> Result<ListKeysResponse, RouterError> {
        let topo = self.backend.map.ready(deadline).await?;
        let mut keys: Vec<_> = topo
            .keys()
            .filter(|k| tenant.is_empty() || k.tenant == tenant)
            .map(|k| k.to_proto(false))
            .collect();
        keys.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(ListKeysResponse { keys })
    }

    /// Revokes a key through the meta group; every router refuses it once
    /// its map has the new epoch (this one before answering).
    async fn revoke_key_inner(
        &self,
        req: RevokeKeyRequest,
        deadline: Deadline,
    ) -> Result<SecurityResponse, RouterError> {
        keys::parse(&format!("{}{}_x", keys::KEY_PREFIX, req.id)).map_err(|_| {
            RouterError::InvalidArgument(format!("{:?} is not a key id (16 hex digits)", req.id))
        })?;
        self.via_meta(
            "revoke key",
            req,
            deadline,
            |r: &SecurityResponse| r.epoch,
            |mut c, r| async move { c.revoke_key(r).await },
        )
        .await
    }

    /// Sets a tenant's user-token policy through the meta group.
    async fn set_user_tokens_inner(
        &self,
        req: SetUserTokensRequest,
        deadline: Deadline,
    ) -> Result<SecurityResponse, RouterError> {
        let policy = req.policy.as_ref().ok_or_else(|| {
            RouterError::InvalidArgument("a user-token policy is required".into())
        })?;
        if !policy.public_key_pem.is_empty() {
            jsonwebtoken::DecodingKey::from_ed_pem(policy.public_key_pem.as_bytes()).map_err(
                |e| {
                    RouterError::InvalidArgument(format!(
                        "the user-token public key must be an Ed25519 public key in PEM: {e}"
                    ))
                },
            )?;
        }
        self.tenant(&policy.tenant, deadline).await?;
        self.via_meta(
            "set user tokens",
            req,
            deadline,
            |r: &SecurityResponse| r.epoch,
            |mut c, r| async move { c.set_user_tokens(r).await },
        )
        .await
    }

    /// Starts (or follows) a drain, or an undrain, on the meta group, through any node.
    async fn drain_node_inner(
        &self,
        req: DrainNodeRequest,
        deadline: Deadline,
    ) -> Result<DrainNodeResponse, RouterError> {
        let topo = self.backend.map.ready(deadline).await?;
        if topo.node(req.node).is_none() {
            return Err(RouterError::NotFound(format!(
                "node {} is not in the cluster map",
                req.node
            )));
        }
        let verb = if req.undrain { "undrain" } else { "drain" };
        let what = format!("{verb} node {}", req.node);
        self.via_meta(
            &what,
            req,
            deadline,
            |r: &DrainNodeResponse| r.epoch,
            |mut c, r| async move { c.drain_node(r).await },
        )
        .await
    }

    /// Starts a resize on the meta group (through any node: a follower
    /// forwards to the meta leader). The mover on the meta leader finishes it.
    async fn resize_tenant_inner(
        &self,
        req: ResizeTenantRequest,
        deadline: Deadline,
    ) -> Result<CreateTenantResponse, RouterError> {
        validate::tenant(&req.id)?;
        self.tenant(&req.id, deadline).await?;
        let what = format!("resize tenant {}", req.id);
        self.via_meta(
            &what,
            req,
            deadline,
            |r: &CreateTenantResponse| r.epoch,
            |mut c, r| async move { c.resize_tenant(r).await },
        )
        .await
    }

    /// Starts moving partitions of a tenant to another shard; like a
    /// resize, the mover on the meta leader finishes it.
    async fn move_tenant_inner(
        &self,
        req: MoveTenantRequest,
        deadline: Deadline,
    ) -> Result<CreateTenantResponse, RouterError> {
        validate::tenant(&req.id)?;
        self.tenant(&req.id, deadline).await?;
        let what = format!("move tenant {}", req.id);
        self.via_meta(
            &what,
            req,
            deadline,
            |r: &CreateTenantResponse| r.epoch,
            |mut c, r| async move { c.move_tenant(r).await },
        )
        .await
    }

    /// Waits until the cached map has at least `epoch` (bounded), so a read
    /// right after a change sees it.
    async fn await_epoch(&self, epoch: u64, deadline: Deadline) {
        let bound = Deadline::after(deadline.remaining().min(Duration::from_secs(2)));
        while self.backend.map.current().epoch() < epoch && !bound.expired() {
            self.backend.map.refresh(bound).await;
            if self.backend.map.current().epoch() < epoch {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Writes accepted items to their shards (shards in parallel, batches of
    /// a shard in order). Returns acked count, node rejections, token.
    async fn write_items(
        &self,
        map_epoch: u64,
        tenant: &TenantInfo,
        items: Vec<Item>,
        deadline: Deadline,
    ) -> Result<(u32, Vec<ItemRejection>, SessionToken), RouterError> {
        let mut by_shard: HashMap<ShardId, Vec<Item>> = HashMap::new();
        let shards = Topology::tenant_shards(tenant);
        for it in items {
            let id = match &it {
                Item::Doc { id, .. } => id,
                Item::Delete { op, .. } => &op.id,
                Item::Restriction { r, .. } => &r.page,
                Item::Copy(_) => continue,
            };
            let targets = Topology::write_shards_for_doc(tenant, id);
            if targets.is_empty() {
                return Err(RouterError::Unavailable(format!(
                    "tenant {} has no partitions assigned yet",
                    tenant.id
                )));
            }
            // A page's descendants may live on any partition: every other
            // shard of the tenant learns the page's own restriction set.
            if let (Item::Doc { index, json, .. }, true) = (&it, shards.len() > targets.len()) {
                if let Ok(doc) = tessera_proto::Document::from_json_bytes(json) {
                    let r = Restriction {
                        page: doc.id,
                        version: doc.version,
                        principals: doc.permissions.page,
                    };
                    for other in shards.iter().filter(|s| !targets.contains(s)) {
                        by_shard.entry(*other).or_default().push(Item::Restriction {
                            index: *index,
                            r: r.clone(),
                        });
                    }
                }
            }
            // The caller's item is counted once, on its first shard; the
            // copy for the other placement must succeed too, or the write
            // fails as a whole.
            for (n, shard) in targets.iter().enumerate() {
                let copy = if n == 0 { it.clone() } else { it.as_copy() };
                by_shard.entry(*shard).or_default().push(copy);
            }
        }
        let max_bytes = self.backend.cfg.max_write_bytes;
        let per_shard = by_shard.into_iter().map(|(shard, items)| async move {
            let mut acked = 0u32;
            let mut rejected = Vec::new();
            let mut applied = 0u64;
            for batch in chunk(items, max_bytes) {
                let mut req = WriteRequest {
                    tenant: tenant.id.clone(),
                    shard,
                    map_epoch,
                    placement: tenant
                        .resize
                        .as_ref()
                        .map(|r| r.to.clone())
                        .unwrap_or_default(),
                    ..Default::default()
                };
                for it in &batch {
                    let it = match it {
                        Item::Copy(inner) => inner.as_ref(),
                        other => other,
                    };
                    match it {
                        Item::Doc { json, .. } => req.docs_json.push(json.clone()),
                        Item::Delete { op, .. } => req.deletes.push(op.clone()),
                        Item::Restriction { r, .. } => req.restrictions.push(r.clone()),
                        Item::Copy(_) => {}
                    }
                }
                match self.backend.write_shard(shard, req, deadline).await {
                    Ok(resp) => {
                        acked += batch.iter().filter(|it| it.is_callers()).count() as u32;
                        applied = applied.max(resp.token.map_or(0, |t| t.applied));
                    }
                    Err(RouterError::InvalidArgument(m)) => {
                        rejected.extend(
                            batch
                                .iter()
                                .filter(|it| it.is_callers())
                                .map(|it| it.rejection(&m)),
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, RouterError>((shard, acked, rejected, applied))
        });
        let results = futures::future::join_all(per_shard).await;
        let mut acked = 0;
        let mut rejected = Vec::new();
        let mut token = SessionToken::new();
        let mut first_err: Option<RouterError> = None;
        for r in results {
            match r {
                Ok((shard, a, rej, applied)) => {
                    acked += a;
                    rejected.extend(rej);
                    if applied > 0 {
                        token.observe(shard, applied);
                    }
                }
                Err(e) => {
                    // Prefer reporting a stale map (retried by the caller) over the rest.
                    if first_err.is_none() || e.is_not_found() {
                        first_err = Some(e);
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok((acked, rejected, token)),
        }
    }

    async fn put_documents_inner(
        &self,
        req: PutDocumentsRequest,
        deadline: Deadline,
    ) -> Result<PutDocumentsResponse, RouterError> {
        validate::tenant(&req.tenant)?;
        let mut token = SessionToken::decode(&req.session)?;
        let total = req.docs_json.len() + req.deletes.len();
        if total > MAX_BATCH_OPS {
            return Err(RouterError::InvalidArgument(format!(
                "batch has {total} operations, over the limit of {MAX_BATCH_OPS} (MAX_BATCH_OPS)"
            )));
        }
        let mut rejected = Vec::new();
        let mut items = Vec::with_capacity(total);
        for (i, json) in req.docs_json.into_iter().enumerate() {
            let index = i as u32;
            match validate::document(&json) {
                Ok(id) => items.push(Item::Doc { index, id, json }),
                Err(error) => rejected.push(ItemRejection {
                    index,
                    kind: ItemKind::Doc as i32,
                    error,
                }),
            }
        }
        for (i, op) in req.deletes.into_iter().enumerate() {
            let index = i as u32;
            match validate::delete(&op) {
                Ok(()) => items.push(Item::Delete { index, op }),
                Err(error) => rejected.push(ItemRejection {
                    index,
                    kind: ItemKind::Delete as i32,
                    error,
                }),
            }
        }
        let mut attempt = 0;
        let (acked, node_rejected, written) = loop {
            if items.is_empty() {
                break (0, Vec::new(), SessionToken::new());
            }
            let (topo, tenant) = self.tenant(&req.tenant, deadline).await?;
            match self
                .write_items(topo.epoch(), &tenant, items.clone(), deadline)
                .await
            {
                // Writes are idempotent, so redoing every batch after a map
                // refresh is safe.
                Err(e) if e.is_not_found() && attempt < STALE_MAP_RETRIES => {
                    attempt += 1;
                    self.backend.map.refresh(deadline).await;
                }
                other => break other?,
            }
        };
        rejected.extend(node_rejected);
        rejected.sort_by_key(|r| (r.kind, r.index));
        token.merge(&written);
        Ok(PutDocumentsResponse {
            acked,
            rejected,
            token: token.encode(),
        })
    }

    async fn put_groups_inner(
        &self,
        req: PutGroupsRequest,
        deadline: Deadline,
    ) -> Result<PutGroupsResponse, RouterError> {
        validate::tenant(&req.tenant)?;
        let mut token = SessionToken::decode(&req.session)?;
        if req.memberships.len() > MAX_BATCH_OPS {
            return Err(RouterError::InvalidArgument(format!(
                "batch has {} memberships, over the limit of {MAX_BATCH_OPS} (MAX_BATCH_OPS)",
                req.memberships.len()
            )));
        }
        let mut rejected = Vec::new();
        let mut valid: Vec<Membership> = Vec::new();
        for (i, m) in req.memberships.into_iter().enumerate() {
            match validate::membership(&m) {
                Ok(()) => valid.push(m),
                Err(error) => rejected.push(ItemRejection {
                    index: i as u32,
                    kind: ItemKind::Membership as i32,
                    error,
                }),
            }
        }
        if valid.is_empty() {
            return Ok(PutGroupsResponse {
                acked: 0,
                rejected,
                token: token.encode(),
            });
        }
        let mut attempt = 0;
        loop {
            let (topo, tenant) = self.tenant(&req.tenant, deadline).await?;
            // Memberships are tenant data every partition needs for its
            // permission filter, so every shard of the tenant gets them all.
            let writes = Topology::tenant_shards(&tenant).into_iter().map(|shard| {
                let req = WriteRequest {
                    tenant: tenant.id.clone(),
                    shard,
                    memberships: valid.clone(),
                    map_epoch: topo.epoch(),
                    ..Default::default()
                };
                async move { (shard, self.backend.write_shard(shard, req, deadline).await) }
            });
            let results = futures::future::join_all(writes).await;
            let mut err: Option<RouterError> = None;
            let mut written = SessionToken::new();
            for (shard, r) in results {
                match r {
                    Ok(resp) => written.observe(shard, resp.token.map_or(0, |t| t.applied)),
                    Err(e) => {
                        if err.is_none() || e.is_not_found() {
                            err = Some(e);
                        }
                    }
                }
            }
            match err {
                Some(e) if e.is_not_found() && attempt < STALE_MAP_RETRIES => {
                    attempt += 1;
                    self.backend.map.refresh(deadline).await;
                }
                Some(e) => return Err(e),
                None => {
                    token.merge(&written);
                    return Ok(PutGroupsResponse {
                        acked: valid.len() as u32,
                        rejected,
                        token: token.encode(),
                    });
                }
            }
        }
    }

    /// Every node's own status (`None`: it did not answer within a second
    /// or the deadline).
    async fn probe_nodes(
        &self,
        topo: &Topology,
        deadline: Deadline,
    ) -> HashMap<NodeId, Option<StatusResponse>> {
        let probes = topo.nodes().into_iter().map(|n| {
            let id = n.id;
            let addr = n.grpc_addr.clone();
            async move {
                let budget = deadline.downstream(Some(Duration::from_secs(1)));
                let Ok(mut c) = self.backend.pool.client(&addr) else {
                    return (id, None);
                };
                let mut r = Request::new(StatusRequest {});
                r.set_timeout(budget);
                match tokio::time::timeout(budget, c.status(r)).await {
                    Ok(Ok(resp)) => (id, Some(resp.into_inner())),
                    _ => (id, None),
                }
            }
        });
        futures::future::join_all(probes)
            .await
            .into_iter()
            .collect()
    }

    /// The residency check over the freshest map and every node's hosted
    /// groups (see `residency`).
    async fn check_residency_inner(
        &self,
        deadline: Deadline,
    ) -> Result<CheckResidencyResponse, RouterError> {
        // The freshest map (a map never loaded would check nothing).
        self.backend.map.ready(deadline).await?;
        let topo = self.backend.map.refresh(deadline).await;
        let answers = self.probe_nodes(&topo, deadline).await;
        let mut hosted = BTreeMap::new();
        let mut unreachable = Vec::new();
        for (node, st) in answers {
            match st {
                Some(st) => {
                    hosted.insert(node, st.groups.iter().map(|g| g.group).collect());
                }
                None => unreachable.push(node),
            }
        }
        unreachable.sort_unstable();
        let found = crate::residency::check(topo.map(), &hosted);
        Ok(CheckResidencyResponse {
            epoch: topo.epoch(),
            shards: found.shards,
            replicas: found.replicas,
            violations: found.violations,
            unreachable,
        })
    }

    async fn status_inner(&self, deadline: Deadline) -> Result<RouterStatusResponse, RouterError> {
        let topo = self.backend.map.ready(deadline).await?;
        let answers = self.probe_nodes(&topo, deadline).await;
        let now = Instant::now();
        let nodes = topo
            .nodes()
            .into_iter()
            .map(|n| RouterNodeStatus {
                id: n.id,
                region: n.region.clone(),
                zone: n.zone.clone(),
                state: if answers.get(&n.id).is_some_and(Option::is_some) {
                    "up"
                } else {
                    "down"
                }
                .into(),
                grpc_addr: n.grpc_addr.clone(),
                breaker: self.backend.breakers.state(n.id, now).as_str().into(),
            })
            .collect();
        // A node on a newer map than ours means our watch lags: catch up.
        let newest = answers
            .values()
            .flatten()
            .map(|s| s.map_epoch)
            .max()
            .unwrap_or(0);
        let topo = if newest > topo.epoch() {
            self.backend.map.refresh(deadline).await
        } else {
            topo
        };
        // A partitioned former leader may still call itself leader: the
        // claim (or report) with the highest Raft term wins.
        let mut self_reported: HashMap<ShardId, (u64, NodeId)> = HashMap::new();
        let mut hearsay: HashMap<ShardId, (u64, NodeId)> = HashMap::new();
        for (node, st) in &answers {
            let Some(st) = st else { continue };
            for g in &st.groups {
                let (table, claim) = if g.role == "leader" {
                    (&mut self_reported, (g.term, *node))
                } else if g.leader != 0 {
                    (&mut hearsay, (g.term, g.leader))
                } else {
                    continue;
                };
                let e = table.entry(g.group).or_insert(claim);
                if claim > *e {
                    *e = claim;
                }
            }
        }
        let mut shards: Vec<RouterShardStatus> = topo
            .map()
            .shards
            .iter()
            .map(|s| {
                let leader = self_reported
                    .get(&s.id)
                    .or_else(|| hearsay.get(&s.id))
                    .map(|(_, n)| *n);
                if let Some(l) = leader {
                    self.backend.set_leader(s.id, l);
                }
                RouterShardStatus {
                    id: s.id,
                    leader,
                    voters: s.voters.clone(),
                    learners: s.learners.clone(),
                    regions: s.regions.clone(),
                }
            })
            .collect();
        shards.sort_by_key(|s| s.id);
        Ok(RouterStatusResponse {
            epoch: topo.epoch(),
            nodes,
            shards,
            region: self.backend.cfg.region.clone(),
        })
    }
}

#[tonic::async_trait]
impl RouterApi for RouterService {
    async fn create_tenant(
        &self,
        request: Request<CreateTenantRequest>,
    ) -> Result<Response<CreateTenantResponse>, Status> {
        let deadline = self.write_deadline(&request, 0);
        let target = request.get_ref().id.clone();
        let call = Call::admin("create_tenant", Need::admin(), None);
        self.serve_admin(call, &target, request, deadline, |req| {
            self.create_tenant_inner(req, deadline)
        })
        .await
    }

    async fn drain_node(
        &self,
        request: Request<DrainNodeRequest>,
    ) -> Result<Response<DrainNodeResponse>, Status> {
        let deadline = self.write_deadline(&request, 0);
        let target = format!("node {}", request.get_ref().node);
        let call = Call::admin("drain_node", Need::admin(), None);
        self.serve_admin(call, &target, request, deadline, |req| {
            self.drain_node_inner(req, deadline)
        })
        .await
    }

    async fn move_tenant(
        &self,
        request: Request<MoveTenantRequest>,
    ) -> Result<Response<CreateTenantResponse>, Status> {
        let deadline = self.write_deadline(&request, 0);
        let tenant = request.get_ref().id.clone();
        let call = Call::admin("move_tenant", Need::admin_on(&tenant), Some(&tenant));
        self.serve_admin(call, &tenant, request, deadline, |req| {
            self.move_tenant_inner(req, deadline)
        })
        .await
    }

    async fn resize_tenant(
        &self,
        request: Request<ResizeTenantRequest>,
    ) -> Result<Response<CreateTenantResponse>, Status> {
        let deadline = self.write_deadline(&request, 0);
        let tenant = request.get_ref().id.clone();
        let call = Call::admin("resize_tenant", Need::admin_on(&tenant), Some(&tenant));
        self.serve_admin(call, &tenant, request, deadline, |req| {
            self.resize_tenant_inner(req, deadline)
        })
        .await
    }

    async fn get_tenant(
        &self,
        request: Request<GetTenantRequest>,
    ) -> Result<Response<GetTenantResponse>, Status> {
        let deadline = self.read_deadline(&request, request.get_ref().timeout_ms);
        let tenant = request.get_ref().id.clone();
        let call = Call::data("get_tenant", Need::any_on(&tenant), &tenant);
        self.serve(call, request, deadline, |req| {
            self.get_tenant_inner(req, deadline)
        })
        .await
    }

    async fn put_documents(
        &self,
        request: Request<PutDocumentsRequest>,
    ) -> Result<Response<PutDocumentsResponse>, Status> {
        let deadline = self.write_deadline(&request, request.get_ref().timeout_ms);
        let tenant = request.get_ref().tenant.clone();
        let call = Call::data(
            "put_documents",
            Need::tenant(&tenant, Scope::Write),
            &tenant,
        );
        self.serve(call, request, deadline, |req| {
            self.put_documents_inner(req, deadline)
        })
        .await
    }

    async fn put_groups(
        &self,
        request: Request<PutGroupsRequest>,
    ) -> Result<Response<PutGroupsResponse>, Status> {
        let deadline = self.write_deadline(&request, request.get_ref().timeout_ms);
        let tenant = request.get_ref().tenant.clone();
        let call = Call::data("put_groups", Need::tenant(&tenant, Scope::Write), &tenant);
        self.serve(call, request, deadline, |req| {
            self.put_groups_inner(req, deadline)
        })
        .await
    }

    async fn search(
        &self,
        request: Request<RouterSearchRequest>,
    ) -> Result<Response<RouterSearchResponse>, Status> {
        let deadline = self.read_deadline(&request, request.get_ref().timeout_ms);
        let (tenant, user) = (
            request.get_ref().tenant.clone(),
            request.get_ref().user.clone(),
        );
        let call =
            Call::data("search", Need::tenant(&tenant, Scope::Search), &tenant).acting(&user);
        self.serve(call, request, deadline, |req| {
            self.search_inner(req, deadline)
        })
        .await
    }

    async fn get(
        &self,
        request: Request<RouterGetRequest>,
    ) -> Result<Response<RouterGetResponse>, Status> {
        let deadline = self.read_deadline(&request, request.get_ref().timeout_ms);
        let (tenant, user) = (
            request.get_ref().tenant.clone(),
            request.get_ref().user.clone(),
        );
        let call = Call::data("get", Need::tenant(&tenant, Scope::Search), &tenant).acting(&user);
        self.serve(call, request, deadline, |req| self.get_inner(req, deadline))
            .await
    }

    async fn status(
        &self,
        request: Request<RouterStatusRequest>,
    ) -> Result<Response<RouterStatusResponse>, Status> {
        let deadline = self.read_deadline(&request, request.get_ref().timeout_ms);
        let call = Call::admin("status", Need::admin(), None);
        self.serve(call, request, deadline, |_| self.status_inner(deadline))
            .await
    }

    async fn check_residency(
        &self,
        request: Request<CheckResidencyRequest>,
    ) -> Result<Response<CheckResidencyResponse>, Status> {
        let deadline = self.read_deadline(&request, request.get_ref().timeout_ms);
        let call = Call::admin("check_residency", Need::admin(), None);
        self.serve(call, request, deadline, |_| {
            self.check_residency_inner(deadline)
        })
        .await
    }

    async fn create_key(
        &self,
        request: Request<CreateKeyRequest>,
    ) -> Result<Response<CreateKeyResponse>, Status> {
        let deadline = self.write_deadline(&request, 0);
        let target = key_target(&request.get_ref().tenant);
        let caller = self
            .guard("create_key", &request, Need::admin(), deadline)
            .await?;
        let req = request.into_inner();
        let result = self
            .run("create_key", None, self.create_key_inner(req, deadline))
            .await;
        // The audit line names the new key, which exists only now.
        let target = match &result {
            Ok(r) => format!(
                "{target} key {}",
                r.get_ref().info.as_ref().map_or("", |i| i.id.as_str())
            ),
            Err(_) => target,
        };
        self.audited("create_key", &caller, &target, result)
    }

    async fn list_keys(
        &self,
        request: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        let deadline = self.read_deadline(&request, 0);
        let target = key_target(&request.get_ref().tenant);
        let call = Call::admin("list_keys", Need::admin(), None);
        self.serve_admin(call, &target, request, deadline, |req| {
            self.list_keys_inner(req.tenant, deadline)
        })
        .await
    }

    async fn revoke_key(
        &self,
        request: Request<RevokeKeyRequest>,
    ) -> Result<Response<SecurityResponse>, Status> {
        let deadline = self.write_deadline(&request, 0);
        let target = format!("key {}", request.get_ref().id);
        let call = Call::admin("revoke_key", Need::admin(), None);
        self.serve_admin(call, &target, request, deadline, |req| {
            self.revoke_key_inner(req, deadline)
        })
        .await
    }

    async fn set_user_tokens(
        &self,
        request: Request<SetUserTokensRequest>,
    ) -> Result<Response<SecurityResponse>, Status> {
        let deadline = self.write_deadline(&request, 0);
        let tenant = request
            .get_ref()
            .policy
            .as_ref()
            .map(|p| p.tenant.clone())
            .unwrap_or_default();
        let call = Call::admin("set_user_tokens", Need::admin_on(&tenant), None);
        self.serve_admin(call, &tenant, request, deadline, |req| {
            self.set_user_tokens_inner(req, deadline)
        })
        .await
    }
}

/// What one public RPC needs before its work runs: the caller's grant, the
/// tenant it is admitted (rate-limited) under, and the acting user whose
/// signed token is checked where the tenant requires one.
#[derive(Clone, Copy)]
struct Call<'a> {
    rpc: &'static str,
    need: Need<'a>,
    tenant: Option<&'a str>,
    acting_user: Option<&'a str>,
}

impl<'a> Call<'a> {
    /// An RPC on one tenant's data.
    fn data(rpc: &'static str, need: Need<'a>, tenant: &'a str) -> Self {
        Self {
            rpc,
            need,
            tenant: Some(tenant),
            acting_user: None,
        }
    }

    /// An administrative RPC (admitted under `tenant` when it targets one).
    fn admin(rpc: &'static str, need: Need<'a>, tenant: Option<&'a str>) -> Self {
        Self {
            rpc,
            need,
            tenant,
            acting_user: None,
        }
    }

    /// The same RPC acting for `user` (search and get).
    fn acting(self, user: &'a str) -> Self {
        Self {
            acting_user: Some(user),
            ..self
        }
    }
}

impl RouterService {
    /// Authorises `call`, checks the acting user's token, then runs `work`
    /// under admission control and metrics.
    async fn serve<Req, T, Fut>(
        &self,
        call: Call<'_>,
        request: Request<Req>,
        deadline: Deadline,
        work: impl FnOnce(Req) -> Fut,
    ) -> Result<Response<T>, Status>
    where
        Fut: Future<Output = Result<T, RouterError>>,
    {
        self.authorize(call, &request, deadline).await?;
        self.run(call.rpc, call.tenant, work(request.into_inner()))
            .await
    }

    /// [`Self::serve`] for administrative RPCs: the outcome, success or
    /// failure, goes to the audit log against `target`.
    async fn serve_admin<Req, T, Fut>(
        &self,
        call: Call<'_>,
        target: &str,
        request: Request<Req>,
        deadline: Deadline,
        work: impl FnOnce(Req) -> Fut,
    ) -> Result<Response<T>, Status>
    where
        Fut: Future<Output = Result<T, RouterError>>,
    {
        let caller = self.authorize(call, &request, deadline).await?;
        let result = self
            .run(call.rpc, call.tenant, work(request.into_inner()))
            .await;
        self.audited(call.rpc, &caller, target, result)
    }

    async fn authorize<Req>(
        &self,
        call: Call<'_>,
        request: &Request<Req>,
        deadline: Deadline,
    ) -> Result<Caller, Status> {
        let caller = self.guard(call.rpc, request, call.need, deadline).await?;
        if let (Some(tenant), Some(user)) = (call.tenant, call.acting_user) {
            check_acting_user(&self.backend, request.metadata(), tenant, user)?;
        }
        Ok(caller)
    }
}

/// How audit lines name the owner of keys: a tenant or the cluster.
fn key_target(tenant: &str) -> String {
    if tenant.is_empty() {
        "cluster".to_string()
    } else {
        format!("tenant {tenant}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dfs_sums_stats_per_field_and_term() {
        let a = GlobalStats {
            num_docs: 10,
            title_tokens: 30,
            body_tokens: 1000,
            terms: vec![
                TermStat {
                    field: "body".into(),
                    term: "deploy".into(),
                    doc_freq: 3,
                },
                TermStat {
                    field: "title".into(),
                    term: "deploy".into(),
                    doc_freq: 1,
                },
            ],
        };
        let b = GlobalStats {
            num_docs: 5,
            title_tokens: 10,
            body_tokens: 200,
            terms: vec![
                TermStat {
                    field: "body".into(),
                    term: "deploy".into(),
                    doc_freq: 2,
                },
                TermStat {
                    field: "body".into(),
                    term: "runbook".into(),
                    doc_freq: 4,
                },
            ],
        };
        let s = sum_stats([a, b]);
        assert_eq!((s.num_docs, s.title_tokens, s.body_tokens), (15, 40, 1200));
        let terms: Vec<(&str, &str, u64)> = s
            .terms
            .iter()
            .map(|t| (t.field.as_str(), t.term.as_str(), t.doc_freq))
            .collect();
        assert_eq!(
            terms,
            vec![
                ("body", "deploy", 5),
                ("body", "runbook", 4),
                ("title", "deploy", 1)
            ]
        );
    }

    #[test]
    fn batches_respect_op_and_byte_limits() {
        let items: Vec<Item> = (0..10)
            .map(|i| Item::Doc {
                index: i,
                id: format!("d{i}"),
                json: vec![b'x'; 100],
            })
            .collect();
        let chunks = chunk(items, 250);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![2, 2, 2, 2, 2]
        );
        let big = vec![Item::Doc {
            index: 0,
            id: "d".into(),
            json: vec![b'x'; 1000],
        }];
        assert_eq!(
            chunk(big, 250).len(),
            1,
            "an oversized item still goes alone"
        );
        let many: Vec<Item> = (0..(MAX_BATCH_OPS as u32 + 1))
            .map(|i| Item::Delete {
                index: i,
                op: DeleteOp {
                    id: "a".into(),
                    version: 1,
                },
            })
            .collect();
        assert_eq!(chunk(many, usize::MAX).len(), 2);
    }

    #[test]
    fn behind_status_is_recognised_by_the_read_path() {
        let s = behind_status(41);
        assert!(matches!(
            crate::read::classify_read(1, &s),
            crate::read::ReadFailure::Behind(Some(41))
        ));
    }
}
