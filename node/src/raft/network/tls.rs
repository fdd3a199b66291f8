//! Cluster CA, node certificates, and the rustls/quinn configurations for
//! mutual TLS between nodes.
//!
//! Every node holds a certificate signed by one cluster CA and both sides of
//! every connection verify the other against that CA, so only cluster
//! members can talk Raft to each other. Peers are dialled by address but
//! verified under the shared name [`SERVER_NAME`]: node identity is carried
//! by the Raft protocol itself, and the CA is what gates membership.
//!
//! The CA is generated with rcgen. Without rcgen's `x509-parser` feature an
//! existing CA certificate cannot be parsed back into an issuer, so the
//! issuer is rebuilt from the same deterministic parameters (`ca_params`)
//! plus the stored key; every certificate issued that way is immediately
//! verified against `ca.pem` with webpki, so a foreign or mismatched CA is
//! reported instead of producing certificates nobody accepts.

use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use tessera_proto::transport::{PeerIdentity, Role, ROUTER_SERVER_NAME};

/// ALPN protocol id of the node-to-node Raft transport. Both sides must
/// agree on it; bumping the suffix makes incompatible nodes fail the
/// handshake instead of misparsing each other's messages.
pub const ALPN: &[u8] = b"tessera-raft/1";

/// The DNS name every node certificate carries and every client dials
/// (SNI). Addresses change (containers, chaos proxies), the name does not.
pub const SERVER_NAME: &str = "tessera-node";

/// How often an idle connection sends a keep-alive, so that NATs and the
/// peer's idle timer do not drop connections between heartbeats.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);

/// How long a connection may go without hearing from the peer before it is
/// considered dead (milliseconds). Bounds how long a crashed peer's
/// connection lingers in the pool.
pub const MAX_IDLE_TIMEOUT_MS: u32 = 10_000;

/// How many RPC streams a peer may have open on one connection at once:
/// every shard group shares the connection, so this is far above QUIC's
/// default of 100.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// File name of the cluster CA certificate inside the certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the cluster CA private key inside the certificate directory.
pub const CA_KEY_FILE: &str = "ca.key";

const ORGANIZATION: &str = "Tessera";
const CA_COMMON_NAME: &str = "Tessera cluster CA";

