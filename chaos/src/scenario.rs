//! Scenarios: a fault schedule generated from a seed, run against a fresh
//! cluster while the workload runs, followed by heal and the checkers.
//!
//! The schedule is computed before the cluster starts, from the scenario
//! name, the duration, the seed and the (fixed) layout only, so the same
//! seed always gives the same schedule (`tessera-chaos plan` prints it).
//! Targets that name a role ("the leader of zt") are resolved when the
//! fault fires.
//!
//! Time line of a run of duration D: a fault-free warm-up, the fault
//! window, and a fault-free tail in which every fault has been healed and
//! the workload runs on a healthy cluster; then the workload stops, any
//! leftover fault is healed and the checkers run.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::check;
use crate::cluster::{Cluster, ClusterOptions, Layout};
use crate::error::{ChaosError, Result};
use crate::events::{self, EventLog};
use crate::history::{Clock, History};
use crate::nemesis::{AppliedFault, Fault, Nemesis, Step, Target};
use crate::report::{self, FailoverSample, Report, ShardPlacement};
use crate::rng::SeededRng;
use crate::workload::{self, Shared, TenantPlan, TenantState, WorkloadConfig};

/// Every scenario, in suite order.
pub const SCENARIOS: &[&str] = &[
    "leader-kill",
    "follower-kill",
    "pause",
    "partition-minority",
    "partition-leader",
    "one-way",
    "region-outage",
    "slow-node",
    "flapping-link",
    "rolling-restart",
    "resize",
    "mixed",
];

/// Shortest duration a schedule can be built for.
pub const MIN_DURATION: Duration = Duration::from_secs(8);
/// How long a failover probe keeps trying.
const PROBE_DEADLINE: Duration = Duration::from_secs(60);

/// A generated schedule (or one read from a file, to replay or hand-craft
/// a fault sequence: `tessera-chaos plan` prints this shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Scenario name.
    pub scenario: String,
    /// Seed it was generated from.
    pub seed: u64,
    /// Workload duration, ms.
    pub duration_ms: u64,
    /// Faults may start at or after this (ms).
    pub window_start_ms: u64,
    /// Every fault is healed by this (ms).
    pub window_end_ms: u64,
    /// The faults.
    pub steps: Vec<Step>,
}

/// The fault window of a run of `duration_ms`: a warm-up of a tenth
/// (2–5 s) and a healthy tail of 15% (3–10 s).
fn window(duration_ms: u64) -> (u64, u64) {
    let warm = (duration_ms / 10).clamp(2_000, 5_000);
    let tail = (duration_ms * 15 / 100).clamp(3_000, 10_000);
    (warm, duration_ms.saturating_sub(tail))
}

