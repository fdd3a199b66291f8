//! The node's gRPC API (`tessera.v1.Node`).
//!
//! Every handler validates before acting, enforces the tenant term and the
//! permission filter itself (it never trusts the router for them), and maps
//! failures to codes a router can act on: `FailedPrecondition` "not leader"
//! with a leader hint, `Unavailable` to retry elsewhere, `InvalidArgument`
//! for input the caller must fix.

pub mod features;
mod hit_fields;
mod keys;
mod membership;
mod rank;
pub mod resize;
pub mod validate;

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::pb;
use tessera_proto::pb::node_server::{Node, NodeServer};
use tessera_proto::transport::Role;
use tessera_proto::{ShardId, META_GROUP};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::acl::cache::AllowedCache;
use crate::index::{Candidates, CollectionStats, IndexQuery};
use crate::meta::{MetaCommand, MetaOutcome, TenantSpec};
use crate::node::{propose_indexed, NodeInner, ProposeError};
use crate::raft::registry::GroupHandle;
use crate::raft::state_machine::{GroupData, ShardData};
use crate::raft::{Request as RaftRequest, Response as RaftResponse};
use rank::SecondPhase;

/// Default bound on waits (leader commit, session tokens, map catch-up).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for the local cluster map to learn a tenant
/// that the caller's (newer) map already has.
const MAP_CATCH_UP: Duration = Duration::from_secs(2);

/// Serves the API on `listener` until `shutdown` flips.
///
/// Shutdown ends every open `WatchClusterMap` stream as well: a graceful
/// server waits for open calls, and a watch never ends by itself, so a
/// watched node would otherwise never stop (chaos BUG-1).
pub async fn serve(
    node: Arc<NodeInner>,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    // tonic ignores the builder's TCP_NODELAY for a listener we pass in, and
    // Nagle's algorithm adds tens of milliseconds to small replies.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let acl_cache = Arc::new(AllowedCache::default());
    let service = NodeServer::new(NodeService {
        node: node.clone(),
        shutdown: shutdown.clone(),
        acl_cache: acl_cache.clone(),
    })
    .max_decoding_message_size(64 * 1024 * 1024)
    .max_encoding_message_size(64 * 1024 * 1024);
    let features = tessera_proto::pb::features_server::FeaturesServer::new(NodeService {
        node: node.clone(),
        shutdown: shutdown.clone(),
        acl_cache,
    })
    .max_decoding_message_size(64 * 1024 * 1024)
    .max_encoding_message_size(64 * 1024 * 1024);
    let peers = node.peers();
    let service = cluster_only(service, !peers.unsecured);
    let features = cluster_only(features, !peers.unsecured);
    tessera_proto::transport::install_crypto_provider();
    let mut builder = if peers.unsecured {
        tracing::warn!(
            "--unsecured: node gRPC serves PLAINTEXT to anyone who connects (benchmark baselines only)"
        );
        tonic::transport::Server::builder()
    } else {
        match tonic::transport::Server::builder().tls_config(peers.node_server_tls()) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("gRPC server not started: bad TLS configuration: {e}");
                return;
            }
        }
    };
    let result = builder
        .add_service(service)
        .add_service(features)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!("gRPC server stopped: {e}");
    }
}

/// Wraps a service so that only callers with a node or router certificate
/// reach it: the handshake already required a certificate from the cluster
/// CA, and this checks its role (see `tessera_proto::transport`). With
/// `enforce` off (an `--unsecured` benchmark baseline) every caller passes.
fn cluster_only<S>(
    service: S,
    enforce: bool,
) -> tonic::service::interceptor::InterceptedService<S, impl tonic::service::Interceptor + Clone> {
    let check = tessera_proto::transport::require_role(CLUSTER_ROLES);
    tonic::service::interceptor::InterceptedService::new(service, move |req: tonic::Request<()>| {
        if enforce {
            check(req)
        } else {
            Ok(req)
        }
    })
}

/// Who may call a node: its peers, and routers.
const CLUSTER_ROLES: &[Role] = &[Role::Node, Role::Router];

