//! API keys and user-token policies in the replicated map.
//!
//! They live in the meta group, next to the tenants they grant, so that a
//! key and its tenant are created, replicated and backed up together, and
//! every router learns a revocation through the same map watch that tells
//! it where shards are. Only hashes are stored (see `tessera_proto::keys`).

use serde::{Deserialize, Serialize};
use tessera_proto::keys::{KeyRecord, Scope};
use tessera_proto::pb;

use super::{ClusterMap, MetaOutcome};

/// A tenant's rule for the acting user of searches and gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserTokenPolicy {
    /// The tenant it applies to.
    pub tenant: String,
    /// The Ed25519 public key (PEM) that verifies the tenant's tokens.
    pub public_key_pem: String,
    /// When true, a search or get without a valid signed token for its user
    /// is refused, so a leaked search key alone cannot impersonate users.
    pub required: bool,
}

impl ClusterMap {
    /// Adds a key. Ids are never reused: a live or revoked record with the
    /// same id makes this a no-op when it is the same key (a retried
    /// proposal) and a rejection otherwise.
    pub(super) fn put_key(&mut self, key: &KeyRecord) -> Result<MetaOutcome, String> {
        KeyRecord::validate_grant(&key.tenant, &key.scopes).map_err(|e| e.to_string())?;
        tessera_proto::keys::parse(&format!("tsk_{}_x", key.id))
            .map_err(|_| format!("key id {:?} is not 16 hex digits", key.id))?;
        if !key.tenant.is_empty() && !self.tenants.contains_key(&key.tenant) {
            return Err(format!("unknown tenant {:?}", key.tenant));
        }
        if !key.hash.starts_with("$argon2") {
            return Err("a key is stored as an argon2 hash, never in plain text".into());
        }
        if let Some(existing) = self.keys.get(&key.id) {
            return if existing.hash == key.hash {
                Ok(MetaOutcome::Ok { epoch: self.epoch })
            } else {
                Err(format!("key id {} is already taken", key.id))
            };
        }
        self.keys.insert(key.id.clone(), key.clone());
        Ok(MetaOutcome::Ok { epoch: self.bump() })
    }

    /// Revokes a key, keeping its record as a tombstone.
    pub(super) fn revoke_key(&mut self, id: &str, at_ms: u64) -> Result<MetaOutcome, String> {
        let key = self
            .keys
            .get_mut(id)
            .ok_or_else(|| format!("unknown key {id:?}"))?;
        if key.is_live() {
            key.revoked_ms = at_ms.max(1);
            return Ok(MetaOutcome::Ok { epoch: self.bump() });
        }
        Ok(MetaOutcome::Ok { epoch: self.epoch })
    }

    /// Sets (or, with an empty public key and `required` off, clears) a
    /// tenant's user-token policy.
    pub(super) fn set_user_tokens(
        &mut self,
        policy: &UserTokenPolicy,
    ) -> Result<MetaOutcome, String> {
        if !self.tenants.contains_key(&policy.tenant) {
            return Err(format!("unknown tenant {:?}", policy.tenant));
        }
        if policy.required && policy.public_key_pem.trim().is_empty() {
            return Err("requiring user tokens needs the public key that verifies them".into());
        }
        let clear = policy.public_key_pem.trim().is_empty() && !policy.required;
        let changed = if clear {
            self.user_tokens.remove(&policy.tenant).is_some()
        } else if self.user_tokens.get(&policy.tenant) != Some(policy) {
            self.user_tokens
                .insert(policy.tenant.clone(), policy.clone());
            true
        } else {
            false
        };
        let epoch = if changed { self.bump() } else { self.epoch };
        Ok(MetaOutcome::Ok { epoch })
    }
}

/// File holding the bootstrap admin key's text (mode 0600), in the
/// certificate directory: the one secret an operator needs to create
/// tenants and the other keys.
pub const BOOTSTRAP_KEY_FILE: &str = "admin.key";
/// File holding the bootstrap key's record (its hash), which every node
/// reads and the meta leader adds to the map once.
pub const BOOTSTRAP_RECORD_FILE: &str = "admin.json";

/// Errors creating or reading the bootstrap key.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapKeyError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The record file does not hold a key record.
    #[error("{path}: not a key record: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Generating the key failed.
    #[error("generating the bootstrap key: {0}")]
    Generate(String),
}

