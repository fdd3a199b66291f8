//! `tessera-router`: runs one router process.

use anyhow::Context;
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;
use tessera_proto::transport::PeerIdentity;
use tessera_router::config::parse_node_route;
use tessera_router::{Router, RouterConfig, SelectionPolicy};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Selection {
    Adaptive,
    RoundRobin,
}

/// Tessera's stateless front door: routes writes to shard leaders and reads
/// to the best replica, with breakers, hedging and per-tenant limits.
#[derive(Debug, Parser)]
#[command(name = "tessera-router", version)]
struct Args {
    /// Address to serve the public gRPC API on.
    #[arg(long)]
    listen: SocketAddr,
    /// Comma-separated gRPC addresses of nodes to learn the cluster map from.
    #[arg(long, value_delimiter = ',', required = true)]
    seeds: Vec<String>,
    /// This router's region; its replicas are preferred.
    #[arg(long)]
    region: String,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Requests per second per tenant (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    tenant_qps: u32,
    /// Burst per tenant (0 = same as --tenant-qps).
    #[arg(long, default_value_t = 0)]
    tenant_burst: u32,
    /// Requests served at once before shedding load (0 = unlimited).
    #[arg(long, default_value_t = 1024)]
    max_inflight: usize,
    /// Default replica selection policy.
    #[arg(long, value_enum, default_value_t = Selection::Adaptive)]
    selection: Selection,
    /// Deadline of a read whose caller sets none, in ms.
    #[arg(long, default_value_t = 5000)]
    read_timeout_ms: u64,
    /// Deadline of a write whose caller sets none, in ms.
    #[arg(long, default_value_t = 10000)]
    write_timeout_ms: u64,
    /// Reach node ID's gRPC through ADDR instead of its cluster-map address
    /// (e.g. a chaos proxy injecting latency on that link). Repeatable:
    /// `--node-route 2=127.0.0.1:9002 --node-route 5=127.0.0.1:9005`.
    #[arg(long = "node-route", value_name = "ID=ADDR", value_parser = parse_node_route)]
    node_routes: Vec<(u64, String)>,
    /// Append every page served under an experiment (`--experiment`) and every click event
    /// citing one (`"impression"` field) to this JSON Lines file, for `tessera eval
    /// --impressions`. Off by default.
    #[arg(long, value_name = "PATH")]
    impression_log: Option<std::path::PathBuf>,
    /// Directory with the cluster CA (ca.pem) and the router certificate (router.pem,
    /// router.key), as `tessera-node certs` writes them. Nodes accept only callers with a
    /// cluster certificate, and the client port serves TLS with it.
    #[arg(long, value_name = "DIR")]
    certs: std::path::PathBuf,
    /// Serve the client port in PLAINTEXT (nodes are still reached over mutual TLS). For
    /// local experiments only: API keys and documents then cross the network unencrypted.
    #[arg(long)]
    insecure: bool,
    /// BENCHMARK BASELINE ONLY: plaintext on every port and to the nodes (which must run
    /// with `--unsecured` too) and NO API KEY CHECKS, so that `scripts/bench.sh security`
    /// can measure what TLS and keys cost. Refused unless --listen is a loopback address.
    #[arg(long)]
    unsecured: bool,
    /// Append every admin and key operation (who, what, when, outcome) to this JSON Lines
    /// file. Default: audit.jsonl in the current directory.
    #[arg(long, value_name = "PATH", default_value = "audit.jsonl")]
    audit_log: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let mut cfg = RouterConfig::new(args.listen, args.seeds, args.region);
    cfg.metrics = args.metrics;
    cfg.limits.tenant_qps = args.tenant_qps;
    cfg.limits.tenant_burst = args.tenant_burst;
    cfg.limits.max_inflight = args.max_inflight;
    cfg.selection = match args.selection {
        Selection::Adaptive => SelectionPolicy::Adaptive,
        Selection::RoundRobin => SelectionPolicy::RoundRobin,
    };
    cfg.default_read_timeout = Duration::from_millis(args.read_timeout_ms);
    cfg.default_write_timeout = Duration::from_millis(args.write_timeout_ms);
    cfg.impression_log = args.impression_log;
    let identity = PeerIdentity::load(&args.certs, "router").with_context(|| {
        format!(
            "loading the router certificate from {}",
            args.certs.display()
        )
    })?;
    if args.unsecured && !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "--unsecured is for benchmarks on one machine: --listen {} is not loopback",
            args.listen
        );
    }
    cfg.identity = Some(if args.unsecured {
        identity.unsecured_baseline()
    } else {
        identity
    });
    cfg.insecure = args.insecure;
    cfg.unsecured = args.unsecured;
    cfg.audit_log = Some(args.audit_log);
    for (id, addr) in args.node_routes {
        if let Some(old) = cfg.node_routes.insert(id, addr.clone()) {
            anyhow::bail!("--node-route given twice for node {id} ({old} and {addr})");
        }
    }
    let handle = Router::start(cfg).await.context("starting the router")?;
    shutdown_signal().await?;
    tracing::info!("shutting down");
    // Let in-flight requests finish, but do not hang on a stuck connection.
    match tokio::time::timeout(Duration::from_secs(5), handle.shutdown()).await {
        Ok(r) => r.context("shutting down")?,
        Err(_) => tracing::warn!("in-flight requests did not finish in 5 s; exiting anyway"),
    }
    Ok(())
}

/// Resolves on ctrl-c, or on SIGTERM (what `kill` and process managers send).
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for ctrl-c")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    Ok(())
}
