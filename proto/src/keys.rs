//! Tenant API keys: their text form, their scopes, and their stored hashes.
//!
//! A key is `tsk_<id>_<secret>`. The id is public: it names the key in
//! `tessera keys list`, in audit lines and in the cluster map, and lets a
//! router find the one stored hash to check without trying them all. The
//! secret is 256 random bits, shown once at creation and stored only as a
//! salted argon2id hash (PHC string), so a copy of the map, a backup or a
//! log does not leak usable keys.
//!
//! argon2 is deliberately slow (tens of milliseconds), which a search path
//! cannot pay per request: routers remember which presented keys they
//! already verified, by a BLAKE3 fingerprint of the whole key, and look the
//! record up again on every request so a revocation still wins at once.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// What every key starts with, so that secret scanners (and people) can
/// recognise a leaked Tessera key.
pub const KEY_PREFIX: &str = "tsk_";

/// Hex digits of a key id: 64 bits, enough that random ids never collide
/// in one cluster.
const ID_HEX_LEN: usize = 16;

/// Random bytes of a key's secret part.
const SECRET_BYTES: usize = 32;

/// The metadata header a caller sends its key in: `authorization: Bearer
/// tsk_...`, as Elasticsearch's and most HTTP APIs' clients already do.
pub const AUTHORIZATION_HEADER: &str = "authorization";

/// The metadata header carrying a signed user token (JWT) for tenants that
/// require one (see `router::auth::tokens`).
pub const USER_TOKEN_HEADER: &str = "x-tessera-user-token";

/// Errors parsing, generating or hashing keys.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not `tsk_<16 hex>_<secret>`.
    #[error("not a Tessera API key (expected tsk_<id>_<secret>)")]
    Malformed,
    /// A scope name is not one of search, write, features, admin.
    #[error("unknown scope {0:?}: expected search, write, features or admin")]
    UnknownScope(String),
    /// A key would grant nothing, or a tenant key asked for `admin`.
    #[error("{0}")]
    InvalidGrant(String),
    /// argon2 failed (out of memory, bad parameters).
    #[error("hashing the key: {0}")]
    Hash(String),
}

/// What a key may do. Ordered so that sets print alike everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Search and get documents, acting for users of the key's tenant.
    Search,
    /// Put and delete documents, group memberships and events.
    Write,
    /// Apply feature definitions, read online and historical features.
    Features,
    /// Tenant creation, resize and moves, node drains, key management:
    /// cluster-level keys only.
    Admin,
}

impl Scope {
    /// Every scope, in order.
    pub const ALL: [Scope; 4] = [Scope::Search, Scope::Write, Scope::Features, Scope::Admin];

    /// The wire and CLI name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Search => "search",
            Scope::Write => "write",
            Scope::Features => "features",
            Scope::Admin => "admin",
        }
    }

    /// Parses one scope name.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s.trim())
            .ok_or_else(|| KeyError::UnknownScope(s.trim().to_string()))
    }

    /// Parses a comma-separated list (`search,write`), rejecting unknown
    /// names and the empty list.
    pub fn parse_list(s: &str) -> Result<BTreeSet<Scope>, KeyError> {
        let set = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Scope::parse)
            .collect::<Result<BTreeSet<_>, _>>()?;
        if set.is_empty() {
            return Err(KeyError::InvalidGrant(
                "a key needs at least one scope (search, write, features, admin)".into(),
            ));
        }
        Ok(set)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored key, as the meta group keeps it. Never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The public id (`tsk_<id>_...`).
    pub id: String,
    /// The tenant the key acts for; empty for a cluster-level key, which
    /// acts for every tenant.
    pub tenant: String,
    /// What the key may do.
    pub scopes: BTreeSet<Scope>,
    /// The salted argon2id hash of the secret, as a PHC string.
    pub hash: String,
    /// A label for people (`ci`, `backend`), shown by `keys list`.
    pub name: String,
    /// When the key was created (Unix milliseconds).
    pub created_ms: u64,
    /// When it was revoked (Unix milliseconds); 0 while it is live. Revoked
    /// records stay in the map as tombstones, so a revoked id can never be
    /// re-created and the bootstrap key is not brought back.
    pub revoked_ms: u64,
}

impl KeyRecord {
    /// Checks the grant itself: at least one scope, and `admin` only on a
    /// cluster-level key (a tenant must not administer the cluster).
    pub fn validate_grant(tenant: &str, scopes: &BTreeSet<Scope>) -> Result<(), KeyError> {
        if scopes.is_empty() {
            return Err(KeyError::InvalidGrant(
                "a key needs at least one scope".into(),
            ));
        }
        if !tenant.is_empty() && scopes.contains(&Scope::Admin) {
            return Err(KeyError::InvalidGrant(format!(
                "the admin scope is cluster-level: a key of tenant {tenant:?} cannot hold it"
            )));
        }
        Ok(())
    }

    /// Whether the key still works.
    pub fn is_live(&self) -> bool {
        self.revoked_ms == 0
    }

