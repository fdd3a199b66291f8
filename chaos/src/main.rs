//! `tessera-chaos`: run chaos scenarios against a throwaway cluster, or run
//! fault proxies for a local cluster and change their faults from scripts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tessera_chaos::cluster::{default_bin_dir, Layout};
use tessera_chaos::control::{ControlClient, ControlRequest, ControlServer, ProxySet};
use tessera_chaos::proxy::{LinkFaults, LinkSpec};
use tessera_chaos::scenario::{self, RunOptions, SCENARIOS};
use tessera_chaos::workload;

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
    /// Run one chaos scenario on a fresh cluster and check it.
    ///
    /// Starts 6 nodes (3 regions x 2) and a router per region, with a fault
    /// proxy on every link, creates two tenants (zone and region survival),
    /// drives writers and readers through the routers while the scenario's
    /// seeded fault schedule runs, heals everything, then checks: no lost
    /// acknowledged write, replicas converge, no permission leak,
    /// read-your-writes, no duplicate hits, read availability, failover
    /// times. Prints a summary (or one JSON object with --json) and exits 1
    /// on any violation, 3 when the harness itself could not run.
    Run {
        /// Scenario name (see `tessera-chaos scenarios`).
        #[arg(long, required_unless_present = "plan_file")]
        scenario: Option<String>,
        /// Workload duration in seconds (faults happen inside it).
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Seed of the fault schedule and the workload.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print one JSON object instead of the summary.
        #[arg(long)]
        json: bool,
        /// Directory with tessera-node and tessera-router (default: next to
        /// this binary).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Keep the cluster's directory (logs, data) even when the run passes.
        #[arg(long)]
        keep: bool,
        /// Writer tasks.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Reader tasks.
        #[arg(long, default_value_t = 3)]
        readers: usize,
        /// Documents per tenant.
        #[arg(long, default_value_t = 120)]
        docs: u32,
        /// The share of reads that must succeed (0..=1); default 1 for
        /// every scenario but mixed and resize, 0.99 for those.
        #[arg(long)]
        availability_floor: Option<f64>,
        /// Run this schedule (JSON, the shape `plan` prints) instead of
        /// generating one; --scenario, --duration and --seed are then taken
        /// from the file. For replaying or hand-crafting a fault sequence.
        #[arg(long)]
        plan_file: Option<PathBuf>,
    },
    /// Run several scenarios one after another (each on a fresh cluster)
    /// and print a markdown table of the results; exits 1 if any failed.
    Suite {
        /// Scenarios to run, comma-separated (default: all of them).
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
        /// Seconds of workload per scenario.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Seconds of workload for `mixed` (100+ faults need 60 or more).
        #[arg(long, default_value_t = 120)]
        mixed_duration: u64,
        /// Seed of every scenario.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Append each scenario's JSON report as one line to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Directory with tessera-node and tessera-router.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// A scenario that injects fewer faults than this fails (the long
        /// run of `scripts/chaos.sh --long` asks for 1000).
        #[arg(long, default_value_t = 0)]
        min_faults: u64,
    },
    /// Print a scenario's fault schedule for a seed (JSON) without running it.
    Plan {
        /// Scenario name.
        #[arg(long)]
        scenario: String,
        /// Workload duration in seconds.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// List the scenarios.
    Scenarios,
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

/// Exit code of a scenario run that found a violation.
const EXIT_VIOLATION: u8 = 1;
/// Exit code when a scenario could not run at all (harness error).
const EXIT_HARNESS: u8 = 3;

/// Errors end the process with one line on stderr naming the cause (the
/// anyhow context chain) and exit code 1 (3 for `run`); usage errors exit 2
/// via clap. `run` exits 1 when its checks found a violation.
fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_run = matches!(cli.command, Command::Run { .. } | Command::Suite { .. });
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tessera-chaos: error: {e:#}");
            ExitCode::from(if is_run { EXIT_HARNESS } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let default_filter = match cli.command {
        // A scenario logs its faults (to stderr); the cluster's own chatter
        // stays in its log files.
        Command::Run { json: true, .. } => "warn",
        Command::Run { .. } | Command::Suite { .. } => {
            "warn,tessera_chaos::nemesis=info,tessera_chaos::scenario=info"
        }
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    // Runs own a cluster; the proxy command handles its signals itself.
    let owns_cluster = matches!(cli.command, Command::Run { .. } | Command::Suite { .. });
    let work = async {
        match cli.command {
            Command::Run {
                scenario,
                duration,
                seed,
                json,
                bin_dir,
                keep,
                writers,
                readers,
                docs,
                availability_floor,
                plan_file,
            } => {
                let bin_dir = match bin_dir {
                    Some(d) => d,
                    None => default_bin_dir().context("locating the tessera binaries")?,
                };
                let scenario = scenario.unwrap_or_default();
                let mut opts =
                    RunOptions::new(&scenario, Duration::from_secs(duration), seed, bin_dir);
                opts.cluster.keep_dir = keep;
                opts.workload.writers = writers;
                opts.workload.readers = readers;
                opts.docs_per_tenant = docs;
                opts.availability_floor = availability_floor;
                if let Some(path) = plan_file {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let plan: scenario::Plan = serde_json::from_str(&text)
                        .with_context(|| format!("parsing the plan in {}", path.display()))?;
                    opts.scenario = plan.scenario.clone();
                    opts.seed = plan.seed;
                    opts.duration = Duration::from_millis(plan.duration_ms);
                    opts.plan = Some(plan);
                }
                let name = opts.scenario.clone();
                let report = scenario::run(opts)
                    .await
                    .with_context(|| format!("running scenario {name}"))?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    print!("{}", report.summary());
                }
                Ok(if report.ok { 0 } else { EXIT_VIOLATION })
            }
            Command::Suite {
                scenarios,
                duration,
                mixed_duration,
                seed,
                out,
                bin_dir,
                min_faults,
            } => {
                let bin_dir = match bin_dir {
                    Some(d) => d,
                    None => default_bin_dir().context("locating the tessera binaries")?,
                };
                let names: Vec<String> = if scenarios.is_empty() {
                    SCENARIOS.iter().map(|s| s.to_string()).collect()
                } else {
                    scenarios
                };
                let mut reports = Vec::new();
                for name in &names {
                    let secs = if name == "mixed" {
                        mixed_duration
                    } else {
                        duration
                    };
                    eprintln!("== {name}: {secs} s, seed {seed}");
                    let mut opts =
                        RunOptions::new(name, Duration::from_secs(secs), seed, bin_dir.clone());
                    opts.min_faults = min_faults;
                    let report = scenario::run(opts)
                        .await
                        .with_context(|| format!("running scenario {name}"))?;
                    eprint!("{}", report.summary());
                    if let Some(path) = &out {
                        use std::io::Write as _;
                        let mut f = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(path)
                            .with_context(|| format!("opening {}", path.display()))?;
                        writeln!(f, "{}", serde_json::to_string(&report)?)
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                    reports.push(report);
                }
                print!("{}", tessera_chaos::report::table(&reports));
                Ok(if reports.iter().all(|r| r.ok) {
                    0
                } else {
                    EXIT_VIOLATION
                })
            }
            Command::Plan {
                scenario,
                duration,
                seed,
            } => {
                let plan = scenario::plan(
                    &scenario,
                    Duration::from_secs(duration),
                    seed,
                    &Layout::three_regions(),
                    &workload::default_tenants(120),
                )?;
                println!("{}", serde_json::to_string_pretty(&plan)?);
                Ok(0)
            }
            Command::Scenarios => {
                for s in SCENARIOS {
                    println!("{s}");
                }
                Ok(0)
            }
            Command::Proxy { config, control } => run_proxy(config, control).await.map(|()| 0),
            Command::Ctl {
                addr,
                timeout_ms,
                op,
            } => run_ctl(addr, Duration::from_millis(timeout_ms), op)
                .await
                .map(|()| 0),
        }
    };
    // Ctrl-C (or SIGTERM) stops the run and drops it: every process the
    // harness started is killed with it (kill_on_drop) instead of being
    // left running, and the cluster's files are kept to look at.
    let code = runtime.block_on(async {
        if !owns_cluster {
            return work.await;
        }
        tokio::select! {
            r = work => r,
            _ = stop_signal() => {
                eprintln!("tessera-chaos: interrupted; stopping the processes it started");
                Ok(EXIT_INTERRUPTED)
            }
        }
    });
    // Dropping the runtime drops every task still holding the cluster.
    drop(runtime);
    code
}

/// Exit status after Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

/// Resolves on the first SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
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