/// Generates the schedule of `scenario`.
pub fn plan(
    scenario: &str,
    duration: Duration,
    seed: u64,
    layout: &Layout,
    tenants: &[TenantPlan],
) -> Result<Plan> {
    if !SCENARIOS.contains(&scenario) {
        return Err(ChaosError::Scenario(format!(
            "unknown scenario {scenario:?}; known: {}",
            SCENARIOS.join(", ")
        )));
    }
    if duration < MIN_DURATION {
        return Err(ChaosError::Scenario(format!(
            "duration {:?} is below the minimum of {:?}",
            duration, MIN_DURATION
        )));
    }
    let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let (start, end) = window(duration_ms);
    let mut rng = SeededRng::derive(seed, &format!("schedule/{scenario}"));
    let names: Vec<String> = tenants.iter().map(|t| t.name.clone()).collect();
    let nodes = layout.node_count() as u64;
    let mut g = Gen {
        rng: &mut rng,
        tenants: &names,
        nodes,
        regions: layout.regions.len(),
    };
    let steps = match scenario {
        "leader-kill" => g.cycle(start, end, (2_000, 4_000), (2_000, 4_000), |g| {
            Fault::Kill { target: g.leader() }
        }),
        "follower-kill" => g.cycle(start, end, (2_000, 4_000), (2_000, 4_000), |g| {
            Fault::Kill {
                target: g.follower(),
            }
        }),
        // Paused past the 1–2 s election timeout, so followers elect.
        "pause" => g.cycle(start, end, (3_000, 5_000), (2_000, 3_000), |g| {
            let target = if g.rng.chance(0.6) {
                g.leader()
            } else {
                g.follower()
            };
            Fault::Pause { target }
        }),
        "partition-minority" => g.cycle(start, end, (3_000, 6_000), (2_000, 3_000), |g| {
            let size = g.rng.range(1, ((g.nodes - 1) / 2).max(1));
            let mut ids: Vec<u64> = Vec::new();
            while (ids.len() as u64) < size {
                let id = g.rng.range(1, g.nodes);
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            ids.sort_unstable();
            Fault::Isolate {
                targets: ids.into_iter().map(|id| Target::Node { id }).collect(),
                routers: false,
            }
        }),
        "partition-leader" => g.cycle(start, end, (3_000, 6_000), (2_000, 3_000), |g| {
            Fault::Isolate {
                targets: vec![g.leader()],
                routers: true,
            }
        }),
        "one-way" => g.cycle(start, end, (3_000, 6_000), (2_000, 3_000), |g| {
            Fault::OneWay {
                target: g.leader(),
                outbound: g.rng.chance(0.5),
            }
        }),
        // Long enough for elections and breakers; the gap lets the region
        // catch up after its restart.
        "region-outage" => g.cycle(start, end, (4_000, 8_000), (3_000, 5_000), |g| {
            Fault::RegionOutage {
                region: g.rng.below(g.regions),
                kill: g.rng.chance(0.5),
            }
        }),
        "slow-node" => g.cycle(start, end, (4_000, 8_000), (1_000, 2_000), |g| {
            let target = if g.rng.chance(0.5) {
                g.leader()
            } else {
                g.node()
            };
            Fault::Slow {
                target,
                latency_ms: g.rng.range(150, 400),
                jitter_ms: g.rng.range(20, 80),
            }
        }),
        "flapping-link" => g.cycle(start, end, (4_000, 8_000), (1_000, 2_000), |g| {
            let target = if g.rng.chance(0.5) {
                g.leader()
            } else {
                g.node()
            };
            Fault::Flap {
                target,
                period_ms: g.rng.range(200, 800),
            }
        }),
        "rolling-restart" => {
            let first = g.rng.range(0, nodes.saturating_sub(1));
            let order: Vec<u64> = (0..nodes).map(|i| (first + i) % nodes + 1).collect();
            let per = ((end - start) / nodes.max(1)).max(1);
            let rounds = ((end - start) / (6_000 * nodes.max(1))).max(1);
            let per = per / rounds;
            (0..rounds * nodes)
                .map(|i| Step {
                    at_ms: start + i * per,
                    duration_ms: 0,
                    fault: Fault::Restart {
                        target: Target::Node {
                            id: order[(i % nodes) as usize],
                        },
                        graceful: true,
                    },
                })
                .collect()
        }
        "resize" => g.reshapes_under_faults(start, end),
        "mixed" => g.mixed(start, end, duration_ms),
        _ => Vec::new(),
    };
    Ok(Plan {
        scenario: scenario.to_string(),
        seed,
        duration_ms,
        window_start_ms: start,
        window_end_ms: end,
        steps,
    })
}

/// Rejects a hand-written plan that could not run as written.
fn check_plan(p: &Plan) -> Result<()> {
    if p.duration_ms < MIN_DURATION.as_millis() as u64 {
        return Err(ChaosError::Scenario(format!(
            "plan duration {} ms is below the minimum of {:?}",
            p.duration_ms, MIN_DURATION
        )));
    }
    if let Some(s) = p
        .steps
        .iter()
        .find(|s| s.at_ms + s.duration_ms > p.duration_ms)
    {
        return Err(ChaosError::Scenario(format!(
            "step {s:?} ends after the plan's duration of {} ms",
            p.duration_ms
        )));
    }
    Ok(())
}

struct Gen<'a> {
    rng: &'a mut SeededRng,
    tenants: &'a [String],
    nodes: u64,
    regions: usize,
}

