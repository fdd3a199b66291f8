//! [`TesseraClient`]: one connection to a router, a method per RPC.

use crate::error::ClientError;
use crate::types::*;
use std::time::Duration;
use tessera_proto::pb;
use tessera_proto::pb::feature_router_client::FeatureRouterClient;
use tessera_proto::pb::router_client::RouterClient;
use tessera_proto::{keys, transport};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// Largest message exchanged with the router (a batch of large documents).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Default deadline of every call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An async client of one Tessera router. Cheap to clone; clones share the
/// connection (HTTP/2 multiplexes concurrent calls).
#[derive(Debug, Clone)]
pub struct TesseraClient {
    pub(crate) inner: RouterClient<Channel>,
    /// The feature store service on the same connection.
    pub(crate) features: FeatureRouterClient<Channel>,
    timeout: Duration,
    /// `Bearer tsk_...`, sent with every call.
    api_key: Option<MetadataValue<Ascii>>,
    /// A signed user token for tenants that require one.
    user_token: Option<MetadataValue<Ascii>>,
}

/// How to reach a router and prove who is calling.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The cluster CA (PEM) to verify the router with; `None` connects in
    /// plaintext, which only a router started with `--insecure` accepts.
    pub ca_pem: Option<String>,
    /// The API key (`tsk_...`).
    pub api_key: Option<String>,
    /// A signed user token (JWT) for the acting user.
    pub user_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("Credentials")
            .field("tls", &self.ca_pem.is_some())
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field(
                "user_token",
                &self.user_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl TesseraClient {
    /// Connects in plaintext and without a key to the router at `addr`
    /// (`host:port`): only for a router started with `--insecure`, and then
    /// every call still needs [`Self::with_api_key`].
    pub async fn connect(addr: impl AsRef<str>) -> Result<Self, ClientError> {
        Self::connect_with(addr, &Credentials::default()).await
    }

    /// Connects to the router at `addr` (`host:port`) over TLS when
    /// `creds.ca_pem` is set, sending `creds.api_key` with every call.
    pub async fn connect_with(
        addr: impl AsRef<str>,
        creds: &Credentials,
    ) -> Result<Self, ClientError> {
        let addr = addr.as_ref();
        let connect_err = |reason: String| ClientError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let endpoint = match &creds.ca_pem {
            Some(ca) => transport::router_endpoint(addr, ca),
            None => transport::plaintext_endpoint(addr),
        }
        .map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        let channel = endpoint
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| connect_err(error_chain(&e)))?;
        let mut client = Self::from_channel(channel);
        if let Some(key) = &creds.api_key {
            client = client.with_api_key(key)?;
        }
        if let Some(token) = &creds.user_token {
            client = client.with_user_token(token)?;
        }
        Ok(client)
    }

    /// Sends `key` (`tsk_...`) with every call.
    pub fn with_api_key(mut self, key: &str) -> Result<Self, ClientError> {
        let value = MetadataValue::try_from(format!("Bearer {}", key.trim())).map_err(|_| {
            ClientError::InvalidInput("the API key has characters a header cannot carry".into())
        })?;
        self.api_key = Some(value);
        Ok(self)
    }

    /// Sends a signed user token (JWT) with every call, for tenants that
    /// require one for the acting user.
    pub fn with_user_token(mut self, token: &str) -> Result<Self, ClientError> {
        let value = MetadataValue::try_from(token.trim()).map_err(|_| {
            ClientError::InvalidInput("the user token has characters a header cannot carry".into())
        })?;
        self.user_token = Some(value);
        Ok(self)
    }

    /// Wraps an existing channel (custom TLS, interceptors, tests).
    pub fn from_channel(channel: Channel) -> Self {
        TesseraClient {
            features: FeatureRouterClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            inner: RouterClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            timeout: DEFAULT_TIMEOUT,
            api_key: None,
            user_token: None,
        }
    }

    /// Sets the deadline of every call (the router propagates it to the nodes).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The deadline applied to calls.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn timeout_ms(&self) -> u32 {
        u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX)
    }

    pub(crate) fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        if let Some(key) = &self.api_key {
            r.metadata_mut()
                .insert(keys::AUTHORIZATION_HEADER, key.clone());
        }
        if let Some(token) = &self.user_token {
            r.metadata_mut()
                .insert(keys::USER_TOKEN_HEADER, token.clone());
        }
        r
    }

    /// Creates a tenant and returns it (with 0 documents).
    pub async fn create_tenant(&self, spec: &TenantSpec) -> Result<TenantView, ClientError> {
        let req = self.request(pb::CreateTenantRequest {
            id: spec.id.clone(),
            regions: spec.regions.clone(),
            home: spec.home.clone(),
            survival: spec.survival.clone(),
            partitions: spec.partitions,
        });
        let resp = self.inner.clone().create_tenant(req).await?.into_inner();
        let info = resp
            .tenant
            .ok_or_else(|| ClientError::Internal("router returned no tenant".into()))?;
        Ok(TenantView::from_info(info, 0))
    }

    /// A tenant's placement and document count.
    pub async fn tenant(&self, id: &str) -> Result<TenantView, ClientError> {
        let req = self.request(pb::GetTenantRequest {
            id: id.to_string(),
            timeout_ms: self.timeout_ms(),
        });
        let resp = self.inner.clone().get_tenant(req).await?.into_inner();
        let info = resp
            .tenant
            .ok_or_else(|| ClientError::Internal("router returned no tenant".into()))?;
        Ok(TenantView::from_info(info, resp.docs).with_shards(resp.shards))
    }

    /// Starts (or continues) draining a node: every replica on it moves to
    /// another eligible node. Returns the shards that still have a replica
    /// there (empty once drained). Safe to call again to follow progress.
    pub async fn drain_node(&self, node: u64) -> Result<Vec<u64>, ClientError> {
        let req = self.request(pb::DrainNodeRequest {
            node,
            undrain: false,
        });
        let resp = self.inner.clone().drain_node(req).await?.into_inner();
        Ok(resp.shards)
    }

    /// Returns a drained (or dead) node to service: it takes new replicas
    /// again, the cluster rebalances replicas onto it, and the moves of a
    /// drain still under way are called off. Returns the shards it holds now.
    pub async fn undrain_node(&self, node: u64) -> Result<Vec<u64>, ClientError> {
        let req = self.request(pb::DrainNodeRequest {
            node,
            undrain: true,
        });
        let resp = self.inner.clone().drain_node(req).await?.into_inner();
        Ok(resp.shards)
    }

    /// Starts growing a tenant to `partitions` partitions (a multiple of
    /// the current count). Returns once the resize has begun; the cluster
    /// moves the documents in the background (`tenant` shows progress).
    /// Asking again for the resize already running is safe.
    pub async fn resize_tenant(
        &self,
        id: &str,
        partitions: u32,
    ) -> Result<TenantView, ClientError> {
        let req = self.request(pb::ResizeTenantRequest {
            id: id.to_string(),
            partitions,
        });
        let resp = self.inner.clone().resize_tenant(req).await?.into_inner();
        let info = resp
            .tenant
            .ok_or_else(|| ClientError::Internal("router returned no tenant".into()))?;
        Ok(TenantView::from_info(info, 0))
    }

    /// Starts moving a tenant's `partitions` (all of them when empty) to
    /// shard `to_shard`, or to a shard the cluster picks when `None`: off a
    /// hot shard, or onto a fresh one. The partition count stays; like a
    /// resize, it runs in the background and `tenant` shows progress.
    /// Asking again for the move already running is safe.
    pub async fn move_tenant(
        &self,
        id: &str,
        partitions: &[u32],
        to_shard: Option<u64>,
    ) -> Result<TenantView, ClientError> {
        let req = self.request(pb::MoveTenantRequest {
            id: id.to_string(),
            partitions: partitions.to_vec(),
            to_shard: to_shard.unwrap_or(0),
        });
        let resp = self.inner.clone().move_tenant(req).await?.into_inner();
        let info = resp
            .tenant
            .ok_or_else(|| ClientError::Internal("router returned no tenant".into()))?;
        Ok(TenantView::from_info(info, 0))
    }

    /// Upserts documents (raw JSON, the DESIGN.md schema) and applies deletes.
    ///
    /// `session` is the token of earlier writes ("" for none); the returned
    /// token covers them and this write. Invalid items are rejected one by
    /// one; the rest are written. Safe to retry on a retryable error.
    pub async fn put_documents(
        &self,
        tenant: &str,
        docs_json: Vec<Vec<u8>>,
        deletes: Vec<Delete>,
        session: &str,
    ) -> Result<PutOutcome, ClientError> {
        let req = self.request(pb::PutDocumentsRequest {
            tenant: tenant.to_string(),
            docs_json,
            deletes: deletes
                .into_iter()
                .map(|d| pb::DeleteOp {
                    id: d.id,
                    version: d.version,
                })
                .collect(),
            session: session.to_string(),
            timeout_ms: self.timeout_ms(),
        });
        let r = self.inner.clone().put_documents(req).await?.into_inner();
        Ok(PutOutcome::from_parts(r.acked, r.rejected, r.token))
    }

    /// Upserts typed documents.
    pub async fn put(
        &self,
        tenant: &str,
        docs: &[tessera_proto::Document],
        session: &str,
    ) -> Result<PutOutcome, ClientError> {
        let json = docs
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::InvalidInput(format!("document does not serialise: {e}")))?;
        self.put_documents(tenant, json, Vec::new(), session).await
    }

    /// Deletes one document at `version`.
    pub async fn delete(
        &self,
        tenant: &str,
        id: &str,
        version: u64,
        session: &str,
    ) -> Result<PutOutcome, ClientError> {
        let delete = Delete {
            id: id.to_string(),
            version,
        };
        self.put_documents(tenant, Vec::new(), vec![delete], session)
            .await
    }

    /// Writes group memberships (to every partition of the tenant).
    pub async fn put_groups(
        &self,
        tenant: &str,
        memberships: Vec<GroupMembership>,
        session: &str,
    ) -> Result<PutOutcome, ClientError> {
        let req = self.request(pb::PutGroupsRequest {
            tenant: tenant.to_string(),
            memberships: memberships
                .into_iter()
                .map(|m| pb::Membership {
                    user: m.user,
                    groups: m.groups,
                })
                .collect(),
            session: session.to_string(),
            timeout_ms: self.timeout_ms(),
        });
        let r = self.inner.clone().put_groups(req).await?.into_inner();
        Ok(PutOutcome::from_parts(r.acked, r.rejected, r.token))
    }

    /// One page of search results.
    pub async fn search(&self, query: &SearchQuery) -> Result<SearchPage, ClientError> {
        let req = self.request(query.to_request(self.timeout_ms()));
        Ok(self.inner.clone().search(req).await?.into_inner().into())
    }

    /// Reads one document as `user` sees it.
    pub async fn get(
        &self,
        tenant: &str,
        id: &str,
        user: &str,
        token: Option<&str>,
    ) -> Result<GetResult, ClientError> {
        let req = self.request(pb::RouterGetRequest {
            tenant: tenant.to_string(),
            id: id.to_string(),
            user: user.to_string(),
            token: token.unwrap_or_default().to_string(),
            timeout_ms: self.timeout_ms(),
        });
        let r = self.inner.clone().get(req).await?.into_inner();
        let doc = if r.found {
            Some(serde_json::from_slice(&r.doc_json).map_err(|e| {
                ClientError::Internal(format!("router returned a malformed document: {e}"))
            })?)
        } else {
            None
        };
        Ok(GetResult {
            found: r.found,
            doc,
        })
    }

    /// The cluster's nodes and shards as the router sees them.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        let req = self.request(pb::RouterStatusRequest {
            timeout_ms: self.timeout_ms(),
        });
        Ok(self.inner.clone().status(req).await?.into_inner().into())
    }
}

/// An error and its sources on one line ("transport error: tcp connect error: refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out.replace('\n', " ")
}
