//! Who is calling, and may they do this: API keys, scopes, tenant
//! isolation and signed user tokens, checked before any other work.
//!
//! Every public RPC names the tenant it touches and the [`Scope`] it needs
//! ([`Need`]); [`Auth::check`] turns the caller's `authorization: Bearer
//! tsk_...` header into a [`Caller`] and refuses:
//! - `UNAUTHENTICATED`: no key, a malformed, unknown or revoked key, or a
//!   wrong secret;
//! - `PERMISSION_DENIED`: a key without the scope, or a key of another
//!   tenant. The message for another tenant is the same whether that tenant
//!   exists or not, so a key cannot probe for other tenants' names.
//!
//! Keys are verified against the argon2id hashes in the cluster map (see
//! `tessera_proto::keys`). A verified key is remembered by the fingerprint
//! of its exact text, so the slow hash is paid once per key and router, and
//! the record is looked up in the current map on every request, so a
//! revocation is in force as soon as the router's map has it.

pub mod audit;
pub mod guard;
pub mod tokens;

use crate::topology::Topology;
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use tessera_proto::keys::{self, KeyRecord, Scope};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// Most verified keys remembered; past it the memory is cleared, which only
/// costs one argon2 verification per key again.
const MAX_VERIFIED: usize = 16_384;

/// What one request needs: one of some scopes, on a tenant or on the
/// cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need<'a> {
    /// The tenant touched; `None` for cluster-level operations.
    pub tenant: Option<&'a str>,
    /// The scopes any one of which suffices.
    pub any_of: &'static [Scope],
}

impl<'a> Need<'a> {
    /// `scope` on `tenant`.
    pub fn tenant(tenant: &'a str, scope: Scope) -> Self {
        Need {
            tenant: Some(tenant),
            any_of: one(scope),
        }
    }

    /// Any scope at all on `tenant`: reading the tenant's own description.
    pub fn any_on(tenant: &'a str) -> Self {
        Need {
            tenant: Some(tenant),
            any_of: &Scope::ALL,
        }
    }

    /// `admin` on the cluster.
    pub fn admin() -> Self {
        Need {
            tenant: None,
            any_of: one(Scope::Admin),
        }
    }

    /// `admin`, about one tenant (resize, move): still a cluster-level
    /// key, since tenant keys never hold `admin`.
    pub fn admin_on(tenant: &'a str) -> Self {
        Need {
            tenant: Some(tenant),
            any_of: one(Scope::Admin),
        }
    }

    /// Whether this is an administrative operation (audited).
    pub fn is_admin(&self) -> bool {
        self.any_of == one(Scope::Admin)
    }
}

/// A one-scope list with a static lifetime.
fn one(scope: Scope) -> &'static [Scope] {
    match scope {
        Scope::Search => &[Scope::Search],
        Scope::Write => &[Scope::Write],
        Scope::Features => &[Scope::Features],
        Scope::Admin => &[Scope::Admin],
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's public id (audit lines name it).
    pub key_id: String,
    /// The key's tenant; empty for a cluster-level key.
    pub tenant: String,
    /// What the key may do.
    pub scopes: BTreeSet<Scope>,
}

impl Caller {
    /// Who every caller is on an `--unsecured` benchmark baseline router: a
    /// cluster-level key with every scope, so the baseline does the same
    /// work as a secured router minus the checks.
    pub fn unsecured_baseline() -> Self {
        Self {
            key_id: "unsecured".into(),
            tenant: String::new(),
            scopes: Scope::ALL.into_iter().collect(),
        }
    }

    /// Whether this caller may do what `need` says: the scope, on its own
    /// tenant (a cluster-level key acts on every tenant; cluster-level
    /// operations need a cluster-level key).
    pub fn allows(&self, need: Need<'_>) -> bool {
        let tenant_ok = match need.tenant {
            _ if self.tenant.is_empty() => true,
            Some(t) => t == self.tenant,
            None => false,
        };
        tenant_ok && need.any_of.iter().any(|s| self.scopes.contains(s))
    }

    /// [`Self::allows`] as a status: `PERMISSION_DENIED` with a reason that
    /// names the caller's own grant, never anything about other tenants.
    pub fn require(&self, need: Need<'_>) -> Result<(), Status> {
        if self.allows(need) {
            return Ok(());
        }
        let other_tenant = !self.tenant.is_empty() && need.tenant != Some(self.tenant.as_str());
        let reason = if other_tenant {
            let target = match need.tenant {
                Some(t) => format!("tenant {t:?}"),
                None => "the cluster".to_string(),
            };
            format!(
                "key {} of tenant {:?} does not grant access to {target}",
                self.key_id, self.tenant
            )
        } else {
            let wanted: Vec<&str> = need.any_of.iter().map(|s| s.as_str()).collect();
            format!(
                "key {} lacks the {} scope (it has {})",
                self.key_id,
                wanted.join("|"),
                scope_list(&self.scopes)
            )
        };
        Err(Status::permission_denied(reason))
    }
}

