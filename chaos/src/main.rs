//! `tessera-chaos`: run fault proxies for a local cluster and change their
//! faults from scripts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tessera_chaos::control::{ControlClient, ControlRequest, ControlServer, ProxySet};
use tessera_chaos::proxy::{LinkFaults, LinkSpec};

/// Fault injection for Tessera test clusters.
///
/// `proxy` runs a set of named fault-injecting links (UDP for QUIC between
/// nodes, TCP for gRPC from routers) plus an optional control server;
/// `ctl` talks to that control server to add latency, partitions and
/// blackholes while the cluster runs.
#[derive(Debug, Parser)]
#[command(name = "tessera-chaos", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the links described by a JSON config until SIGTERM or ctrl-c.
    ///
    /// The config is a JSON array of links:
    ///
    ///   [{"name":"n1->n3","proto":"udp","listen":"127.0.0.1:7101",
    ///     "target":"127.0.0.3:7000","faults":{"latency_ms":40}}]
    ///
    /// `proto` is "udp" or "tcp"; `faults` (optional) is the link's
    /// baseline, which `heal` returns to. Fault fields: latency_ms,
    /// jitter_ms, drop_rate (0..1, UDP only), blackhole, cut_forward
    /// (client->target), cut_backward (target->client).
    ///
    /// Once every link is listening, one JSON line is printed on stdout:
    /// {"ready":true,"control":ADDR|null,"links":[{"name","proto","listen","target"}]}.
    /// Logs go to stderr (filter with RUST_LOG).
    Proxy {
        /// Path to the links JSON file.
        #[arg(long, short)]
        config: PathBuf,
        /// Serve the control protocol on this address (e.g. 127.0.0.1:7070;
        /// port 0 picks one, reported in the ready line).
        #[arg(long)]
        control: Option<SocketAddr>,
    },
    /// Change or inspect the links of a running `proxy` through its
    /// control address. Prints the affected links as JSON.
    Ctl {
        /// The proxy's control address.
        #[arg(long, env = "TESSERA_CHAOS_CONTROL")]
        addr: SocketAddr,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        #[command(subcommand)]
        op: CtlOp,
    },
}

#[derive(Debug, Subcommand)]
enum CtlOp {
    /// Replace a link's faults, e.g. set n1->n3 '{"latency_ms":50}'
    /// (fields left out mean healthy).
    Set {
        /// Link name.
        link: String,
        /// Faults as a JSON object.
        faults: String,
    },
    /// Change only the given fault fields, e.g. update n1->n3 '{"blackhole":true}'.
    Update {
        /// Link name.
        link: String,
        /// Some fault fields as a JSON object.
        faults: String,
    },
    /// Return a link to its baseline faults.
    Heal {
        /// Link name.
        link: String,
    },
    /// Return every link to its baseline faults.
    HealAll,
    /// Show every link with its faults and counters.
    List,
    /// Show one link.
    Get {
        /// Link name.
        link: String,
    },
}

/// Errors end the process with one line on stderr naming the cause (the
/// anyhow context chain) and exit code 1; usage errors exit 2 via clap.
fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera-chaos: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Proxy { config, control } => run_proxy(config, control).await,
            Command::Ctl {
                addr,
                timeout_ms,
                op,
            } => run_ctl(addr, Duration::from_millis(timeout_ms), op).await,
        }
    })
}

async fn run_proxy(config: PathBuf, control: Option<SocketAddr>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    let specs: Vec<LinkSpec> = serde_json::from_str(&text)
        .with_context(|| format!("parsing links from {}", config.display()))?;
    if specs.is_empty() {
        bail!("{} lists no links", config.display());
    }
    let set = Arc::new(ProxySet::new());
    let statuses = set.start_all(specs).await.context("starting links")?;
    let server = match control {
        Some(addr) => Some(
            ControlServer::bind(addr, set.clone())
                .await
                .with_context(|| format!("binding control address {addr}"))?,
        ),
        None => None,
    };
    let ready = serde_json::json!({
        "ready": true,
        "control": server.as_ref().map(|s| s.local_addr().to_string()),
        "links": statuses.iter().map(|s| serde_json::json!({
            "name": s.name, "proto": s.proto, "listen": s.listen, "target": s.target,
        })).collect::<Vec<_>>(),
    });
    println!("{ready}");
    tracing::info!(links = statuses.len(), "proxy ready");
    wait_for_shutdown().await?;
    tracing::info!("shutting down");
    Ok(())
}

async fn wait_for_shutdown() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("waiting for ctrl-c")?,
    }
    Ok(())
}

async fn run_ctl(addr: SocketAddr, timeout: Duration, op: CtlOp) -> anyhow::Result<()> {
    let req = match op {
        CtlOp::Set { link, faults } => {
            let faults: LinkFaults = serde_json::from_str(&faults)
                .with_context(|| format!("faults are not valid JSON: {faults}"))?;
            ControlRequest::Set { link, faults }
        }
        CtlOp::Update { link, faults } => {
            let faults: serde_json::Value = serde_json::from_str(&faults)
                .with_context(|| format!("faults are not valid JSON: {faults}"))?;
            ControlRequest::Update { link, faults }
        }
        CtlOp::Heal { link } => ControlRequest::Heal { link },
        CtlOp::HealAll => ControlRequest::HealAll,
        CtlOp::List => ControlRequest::List,
        CtlOp::Get { link } => ControlRequest::Get { link },
    };
    let links = tokio::time::timeout(timeout, async {
        let mut client = ControlClient::connect(addr)
            .await
            .with_context(|| format!("connecting to control address {addr}"))?;
        client.call(&req).await.context("control request failed")
    })
    .await
    .with_context(|| format!("no answer from {addr} within {} ms", timeout.as_millis()))??;
    println!("{}", serde_json::to_string_pretty(&links)?);
    Ok(())
}
