//! The node's side of a tenant resize: starting one on the meta group, and
//! the mover's fence, export and drop calls on a shard's leader (see
//! `crate::meta::resize`).

use std::future::Future;

use tessera_proto::pb;
use tessera_proto::pb::node_client::NodeClient;
use tonic::transport::Channel;
use tonic::{Response, Status};

use super::{connect, internal, validate, NodeService, DEFAULT_TIMEOUT};
use crate::meta::{MetaCommand, MetaOutcome};
use crate::node::{propose_indexed, ProposeError};
use crate::raft::guard::GuardedCommand;
use crate::raft::state_machine::ShardData;
use crate::raft::{Request as RaftRequest, Response as RaftResponse};

/// Most document rows one export page scans.
pub const MAX_EXPORT_PAGE: u32 = 2_000;

/// The status a request made with a map older than the tenant's fence gets:
/// `NotFound`, which routers answer by refreshing their map and retrying.
pub fn stale_map(tenant: &str, map_epoch: u64, fence: u64) -> Status {
    Status::not_found(format!(
        "stale cluster map: tenant {tenant:?} is being resized since map epoch {fence}, \
         the request was made with epoch {map_epoch}; refresh the map and retry"
    ))
}

/// The answer to a command that creates or changes a tenant.
pub(super) fn tenant_response(outcome: MetaOutcome) -> Result<pb::CreateTenantResponse, Status> {
    match outcome {
        MetaOutcome::Tenant { tenant, epoch } => Ok(pb::CreateTenantResponse {
            tenant: Some(tenant.to_proto()),
            epoch,
        }),
        other => Err(internal(format!("unexpected meta response {other:?}"))),
    }
}

impl NodeService {
    /// Refuses a read made with a map older than the tenant's fence.
    ///
    /// Reads check it twice: before they start (to fail fast) and after
    /// they have their answer, because a drop can apply while a read waits
    /// for its session token or runs. The drop raises the fence in the
    /// same write batch that deletes the rows, and the index trails that
    /// batch, so an answer that misses dropped rows always meets the raised
    /// fence on the second check.
    pub(super) fn check_fence(
        data: &ShardData,
        tenant: &str,
        map_epoch: u64,
    ) -> Result<(), Status> {
        let guard = data.guard(tenant).map_err(internal)?;
        if guard.admits(map_epoch) {
            Ok(())
        } else {
            Err(stale_map(tenant, map_epoch, guard.fence))
        }
    }