/// Creates the cluster-level bootstrap admin key in `dir` unless it exists:
/// `admin.key` (the text, 0600) and `admin.json` (its record). It holds
/// every scope, so the README's tour works with it alone; revoke it once
/// narrower keys exist. Returns the key's id.
pub fn ensure_bootstrap_key(dir: &std::path::Path) -> Result<String, BootstrapKeyError> {
    if let Some(record) = load_bootstrap_record(dir)? {
        if dir.join(BOOTSTRAP_KEY_FILE).exists() {
            return Ok(record.id);
        }
    }
    let key =
        tessera_proto::keys::generate().map_err(|e| BootstrapKeyError::Generate(e.to_string()))?;
    let record = KeyRecord {
        id: key.id.clone(),
        tenant: String::new(),
        scopes: Scope::ALL.into_iter().collect(),
        hash: key.hash,
        name: "bootstrap admin".into(),
        created_ms: now_ms(),
        revoked_ms: 0,
    };
    let json = serde_json::to_string_pretty(&record)
        .map_err(|e| BootstrapKeyError::Generate(e.to_string()))?;
    write_private(&dir.join(BOOTSTRAP_KEY_FILE), &format!("{}\n", key.token))?;
    write_private(&dir.join(BOOTSTRAP_RECORD_FILE), &json)?;
    Ok(record.id)
}

/// The bootstrap key's record from `dir`, if the directory has one.
pub fn load_bootstrap_record(
    dir: &std::path::Path,
) -> Result<Option<KeyRecord>, BootstrapKeyError> {
    let path = dir.join(BOOTSTRAP_RECORD_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(BootstrapKeyError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let record: KeyRecord = serde_json::from_str(&text).map_err(|e| BootstrapKeyError::Parse {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    KeyRecord::validate_grant(&record.tenant, &record.scopes).map_err(|e| {
        BootstrapKeyError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    Ok(Some(record))
}

/// Writes `text` to `path` readable by its owner only, replacing it
/// atomically.
fn write_private(path: &std::path::Path, text: &str) -> Result<(), BootstrapKeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| BootstrapKeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The wire form of a policy.
pub fn policy_to_proto(p: &UserTokenPolicy) -> pb::UserTokenPolicy {
    pb::UserTokenPolicy {
        tenant: p.tenant.clone(),
        public_key_pem: p.public_key_pem.clone(),
        required: p.required,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn record(id: &str, tenant: &str, scopes: &[Scope]) -> KeyRecord {
        KeyRecord {
            id: id.to_string(),
            tenant: tenant.to_string(),
            scopes: scopes.iter().copied().collect::<BTreeSet<_>>(),
            hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_string(),
            name: "t".into(),
            created_ms: 1,
            revoked_ms: 0,
        }
    }

    #[test]
    fn keys_are_added_once_revoked_as_tombstones_and_never_reused() {
        let mut map = ClusterMap::default();
        let key = record("0123456789abcdef", "", &[Scope::Admin]);
        assert!(matches!(
            map.put_key(&key),
            Ok(MetaOutcome::Ok { epoch: 1 })
        ));
        // A retried proposal of the same key changes nothing.
        assert!(matches!(
            map.put_key(&key),
            Ok(MetaOutcome::Ok { epoch: 1 })
        ));
        let mut other = key.clone();
        other.hash.push('x');
        assert!(map.put_key(&other).is_err());
        assert!(matches!(
            map.revoke_key(&key.id, 5),
            Ok(MetaOutcome::Ok { epoch: 2 })
        ));
        assert_eq!(map.keys[&key.id].revoked_ms, 5);
        // Revoked stays revoked; putting the same key again does not revive it.
        assert!(matches!(
            map.put_key(&key),
            Ok(MetaOutcome::Ok { epoch: 2 })
        ));
        assert!(!map.keys[&key.id].is_live());
    }

    #[test]
    fn bad_grants_change_nothing() {
        let mut map = ClusterMap::default();
        let before = map.clone();
        assert!(
            map.put_key(&record("0123456789abcdef", "acme", &[Scope::Search]))
                .is_err(),
            "unknown tenant"
        );
        assert!(
            map.put_key(&record("0123456789abcdef", "", &[])).is_err(),
            "no scope"
        );
        assert!(
            map.put_key(&record("xyz", "", &[Scope::Admin])).is_err(),
            "bad id"
        );
        let mut plain = record("0123456789abcdef", "", &[Scope::Admin]);
        plain.hash = "secret".into();
        assert!(map.put_key(&plain).is_err(), "plain text");
        assert!(map.revoke_key("0123456789abcdef", 1).is_err());
        assert_eq!(map, before);
    }
}