impl Gen<'_> {
    fn tenant(&mut self) -> String {
        self.rng.pick(self.tenants).cloned().unwrap_or_default()
    }

    fn leader(&mut self) -> Target {
        Target::Leader {
            tenant: self.tenant(),
        }
    }

    fn follower(&mut self) -> Target {
        let tenant = self.tenant();
        Target::Follower {
            tenant,
            pick: self.rng.range(0, 1_000),
        }
    }

    fn node(&mut self) -> Target {
        Target::Node {
            id: self.rng.range(1, self.nodes),
        }
    }

    /// Back-to-back faults: each lasts a draw from `dur`, followed by a
    /// healthy gap drawn from `gap`, until the window ends. At least one.
    fn cycle(
        &mut self,
        start: u64,
        end: u64,
        dur: (u64, u64),
        gap: (u64, u64),
        mut make: impl FnMut(&mut Self) -> Fault,
    ) -> Vec<Step> {
        let mut out = Vec::new();
        let mut t = start;
        loop {
            let d = self.rng.range(dur.0, dur.1);
            if t + d > end && !out.is_empty() {
                break;
            }
            let d = d
                .min(end.saturating_sub(t))
                .max(dur.0.min(end.saturating_sub(t)));
            let fault = make(self);
            out.push(Step {
                at_ms: t,
                duration_ms: d,
                fault,
            });
            t += d + self.rng.range(gap.0, gap.1);
        }
        out
    }

    /// Resizes and moves of both tenants while single nodes are killed or
    /// paused back to back: the mover, the copies and the cut-over must
    /// lose nothing and leak nothing while replicas come and go.
    fn reshapes_under_faults(&mut self, start: u64, end: u64) -> Vec<Step> {
        let mut out = self.cycle(start, end, (2_000, 4_000), (1_000, 3_000), |g| {
            let target = if g.rng.chance(0.5) {
                g.leader()
            } else {
                g.node()
            };
            if g.rng.chance(0.5) {
                Fault::Kill { target }
            } else {
                Fault::Pause { target }
            }
        });
        out.extend(self.reshapes(start, end, 2 * self.tenants.len()));
        out.sort_by_key(|s| s.at_ms);
        out
    }

    /// `n` resizes and moves spread evenly over the window, taking the
    /// tenants in turn: each tenant is first resized, then moved, then
    /// resized again (up to the partition cap), and so on.
    fn reshapes(&mut self, start: u64, end: u64, n: usize) -> Vec<Step> {
        let span = end.saturating_sub(start);
        let count = self.tenants.len().max(1);
        (0..n)
            .filter_map(|i| {
                let tenant = self.tenants.get(i % count)?.clone();
                let at = start + span * (2 * i as u64 + 1) / (2 * n as u64).max(1);
                let fault = if (i / count).is_multiple_of(2) {
                    Fault::Resize { tenant }
                } else {
                    Fault::Move { tenant }
                };
                Some(Step {
                    at_ms: at,
                    duration_ms: 0,
                    fault,
                })
            })
            .collect()
    }

    /// A random schedule of about 2.5 faults per second of fault window.
    /// At most one node-level fault (kill, pause, isolation, one-way cut,
    /// region outage) is active at a time, so quorum is mostly kept and
    /// safety, not a dead cluster, is what gets tested; link faults
    /// (slow, lossy, flapping, pair cuts) overlap freely.
    fn mixed(&mut self, start: u64, end: u64, duration_ms: u64) -> Vec<Step> {
        let span = end.saturating_sub(start).max(1);
        let n = ((span as f64 / 1000.0) * 2.5).ceil().max(6.0) as u64;
        let slot = (span / n).max(1);
        let mut busy_until = 0u64;
        let mut out = Vec::new();
        for i in 0..n {
            let at = start + i * slot + self.rng.range(0, slot / 2);
            if at >= end {
                break;
            }
            let room = end - at;
            let roll = self.rng.unit();
            let node_level = at >= busy_until && roll < 0.45;
            let (fault, dur) = if node_level {
                let which = self.rng.unit();
                if which < 0.3 {
                    let target = if self.rng.chance(0.5) {
                        self.leader()
                    } else {
                        self.node()
                    };
                    (Fault::Kill { target }, self.rng.range(1_000, 3_000))
                } else if which < 0.55 {
                    let target = if self.rng.chance(0.5) {
                        self.leader()
                    } else {
                        self.node()
                    };
                    (Fault::Pause { target }, self.rng.range(2_500, 4_000))
                } else if which < 0.75 {
                    let target = if self.rng.chance(0.5) {
                        self.leader()
                    } else {
                        self.node()
                    };
                    let routers = self.rng.chance(0.5);
                    (
                        Fault::Isolate {
                            targets: vec![target],
                            routers,
                        },
                        self.rng.range(1_500, 3_500),
                    )
                } else if which < 0.92 || duration_ms < 30_000 {
                    let target = self.leader();
                    let outbound = self.rng.chance(0.5);
                    (
                        Fault::OneWay { target, outbound },
                        self.rng.range(1_500, 3_500),
                    )
                } else {
                    let region = self.rng.below(self.regions);
                    let kill = self.rng.chance(0.5);
                    (
                        Fault::RegionOutage { region, kill },
                        self.rng.range(3_000, 5_000),
                    )
                }
            } else {
                let which = self.rng.unit();
                let target = self.node();
                if which < 0.3 {
                    let latency_ms = self.rng.range(100, 400);
                    let jitter_ms = self.rng.range(10, 60);
                    (
                        Fault::Slow {
                            target,
                            latency_ms,
                            jitter_ms,
                        },
                        self.rng.range(500, 3_000),
                    )
                } else if which < 0.55 {
                    let drop_rate = self.rng.range(5, 30) as f64 / 100.0;
                    (
                        Fault::Lossy { target, drop_rate },
                        self.rng.range(500, 3_000),
                    )
                } else if which < 0.75 {
                    let period_ms = self.rng.range(150, 600);
                    (
                        Fault::Flap { target, period_ms },
                        self.rng.range(1_000, 3_000),
                    )
                } else {
                    let mut b = self.node();
                    if b == target {
                        b = Target::Node {
                            id: match &target {
                                Target::Node { id } => id % self.nodes + 1,
                                _ => 1,
                            },
                        };
                    }
                    (Fault::PairCut { a: target, b }, self.rng.range(500, 3_000))
                }
            };
            let dur = dur.min(room);
            if fault.is_node_level() {
                busy_until = at + dur;
            }
            out.push(Step {
                at_ms: at,
                duration_ms: dur,
                fault,
            });
        }
        // A resize or a move about once a minute of a longer run.
        let reshapes = (span / RESHAPE_EVERY_MS) as usize;
        out.extend(self.reshapes(start, end, reshapes));
        out.sort_by_key(|s| s.at_ms);
        out
    }
}

