//! Signed user tokens: a tenant may require that the acting user of a
//! search or get comes with a JWT its own backend signed, so that a leaked
//! search key alone cannot read as any user.
//!
//! Tokens are EdDSA (Ed25519) JWTs. The tenant keeps the private key; the
//! cluster map holds only the public key (set with `tessera keys
//! user-tokens`), so nothing Tessera stores can mint tokens. Claims:
//! `sub` is the acting user (`u:alice`), `tenant` the tenant, `exp` the
//! expiry (Unix seconds, required).

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
use tonic::Status;

/// Clock skew allowed on `exp`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// The claims Tessera reads.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    tenant: String,
}

/// Parsed public keys by tenant, so a PEM is parsed once, not per search.
#[derive(Default)]
pub struct TokenVerifier {
    keys: Mutex<HashMap<String, (String, DecodingKey)>>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Checks that `token` is a valid, unexpired token of `tenant`, signed
    /// by the key `public_key_pem`, for exactly `user`.
    pub fn verify(
        &self,
        tenant: &str,
        public_key_pem: &str,
        token: &str,
        user: &str,
    ) -> Result<(), Status> {
        let key = self.key(tenant, public_key_pem)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = decode::<Claims>(token, &key, &validation)
            .map_err(|e| Status::unauthenticated(format!("user token refused: {e}")))?;
        if data.claims.tenant != tenant {
            return Err(Status::unauthenticated(
                "user token refused: it was issued for another tenant",
            ));
        }
        if data.claims.sub != user {
            return Err(Status::unauthenticated(format!(
                "user token refused: it is for {:?}, not {user:?}",
                data.claims.sub
            )));
        }
        Ok(())
    }

    fn key(&self, tenant: &str, pem: &str) -> Result<DecodingKey, Status> {
        if let Some((known, key)) = self.keys.lock().get(tenant) {
            if known == pem {
                return Ok(key.clone());
            }
        }
        let key = DecodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| {
            Status::failed_precondition(format!(
                "tenant {tenant:?} has an unusable user-token public key: {e}"
            ))
        })?;
        self.keys
            .lock()
            .insert(tenant.to_string(), (pem.to_string(), key.clone()));
        Ok(key)
    }
}
