//! `tessera-node`: runs a storage node, or generates cluster certificates.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;
use tessera_node::index::IndexConfig;
use tessera_node::meta::keys::{ensure_bootstrap_key, load_bootstrap_record, BOOTSTRAP_KEY_FILE};
use tessera_node::raft::network::{generate_cluster_certs, NodeTls};
use tessera_node::{ClusterConfig, NodeConfig, RaftTuning, TesseraNode};

/// mimalloc instead of glibc's malloc: a search allocates and frees thousands of small
/// strings and vectors (hit ids, feature entities, explanations), where glibc's free lists
/// and consolidation showed up in profiles of the rerank path (`scripts/bench.sh rerank`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tessera storage node.
#[derive(Parser)]
#[command(name = "tessera-node", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node of the cluster described by --config.
    Run {
        /// The cluster file (TOML with [[node]] entries: id, region, zone, raft, grpc, metrics).
        #[arg(long)]
        config: PathBuf,
        /// This node's id in the cluster file.
        #[arg(long)]
        id: u64,
        /// Data directory (RocksDB and tantivy indexes); created if missing.
        #[arg(long)]
        data: PathBuf,
        /// Directory with ca.pem, node-<id>.pem/.key and admin.json (see `certs`).
        #[arg(long)]
        certs: PathBuf,
        /// Join a running cluster: register this node through the peers in --config (the
        /// meta leader then spreads replicas onto it) instead of bootstrapping. The file
        /// lists this node and at least one running peer.
        #[arg(long)]
        join: bool,
        /// BENCHMARK BASELINE ONLY: serve and dial node gRPC in plaintext, with no
        /// certificate or role check, so that `scripts/bench.sh security` can measure what
        /// mutual TLS costs. Anyone who reaches the port may export or drop any shard; refused
        /// unless this node's gRPC address is loopback. Raft (QUIC) keeps its TLS.
        #[arg(long)]
        unsecured: bool,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Generate the cluster CA (reused if present), a certificate per node of --config, the
    /// routers' certificate (router.pem) and the bootstrap admin key (admin.key, admin.json).
    /// Existing valid files are kept, so running it again is safe.
    Certs {
        /// The cluster file whose nodes get certificates.
        #[arg(long)]
        config: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Knobs with sensible defaults; tests use them to provoke rare paths.
#[derive(clap::Args, Clone)]
struct Tuning {
    /// Longest time a change waits for its tantivy commit (near-real-time freshness).
    #[arg(long, default_value_t = 100)]
    index_commit_ms: u64,
    /// Commit the index early once this many changes are pending.
    #[arg(long, default_value_t = 10_000)]
    index_commit_ops: usize,
    /// Build a snapshot (and compact the log) after this many entries.
    #[arg(long, default_value_t = 20_000)]
    snapshot_every: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn,tantivy=warn".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Certs { config, out } => {
            let cluster = ClusterConfig::load(&config)?;
            let nodes: Vec<(u64, Vec<IpAddr>)> = cluster
                .nodes
                .iter()
                .map(|n| (n.id, vec![n.raft.ip(), n.grpc.ip()]))
                .collect();
            generate_cluster_certs(&out, &nodes)
                .with_context(|| format!("writing certificates to {}", out.display()))?;
            let key_id = ensure_bootstrap_key(&out)?;
            println!(
                "wrote certificates for {} nodes and the routers to {}; bootstrap admin key {key_id} in {}",
                nodes.len(),
                out.display(),
                out.join(BOOTSTRAP_KEY_FILE).display()
            );
            Ok(())
        }
        Command::Run {
            config,
            id,
            data,
            certs,
            join,
            unsecured,
            tuning,
        } => run(config, id, data, certs, join, unsecured, tuning).await,
    }
}

async fn run(
    config: PathBuf,
    id: u64,
    data: PathBuf,
    certs: PathBuf,
    join: bool,
    unsecured: bool,
    tuning: Tuning,
) -> anyhow::Result<()> {
    let cluster = ClusterConfig::load(&config)?;
    let spec = cluster
        .node(id)
        .with_context(|| format!("node {id} is not in {}", config.display()))?
        .clone();
    if unsecured && !spec.grpc.ip().is_loopback() {
        anyhow::bail!(
            "--unsecured is for benchmarks on one machine: node {id}'s gRPC address {} is not loopback",
            spec.grpc
        );
    }
    if let Some(addr) = spec.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("starting the metrics endpoint on {addr}"))?;
    }
    let tls = NodeTls::load(&certs, id).with_context(|| {
        format!(
            "loading certificates for node {id} from {}",
            certs.display()
        )
    })?;
    let bootstrap_key = load_bootstrap_record(&certs)?;
    if bootstrap_key.is_none() {
        tracing::warn!(dir = %certs.display(), "no admin.json: this node adds no bootstrap admin key");
    }
    let node = TesseraNode::start(NodeConfig {
        bootstrap_key,
        id,
        cluster,
        data_dir: data,
        tls,
        raft: RaftTuning {
            snapshot_every: tuning.snapshot_every,
            ..RaftTuning::default()
        },
        index: IndexConfig {
            commit_interval: std::time::Duration::from_millis(tuning.index_commit_ms),
            commit_ops: tuning.index_commit_ops,
            ..IndexConfig::default()
        },
        join,
        unsecured_grpc: unsecured,
    })
    .await?;
    println!("tessera-node {id} serving gRPC on {}", node.grpc_addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}