/// How often a long `mixed` run resizes or moves a tenant.
const RESHAPE_EVERY_MS: u64 = 60_000;
/// How long the checks wait for resizes and moves still running at heal.
const RESHAPE_SETTLE: Duration = Duration::from_secs(180);

/// The share of reads a scenario must keep succeeding: all of them where
/// one node-level fault (or one region outage, whose own router is not
/// counted) is active at a time, since every shard keeps a replica
/// elsewhere; 99% in `mixed` and `resize`, whose overlapping link faults
/// can cut a reader off every replica of a shard for a moment.
pub fn availability_floor(scenario: &str) -> f64 {
    match scenario {
        "mixed" | "resize" => 0.99,
        _ => 1.0,
    }
}

/// The share of reads that must succeed while no fault is active, in
/// every scenario: a healthy cluster serves.
pub const STEADY_AVAILABILITY_FLOOR: f64 = 0.99;

/// Everything `run` needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Scenario name.
    pub scenario: String,
    /// Workload duration.
    pub duration: Duration,
    /// Seed of the schedule and workload.
    pub seed: u64,
    /// How to build the cluster.
    pub cluster: ClusterOptions,
    /// Workload knobs (its seed is replaced by `seed`).
    pub workload: WorkloadConfig,
    /// Documents per tenant.
    pub docs_per_tenant: u32,
    /// Override of [`availability_floor`].
    pub availability_floor: Option<f64>,
    /// A schedule to run instead of generating one (its scenario name,
    /// seed and duration are used as they are).
    pub plan: Option<Plan>,
    /// Fewer faults injected than this fails the run (0: no minimum).
    pub min_faults: u64,
}