/// Errors while generating, loading or using the cluster's TLS material.
/// Every message names the file (or `NodeTls` field) involved, because the
/// usual fix is "regenerate/replace that file".
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A PEM file (or `NodeTls` field) does not contain what it should.
    #[error("{what}: invalid PEM: {reason}")]
    Pem {
        /// The file or field involved.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Certificate material parses but is unusable (for example a node
    /// certificate not signed by the cluster CA, or a key that does not
    /// belong to its certificate).
    #[error("{what}: {reason}")]
    Invalid {
        /// The file or field involved.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Only one of `ca.pem` / `ca.key` exists. Replacing it would silently
    /// split the cluster into two trust domains, so we refuse.
    #[error(
        "{} exists but {} does not; restore it or remove both to create a new cluster CA",
        present.display(),
        missing.display()
    )]
    IncompleteCa {
        /// The half that exists.
        present: PathBuf,
        /// The half that is missing.
        missing: PathBuf,
    },
    /// rcgen failed to generate a key or certificate.
    #[error("generating {what}: {source}")]
    Generate {
        /// What was being generated (usually the target file).
        what: String,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// Building a rustls or quinn configuration failed.
    #[error("building the {what} TLS config: {reason}")]
    Config {
        /// `"server"` or `"client"`.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
}

/// One node's TLS material, as PEM text: the cluster CA certificate it
/// trusts, and its own certificate and private key.
///
/// Kept as PEM (not parsed rustls types) so it can be cloned freely, written
/// to disk, and turned into both the server and the client configuration.
#[derive(Clone)]
pub struct NodeTls {
    /// The cluster CA certificate (PEM). The only trust anchor.
    pub ca_pem: String,
    /// This node's certificate (PEM), optionally followed by intermediates.
    pub cert_pem: String,
    /// This node's PKCS#8 private key (PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key (logs end up in bug reports).
        f.debug_struct("NodeTls")
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl NodeTls {
    /// The same material as the gRPC layer's identity (node certificates
    /// serve and call gRPC as well as Raft).
    pub fn identity(&self) -> PeerIdentity {
        PeerIdentity {
            ca_pem: self.ca_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            unsecured: false,
        }
    }

    /// Loads `ca.pem`, `node-<id>.pem` and `node-<id>.key` from `dir` (as
    /// written by [`generate_cluster_certs`]) and checks that they fit
    /// together, so a bad file is reported at startup, by name, rather than
    /// as an opaque handshake failure later.
    pub fn load(dir: &Path, node_id: u64) -> Result<Self, TlsError> {
        let ca_path = dir.join(CA_CERT_FILE);
        let cert_path = dir.join(node_cert_file(node_id));
        let key_path = dir.join(node_key_file(node_id));
        let tls = Self {
            ca_pem: read_file(&ca_path)?,
            cert_pem: read_file(&cert_path)?,
            key_pem: read_file(&key_path)?,
        };
        let ca_der = parse_one_cert(&tls.ca_pem, &ca_path.display().to_string())?;
        let checker = ChainChecker::new(ca_der, &ca_path.display().to_string())?;
        let certs = parse_certs(&tls.cert_pem, &cert_path.display().to_string())?;
        let key = parse_key(&tls.key_pem, &key_path.display().to_string())?;
        checker.check_chain(&cert_path.display().to_string(), &certs, &[SERVER_NAME])?;
        check_key_matches(&key_path.display().to_string(), certs, key)?;
        Ok(tls)
    }

    /// Generates a fresh CA and one certificate per node id, valid for
    /// `127.0.0.1` and `::1`, without touching the disk. For tests and
    /// single-process clusters.
    pub fn generate_in_memory(node_ids: &[u64]) -> Result<Vec<NodeTls>, TlsError> {
        let ca = Ca::generate()?;
        let loopback = [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        node_ids
            .iter()
            .map(|&id| {
                let (cert_pem, key_pem) = ca.issue(id, &loopback)?;
                Ok(NodeTls {
                    ca_pem: ca.cert_pem.clone(),
                    cert_pem,
                    key_pem,
                })
            })
            .collect()
    }
}

/// File name of node `id`'s certificate inside the certificate directory.
pub fn node_cert_file(id: u64) -> String {
    format!("node-{id}.pem")
}

/// File name of node `id`'s private key inside the certificate directory.
pub fn node_key_file(id: u64) -> String {
    format!("node-{id}.key")
}

/// Writes the cluster CA (`ca.pem`, `ca.key`) and a certificate and key per
/// node (`node-<id>.pem`, `node-<id>.key`) into `out_dir`.
///
/// Idempotent, because the cluster script calls it on every start and when
/// nodes are added: an existing CA is reused, and an existing node
/// certificate is kept when it still chains to that CA and covers
/// `tessera-node`, `node-<id>` and the given IPs; otherwise it is reissued.
/// Node certificates carry the DNS names `tessera-node` and `node-<id>` and
/// the given IP addresses. Keys are written with mode 0600, every file is
/// replaced atomically (write + rename).
pub fn generate_cluster_certs(
    out_dir: &Path,
    nodes: &[(u64 /* node id */, Vec<IpAddr>)],
) -> Result<(), TlsError> {
    fs::create_dir_all(out_dir).map_err(|source| TlsError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let ca = Ca::load_or_create(out_dir)?;
    let ca_what = out_dir.join(CA_CERT_FILE).display().to_string();
    let checker = ChainChecker::new(ca.cert_der.clone(), &ca_what)?;

    for (id, ips) in nodes {
        let cert_path = out_dir.join(node_cert_file(*id));
        let key_path = out_dir.join(node_key_file(*id));
        let node_name = format!("node-{id}");
        let ip_names: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
        let mut names: Vec<&str> = vec![SERVER_NAME, &node_name, Role::Node.san()];
        names.extend(ip_names.iter().map(String::as_str));

        if exists(&cert_path)? && exists(&key_path)? {
            match existing_node_cert_ok(&checker, &cert_path, &key_path, &names) {
                Ok(()) => {
                    tracing::debug!(node = id, path = %cert_path.display(), "keeping node certificate");
                    continue;
                }
                Err(e) => {
                    tracing::info!(node = id, error = %e, "reissuing node certificate");
                }
            }
        }

        let (cert_pem, key_pem) = ca.issue(*id, ips)?;
        // Verify before writing: catches a ca.pem/ca.key pair that this
        // code did not create (its subject would not match our issuer).
        let certs = parse_certs(&cert_pem, &cert_path.display().to_string())?;
        checker.check_chain(&cert_path.display().to_string(), &certs, &names)?;
        write_file(&key_path, &key_pem, true)?;
        write_file(&cert_path, &cert_pem, false)?;
        tracing::info!(node = id, path = %cert_path.display(), "issued node certificate");
    }
    issue_router_cert(&ca, &checker, out_dir)?;
    Ok(())
}

/// File name of the routers' certificate inside the certificate directory.
pub const ROUTER_CERT_FILE: &str = "router.pem";
/// File name of the routers' private key inside the certificate directory.
pub const ROUTER_KEY_FILE: &str = "router.key";

/// Writes `router.pem`/`router.key` unless a valid pair exists: the
/// certificate routers present to nodes (role router) and to clients on
/// their TLS port (`tessera-router`, `localhost`, the loopback addresses).
/// Every local router shares it; a deployment issues one per router host.
fn issue_router_cert(ca: &Ca, checker: &ChainChecker, out_dir: &Path) -> Result<(), TlsError> {
    let cert_path = out_dir.join(ROUTER_CERT_FILE);
    let key_path = out_dir.join(ROUTER_KEY_FILE);
    let names = [ROUTER_SERVER_NAME, "localhost", Role::Router.san()];
    if exists(&cert_path)?
        && exists(&key_path)?
        && existing_node_cert_ok(checker, &cert_path, &key_path, &names).is_ok()
    {
        return Ok(());
    }
    let loopback = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    let (cert_pem, key_pem) = ca.issue_named("router", &names, &loopback)?;
    let certs = parse_certs(&cert_pem, &cert_path.display().to_string())?;
    checker.check_chain(&cert_path.display().to_string(), &certs, &names)?;
    write_file(&key_path, &key_pem, true)?;
    write_file(&cert_path, &cert_pem, false)?;
    tracing::info!(path = %cert_path.display(), "issued router certificate");
    Ok(())
}

/// The quinn server configuration: presents this node's certificate and
/// requires every client to present one signed by the cluster CA (mutual
/// TLS), so that only cluster members can send Raft RPCs.
pub fn server_config(tls: &NodeTls) -> Result<quinn::ServerConfig, TlsError> {
    let provider = ring_provider();
    let roots = root_store(&tls.ca_pem, "NodeTls.ca_pem")?;
    let certs = parse_certs(&tls.cert_pem, "NodeTls.cert_pem")?;
    let key = parse_key(&tls.key_pem, "NodeTls.key_pem")?;
    let config_err = |reason: String| TlsError::Config {
        what: "server",
        reason,
    };

    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| config_err(format!("client verifier: {e}")))?;
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config_err(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| config_err(format!("NodeTls.cert_pem/key_pem: {e}")))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];

    let quic = QuicServerConfig::try_from(crypto).map_err(|e| config_err(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// The quinn client configuration: trusts only the cluster CA (not the
/// system roots) and presents this node's certificate, which the peer's
/// [`server_config`] requires.
pub fn client_config(tls: &NodeTls) -> Result<quinn::ClientConfig, TlsError> {
    let provider = ring_provider();
    let roots = root_store(&tls.ca_pem, "NodeTls.ca_pem")?;
    let certs = parse_certs(&tls.cert_pem, "NodeTls.cert_pem")?;
    let key = parse_key(&tls.key_pem, "NodeTls.key_pem")?;
    let config_err = |reason: String| TlsError::Config {
        what: "client",
        reason,
    };

    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config_err(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| config_err(format!("NodeTls.cert_pem/key_pem: {e}")))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];

    let quic = QuicClientConfig::try_from(crypto).map_err(|e| config_err(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// Transport parameters shared by both sides: keep-alives well inside the
/// idle timeout so idle-but-healthy connections survive, and enough
/// concurrent streams for every shard group to have RPCs in flight.
fn transport_config() -> Arc<TransportConfig> {
    let mut transport = TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
            MAX_IDLE_TIMEOUT_MS,
        ))))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    Arc::new(transport)
}

/// The ring provider, passed explicitly so we never depend on (or race
/// with) a process-wide default provider.
fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA parameters. Deterministic on purpose: an existing CA's issuer is
/// rebuilt from these plus its key (see the module docs).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A usable cluster CA: its certificate and an issuer to sign with.
struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn generate() -> Result<Self, TlsError> {
        let generate_err = |source| TlsError::Generate {
            what: "the cluster CA".to_string(),
            source,
        };
        let key = KeyPair::generate().map_err(generate_err)?;
        let params = ca_params();
        let cert = params.self_signed(&key).map_err(generate_err)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reuses `ca.pem`/`ca.key` in `dir`, or creates and writes them.
    fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => Self::load(&cert_path, &key_path),
            (false, false) => {
                let ca = Self::generate()?;
                // Key first: a crash in between leaves a lone key, which
                // load_or_create reports instead of overwriting.
                write_file(&key_path, &ca.issuer.key().serialize_pem(), true)?;
                write_file(&cert_path, &ca.cert_pem, false)?;
                tracing::info!(path = %cert_path.display(), "created cluster CA");
                Ok(ca)
            }
            (true, false) => Err(TlsError::IncompleteCa {
                present: cert_path,
                missing: key_path,
            }),
            (false, true) => Err(TlsError::IncompleteCa {
                present: key_path,
                missing: cert_path,
            }),
        }
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let cert_what = cert_path.display().to_string();
        let key_what = key_path.display().to_string();
        let cert_pem = read_file(cert_path)?;
        let key_pem = read_file(key_path)?;
        let cert_der = parse_one_cert(&cert_pem, &cert_what)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Pem {
            what: key_what.clone(),
            reason: e.to_string(),
        })?;
        check_key_matches(
            &key_what,
            vec![cert_der.clone()],
            parse_key(&key_pem, &key_what)?,
        )?;
        Ok(Self {
            cert_pem,
            cert_der,
            issuer: Issuer::new(ca_params(), key),
        })
    }

    /// Issues a certificate for node `id` (role node); returns (cert PEM,
    /// key PEM).
    fn issue(&self, id: u64, ips: &[IpAddr]) -> Result<(String, String), TlsError> {
        let name = format!("node-{id}");
        self.issue_named(&name, &[SERVER_NAME, &name, Role::Node.san()], ips)
    }

    /// Issues a certificate with common name `cn` valid for the DNS names
    /// `dns` (the first entries of its subject alternative names, role
    /// names included) and the addresses `ips`.
    fn issue_named(
        &self,
        cn: &str,
        dns: &[&str],
        ips: &[IpAddr],
    ) -> Result<(String, String), TlsError> {
        let what = format!("{cn}.pem");
        let generate_err = |source| TlsError::Generate {
            what: what.clone(),
            source,
        };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, ORGANIZATION);
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = dns
            .iter()
            .map(|n| Ok(SanType::DnsName((*n).try_into().map_err(generate_err)?)))
            .collect::<Result<Vec<_>, TlsError>>()?;
        for ip in ips {
            let san = SanType::IpAddress(*ip);
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        let key = KeyPair::generate().map_err(generate_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Verifies certificates against the cluster CA exactly as the handshake
/// will: as a client certificate and as a server certificate for each name.
struct ChainChecker {
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

impl ChainChecker {
    fn new(ca_der: CertificateDer<'static>, ca_what: &str) -> Result<Self, TlsError> {
        let invalid = |reason: String| TlsError::Invalid {
            what: ca_what.to_string(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca_der)
            .map_err(|e| invalid(format!("not a usable CA certificate: {e}")))?;
        let roots = Arc::new(roots);
        let provider = ring_provider();
        let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let server = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self { client, server })
    }

    fn check_chain(
        &self,
        what: &str,
        chain: &[CertificateDer<'static>],
        names: &[&str],
    ) -> Result<(), TlsError> {
        let invalid = |reason: String| TlsError::Invalid {
            what: what.to_string(),
            reason,
        };
        let (end_entity, intermediates) = chain
            .split_first()
            .ok_or_else(|| invalid("no certificate".to_string()))?;
        let now = UnixTime::now();
        self.client
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| invalid(format!("not valid for the cluster CA: {e}")))?;
        for name in names {
            let server_name = ServerName::try_from(*name)
                .map_err(|e| invalid(format!("bad name {name:?}: {e}")))?;
            self.server
                .verify_server_cert(end_entity, intermediates, &server_name, &[], now)
                .map_err(|e| invalid(format!("not valid for {name}: {e}")))?;
        }
        Ok(())
    }
}

/// Checks an existing node certificate and key before keeping them.
fn existing_node_cert_ok(
    checker: &ChainChecker,
    cert_path: &Path,
    key_path: &Path,
    names: &[&str],
) -> Result<(), TlsError> {
    let cert_what = cert_path.display().to_string();
    let key_what = key_path.display().to_string();
    let certs = parse_certs(&read_file(cert_path)?, &cert_what)?;
    checker.check_chain(&cert_what, &certs, names)?;
    let key = parse_key(&read_file(key_path)?, &key_what)?;
    check_key_matches(&key_what, certs, key)
}

/// Fails unless `key` is the private key of the first certificate.
fn check_key_matches(
    key_what: &str,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<(), TlsError> {
    CertifiedKey::from_der(certs, key, &ring_provider())
        .map(|_| ())
        .map_err(|e| TlsError::Invalid {
            what: key_what.to_string(),
            reason: format!("does not match its certificate: {e}"),
        })
}

fn root_store(ca_pem: &str, what: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem, what)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            what: what.to_string(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

fn parse_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: what.to_string(),
            reason: "no CERTIFICATE section".to_string(),
        });
    }
    Ok(certs)
}

fn parse_one_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>, TlsError> {
    let mut certs = parse_certs(pem, what)?;
    if certs.len() != 1 {
        return Err(TlsError::Pem {
            what: what.to_string(),
            reason: format!("expected one certificate, found {}", certs.len()),
        });
    }
    Ok(certs.swap_remove(0))
}

fn parse_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: what.to_string(),
        reason: format!("no usable private key: {e}"),
    })
}