fn scope_list(scopes: &BTreeSet<Scope>) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The key checker of one router.
#[derive(Debug, Default)]
pub struct Auth {
    /// Fingerprint of a verified key text → the hash it verified against.
    verified: Mutex<HashMap<[u8; 32], String>>,
}

/// Why [`Auth::authenticate`] refused, before it became a status: callers
/// re-read the map once on [`Refusal::UnknownKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The key id is not in this router's map.
    UnknownKey(String),
    /// Any other failure, as the status to return.
    Status(Code, String),
}

impl Refusal {
    /// The gRPC status.
    pub fn into_status(self) -> Status {
        match self {
            Refusal::UnknownKey(id) => Status::unauthenticated(format!("unknown API key {id}")),
            Refusal::Status(code, msg) => Status::new(code, msg),
        }
    }
}

impl Auth {
    /// A checker that remembers nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The caller that `metadata` proves, against the keys in `topo`.
    pub fn authenticate(&self, metadata: &MetadataMap, topo: &Topology) -> Result<Caller, Refusal> {
        let unauthenticated = |msg: &str| Refusal::Status(Code::Unauthenticated, msg.to_string());
        let value = metadata
            .get(keys::AUTHORIZATION_HEADER)
            .ok_or_else(|| {
                unauthenticated(
                    "no API key: send `authorization: Bearer tsk_...` (see `tessera keys create`)",
                )
            })?
            .to_str()
            .map_err(|_| unauthenticated("the authorization header is not text"))?;
        let token = keys::from_bearer(value)
            .ok_or_else(|| unauthenticated("the authorization header must be `Bearer tsk_...`"))?;
        let presented = keys::parse(token).map_err(|e| unauthenticated(&e.to_string()))?;
        let record = topo
            .key(presented.id)
            .ok_or_else(|| Refusal::UnknownKey(presented.id.to_string()))?;
        if !record.is_live() {
            return Err(unauthenticated(&format!(
                "API key {} was revoked",
                record.id
            )));
        }
        if !self.verify(token, presented.secret, record) {
            return Err(unauthenticated(&format!(
                "wrong secret for API key {}",
                record.id
            )));
        }
        Ok(Caller {
            key_id: record.id.clone(),
            tenant: record.tenant.clone(),
            scopes: record.scopes.clone(),
        })
    }

    /// Whether `secret` matches `record`, paying argon2 only for key texts
    /// not verified before against this very hash.
    fn verify(&self, token: &str, secret: &str, record: &KeyRecord) -> bool {
        let print = keys::fingerprint(token);
        if self.verified.lock().get(&print) == Some(&record.hash) {
            return true;
        }
        if !keys::verify_secret(secret, &record.hash) {
            metrics::counter!("tessera_router_auth_verify_failures_total").increment(1);
            return false;
        }
        let mut verified = self.verified.lock();
        if verified.len() >= MAX_VERIFIED {
            verified.clear();
        }
        verified.insert(print, record.hash.clone());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(tenant: &str, scopes: &[Scope]) -> Caller {
        Caller {
            key_id: "k".into(),
            tenant: tenant.into(),
            scopes: scopes.iter().copied().collect(),
        }
    }

    #[test]
    fn tenant_keys_act_on_their_tenant_only_and_never_on_the_cluster() {
        let k = caller("acme", &[Scope::Search, Scope::Write]);
        assert!(k.allows(Need::tenant("acme", Scope::Search)));
        assert!(!k.allows(Need::tenant("acme", Scope::Features)));
        assert!(!k.allows(Need::tenant("globex", Scope::Search)));
        assert!(!k.allows(Need::admin()));
        let admin = caller("", &[Scope::Admin]);
        assert!(admin.allows(Need::admin()));
        assert!(!admin.allows(Need::tenant("acme", Scope::Search)));
    }

    #[test]
    fn another_tenant_gets_the_same_refusal_whether_or_not_it_exists() {
        let k = caller("acme", &[Scope::Search]);
        let a = k
            .require(Need::tenant("globex", Scope::Search))
            .expect_err("denied");
        let b = k
            .require(Need::tenant("no-such-tenant", Scope::Search))
            .expect_err("denied");
        assert_eq!(a.code(), Code::PermissionDenied);
        assert_eq!(
            a.message().replace("globex", "X"),
            b.message().replace("no-such-tenant", "X")
        );
    }
}
