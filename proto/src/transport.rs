//! TLS for every gRPC port, in one place, so that a node, a router, the CLI
//! and the test harness cannot disagree on names, roles or trust anchors.
//!
//! Inside the cluster (router → node, node → node) every connection is
//! mutual TLS from the cluster CA: the server presents its certificate, the
//! caller presents one too, and the server then checks the caller's *role*,
//! a DNS name in the certificate's subject alternative names
//! ([`Role::san`]). A certificate signed by the CA for some other purpose (a
//! future client certificate, say) therefore still cannot call `Export` or
//! `Drop` on a node.
//!
//! The router's client-facing port is server-authenticated TLS only: callers
//! prove who they are with API keys (see [`crate::keys`]), not certificates,
//! and trust the cluster CA to know they reach the real router.

use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::ParsedCertificate;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// The DNS name every node certificate carries and every cluster caller
/// dials (SNI). Addresses change (containers, chaos proxies); the name does
/// not.
pub const NODE_SERVER_NAME: &str = "tessera-node";

/// The DNS name a router's certificate carries and clients verify.
pub const ROUTER_SERVER_NAME: &str = "tessera-router";

/// How long a TLS handshake may take before the server drops the socket, so
/// that a client that opens connections and never finishes them cannot hold
/// server tasks forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a cluster certificate allows its holder to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A storage node: serves and calls every internal RPC.
    Node,
    /// A router: calls nodes on behalf of authenticated clients.
    Router,
}

impl Role {
    /// Every role, for lookups.
    pub const ALL: [Role; 2] = [Role::Node, Role::Router];

    /// The subject alternative name that marks a certificate with this
    /// role. A name under a reserved pseudo-domain, so it can never collide
    /// with a real host name the certificate also covers.
    pub fn san(self) -> &'static str {
        match self {
            Role::Node => "node.role.tessera",
            Role::Router => "router.role.tessera",
        }
    }

    /// A short lowercase name for logs and audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Router => "router",
        }
    }
}

/// Errors building a TLS configuration or endpoint.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The address is not a usable URI.
    #[error("bad address {addr:?}: {reason}")]
    Address {
        /// The address as given.
        addr: String,
        /// What tonic said about it.
        reason: String,
    },
    /// tonic refused the TLS configuration.
    #[error("TLS configuration for {addr}: {reason}")]
    Tls {
        /// The address being configured.
        addr: String,
        /// What tonic said about it.
        reason: String,
    },
}

/// A cluster member's TLS material as PEM text: the CA it trusts, and its
/// own certificate and key. The same identity is presented as a client
/// (calling nodes) and as a server (a node's port, a router's client port).
#[derive(Clone)]
pub struct PeerIdentity {
    /// The cluster CA certificate, the only trust anchor.
    pub ca_pem: String,
    /// This member's certificate (PEM).
    pub cert_pem: String,
    /// This member's PKCS#8 private key (PEM).
    pub key_pem: String,
    /// Benchmark baselines only (`--unsecured`): dial and serve node gRPC in
    /// plaintext with no certificate or role check, so `scripts/bench.sh`
    /// can measure what security costs in the same run. The binaries allow
    /// it only on loopback addresses.
    pub unsecured: bool,
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key: logs end up in bug reports.
        f.debug_struct("PeerIdentity")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl PeerIdentity {
    /// Reads `ca.pem`, `<name>.pem` and `<name>.key` from `dir`, the layout
    /// `tessera-node certs` writes (`name` is `node-3` or `router`).
    pub fn load(dir: &std::path::Path, name: &str) -> std::io::Result<Self> {
        let read = |file: String| {
            let path = dir.join(&file);
            std::fs::read_to_string(&path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
            })
        };
        Ok(Self {
            ca_pem: read("ca.pem".to_string())?,
            cert_pem: read(format!("{name}.pem"))?,
            key_pem: read(format!("{name}.key"))?,
            unsecured: false,
        })
    }