fn exists(path: &Path) -> Result<bool, TlsError> {
    path.try_exists().map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_file(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `contents` to `path` atomically (temp file, fsync, rename) so a
/// node starting concurrently never reads a half-written file; `private`
/// files get mode 0600.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };

    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp)(e)),
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips() -> Vec<IpAddr> {
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
    }

    #[test]
    fn generate_cluster_certs_writes_loadable_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        generate_cluster_certs(dir.path(), &[(1, ips()), (2, ips())]).expect("generate");
        for name in [
            "ca.pem",
            "ca.key",
            "node-1.pem",
            "node-1.key",
            "node-2.pem",
            "node-2.key",
        ] {
            assert!(dir.path().join(name).is_file(), "{name} missing");
        }
        let node1 = NodeTls::load(dir.path(), 1).expect("load node 1");
        let node2 = NodeTls::load(dir.path(), 2).expect("load node 2");
        assert_eq!(node1.ca_pem, node2.ca_pem);
        server_config(&node1).expect("server config");
        client_config(&node2).expect("client config");
        assert!(matches!(
            NodeTls::load(dir.path(), 3),
            Err(TlsError::Io { ref path, .. }) if path.ends_with("node-3.pem")
        ));
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_not_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        generate_cluster_certs(dir.path(), &[(1, ips())]).expect("generate");
        for name in ["ca.key", "node-1.key"] {
            let mode = fs::metadata(dir.path().join(name))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{name} has mode {mode:o}");
        }
    }

    #[test]
    fn generate_cluster_certs_is_idempotent_and_extends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let read = |name: &str| fs::read_to_string(dir.path().join(name)).expect(name);

        generate_cluster_certs(dir.path(), &[(1, ips())]).expect("first run");
        let (ca, ca_key, node1) = (read("ca.pem"), read("ca.key"), read("node-1.pem"));

        // Same input: nothing changes.
        generate_cluster_certs(dir.path(), &[(1, ips())]).expect("second run");
        assert_eq!(read("ca.pem"), ca);
        assert_eq!(read("ca.key"), ca_key);
        assert_eq!(read("node-1.pem"), node1);

        // A node added later is signed by the same CA; node 1 is kept.
        generate_cluster_certs(dir.path(), &[(1, ips()), (2, ips())]).expect("third run");
        assert_eq!(read("ca.pem"), ca);
        assert_eq!(read("node-1.pem"), node1);
        let node2 = NodeTls::load(dir.path(), 2).expect("load node 2");
        assert_eq!(node2.ca_pem, ca);

        // A new IP for node 1 reissues its certificate under the same CA.
        let more_ips = vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        ];
        generate_cluster_certs(dir.path(), &[(1, more_ips)]).expect("fourth run");
        assert_eq!(read("ca.pem"), ca);
        assert_ne!(read("node-1.pem"), node1);
        NodeTls::load(dir.path(), 1).expect("reissued node 1 loads");
    }

    #[test]
    fn half_a_ca_is_an_error_not_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        generate_cluster_certs(dir.path(), &[(1, ips())]).expect("generate");
        fs::remove_file(dir.path().join("ca.key")).expect("remove");
        let err = generate_cluster_certs(dir.path(), &[(1, ips())]).expect_err("must fail");
        assert!(matches!(err, TlsError::IncompleteCa { .. }), "{err}");
        assert!(err.to_string().contains("ca.key"), "{err}");
    }

    #[test]
    fn load_rejects_a_node_cert_from_another_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        generate_cluster_certs(dir.path(), &[(1, ips())]).expect("generate");
        let foreign = NodeTls::generate_in_memory(&[1]).expect("foreign");
        fs::write(dir.path().join("node-1.pem"), &foreign[0].cert_pem).expect("write");
        let err = NodeTls::load(dir.path(), 1).expect_err("must fail");
        assert!(matches!(err, TlsError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("node-1.pem"), "{err}");

        // And generate_cluster_certs repairs it.
        generate_cluster_certs(dir.path(), &[(1, ips())]).expect("regenerate");
        NodeTls::load(dir.path(), 1).expect("repaired");
    }

    #[test]
    fn in_memory_certs_share_one_ca_and_build_configs() {
        let nodes = NodeTls::generate_in_memory(&[1, 2, 3]).expect("generate");
        assert_eq!(nodes.len(), 3);
        assert!(nodes.iter().all(|n| n.ca_pem == nodes[0].ca_pem));
        for node in &nodes {
            server_config(node).expect("server config");
            client_config(node).expect("client config");
        }
        assert!(!format!("{:?}", nodes[0]).contains("PRIVATE KEY"));
    }
}
