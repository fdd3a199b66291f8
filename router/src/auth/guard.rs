//! The check every public RPC runs first: authenticate the caller against
//! the router's current map (re-reading it once for a key it does not know
//! yet), authorise what the RPC needs, check a signed user token where the
//! tenant requires one, and write admin operations to the audit log.

use super::audit::{now_ms, AuditEntry};
use super::{Caller, Need, Refusal};
use crate::backend::Backend;
use crate::deadline::Deadline;
use tessera_proto::keys::USER_TOKEN_HEADER;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// Authenticates and authorises one request; refusals of admin operations
/// are audited (with the caller's key id when it verified).
pub async fn authorize(
    backend: &Backend,
    rpc: &'static str,
    metadata: &MetadataMap,
    need: Need<'_>,
    deadline: Deadline,
) -> Result<Caller, Status> {
    if backend.cfg.unsecured {
        return Ok(Caller::unsecured_baseline());
    }
    let result = authenticate(backend, metadata, deadline)
        .await
        .and_then(|caller| caller.require(need).map(|()| caller));
    if let Err(status) = &result {
        metrics::counter!("tessera_router_auth_refusals_total", "rpc" => rpc, "code" => format!("{:?}", status.code()))
            .increment(1);
        if need.is_admin() {
            audit(
                backend,
                rpc,
                None,
                need.tenant.unwrap_or(""),
                status.message(),
            );
        }
    }
    result
}

async fn authenticate(
    backend: &Backend,
    metadata: &MetadataMap,
    deadline: Deadline,
) -> Result<Caller, Status> {
    let topo = backend
        .map
        .ready(deadline)
        .await
        .map_err(|e| Status::unavailable(format!("cannot check the API key yet: {e}")))?;
    match backend.auth.authenticate(metadata, &topo) {
        Err(Refusal::UnknownKey(_)) => {
            // Perhaps created a moment ago through another router: one
            // re-read (coalesced and rate-limited by the map cache).
            let topo = backend.map.refresh(deadline).await;
            backend
                .auth
                .authenticate(metadata, &topo)
                .map_err(Refusal::into_status)
        }
        other => other.map_err(Refusal::into_status),
    }
}

/// Checks the signed user token for `user` when `tenant` requires one (or
/// when the caller sent one anyway: a token that does not verify is never
/// ignored).
pub fn check_acting_user(
    backend: &Backend,
    metadata: &MetadataMap,
    tenant: &str,
    user: &str,
) -> Result<(), Status> {
    let topo = backend.map.current();
    let policy = topo.user_token_policy(tenant);
    let token = metadata
        .get(USER_TOKEN_HEADER)
        .map(|v| {
            v.to_str()
                .map_err(|_| Status::unauthenticated("the user token is not text"))
        })
        .transpose()?;
    match (policy, token) {
        (Some(p), Some(token)) if !p.public_key_pem.is_empty() => {
            backend.tokens.verify(tenant, &p.public_key_pem, token, user)
        }
        (Some(p), None) if p.required => Err(Status::unauthenticated(format!(
            "tenant {tenant:?} requires a signed user token for {user:?} (header {USER_TOKEN_HEADER})"
        ))),
        (None, Some(_)) => Err(Status::unauthenticated(format!(
            "a user token was sent but tenant {tenant:?} has no user-token key to verify it"
        ))),
        _ => Ok(()),
    }
}

/// Appends one line to the audit log, if the router keeps one.
pub fn audit(backend: &Backend, rpc: &str, caller: Option<&Caller>, target: &str, outcome: &str) {
    if let Some(log) = &backend.audit {
        log.record(&AuditEntry {
            ts_ms: now_ms(),
            rpc,
            key: caller.map_or("", |c| c.key_id.as_str()),
            key_tenant: caller.map_or("", |c| c.tenant.as_str()),
            target,
            outcome,
        });
    }
}