    /// Proposes `cmd` on the meta group, or, when another node leads it,
    /// hands the request to that node with `forward`. A rejection is the
    /// caller's mistake (`InvalidArgument`, nothing changed); any other
    /// outcome goes to `answer`.
    pub(super) async fn on_meta_leader<Req, Resp, Fwd, Fut>(
        &self,
        cmd: MetaCommand,
        req: Req,
        answer: impl FnOnce(MetaOutcome) -> Result<Resp, Status>,
        forward: Fwd,
    ) -> Result<Response<Resp>, Status>
    where
        Fwd: FnOnce(NodeClient<Channel>, Req) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        match self.node.propose_meta(cmd).await {
            Ok(RaftResponse::Meta(MetaOutcome::Rejected(msg))) => {
                Err(Status::invalid_argument(msg))
            }
            Ok(RaftResponse::Meta(outcome)) => answer(outcome).map(Response::new),
            Ok(other) => Err(internal(format!("unexpected meta response {other:?}"))),
            Err(ProposeError::NotLeader { leader: Some(l) }) if l != self.node.id => {
                let client = connect(&self.node, &self.leader_addr(l)?).await?;
                forward(client, req).await
            }
            Err(e) => Err(self.propose_error(e)),
        }
    }

    pub(super) async fn resize_tenant_inner(
        &self,
        req: pb::ResizeTenantRequest,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        validate::tenant(&req.id)?;
        let cmd = MetaCommand::BeginResize {
            tenant: req.id.clone(),
            partitions: req.partitions,
        };
        self.on_meta_leader(cmd, req, tenant_response, |mut c, r| async move {
            c.resize_tenant(r).await
        })
        .await
    }

    pub(super) async fn move_tenant_inner(
        &self,
        req: pb::MoveTenantRequest,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        validate::tenant(&req.id)?;
        let cmd = MetaCommand::BeginMove {
            tenant: req.id.clone(),
            partitions: req.partitions.clone(),
            to: (req.to_shard != 0).then_some(req.to_shard),
        };
        self.on_meta_leader(cmd, req, tenant_response, |mut c, r| async move {
            c.move_tenant(r).await
        })
        .await
    }

    pub(super) fn tenant_sizes_inner(
        &self,
        req: pb::TenantSizesRequest,
    ) -> Result<Response<pb::TenantSizesResponse>, Status> {
        let (_, data) = self.shard(req.shard)?;
        let tenants = data
            .all_tenant_stats()
            .map_err(internal)?
            .into_iter()
            .map(|(tenant, stats)| pb::TenantSize {
                tenant,
                docs: stats.docs,
                bytes: stats.bytes,
            })
            .collect();
        Ok(Response::new(pb::TenantSizesResponse {
            shard: req.shard,
            tenants,
        }))
    }

    pub(super) async fn swap_replica_inner(
        &self,
        req: pb::SwapReplicaRequest,
    ) -> Result<Response<pb::AddLearnerResponse>, Status> {
        let swap = crate::meta::Swap {
            leaving: req.leaving,
            joining: req.joining,
        };
        let cmd = MetaCommand::CompleteSwap {
            shard: req.shard,
            swap,
        };
        let answer = |outcome| match outcome {
            MetaOutcome::Ok { epoch } => Ok(pb::AddLearnerResponse { epoch }),
            other => Err(internal(format!("unexpected meta response {other:?}"))),
        };
        self.on_meta_leader(cmd, req, answer, |mut c, r| async move {
            c.swap_replica(r).await
        })
        .await
    }

    async fn propose_guarded(
        &self,
        shard: u64,
        cmd: GuardedCommand,
    ) -> Result<(u64, RaftResponse), Status> {
        let (handle, _) = self.shard(shard)?;
        let proposal = propose_indexed(&handle.raft, RaftRequest::Guarded(cmd));
        tokio::time::timeout(DEFAULT_TIMEOUT, proposal)
            .await
            .map_err(|_| Status::unavailable("not committed in time; retrying is safe"))?
            .map_err(|e| self.propose_error(e))
    }

    pub(super) async fn fence_inner(
        &self,
        req: pb::FenceRequest,
    ) -> Result<Response<pb::FenceResponse>, Status> {
        validate::tenant(&req.tenant)?;
        let cmd = GuardedCommand::Fence {
            tenant: req.tenant,
            fence: req.fence,
        };
        let (applied, _) = self.propose_guarded(req.shard, cmd).await?;
        Ok(Response::new(pb::FenceResponse { applied }))
    }

    pub(super) async fn export_inner(
        &self,
        req: pb::ExportRequest,
    ) -> Result<Response<pb::ExportResponse>, Status> {
        validate::tenant(&req.tenant)?;
        if req.to.is_empty() {
            return Err(Status::invalid_argument(
                "export needs the new placement (to)",
            ));
        }
        let data = self.applied_at_least(req.shard, req.min_applied).await?;
        let limit = req.limit.clamp(1, MAX_EXPORT_PAGE) as usize;
        let page = tokio::task::spawn_blocking(move || {
            data.export(&req.tenant, &req.after, limit, &req.to)
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        Ok(Response::new(pb::ExportResponse {
            docs_json: page.docs,
            tombstones: page
                .tombstones
                .into_iter()
                .map(|(id, version)| pb::DeleteOp { id, version })
                .collect(),
            restrictions: page
                .restrictions
                .into_iter()
                .map(|(page, r)| pb::Restriction {
                    page,
                    version: r.version,
                    principals: r.principals,
                })
                .collect(),
            memberships: page
                .memberships
                .into_iter()
                .map(|(user, groups)| pb::Membership { user, groups })
                .collect(),
            next: page.next.unwrap_or_default(),
        }))
    }

    /// The local replica of `shard` once it has applied `min_applied` (a fence): an export
    /// from it then sees every write the fence admitted.
    pub(super) async fn applied_at_least(
        &self,
        shard: u64,
        min_applied: u64,
    ) -> Result<std::sync::Arc<ShardData>, Status> {
        let (handle, data) = self.shard(shard)?;
        if min_applied > 0 {
            handle
                .raft
                .wait(Some(DEFAULT_TIMEOUT))
                .applied_index_at_least(Some(min_applied), "export after the fence")
                .await
                .map_err(|_| Status::unavailable("replica behind the fence; retry"))?;
        }
        Ok(data)
    }

    pub(super) async fn drop_inner(
        &self,
        req: pb::DropRequest,
    ) -> Result<Response<pb::DropResponse>, Status> {
        validate::tenant(&req.tenant)?;
        if req.to.is_empty() {
            return Err(Status::invalid_argument(
                "drop needs the new placement (to)",
            ));
        }
        let cmd = GuardedCommand::Drop {
            tenant: req.tenant,
            fence: req.fence,
            to: req.to,
        };
        let (applied, response) = self.propose_guarded(req.shard, cmd).await?;
        let dropped = match response {
            RaftResponse::Shard { applied_ops, .. } => u64::from(applied_ops),
            _ => 0,
        };
        Ok(Response::new(pb::DropResponse { applied, dropped }))
    }
}
