//! Key management through the router: create (the text is returned once),
//! list (never hashes), revoke, and a tenant's user-token policy. Every call
//! needs a cluster-level key with the `admin` scope.

use crate::error::ClientError;
use crate::TesseraClient;
use serde::Serialize;
use tessera_proto::pb;

/// A key as `tessera keys list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// The public id (`tsk_<id>_...`).
    pub id: String,
    /// The tenant; empty for a cluster-level key.
    pub tenant: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Its label.
    pub name: String,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// Revocation time, Unix milliseconds; 0 while live.
    pub revoked_ms: u64,
}

impl From<pb::ApiKeyInfo> for KeyInfo {
    fn from(k: pb::ApiKeyInfo) -> Self {
        KeyInfo {
            id: k.id,
            tenant: k.tenant,
            scopes: k.scopes,
            name: k.name,
            created_ms: k.created_ms,
            revoked_ms: k.revoked_ms,
        }
    }
}

/// A new key: its text, shown once, and its description.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedKey {
    /// `tsk_<id>_<secret>`: store it now, it cannot be shown again.
    pub key: String,
    /// What it grants.
    pub info: KeyInfo,
}

impl TesseraClient {
    /// Creates a key for `tenant` (empty: cluster-level) with `scopes`.
    pub async fn create_key(
        &self,
        tenant: &str,
        scopes: &[String],
        name: &str,
    ) -> Result<CreatedKey, ClientError> {
        let req = self.request(pb::CreateKeyRequest {
            tenant: tenant.to_string(),
            scopes: scopes.to_vec(),
            name: name.to_string(),
        });
        let resp = self.inner.clone().create_key(req).await?.into_inner();
        let info = resp
            .info
            .ok_or_else(|| ClientError::Internal("router returned no key description".into()))?;
        Ok(CreatedKey {
            key: resp.key,
            info: info.into(),
        })
    }

    /// Every key (of `tenant` when not empty), revoked ones included.
    pub async fn list_keys(&self, tenant: &str) -> Result<Vec<KeyInfo>, ClientError> {
        let req = self.request(pb::ListKeysRequest {
            tenant: tenant.to_string(),
        });
        let resp = self.inner.clone().list_keys(req).await?.into_inner();
        Ok(resp.keys.into_iter().map(KeyInfo::from).collect())
    }

    /// Revokes key `id`; returns the map epoch that holds the revocation.
    pub async fn revoke_key(&self, id: &str) -> Result<u64, ClientError> {
        let req = self.request(pb::RevokeKeyRequest { id: id.to_string() });
        Ok(self.inner.clone().revoke_key(req).await?.into_inner().epoch)
    }

    /// Sets `tenant`'s user-token policy: the Ed25519 public key (PEM) that
    /// verifies its tokens, and whether searches and gets require one.
    pub async fn set_user_tokens(
        &self,
        tenant: &str,
        public_key_pem: &str,
        required: bool,
    ) -> Result<u64, ClientError> {
        let req = self.request(pb::SetUserTokensRequest {
            policy: Some(pb::UserTokenPolicy {
                tenant: tenant.to_string(),
                public_key_pem: public_key_pem.to_string(),
                required,
            }),
        });
        Ok(self
            .inner
            .clone()
            .set_user_tokens(req)
            .await?
            .into_inner()
            .epoch)
    }
}