/// The gRPC handlers.
pub struct NodeService {
    node: Arc<NodeInner>,
    /// Flips when the node stops; long-lived streams end on it.
    shutdown: watch::Receiver<bool>,
    /// Allowed acl tokens per (shard, tenant, principal set, watermark).
    acl_cache: Arc<AllowedCache>,
}

fn timeout_of(ms: u32) -> Duration {
    if ms == 0 {
        DEFAULT_TIMEOUT
    } else {
        Duration::from_millis(u64::from(ms))
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl NodeService {
    /// The local shard group, or `NotFound` when this node has no replica.
    fn shard(&self, shard: ShardId) -> Result<(Arc<GroupHandle>, Arc<ShardData>), Status> {
        let Some(handle) = self.node.registry.get(shard) else {
            let assigned = self
                .node
                .meta
                .map()
                .shards
                .get(&shard)
                .is_some_and(|s| s.replicas().any(|r| r == self.node.id));
            return Err(if assigned {
                // The map already assigns it here; the reconciler is opening it.
                Status::unavailable(format!(
                    "shard {shard} is still opening on node {}; retry",
                    self.node.id
                ))
            } else {
                Status::not_found(format!(
                    "shard {shard} has no replica on node {}",
                    self.node.id
                ))
            });
        };
        match &handle.data {
            GroupData::Shard(data) => Ok((handle.clone(), data.clone())),
            GroupData::Meta(_) => Err(Status::invalid_argument(
                "group 0 is the meta group, not a shard",
            )),
        }
    }

    /// Checks that `tenant` exists and that `shard` holds one of its
    /// partitions, waiting briefly for the local map to catch up.
    async fn check_tenant_shard(&self, tenant: &str, shard: ShardId) -> Result<(), Status> {
        let mut rx = self.node.meta.subscribe();
        let holds = |m: &crate::meta::ClusterMap| {
            m.tenants.get(tenant).map(|t| {
                t.partitions.contains(&shard)
                    || t.resize.as_ref().is_some_and(|r| r.to.contains(&shard))
            })
        };
        let wait = tokio::time::timeout(MAP_CATCH_UP, rx.wait_for(|m| holds(m).is_some())).await;
        match holds(&self.node.meta.map()) {
            Some(true) => Ok(()),
            Some(false) => Err(Status::not_found(format!(
                "shard {shard} holds no partition of tenant {tenant:?}"
            ))),
            None if wait.is_err() => Err(Status::not_found(format!("unknown tenant {tenant:?}"))),
            None => Err(Status::not_found(format!("unknown tenant {tenant:?}"))),
        }
    }

    fn not_leader(&self, leader: Option<u64>) -> Status {
        let mut status = Status::failed_precondition(match leader {
            Some(l) => format!("not leader: node {l} leads"),
            None => "not leader: no leader known yet".to_string(),
        });
        if let Some(l) = leader {
            let map = self.node.meta.map();
            if let Ok(v) = MetadataValue::try_from(l.to_string()) {
                status
                    .metadata_mut()
                    .insert(tessera_proto::LEADER_ID_HEADER, v);
            }
            if let Some(addr) = map.nodes.get(&l).map(|n| n.grpc_addr.clone()) {
                if let Ok(v) = MetadataValue::try_from(addr) {
                    status
                        .metadata_mut()
                        .insert(tessera_proto::LEADER_ADDR_HEADER, v);
                }
            }
        }
        status
    }

    fn propose_error(&self, e: ProposeError) -> Status {
        match e {
            ProposeError::NotLeader { leader } => self.not_leader(leader),
            ProposeError::Failed(msg) => Status::unavailable(format!("write not committed: {msg}")),
        }
    }

    /// A user's principals in a tenant, as this shard knows them.
    fn principals(data: &ShardData, tenant: &str, user: &str) -> Result<BTreeSet<String>, Status> {
        data.principals(tenant, user).map_err(internal)
    }

    /// The tenant's BM25 statistics for `query` as this shard holds them.
    fn local_stats(
        data: &ShardData,
        tenant: &str,
        query: &str,
        title_only: bool,
    ) -> Result<pb::GlobalStats, Status> {
        let totals = data.tenant_stats(tenant).map_err(internal)?;
        let terms = data
            .index
            .term_stats(tenant, query, title_only)
            .map_err(internal)?;
        Ok(pb::GlobalStats {
            num_docs: totals.docs,
            title_tokens: totals.title_tokens,
            body_tokens: totals.body_tokens,
            terms: terms
                .doc_freq
                .into_iter()
                .map(|(field, term, doc_freq)| pb::TermStat {
                    field,
                    term,
                    doc_freq,
                })
                .collect(),
        })
    }

    async fn wait_index(
        data: &ShardData,
        min_applied: u64,
        timeout: Duration,
    ) -> Result<(), Status> {
        if min_applied == 0 {
            return Ok(());
        }
        match data.index.wait_for(min_applied, timeout).await {
            Ok(()) => Ok(()),
            Err(_) => {
                let applied = data.index.watermark();
                let mut s = Status::unavailable(format!(
                    "replica behind: index at {applied}, session needs {min_applied}"
                ));
                if let Ok(v) = MetadataValue::try_from(applied.to_string()) {
                    s.metadata_mut().insert("x-tessera-behind", v);
                }
                Err(s)
            }
        }
    }
}

fn collection_stats(g: &pb::GlobalStats) -> CollectionStats {
    CollectionStats {
        num_docs: g.num_docs,
        title_tokens: g.title_tokens,
        body_tokens: g.body_tokens,
        doc_freq: g
            .terms
            .iter()
            .map(|t| ((t.field.clone(), t.term.clone()), t.doc_freq))
            .collect::<HashMap<_, _>>(),
    }
}

async fn connect(
    node: &NodeInner,
    addr: &str,
) -> Result<pb::node_client::NodeClient<tonic::transport::Channel>, Status> {
    node.peer_client(addr)
        .await
        .map_err(|e| Status::unavailable(format!("meta leader: {e}")))
}

/// The committed index: on the leader, the highest index a majority of
/// voters has matched; elsewhere the applied index, a lower bound (openraft
/// 0.9 does not expose a follower's committed index).
fn committed_index(m: &openraft::RaftMetrics<u64, openraft::BasicNode>) -> u64 {
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    let Some(replication) = &m.replication else {
        return applied;
    };
    let membership = m.membership_config.membership();
    let mut matched: Vec<u64> = membership
        .voter_ids()
        .map(|v| {
            if v == m.id {
                m.last_log_index.unwrap_or(0)
            } else {
                replication
                    .get(&v)
                    .copied()
                    .flatten()
                    .map(|l| l.index)
                    .unwrap_or(0)
            }
        })
        .collect();
    if matched.is_empty() {
        return applied;
    }
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched[matched.len() / 2].max(applied)
}

type MapStream = Pin<Box<dyn Stream<Item = Result<pb::ClusterMapResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Node for NodeService {
    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let req = request.into_inner();
        let cmd = validate::write(&req)?;
        self.check_tenant_shard(&req.tenant, req.shard).await?;
        let (handle, _) = self.shard(req.shard)?;
        let timeout = timeout_of(req.timeout_ms);
        let guarded = if req.placement.is_empty() {
            crate::raft::guard::GuardedCommand::Write {
                map_epoch: req.map_epoch,
                keep_memberships: req.keep_newer_memberships,
                cmd,
            }
        } else {
            crate::raft::guard::GuardedCommand::WriteUnder {
                map_epoch: req.map_epoch,
                keep_memberships: req.keep_newer_memberships,
                cmd,
                placement: req.placement.clone(),
            }
        };
        let proposal = propose_indexed(&handle.raft, RaftRequest::Guarded(guarded));
        let (index, response) = tokio::time::timeout(timeout, proposal)
            .await
            .map_err(|_| {
                Status::unavailable(format!(
                    "write not committed within {timeout:?}; it may still apply, retrying is safe"
                ))
            })?
            .map_err(|e| self.propose_error(e))?;
        let (applied_ops, noop_ops) = match response {
            RaftResponse::Shard {
                applied_ops,
                noop_ops,
            } => (applied_ops, noop_ops),
            RaftResponse::Stale { fence } => {
                return Err(resize::stale_map(&req.tenant, req.map_epoch, fence))
            }
            _ => (0, 0),
        };
        metrics::counter!("tessera_write_ops_total").increment(u64::from(applied_ops + noop_ops));
        Ok(Response::new(pb::WriteResponse {
            token: Some(pb::SessionToken {
                shard: req.shard,
                applied: index,
            }),
            applied_ops,
            noop_ops,
        }))
    }

    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let started = std::time::Instant::now();
        let req = request.into_inner();
        let limit = validate::search(&req)?;
        self.check_tenant_shard(&req.tenant, req.shard).await?;
        let (_, data) = self.shard(req.shard)?;
        Self::check_fence(&data, &req.tenant, req.map_epoch)?;
        Self::wait_index(&data, req.min_applied, timeout_of(req.timeout_ms)).await?;
        let filters = req.filters.clone().unwrap_or_default();
        let principals = Self::principals(&data, &req.tenant, &req.user)?;
        let allowed = {
            let (data, cache, tenant, principals) = (
                data.clone(),
                self.acl_cache.clone(),
                req.tenant.clone(),
                principals.clone(),
            );
            tokio::task::spawn_blocking(move || data.allowed_tokens(&cache, &tenant, &principals))
                .await
                .map_err(internal)?
                .map_err(internal)?
        };
        let stats = match &req.global_stats {
            Some(g) => collection_stats(g),
            None => collection_stats(&Self::local_stats(
                &data,
                &req.tenant,
                &req.query,
                filters.title_only,
            )?),
        };
        let after = req.after.map(|a| (a.score, a.id));
        let plan = Self::rank_plan(
            &data,
            &req.tenant,
            &req.profile,
            &req.experiment,
            &req.user,
            after.is_none(),
        )?;
        let variant = plan.as_ref().map(|p| p.variant.clone()).unwrap_or_default();
        let ranking = plan.filter(|p| !p.is_plain_bm25());
        // With a profile, the first phase fetches the profile's candidates from the top and
        // the cursor applies to the reranked order instead.
        let (first_phase_limit, first_phase_after) = match &ranking {
            Some(plan) => (
                (plan.candidates() as usize)
                    .max(limit)
                    .min(crate::index::MAX_SEARCH_LIMIT),
                None,
            ),
            None => (limit, after.clone()),
        };
        let query = IndexQuery {
            tenant: req.tenant.clone(),
            text: req.query.clone(),
            allowed_acl_tokens: allowed.as_ref().clone(),
            spaces: filters.spaces,
            ancestors: filters.ancestors,
            labels: filters.labels,
            title_only: filters.title_only,
            limit: first_phase_limit,
            after: first_phase_after,
            stats: Some(stats),
        };
        let applied = data.index.watermark();
        let second = ranking.map(|plan| SecondPhase {
            data: data.clone(),
            definitions: plan.definitions,
            profile: plan.served,
            shadow: plan.shadow,
            tenant: req.tenant.clone(),
            user: req.user.clone(),
            after,
            limit,
            explain: req.explain,
        });
        let tenant = req.tenant.clone();
        let ids_only = req.ids_only;
        let fenced = data.clone();
        // One blocking task for the index search, the stored-row re-check and the second
        // phase: each hand-off between the runtime and the blocking pool costs wake-ups.
        let (hits, shadow_hits, total_matches) = tokio::task::spawn_blocking(move || {
            let snippets = if ids_only {
                None
            } else {
                let s = data.index.snippets(&query.text, query.title_only);
                Some(s.map_err(internal)?)
            };
            let Some(second) = second else {
                let results = data.index.search(&query).map_err(internal)?;
                let hits = data
                    .recheck_hits(&tenant, &principals, results.hits, |(id, _)| id)
                    .map_err(internal)?
                    .into_iter()
                    .map(|((id, score), stored)| {
                        let mut hit = pb::Hit {
                            id,
                            score,
                            ..Default::default()
                        };
                        if let Some(snippets) = &snippets {
                            hit_fields::describe(&mut hit, &stored, snippets);
                        }
                        hit
                    })
                    .collect();
                return Ok::<_, Status>((hits, Vec::new(), results.total_matches));
            };
            let (candidates, total) = data.index.search_candidates(&query).map_err(internal)?;
            let (hits, shadow) = if candidates.spaces_known() {
                // Rerank first, then re-check only the hits that make the page.
                second.run(&candidates, |id| {
                    data.visible_doc(&tenant, id, &principals)
                        .map(|d| d.is_some())
                        .map_err(internal)
                })?
            } else {
                // An index from before the `space` column: spaces come from the stored rows,
                // which the re-check reads anyway.
                let checked = data
                    .recheck_hits(&tenant, &principals, candidates.iter().collect(), |c| c.id)
                    .map_err(internal)?;
                let mut with_spaces = Candidates::with_capacity(checked.len(), true);
                for (c, stored) in checked {
                    let space = with_spaces.intern_space(&stored.space());
                    with_spaces.push(c.id, c.score, space);
                }
                second.run(&with_spaces, |_| Ok(true))?
            };
            let mut hits = hits;
            if let Some(snippets) = &snippets {
                for hit in &mut hits {
                    if let Some(stored) = data
                        .visible_doc(&tenant, &hit.id, &principals)
                        .map_err(internal)?
                    {
                        hit_fields::describe(hit, &stored, snippets);
                    }
                }
            }
            Ok::<_, Status>((hits, shadow, total))
        })
        .await
        .map_err(internal)??;
        // A drop may have applied while the search waited or ran.
        Self::check_fence(&fenced, &req.tenant, req.map_epoch)?;
        metrics::histogram!("tessera_node_search_seconds").record(started.elapsed().as_secs_f64());
        Ok(Response::new(pb::SearchResponse {
            hits,
            shard: req.shard,
            node: self.node.id,
            region: self.node.spec.region.clone(),
            applied,
            total_matches,
            variant,
            shadow_hits,
        }))
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let req = request.into_inner();
        validate::tenant(&req.tenant)?;
        tessera_proto::document::validate_query(&req.query)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.check_tenant_shard(&req.tenant, req.shard).await?;
        let (_, data) = self.shard(req.shard)?;
        Self::check_fence(&data, &req.tenant, req.map_epoch)?;
        Self::wait_index(&data, req.min_applied, DEFAULT_TIMEOUT).await?;
        let title_only = req.filters.map(|f| f.title_only).unwrap_or(false);
        let stats = Self::local_stats(&data, &req.tenant, &req.query, title_only)?;
        Self::check_fence(&data, &req.tenant, req.map_epoch)?;
        Ok(Response::new(pb::StatsResponse { stats: Some(stats) }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let req = request.into_inner();
        validate::tenant(&req.tenant)?;
        validate::user(&req.user)?;
        self.check_tenant_shard(&req.tenant, req.shard).await?;
        let (handle, data) = self.shard(req.shard)?;
        Self::check_fence(&data, &req.tenant, req.map_epoch)?;
        if req.min_applied > 0 {
            handle
                .raft
                .wait(Some(DEFAULT_TIMEOUT))
                .applied_index_at_least(Some(req.min_applied), "session token")
                .await
                .map_err(|_| {
                    let applied = data.applied().ok().flatten().map(|l| l.index).unwrap_or(0);
                    let mut s = Status::unavailable(format!(
                        "replica behind: applied {applied}, session needs {}",
                        req.min_applied
                    ));
                    if let Ok(v) = MetadataValue::try_from(applied.to_string()) {
                        s.metadata_mut().insert("x-tessera-behind", v);
                    }
                    s
                })?;
        }
        let applied = data
            .applied()
            .map_err(internal)?
            .map(|l| l.index)
            .unwrap_or(0);
        let principals = Self::principals(&data, &req.tenant, &req.user)?;
        let visible = data
            .visible_doc(&req.tenant, &req.id, &principals)
            .map_err(internal)?;
        Self::check_fence(&data, &req.tenant, req.map_epoch)?;
        Ok(Response::new(pb::GetResponse {
            found: visible.is_some(),
            doc_json: visible.map(|d| d.json).unwrap_or_default(),
            applied,
        }))
    }

    async fn get_cluster_map(
        &self,
        _: Request<pb::ClusterMapRequest>,
    ) -> Result<Response<pb::ClusterMapResponse>, Status> {
        Ok(Response::new(pb::ClusterMapResponse {
            map: Some(self.node.meta.map().to_proto()),
        }))
    }

    type WatchClusterMapStream = MapStream;

    async fn watch_cluster_map(
        &self,
        request: Request<pb::ClusterMapRequest>,
    ) -> Result<Response<MapStream>, Status> {
        let known = request.into_inner().known_epoch;
        let rx = self.node.meta.subscribe();
        let mut shutdown = self.shutdown.clone();
        let stopping = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        let maps = tokio_stream::wrappers::WatchStream::new(rx).filter_map(move |m| {
            (m.epoch > known || known == 0).then(|| {
                Ok(pb::ClusterMapResponse {
                    map: Some(m.to_proto()),
                })
            })
        });
        let stream = futures::StreamExt::take_until(maps, stopping);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        let req = request.into_inner();
        let spec = TenantSpec {
            id: req.id.clone(),
            regions: req.regions.clone(),
            home: req.home.clone(),
            survival: req.survival.clone(),
            partitions: req.partitions,
        };
        let cmd = MetaCommand::CreateTenant(spec);
        self.on_meta_leader(cmd, req, resize::tenant_response, |mut c, r| async move {
            c.create_tenant(r).await
        })
        .await
    }

    async fn resize_tenant(
        &self,
        request: Request<pb::ResizeTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        self.resize_tenant_inner(request.into_inner()).await
    }

    async fn move_tenant(
        &self,
        request: Request<pb::MoveTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        self.move_tenant_inner(request.into_inner()).await
    }

    async fn tenant_sizes(
        &self,
        request: Request<pb::TenantSizesRequest>,
    ) -> Result<Response<pb::TenantSizesResponse>, Status> {
        self.tenant_sizes_inner(request.into_inner())
    }

    async fn swap_replica(
        &self,
        request: Request<pb::SwapReplicaRequest>,
    ) -> Result<Response<pb::AddLearnerResponse>, Status> {
        self.swap_replica_inner(request.into_inner()).await
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::DrainNodeResponse>, Status> {
        self.drain_node_inner(request.into_inner()).await
    }

    async fn join_cluster(
        &self,
        request: Request<pb::JoinClusterRequest>,
    ) -> Result<Response<pb::AddLearnerResponse>, Status> {
        self.join_cluster_inner(request.into_inner()).await
    }

    async fn fence(
        &self,
        request: Request<pb::FenceRequest>,
    ) -> Result<Response<pb::FenceResponse>, Status> {
        self.fence_inner(request.into_inner()).await
    }

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<pb::ExportResponse>, Status> {
        self.export_inner(request.into_inner()).await
    }

    async fn drop(
        &self,
        request: Request<pb::DropRequest>,
    ) -> Result<Response<pb::DropResponse>, Status> {
        self.drop_inner(request.into_inner()).await
    }

    async fn put_key(
        &self,
        request: Request<pb::PutKeyRequest>,
    ) -> Result<Response<pb::SecurityResponse>, Status> {
        self.put_key_inner(request.into_inner()).await
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::SecurityResponse>, Status> {
        self.revoke_key_inner(request.into_inner()).await
    }

    async fn set_user_tokens(
        &self,
        request: Request<pb::SetUserTokensRequest>,
    ) -> Result<Response<pb::SecurityResponse>, Status> {
        self.set_user_tokens_inner(request.into_inner()).await
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::AddLearnerResponse>, Status> {
        let req = request.into_inner();
        let cmd = MetaCommand::AddLearner {
            shard: req.shard,
            node: req.node,
        };
        match self.node.propose_meta(cmd).await {
            Ok(RaftResponse::Meta(MetaOutcome::Ok { epoch })) => {
                Ok(Response::new(pb::AddLearnerResponse { epoch }))
            }
            Ok(RaftResponse::Meta(MetaOutcome::Rejected(msg))) => {
                Err(Status::invalid_argument(msg))
            }
            Ok(other) => Err(internal(format!("unexpected meta response {other:?}"))),
            Err(ProposeError::NotLeader { leader: Some(l) }) if l != self.node.id => {
                let addr = self.leader_addr(l)?;
                let mut client = connect(&self.node, &addr).await?;
                client.add_learner(req).await
            }
            Err(e) => Err(self.propose_error(e)),
        }
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let mut groups = Vec::new();
        for (group, handle) in self.node.registry.all() {
            let m = handle.raft.metrics().borrow().clone();
            let role = match m.state {
                openraft::ServerState::Leader => "leader",
                openraft::ServerState::Candidate => "candidate",
                openraft::ServerState::Learner => "learner",
                openraft::ServerState::Follower => "follower",
                openraft::ServerState::Shutdown => "shutdown",
            };
            let (watermark, docs) = match &handle.data {
                GroupData::Shard(d) => (d.index.watermark(), d.index.num_docs()),
                GroupData::Meta(_) => (0, 0),
            };
            let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
            groups.push(pb::GroupStatus {
                group,
                role: role.to_string(),
                leader: m.current_leader.unwrap_or(0),
                term: m.current_term,
                committed: committed_index(&m),
                applied,
                index_watermark: watermark,
                docs,
            });
        }
        Ok(Response::new(pb::StatusResponse {
            node: self.node.id,
            region: self.node.spec.region.clone(),
            zone: self.node.spec.zone.clone(),
            groups,
            map_epoch: self.node.meta.map().epoch,
        }))
    }

    async fn digest(
        &self,
        request: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestResponse>, Status> {
        let shard = request.into_inner().shard;
        let (_, data) = self.shard(shard)?;
        let d = data.clone();
        let (docs, digest) = tokio::task::spawn_blocking(move || d.digest())
            .await
            .map_err(internal)?
            .map_err(internal)?;
        let applied = data
            .applied()
            .map_err(internal)?
            .map(|l| l.index)
            .unwrap_or(0);
        Ok(Response::new(pb::DigestResponse {
            shard,
            applied,
            docs,
            digest,
        }))
    }

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let req = request.into_inner();
        let raft =
            self.node.registry.raft(req.group).ok_or_else(|| {
                Status::not_found(format!("group {} is not on this node", req.group))
            })?;
        let applied = raft.metrics().borrow().last_applied.map(|l| l.index);
        raft.trigger().snapshot().await.map_err(internal)?;
        let m = raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.snapshot.map(|s| s.index) >= applied, "snapshot built")
            .await
            .map_err(|e| Status::unavailable(format!("snapshot not built: {e}")))?;
        let index = m.snapshot.map(|s| s.index).unwrap_or(0);
        if req.purge && req.group != META_GROUP {
            raft.trigger().purge_log(index).await.map_err(internal)?;
        }
        Ok(Response::new(pb::SnapshotResponse {
            snapshot_index: index,
        }))
    }
}

impl NodeService {
    fn leader_addr(&self, leader: u64) -> Result<String, Status> {
        self.node
            .meta
            .map()
            .nodes
            .get(&leader)
            .map(|n| n.grpc_addr.clone())
            .ok_or_else(|| {
                Status::unavailable(format!("meta leader {leader} has no known address yet"))
            })
    }
}