impl RunOptions {
    /// Defaults for `scenario` with binaries from `bin_dir`.
    pub fn new(scenario: &str, duration: Duration, seed: u64, bin_dir: std::path::PathBuf) -> Self {
        RunOptions {
            scenario: scenario.to_string(),
            duration,
            seed,
            cluster: ClusterOptions::new(bin_dir),
            workload: WorkloadConfig::default(),
            docs_per_tenant: 120,
            availability_floor: None,
            plan: None,
            min_faults: 0,
        }
    }
}

/// Runs one scenario end to end on a fresh cluster and reports. `Err` means
/// the harness itself could not run (no binaries, the cluster never came
/// up); violations are in the report.
pub async fn run(opts: RunOptions) -> Result<Report> {
    let started = std::time::Instant::now();
    let tenants = workload::default_tenants(opts.docs_per_tenant);
    // The schedule exists before the cluster does: it depends on the seed only.
    let plan = match &opts.plan {
        Some(p) => {
            check_plan(p)?;
            p.clone()
        }
        None => plan(
            &opts.scenario,
            opts.duration,
            opts.seed,
            &opts.cluster.layout,
            &tenants,
        )?,
    };
    let cluster = Arc::new(Cluster::start(opts.cluster.clone()).await?);
    let result = run_on(&cluster, &opts, &plan, &tenants).await;
    let failed = !matches!(&result, Ok(r) if r.ok);
    let kept = cluster.shutdown(failed).await;
    let mut report = result?;
    report.cluster_dir = kept.map(|p| p.display().to_string());
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn run_on(
    cluster: &Arc<Cluster>,
    opts: &RunOptions,
    plan: &Plan,
    plans: &[TenantPlan],
) -> Result<Report> {
    let tenants = Arc::new(workload::setup_tenants(cluster, plans).await?);
    let admin = cluster.router_client(0, Duration::from_secs(10))?;
    events::register(&admin, &tenants)
        .await
        .map_err(ChaosError::Cluster)?;
    let first_shards: BTreeMap<String, u64> = tenants
        .iter()
        .filter_map(|t| t.shards.first().map(|s| (t.plan.name.clone(), *s)))
        .collect();
    let placement = placement(cluster, &tenants).await;
    let nemesis = Arc::new(Nemesis::new(cluster.clone(), first_shards));
    let history = Arc::new(History::new());
    let mut config = opts.workload.clone();
    config.seed = opts.seed;
    let (stop_tx, stop_rx) = watch::channel(false);
    let clock = Clock::start();
    let shared = Shared {
        history: history.clone(),
        clock,
        stop: stop_rx,
        ops: Arc::new(AtomicU64::new(0)),
        tenants: tenants.clone(),
        config: config.clone(),
    };
    let routers = cluster.routers().len().max(1);
    let mut tasks = JoinSet::new();
    let t_count = tenants.len().max(1);
    for w in 0..config.writers {
        let tenant = w % t_count;
        let slots = (0..config.writers)
            .filter(|x| x % t_count == tenant)
            .count() as u32;
        let slot = (w / t_count) as u32;
        let router = w % routers;
        let client = cluster.router_client(router, config.write_timeout)?;
        tasks.spawn(workload::writer(
            shared.clone(),
            client,
            router,
            tenant,
            slot,
            slots,
        ));
    }
    for r in 0..config.readers {
        let router = r % routers;
        let client = cluster.router_client(router, config.read_timeout)?;
        tasks.spawn(workload::reader(shared.clone(), client, router, r));
    }

    let event_log = Arc::new(EventLog::new());
    for e in 0..config.event_writers {
        let router = (e + 1) % routers;
        let client = cluster.router_client(router, config.write_timeout)?;
        tasks.spawn(events::event_writer(
            shared.clone(),
            event_log.clone(),
            client,
            e % t_count,
            e / t_count,
        ));
    }

    let mut probes: JoinSet<FailoverSample> = JoinSet::new();
    let faults = run_schedule(cluster, &nemesis, plan, &shared, &tenants, &mut probes).await;
    // Pacing to the end of the workload: the run lasts its duration.
    tokio::time::sleep_until(clock.origin() + Duration::from_millis(plan.duration_ms)).await;
    let _ = stop_tx.send(true);
    let workload_end = clock.ms();
    // Each task finishes its current operation, which has a deadline.
    let drain = config.write_timeout.max(config.read_timeout) * 3;
    if tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("workload tasks did not stop in {drain:?}; aborting them");
        tasks.abort_all();
    }
    let mut faults = faults;
    let mut heal_errors = {
        let mut errors = nemesis.heal_all().await;
        let end = clock.ms();
        for f in faults
            .iter_mut()
            .filter(|f| f.injected && f.healed_ms.is_none())
        {
            f.healed_ms = Some(end);
        }
        if let Err(e) = cluster
            .heal_everything(Instant::now() + crate::cluster::SETTLE)
            .await
        {
            errors.push(format!("bringing the cluster back: {e}"));
        }
        errors
    };
    let mut failover = Vec::new();
    while let Some(r) = probes.join_next().await {
        if let Ok(s) = r {
            failover.push(s);
        }
    }
    failover.sort_by_key(|s| (s.step, s.what.clone(), s.tenant.clone(), s.router));

    // Judge the tenants as the cluster places them now: a resize or a
    // move changed their partitions and shards.
    let tenants =
        match workload::settled_tenants(cluster, &tenants, Instant::now() + RESHAPE_SETTLE).await {
            Ok(t) => Arc::new(t),
            Err(e) => {
                heal_errors.push(format!("a resize or move did not finish: {e}"));
                tenants.clone()
            }
        };
    let shards = check::replicas(cluster, &tenants).await?;
    let convergence =
        check::convergence(cluster, &shards, Instant::now() + Duration::from_secs(90)).await;
    let lagging =
        check::index_lag(cluster, &shards, Instant::now() + Duration::from_secs(30)).await;
    let snap = history.snapshot();
    let map_epoch = cluster.any_map().await.map_or(0, |m| m.epoch);
    let store = check::check_store(
        cluster,
        &tenants,
        &shards,
        &convergence,
        &lagging,
        &snap,
        map_epoch,
    )
    .await;
    let residency = check::residency(cluster, Duration::from_secs(30)).await;
    let events = events::check(cluster, &tenants, &shards, &event_log).await;

    let router_region = |k: usize| cluster.routers().get(k).map_or(usize::MAX, |r| r.region);
    let mut report = Report {
        scenario: plan.scenario.clone(),
        seed: plan.seed,
        duration_s: plan.duration_ms / 1000,
        availability_floor: opts
            .availability_floor
            .unwrap_or_else(|| availability_floor(&plan.scenario)),
        steady_availability_floor: STEADY_AVAILABILITY_FLOOR,
        min_faults: opts.min_faults,
        reads: report::read_availability(&snap.reads, &faults, &router_region, workload_end),
        writes: report::write_stats(&snap),
        faults,
        heal_errors,
        failover,
        shards: convergence,
        store,
        online: snap.findings.clone(),
        placement,
        residency,
        events,
        ..Report::default()
    };
    report.finalize();
    Ok(report)
}