    /// The same identity, used in plaintext (see [`Self::unsecured`]).
    pub fn unsecured_baseline(mut self) -> Self {
        self.unsecured = true;
        self
    }

    /// The TLS configuration of a node's gRPC port: its own certificate, and
    /// a client certificate from the cluster CA required of every caller
    /// (the handshake fails without one). Roles are checked per request by
    /// [`require_role`], since tonic hands the verified chain to handlers.
    pub fn node_server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The TLS configuration of a router's client port: server
    /// authentication only; callers authenticate with API keys.
    pub fn router_server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// An endpoint to the node at `addr` (`host:port`) that verifies the
    /// node against the cluster CA and presents this identity.
    pub fn node_endpoint(&self, addr: &str) -> Result<Endpoint, TransportError> {
        if self.unsecured {
            return plaintext_endpoint(addr);
        }
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(NODE_SERVER_NAME);
        tls_endpoint(addr, tls)
    }
}

/// An endpoint to a router's TLS client port at `addr`, trusting `ca_pem`
/// (the cluster CA from `cluster.json`) and nothing else.
pub fn router_endpoint(addr: &str, ca_pem: &str) -> Result<Endpoint, TransportError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(ROUTER_SERVER_NAME);
    tls_endpoint(addr, tls)
}

/// A plaintext endpoint: a router started with `--insecure`, the fake
/// nodes of router unit tests, or an `--unsecured` benchmark baseline.
/// Nothing in a secured cluster accepts it.
pub fn plaintext_endpoint(addr: &str) -> Result<Endpoint, TransportError> {
    let uri = with_scheme(addr, "http");
    Endpoint::from_shared(uri).map_err(|e| TransportError::Address {
        addr: addr.to_string(),
        reason: e.to_string(),
    })
}

fn tls_endpoint(addr: &str, tls: ClientTlsConfig) -> Result<Endpoint, TransportError> {
    let uri = with_scheme(addr, "https");
    Endpoint::from_shared(uri)
        .map_err(|e| TransportError::Address {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?
        .tls_config(tls)
        .map_err(|e| TransportError::Tls {
            addr: addr.to_string(),
            reason: e.to_string(),
        })
}

/// `addr` with `scheme://` in front unless it already names one; an
/// `http://` address asked for as TLS becomes `https://`.
fn with_scheme(addr: &str, scheme: &str) -> String {
    match addr.split_once("://") {
        Some((_, rest)) => format!("{scheme}://{rest}"),
        None => format!("{scheme}://{addr}"),
    }
}

/// The roles of the verified client certificate a request came with.
/// Empty when the connection is not TLS or carried no certificate.
pub fn peer_roles<T>(req: &Request<T>) -> Vec<Role> {
    let Some(chain) = req.peer_certs() else {
        return Vec::new();
    };
    chain.first().map(roles_of).unwrap_or_default()
}

/// The roles `cert` is valid for. The chain itself was verified against the
/// cluster CA during the handshake; this only reads the names.
pub fn roles_of(cert: &CertificateDer<'_>) -> Vec<Role> {
    let Ok(parsed) = ParsedCertificate::try_from(cert) else {
        return Vec::new();
    };
    Role::ALL
        .into_iter()
        .filter(|role| {
            ServerName::try_from(role.san())
                .is_ok_and(|name| rustls::client::verify_server_name(&parsed, &name).is_ok())
        })
        .collect()
}

/// A tonic interceptor that admits only callers whose certificate has one
/// of `allowed` roles. Refusals are `UNAUTHENTICATED`: the caller proved no
/// identity this port accepts.
pub fn require_role(
    allowed: &'static [Role],
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    move |req: Request<()>| {
        let roles = peer_roles(&req);
        if roles.iter().any(|r| allowed.contains(r)) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "this port serves cluster members only: present a node or router certificate from the cluster CA",
            ))
        }
    }
}

/// The process-wide rustls crypto provider (ring). tonic builds its TLS
/// configurations from the default provider when one is installed; pinning
/// it here avoids a panic when two providers are compiled in.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
