//! API keys and user-token policies: one meta command each, proposed on the
//! meta leader (forwarded there from any node). Routers call these after
//! checking the caller's admin key; the node itself admits only cluster
//! certificates (see `cluster_only`).

use tessera_proto::pb;
use tonic::{Response, Status};

use super::{internal, NodeService};
use crate::meta::keys::{now_ms, UserTokenPolicy};
use crate::meta::{MetaCommand, MetaOutcome};
use tessera_proto::keys::KeyRecord;

fn security_response(outcome: MetaOutcome) -> Result<pb::SecurityResponse, Status> {
    match outcome {
        MetaOutcome::Ok { epoch } => Ok(pb::SecurityResponse { epoch }),
        other => Err(internal(format!("unexpected meta response {other:?}"))),
    }
}

impl NodeService {
    pub(super) async fn put_key_inner(
        &self,
        req: pb::PutKeyRequest,
    ) -> Result<Response<pb::SecurityResponse>, Status> {
        let info = req
            .key
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("PutKey needs a key"))?;
        let record =
            KeyRecord::from_proto(info).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.on_meta_leader(
            MetaCommand::PutKey(record),
            req,
            security_response,
            |mut c, r| async move { c.put_key(r).await },
        )
        .await
    }

    pub(super) async fn revoke_key_inner(
        &self,
        req: pb::RevokeKeyRequest,
    ) -> Result<Response<pb::SecurityResponse>, Status> {
        let cmd = MetaCommand::RevokeKey {
            id: req.id.clone(),
            at_ms: now_ms(),
        };
        self.on_meta_leader(cmd, req, security_response, |mut c, r| async move {
            c.revoke_key(r).await
        })
        .await
    }

    pub(super) async fn set_user_tokens_inner(
        &self,
        req: pb::SetUserTokensRequest,
    ) -> Result<Response<pb::SecurityResponse>, Status> {
        let p = req
            .policy
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("SetUserTokens needs a policy"))?;
        let policy = UserTokenPolicy {
            tenant: p.tenant.clone(),
            public_key_pem: p.public_key_pem.clone(),
            required: p.required,
        };
        self.on_meta_leader(
            MetaCommand::SetUserTokens(policy),
            req,
            security_response,
            |mut c, r| async move { c.set_user_tokens(r).await },
        )
        .await
    }
}