/// Where each tenant's shards ended up and who led them when the workload
/// started, for the report (a failure is easier to read with it).
async fn placement(cluster: &Cluster, tenants: &[TenantState]) -> Vec<ShardPlacement> {
    let Ok(map) = cluster.any_map().await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tenants {
        for (partition, shard) in t.shards.iter().enumerate() {
            if let Some(s) = map.shards.iter().find(|s| s.id == *shard) {
                out.push(ShardPlacement {
                    tenant: t.plan.name.clone(),
                    partition,
                    shard: *shard,
                    voters: s.voters.clone(),
                    learners: s.learners.clone(),
                    leader: cluster.leader_of(*shard).await,
                });
            }
        }
    }
    out
}

/// Fires the schedule's events in time order (heals before injections at
/// the same instant), pacing itself on the run clock: waiting for the
/// scheduled instant *is* the schedule, not a synchronisation. An event
/// whose time has passed (an earlier one blocked, e.g. a restart waiting
/// for its node) fires at once, so the order never changes.
async fn run_schedule(
    cluster: &Arc<Cluster>,
    nemesis: &Arc<Nemesis>,
    plan: &Plan,
    shared: &Shared,
    tenants: &Arc<Vec<TenantState>>,
    probes: &mut JoinSet<FailoverSample>,
) -> Vec<AppliedFault> {
    let mut events: Vec<(u64, u8, usize)> = Vec::new();
    for (i, s) in plan.steps.iter().enumerate() {
        events.push((s.at_ms, 1, i));
        if s.duration_ms > 0 {
            events.push((s.at_ms + s.duration_ms, 0, i));
        }
    }
    events.sort_unstable();
    let mut applied: Vec<Option<AppliedFault>> = vec![None; plan.steps.len()];
    let clock = shared.clock;
    for (at, kind, i) in events {
        tokio::time::sleep_until(clock.origin() + Duration::from_millis(at)).await;
        if kind == 1 {
            let af = nemesis.apply(i, &plan.steps[i], clock.ms()).await;
            if af.injected {
                spawn_probes(cluster, &af, shared, tenants, probes);
            }
            applied[i] = Some(af);
        } else {
            let err = nemesis.heal(i).await;
            if let Some(af) = applied[i].as_mut() {
                if af.injected {
                    af.healed_ms = Some(clock.ms());
                }
                if let Some(e) = err {
                    af.error = Some(format!("heal: {e}"));
                }
            }
        }
    }
    applied.into_iter().flatten().collect()
}

