//! Request validation at the node's edge. Everything here runs before a
//! request touches Raft, so bad input changes nothing.

use tessera_proto::document::{check_name, validate_principal, validate_query, validate_tenant};
use tessera_proto::limits::{
    MAX_BATCH_OPS, MAX_GROUPS_PER_USER, MAX_ID_BYTES, MAX_PAGE_SIZE, MAX_PRINCIPALS,
};
use tessera_proto::{pb, Document};
use tonic::Status;

use crate::acl;
use crate::raft::ShardCommand;

/// Default page size when a request leaves `limit` at 0.
pub const DEFAULT_LIMIT: u32 = 10;

fn invalid(msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(msg.to_string())
}

/// Checks a tenant id.
pub fn tenant(t: &str) -> Result<(), Status> {
    validate_tenant(t).map_err(invalid)
}

/// Checks a `u:` user principal.
pub fn user(u: &str) -> Result<(), Status> {
    validate_principal(u).map_err(|e| invalid(format!("user: {e}")))?;
    if !u.starts_with("u:") {
        return Err(invalid(format!("user {u:?} must be a u:<user> principal")));
    }
    Ok(())
}

/// Checks the query text and page size, returning the effective limit.
pub fn search(req: &pb::SearchRequest) -> Result<usize, Status> {
    tenant(&req.tenant)?;
    user(&req.user)?;
    validate_query(&req.query).map_err(invalid)?;
    if req.limit > MAX_PAGE_SIZE {
        return Err(invalid(format!(
            "limit {} is over the page size limit of {MAX_PAGE_SIZE} (MAX_PAGE_SIZE)",
            req.limit
        )));
    }
    Ok(if req.limit == 0 {
        DEFAULT_LIMIT
    } else {
        req.limit
    } as usize)
}

/// Validates a whole write batch and turns it into a Raft command. One bad
/// item rejects the batch, naming the item, so nothing is written.
pub fn write(req: &pb::WriteRequest) -> Result<ShardCommand, Status> {
    tenant(&req.tenant)?;
    let ops =
        req.docs_json.len() + req.deletes.len() + req.memberships.len() + req.restrictions.len();
    if ops == 0 {
        return Err(invalid("empty write: no documents, deletes or memberships"));
    }
    if ops > MAX_BATCH_OPS {
        return Err(invalid(format!(
            "batch has {ops} operations, over the limit of {MAX_BATCH_OPS} (MAX_BATCH_OPS)"
        )));
    }
    for (i, json) in req.docs_json.iter().enumerate() {
        let doc =
            Document::from_json_bytes(json).map_err(|e| invalid(format!("document {i}: {e}")))?;
        acl::tokens(&req.tenant, &doc.permissions)
            .map_err(|e| invalid(format!("document {i} ({}): {e}", doc.id)))?;
    }
    let mut deletes = Vec::with_capacity(req.deletes.len());
    for (i, d) in req.deletes.iter().enumerate() {
        if d.id.is_empty() || d.id.len() > MAX_ID_BYTES {
            return Err(invalid(format!(
                "delete {i}: id must be 1..={MAX_ID_BYTES} bytes (MAX_ID_BYTES)"
            )));
        }
        if d.version == 0 {
            return Err(invalid(format!("delete {i}: version must be at least 1")));
        }
        deletes.push((d.id.clone(), d.version));
    }
    let mut memberships = Vec::with_capacity(req.memberships.len());
    for (i, m) in req.memberships.iter().enumerate() {
        user(&m.user).map_err(|e| invalid(format!("membership {i}: {}", e.message())))?;
        if m.groups.len() > MAX_GROUPS_PER_USER {
            return Err(invalid(format!(
                "membership {i}: {} groups, over the limit of {MAX_GROUPS_PER_USER} (MAX_GROUPS_PER_USER)",
                m.groups.len()
            )));
        }
        for g in &m.groups {
            validate_principal(g).map_err(|e| invalid(format!("membership {i}: {e}")))?;
            if !g.starts_with("g:") {
                return Err(invalid(format!(
                    "membership {i}: {g:?} must be a g:<group> principal"
                )));
            }
        }
        memberships.push((m.user.clone(), m.groups.clone()));
    }
    let mut restrictions = Vec::with_capacity(req.restrictions.len());
    for (i, r) in req.restrictions.iter().enumerate() {
        if r.page.is_empty() || r.page.len() > MAX_ID_BYTES {
            return Err(invalid(format!(
                "restriction {i}: page id must be 1..={MAX_ID_BYTES} bytes (MAX_ID_BYTES)"
            )));
        }
        check_name("restriction page id", &r.page)
            .map_err(|e| invalid(format!("restriction {i}: {e}")))?;
        if r.version == 0 {
            return Err(invalid(format!(
                "restriction {i}: version must be at least 1"
            )));
        }
        if r.principals.len() > MAX_PRINCIPALS {
            return Err(invalid(format!(
                "restriction {i}: {} principals, over the limit of {MAX_PRINCIPALS} (MAX_PRINCIPALS)",
                r.principals.len()
            )));
        }
        for p in &r.principals {
            validate_principal(p).map_err(|e| invalid(format!("restriction {i}: {e}")))?;
        }
        restrictions.push((r.page.clone(), r.version, r.principals.clone()));
    }
    Ok(ShardCommand {
        tenant: req.tenant.clone(),
        upserts: req.docs_json.clone(),
        deletes,
        memberships,
        restrictions,
    })
}