    /// The scopes as a comma-separated list.
    pub fn scope_list(&self) -> String {
        self.scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl KeyRecord {
    /// The wire form. `with_hash` is false in answers to clients: hashes
    /// travel only to cluster members, inside the map.
    pub fn to_proto(&self, with_hash: bool) -> crate::pb::ApiKeyInfo {
        crate::pb::ApiKeyInfo {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            scopes: self.scopes.iter().map(|s| s.as_str().to_string()).collect(),
            hash: if with_hash {
                self.hash.clone()
            } else {
                String::new()
            },
            name: self.name.clone(),
            created_ms: self.created_ms,
            revoked_ms: self.revoked_ms,
        }
    }

    /// A record from its wire form; an unknown scope is an error rather
    /// than silently dropped (dropping could widen nothing, but hides bugs).
    pub fn from_proto(info: &crate::pb::ApiKeyInfo) -> Result<Self, KeyError> {
        Ok(KeyRecord {
            id: info.id.clone(),
            tenant: info.tenant.clone(),
            scopes: info
                .scopes
                .iter()
                .map(|s| Scope::parse(s))
                .collect::<Result<_, _>>()?,
            hash: info.hash.clone(),
            name: info.name.clone(),
            created_ms: info.created_ms,
            revoked_ms: info.revoked_ms,
        })
    }
}

/// A freshly generated key: the text to hand to its owner once, and what
/// the cluster stores.
pub struct NewKey {
    /// The public id.
    pub id: String,
    /// The whole key, `tsk_<id>_<secret>`: shown once, never stored.
    pub token: String,
    /// The argon2id PHC hash of the secret.
    pub hash: String,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("id", &self.id)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A key as presented by a caller, split into its parts.
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    /// The public id.
    pub id: &'a str,
    /// The secret part.
    pub secret: &'a str,
}

impl fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PresentedKey({})", self.id)
    }
}

/// Generates a key with a random id and secret and hashes the secret.
pub fn generate() -> Result<NewKey, KeyError> {
    let mut rng = rand::rng();
    let id = format!("{:016x}", rng.next_u64());
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill_bytes(&mut secret);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let hash = hash_secret(&secret)?;
    Ok(NewKey {
        token: format!("{KEY_PREFIX}{id}_{secret}"),
        id,
        hash,
    })
}

/// Splits `tsk_<id>_<secret>`; any other shape is [`KeyError::Malformed`].
pub fn parse(token: &str) -> Result<PresentedKey<'_>, KeyError> {
    let rest = token
        .trim()
        .strip_prefix(KEY_PREFIX)
        .ok_or(KeyError::Malformed)?;
    let (id, secret) = rest.split_once('_').ok_or(KeyError::Malformed)?;
    let id_ok = id.len() == ID_HEX_LEN && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !id_ok || secret.is_empty() || secret.len() > 128 {
        return Err(KeyError::Malformed);
    }
    Ok(PresentedKey { id, secret })
}

/// The salted argon2id hash of `secret`, as a PHC string.
pub fn hash_secret(secret: &str) -> Result<String, KeyError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| KeyError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| KeyError::Hash(e.to_string()))
}

/// Whether `secret` matches the stored PHC hash. A hash that does not parse
/// matches nothing.
pub fn verify_secret(secret: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(secret.as_bytes(), &hash)
            .is_ok()
    })
}

/// A fingerprint of a whole presented key, for caches of verified keys: it
/// identifies the exact text without keeping the secret in memory.
pub fn fingerprint(token: &str) -> [u8; 32] {
    *blake3::hash(token.trim().as_bytes()).as_bytes()
}

/// The key in a `Bearer` authorization value, if any.
pub fn from_bearer(value: &str) -> Option<&str> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_and_verifies_and_nothing_else_does() {
        let key = generate().expect("key");
        let presented = parse(&key.token).expect("parses");
        assert_eq!(presented.id, key.id);
        assert!(verify_secret(presented.secret, &key.hash));
        assert!(!verify_secret("not-the-secret", &key.hash));
        assert!(!verify_secret(presented.secret, "not a phc string"));
        // The hash is salted: the same secret hashes differently each time.
        assert_ne!(hash_secret(presented.secret).expect("hash"), key.hash);
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "tsk_",
            "tsk_0123_secret",
            "tsk_0123456789abcdeg_secret",
            "tsk_0123456789abcdef_",
            "xsk_0123456789abcdef_secret",
            "tsk_0123456789abcdef",
        ] {
            assert_eq!(parse(bad), Err(KeyError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn scopes_parse_and_admin_is_cluster_level() {
        let set = Scope::parse_list("search, write").expect("scopes");
        assert_eq!(
            set.into_iter().collect::<Vec<_>>(),
            vec![Scope::Search, Scope::Write]
        );
        assert!(matches!(
            Scope::parse_list("search,root"),
            Err(KeyError::UnknownScope(_))
        ));
        assert!(Scope::parse_list("").is_err());
        let admin = BTreeSet::from([Scope::Admin]);
        assert!(KeyRecord::validate_grant("", &admin).is_ok());
        assert!(KeyRecord::validate_grant("acme", &admin).is_err());
    }

    #[test]
    fn bearer_values_are_read_case_insensitively() {
        assert_eq!(from_bearer("Bearer tsk_x"), Some("tsk_x"));
        assert_eq!(from_bearer("bearer  tsk_x "), Some("tsk_x"));
        assert_eq!(from_bearer("Basic abc"), None);
        assert_eq!(from_bearer("tsk_x"), None);
    }
}