/// Starts the failover probes a fault calls for: a write probe per tenant
/// whose leader it took out, and for a region outage a read probe per
/// surviving router and tenant, plus a write probe for tenants that keep
/// a voter majority outside the region.
fn spawn_probes(
    cluster: &Arc<Cluster>,
    af: &AppliedFault,
    shared: &Shared,
    tenants: &Arc<Vec<TenantState>>,
    probes: &mut JoinSet<FailoverSample>,
) {
    let deadline = Instant::now() + PROBE_DEADLINE;
    // Probes are patient clients with the workload's deadlines, so they
    // measure when the cluster accepted a write again, not how a short
    // client deadline interacts with the router's own retries.
    let (write_timeout, read_timeout) = (shared.config.write_timeout, shared.config.read_timeout);
    let routers = cluster.routers().to_vec();
    let surviving: Vec<usize> = routers
        .iter()
        .filter(|r| af.region != Some(r.region))
        .map(|r| r.index)
        .collect();
    for t in tenants.iter() {
        let tenant = t.plan.name.clone();
        if af.region.is_none() && af.leader_of.contains(&tenant) {
            // Write through the router of the tenant's home region.
            let router = surviving
                .iter()
                .copied()
                .find(|k| routers.get(*k).is_some_and(|r| r.region == t.plan.home))
                .or_else(|| surviving.first().copied())
                .unwrap_or(0);
            let Ok(client) = cluster.router_client(router, write_timeout) else {
                continue;
            };
            let (h, clock, ts, at, step, fault) = (
                shared.history.clone(),
                shared.clock,
                t.clone(),
                af.at_ms,
                af.step,
                af.kind.clone(),
            );
            let name = tenant.clone();
            probes.spawn(async move {
                let ms = workload::write_probe(h, clock, client, ts, at, deadline).await;
                FailoverSample {
                    what: "write-after-leader-loss".into(),
                    fault,
                    step,
                    tenant: name,
                    router,
                    ms,
                }
            });
        }
        if let Some(region) = af.region {
            let elsewhere = t.plan.regions.iter().any(|r| *r != region);
            if !elsewhere {
                continue;
            }
            for &router in &surviving {
                let Ok(client) = cluster.router_client(router, read_timeout) else {
                    continue;
                };
                let (clock, name, at, step, fault) = (
                    shared.clock,
                    tenant.clone(),
                    af.at_ms,
                    af.step,
                    af.kind.clone(),
                );
                probes.spawn(async move {
                    let ms = workload::read_probe(clock, client, name.clone(), at, deadline).await;
                    FailoverSample {
                        what: "read-after-region-loss".into(),
                        fault,
                        step,
                        tenant: name,
                        router,
                        ms,
                    }
                });
            }
            // Region survival keeps a voter majority elsewhere: writes must
            // come back too.
            if t.plan.survival == "region" {
                if let Some(&router) = surviving.first() {
                    let Ok(client) = cluster.router_client(router, write_timeout) else {
                        continue;
                    };
                    let (h, clock, ts, at, step, fault, name) = (
                        shared.history.clone(),
                        shared.clock,
                        t.clone(),
                        af.at_ms,
                        af.step,
                        af.kind.clone(),
                        tenant.clone(),
                    );
                    probes.spawn(async move {
                        let ms = workload::write_probe(h, clock, client, ts, at, deadline).await;
                        FailoverSample {
                            what: "write-after-region-loss".into(),
                            fault,
                            step,
                            tenant: name,
                            router,
                            ms,
                        }
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants() -> Vec<TenantPlan> {
        workload::default_tenants(10)
    }

    #[test]
    fn same_seed_same_schedule_for_every_scenario() {
        let layout = Layout::three_regions();
        for s in SCENARIOS {
            let a = plan(s, Duration::from_secs(60), 7, &layout, &tenants()).expect("plan");
            let b = plan(s, Duration::from_secs(60), 7, &layout, &tenants()).expect("plan");
            assert_eq!(a, b, "{s}");
            assert!(!a.steps.is_empty(), "{s} has faults");
            for st in &a.steps {
                assert!(st.at_ms >= a.window_start_ms, "{s}: {st:?}");
                assert!(st.at_ms + st.duration_ms <= a.window_end_ms, "{s}: {st:?}");
            }
        }
        let a = plan("mixed", Duration::from_secs(60), 1, &layout, &tenants()).expect("plan");
        let b = plan("mixed", Duration::from_secs(60), 2, &layout, &tenants()).expect("plan");
        assert_ne!(a.steps, b.steps, "different seeds differ");
    }

    #[test]
    fn mixed_has_a_hundred_faults_in_a_minute_and_one_node_fault_at_a_time() {
        let layout = Layout::three_regions();
        let p = plan("mixed", Duration::from_secs(60), 42, &layout, &tenants()).expect("plan");
        assert!(p.steps.len() >= 100, "{} faults", p.steps.len());
        let mut busy = 0;
        for s in p.steps.iter().filter(|s| s.fault.is_node_level()) {
            assert!(s.at_ms >= busy, "overlapping node faults at {}", s.at_ms);
            busy = s.at_ms + s.duration_ms;
        }
    }

    #[test]
    fn resize_and_long_mixed_runs_reshape_tenants() {
        let layout = Layout::three_regions();
        let reshapes = |p: &Plan| {
            p.steps
                .iter()
                .filter(|s| matches!(s.fault, Fault::Resize { .. } | Fault::Move { .. }))
                .count()
        };
        let r = plan("resize", Duration::from_secs(60), 1, &layout, &tenants()).expect("plan");
        assert_eq!(reshapes(&r), 4, "each tenant resized and moved");
        assert!(r.steps.iter().any(|s| s.fault.is_node_level()));
        let long = plan("mixed", Duration::from_secs(500), 1, &layout, &tenants()).expect("plan");
        assert!(long.steps.len() >= 1_000, "{} faults", long.steps.len());
        assert!(reshapes(&long) >= 8, "{} reshapes", reshapes(&long));
        let brief = plan("mixed", Duration::from_secs(15), 1, &layout, &tenants()).expect("plan");
        assert_eq!(reshapes(&brief), 0, "a brief mixed run does not reshape");
    }

    #[test]
    fn brief_runs_still_inject_and_bad_input_is_refused() {
        let layout = Layout::three_regions();
        for s in SCENARIOS {
            let p = plan(s, Duration::from_secs(12), 3, &layout, &tenants()).expect("plan");
            assert!(!p.steps.is_empty(), "{s}");
        }
        assert!(plan("nope", Duration::from_secs(60), 1, &layout, &tenants()).is_err());
        assert!(plan("pause", Duration::from_secs(2), 1, &layout, &tenants()).is_err());
    }
}
