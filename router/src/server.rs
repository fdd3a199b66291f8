//! Starting and stopping a router: binds the listener, starts the
//! background tasks (map watch and poll, breaker probes, limiter upkeep)
//! and serves the gRPC API until `shutdown()`.

use crate::backend::Backend;
use crate::breaker::Admit;
use crate::config::RouterConfig;
use crate::error::RouterError;
use crate::limits::Limits;
use crate::service::RouterService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::pb::router_server::RouterServer;
use tessera_proto::pb::StatusRequest;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

/// Largest request the public API accepts (a put batch of many documents).
pub const MAX_API_MESSAGE: usize = 64 * 1024 * 1024;

/// Entry point of the router library.
#[derive(Debug)]
pub struct Router;

/// A running router. Dropping it stops the router too, without waiting.
#[derive(Debug)]
pub struct RouterHandle {
    addr: SocketAddr,
    backend: Arc<Backend>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Router {
    /// Binds `config.listen`, starts the background tasks and serves.
    ///
    /// Returns as soon as the socket is bound; the cluster map arrives in the
    /// background, and requests made before it wait for it (within their
    /// deadline). That lets tests start routers and nodes in any order.
    pub async fn start(config: RouterConfig) -> Result<RouterHandle, RouterError> {
        if let Some(addr) = config.metrics {
            if let Err(e) = crate::telemetry::install_prometheus(addr) {
                tracing::warn!(error = %e, "metrics endpoint not started");
            }
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| {
                RouterError::Startup(format!("cannot listen on {}: {e}", config.listen))
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| RouterError::Startup(format!("listener address: {e}")))?;
        let limits = Arc::new(Limits::new(&config.limits));
        let impressions = match &config.impression_log {
            Some(path) => Some(crate::impressions::ImpressionLog::open(path).map_err(|e| {
                RouterError::Startup(format!(
                    "cannot open the impression log {}: {e}",
                    path.display()
                ))
            })?),
            None => None,
        };
        let audit = match &config.audit_log {
            Some(path) => Some(crate::auth::audit::AuditLog::open(path).map_err(|e| {
                RouterError::Startup(format!("cannot open the audit log {}: {e}", path.display()))
            })?),
            None => None,
        };
        let client_tls = client_port_tls(&config)?;
        let mut backend = Backend::with_impressions(config, impressions);
        backend.audit = audit;
        let backend = Arc::new(backend);

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(Arc::clone(&backend.map).run_watch()));
        tasks.push(tokio::spawn(
            Arc::clone(&backend.map).run_poll(backend.cfg.map_poll_interval),
        ));
        tasks.push(tokio::spawn(probe_breakers(Arc::clone(&backend))));
        let l = Arc::clone(&limits);
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                l.forget_idle();
            }
        }));

        let features = tessera_proto::pb::feature_router_server::FeatureRouterServer::new(
            crate::features::FeatureRouterService::new(Arc::clone(&backend)),
        )
        .max_decoding_message_size(MAX_API_MESSAGE)
        .max_encoding_message_size(MAX_API_MESSAGE);
        let service = RouterServer::new(RouterService::new(Arc::clone(&backend), limits))
            .max_decoding_message_size(MAX_API_MESSAGE)
            .max_encoding_message_size(MAX_API_MESSAGE);
        let (tx, rx) = oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = client_tls {
            builder = builder.tls_config(tls).map_err(|e| {
                RouterError::Startup(format!("the client port's TLS configuration: {e}"))
            })?;
        }
        let server = tokio::spawn(
            builder
                .tcp_nodelay(true)
                .add_service(service)
                .add_service(features)
                // `Server::tcp_nodelay` does not apply to an incoming stream
                // we bind ourselves: set it on the accepted sockets, or Nagle
                // plus delayed ACKs add ~40 ms to some responses.
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async {
                        let _ = rx.await;
                    },
                ),
        );
        tracing::info!(%addr, region = %backend.cfg.region, seeds = ?backend.cfg.seeds, "router listening");
        Ok(RouterHandle {
            addr,
            backend,
            shutdown: Some(tx),
            server: Some(server),
            tasks,
        })
    }
}

impl RouterHandle {
    /// The address the API is served on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The cluster map epoch the router currently uses (0 = none yet).
    pub fn map_epoch(&self) -> u64 {
        self.backend.map.current().epoch()
    }

    /// Stops accepting requests, lets in-flight ones finish, stops the
    /// background tasks.
    pub async fn shutdown(mut self) -> Result<(), RouterError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(server) = self.server.take() {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(RouterError::Internal(format!("server: {e}"))),
                Err(e) if e.is_cancelled() => {}
                Err(e) => return Err(RouterError::Internal(format!("server task: {e}"))),
            }
        }
        Ok(())
    }

    /// Waits until the server stops by itself (it does not, short of an
    /// error), for binaries that run until killed.
    pub async fn wait(mut self) -> Result<(), RouterError> {
        match self.server.take() {
            Some(server) => match server.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(RouterError::Internal(format!("server: {e}"))),
                Err(e) => Err(RouterError::Internal(format!("server task: {e}"))),
            },
            None => Ok(()),
        }
    }
}

impl Drop for RouterHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// The client port's TLS, or `None` for plaintext, which is allowed only
/// with `--insecure` (and logged as such) or in router tests without
/// certificates.
fn client_port_tls(
    config: &RouterConfig,
) -> Result<Option<tonic::transport::ServerTlsConfig>, RouterError> {
    tessera_proto::transport::install_crypto_provider();
    if config.unsecured {
        tracing::warn!(
            "--unsecured: PLAINTEXT everywhere and NO API KEY CHECKS; every caller is a cluster \
             admin (benchmark baselines only)"
        );
        return Ok(None);
    }
    match (&config.identity, config.insecure) {
        (Some(identity), false) => Ok(Some(identity.router_server_tls())),
        (Some(_), true) => {
            tracing::warn!(
                "--insecure: the client port serves PLAINTEXT; API keys and documents cross the \
                 network unencrypted. Use it for local experiments only."
            );
            Ok(None)
        }
        (None, _) => {
            tracing::warn!(
                "no router certificate: nodes and clients are reached in PLAINTEXT (router tests only)"
            );
            Ok(None)
        }
    }
}

/// Probes nodes whose breaker is open once their cool-down has passed, so
/// breakers close when a node returns even if no read would pick it.
async fn probe_breakers(backend: Arc<Backend>) {
    loop {
        tokio::time::sleep(backend.cfg.probe_interval).await;
        let topo = backend.map.current();
        for node in backend.breakers.probe_due(Instant::now()) {
            let Some(addr) = topo.node(node).map(|n| n.grpc_addr.clone()) else {
                continue;
            };
            if backend.breakers.admit(node, Instant::now()) != Admit::Probe {
                continue;
            }
            let b = Arc::clone(&backend);
            tokio::spawn(async move {
                let ok = match b.pool.client(&addr) {
                    Ok(mut c) => {
                        let mut r = tonic::Request::new(StatusRequest {});
                        let budget = Duration::from_millis(500);
                        r.set_timeout(budget);
                        matches!(tokio::time::timeout(budget, c.status(r)).await, Ok(Ok(_)))
                    }
                    Err(_) => false,
                };
                b.breakers.record(node, ok, Instant::now());
            });
        }
    }
}
