//! The workload a chaos run drives through the routers while faults fly:
//! versioned writers with read-your-writes checks, readers checked by the
//! permission oracle, and failover probes.
//!
//! Everything is bounded: each task stops when the run's stop signal fires
//! (or after `max_ops` operations), and each operation has a deadline, so a
//! wedged cluster makes operations fail, never the harness hang. A write
//! that fails or times out is *indeterminate*: it may or may not have been
//! applied, and the checkers allow both.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tessera_client::{Delete, GroupMembership, SearchQuery, TenantSpec, TesseraClient};
use tessera_proto::{partition_of, ShardId};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::{Cluster, POLL, SETTLE};
use crate::error::{ChaosError, Result};
use crate::history::{Clock, Finding, History, OpStatus, ReadSample, WriteSample};
use crate::model;
use crate::rng::SeededRng;

/// Document numbers at and above this are failover probes (one fresh
/// document per probe attempt), so they never collide with the writers'.
pub const PROBE_BASE: u32 = 1_000_000;

/// A tenant the workload creates and uses.
#[derive(Clone, Debug, Serialize)]
pub struct TenantPlan {
    /// Tenant id (also the prefix of its document ids).
    pub name: String,
    /// Allowed regions, by index.
    pub regions: Vec<usize>,
    /// Home region index.
    pub home: usize,
    /// `zone` or `region`.
    pub survival: String,
    /// Partition count.
    pub partitions: u32,
    /// Documents the writers cycle through.
    pub docs: u32,
}

/// The two tenants of every run, chosen to cover both survival goals:
///
/// - `zt`: zone survival, home region 0, allowed everywhere: voters in
///   region 0 (topped up from region 1) and a learner in region 2, so a
///   region-0 outage leaves reads to a voter and a learner elsewhere;
/// - `rt`: region survival over all three regions with two partitions:
///   one voter per region, writes survive any one region, and searches
///   merge two shards.
pub fn default_tenants(docs: u32) -> Vec<TenantPlan> {
    vec![
        TenantPlan {
            name: "zt".into(),
            regions: vec![0, 1, 2],
            home: 0,
            survival: "zone".into(),
            partitions: 1,
            docs,
        },
        TenantPlan {
            name: "rt".into(),
            regions: vec![0, 1, 2],
            home: 1,
            survival: "region".into(),
            partitions: 2,
            docs,
        },
    ]
}

/// A tenant as created: its plan and its shards by partition.
#[derive(Clone, Debug, Serialize)]
pub struct TenantState {
    /// What was asked for.
    pub plan: TenantPlan,
    /// Shard of each partition.
    pub shards: Vec<ShardId>,
}

impl TenantState {
    /// Each shard of the tenant once (a move can put several partitions
    /// on one shard).
    pub fn distinct_shards(&self) -> Vec<ShardId> {
        let mut out = self.shards.clone();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The shard holding document `id`.
    pub fn shard_of(&self, id: &str) -> Option<ShardId> {
        let p = partition_of(id, self.plan.partitions);
        self.shards.get(p as usize).copied()
    }
}

/// Knobs of the workload.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadConfig {
    /// Writer tasks (spread over tenants and routers).
    pub writers: usize,
    /// Reader tasks (spread over routers).
    pub readers: usize,
    /// Event writer tasks (spread over tenants and routers).
    pub event_writers: usize,
    /// Pause between a writer's operations (its rate limit).
    pub write_pause: Duration,
    /// Pause between a reader's operations.
    pub read_pause: Duration,
    /// Deadline of one write.
    pub write_timeout: Duration,
    /// Deadline of one read.
    pub read_timeout: Duration,
    /// Fraction of acknowledged writes followed by a session-token check.
    pub ryw_rate: f64,
    /// Fraction of write operations that are deletes.
    pub delete_rate: f64,
    /// Stop after this many operations in total (reads and writes).
    pub max_ops: u64,
    /// Seed of the workload's choices.
    pub seed: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            writers: 4,
            readers: 3,
            event_writers: 2,
            write_pause: Duration::from_millis(30),
            read_pause: Duration::from_millis(20),
            write_timeout: Duration::from_secs(8),
            read_timeout: Duration::from_secs(5),
            ryw_rate: 0.5,
            delete_rate: 0.05,
            max_ops: 1_000_000,
            seed: 1,
        }
    }
}

/// Creates the tenants through router 0, waits until every router knows
/// them, and writes the fixed group memberships.
pub async fn setup_tenants(cluster: &Cluster, plans: &[TenantPlan]) -> Result<Vec<TenantState>> {
    let deadline = Instant::now() + SETTLE;
    let client = cluster.router_client(0, Duration::from_secs(10))?;
    let names = &cluster.layout().regions;
    let region_name = |i: usize| names.get(i).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for plan in plans {
        let spec = TenantSpec::new(
            plan.name.clone(),
            plan.regions.iter().map(|r| region_name(*r)),
        )
        .home(region_name(plan.home))
        .survival(plan.survival.clone())
        .partitions(plan.partitions);
        let view = retry(deadline, &format!("creating tenant {}", plan.name), || {
            let (client, spec) = (&client, &spec);
            async move {
                match client.create_tenant(spec).await {
                    Ok(v) => Ok(Some(v)),
                    Err(tessera_client::ClientError::AlreadyExists(_)) => {
                        client.tenant(&spec.id).await.map(Some)
                    }
                    Err(e) if e.is_retryable() => Err(e),
                    Err(e) => Err(e),
                }
            }
        })
        .await?;
        let shards = view.partitions.iter().map(|p| p.shard).collect();
        out.push(TenantState {
            plan: plan.clone(),
            shards,
        });
    }
    for r in cluster.routers() {
        let c = cluster.router_client(r.index, Duration::from_secs(5))?;
        for t in &out {
            retry(
                deadline,
                &format!("router {} to know tenant {}", r.index, t.plan.name),
                || {
                    let c = &c;
                    async move { c.tenant(&t.plan.name).await.map(Some) }
                },
            )
            .await?;
        }
    }
    let memberships: Vec<GroupMembership> = model::memberships()
        .into_iter()
        .map(|(user, groups)| GroupMembership { user, groups })
        .collect();
    for t in &out {
        let want = memberships.len() as u64;
        retry(
            deadline,
            &format!("writing the groups of {}", t.plan.name),
            || {
                let (client, m) = (&client, memberships.clone());
                async move {
                    let r = client.put_groups(&t.plan.name, m, "").await?;
                    Ok::<_, tessera_client::ClientError>((r.acked == want).then_some(()))
                }
            },
        )
        .await?;
    }
    Ok(out)
}

/// Waits until no tenant has a resize or move under way, then returns the
/// tenants as the cluster now places them (partition count and shards):
/// what the checkers must judge after a run that reshaped them.
pub async fn settled_tenants(
    cluster: &Cluster,
    tenants: &[TenantState],
    deadline: Instant,
) -> Result<Vec<TenantState>> {
    let mut out = Vec::new();
    for t in tenants {
        let name = &t.plan.name;
        let view = retry(deadline, &format!("{name} to finish resizing"), || async {
            let mut last = None;
            for r in cluster.routers() {
                let client = cluster.router_client(r.index, Duration::from_secs(5))?;
                match client.tenant(name).await {
                    Ok(v) => return Ok(v.resize.is_none().then_some(v)),
                    Err(e) => last = Some(ChaosError::Rpc(e.to_string())),
                }
            }
            Err(last.unwrap_or_else(|| ChaosError::Cluster("no router".into())))
        })
        .await?;
        let mut parts = view.partitions.clone();
        parts.sort_by_key(|p| p.index);
        let mut plan = t.plan.clone();
        plan.partitions = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        out.push(TenantState {
            plan,
            shards: parts.iter().map(|p| p.shard).collect(),
        });
    }
    Ok(out)
}

/// Retries `f` until it yields `Some`, polling until `deadline`.
async fn retry<T, E, F, Fut>(deadline: Instant, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<Option<T>, E>>,
    E: std::fmt::Display,
{
    let mut tick = tokio::time::interval(POLL);
    let mut last = String::from("no answer yet");
    loop {
        tick.tick().await;
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            return Err(ChaosError::Deadline(format!("{what}: {last}")));
        }
    }
}

/// What the tasks share.
#[derive(Clone)]
pub struct Shared {
    /// The record of the run.
    pub history: Arc<History>,
    /// Time base.
    pub clock: Clock,
    /// Flips to true when the tasks must stop.
    pub stop: watch::Receiver<bool>,
    /// Operations started so far (against `max_ops`).
    pub ops: Arc<AtomicU64>,
    /// The tenants.
    pub tenants: Arc<Vec<TenantState>>,
    /// Knobs.
    pub config: WorkloadConfig,
}

impl Shared {
    /// Whether the run asked the tasks to stop (or the op budget is spent).
    pub(crate) fn stopped(&self) -> bool {
        *self.stop.borrow() || self.ops.load(Ordering::Relaxed) >= self.config.max_ops
    }

    /// Sleeps `d` unless the stop signal comes first; the workload's rate
    /// limit, not a synchronisation.
    pub(crate) async fn pace(&self, d: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

/// One writer: owns the documents `k` of its tenant with `k % n == slot`
/// (so each document has exactly one writer and versions ascend), writes
/// batches of one to three of them, and checks read-your-writes with the
/// returned session token.
pub async fn writer(
    shared: Shared,
    client: TesseraClient,
    router: usize,
    tenant: usize,
    slot: u32,
    slots: u32,
) {
    let Some(t) = shared.tenants.get(tenant).cloned() else {
        return;
    };
    let name = t.plan.name.clone();
    let mine: Vec<u32> = (0..t.plan.docs).filter(|k| k % slots == slot).collect();
    if mine.is_empty() {
        return;
    }
    let mut rng = SeededRng::derive(shared.config.seed, &format!("writer/{name}/{slot}"));
    let h = &shared.history;
    while !shared.stopped() {
        shared.ops.fetch_add(1, Ordering::Relaxed);
        let batch = rng.range(1, 3) as usize;
        let mut ks: Vec<u32> = Vec::new();
        for _ in 0..batch {
            if let Some(k) = rng.pick(&mine) {
                if !ks.contains(k) {
                    ks.push(*k);
                }
            }
        }
        let now = shared.clock.ms();
        let mut ops: Vec<(u32, u64, bool)> = Vec::new();
        let mut docs = Vec::new();
        let mut deletes = Vec::new();
        for k in ks {
            let version = h.next_version(&name, k);
            let delete = h.has_upsert(&name, k) && rng.chance(shared.config.delete_rate);
            h.attempt(&name, k, version, delete, now);
            if delete {
                deletes.push(Delete {
                    id: model::doc_id(&name, k),
                    version,
                });
            } else {
                match serde_json::to_vec(&model::document(&name, k, version)) {
                    Ok(json) => docs.push(json),
                    Err(e) => {
                        tracing::error!(error = %e, "document does not serialise");
                        return;
                    }
                }
            }
            ops.push((k, version, delete));
        }
        let result = client.put_documents(&name, docs, deletes, "").await;
        let done = shared.clock.ms();
        let ok = match &result {
            Ok(out) => {
                // Rejections index into docs or deletes separately.
                let (mut doc_i, mut del_i) = (0u32, 0u32);
                let mut all = true;
                for (k, version, delete) in &ops {
                    let (kind, idx) = if *delete {
                        del_i += 1;
                        (tessera_client::ItemKind::Delete, del_i - 1)
                    } else {
                        doc_i += 1;
                        (tessera_client::ItemKind::Doc, doc_i - 1)
                    };
                    let rejected = out
                        .rejected
                        .iter()
                        .find(|r| r.kind == kind && r.index == idx);
                    if let Some(r) = rejected {
                        all = false;
                        h.finish(&name, *k, *version, OpStatus::Rejected, done);
                        let msg = r.error.clone();
                        h.with_findings(|f| {
                            f.rejected_writes
                                .add(|| format!("{} v{version}: {msg}", model::doc_id(&name, *k)))
                        });
                    } else {
                        h.finish(&name, *k, *version, OpStatus::Acked, done);
                    }
                }
                all
            }
            Err(e) => {
                tracing::debug!(tenant = %name, error = %e, "write indeterminate");
                for (k, version, _) in &ops {
                    h.finish(&name, *k, *version, OpStatus::Indeterminate, done);
                }
                false
            }
        };
        h.record_write(WriteSample {
            start_ms: now,
            router,
            tenant: name.clone(),
            ok,
        });
        if let (Ok(out), Some((k, version, delete))) = (&result, ops.first()) {
            if ok && rng.chance(shared.config.ryw_rate) {
                check_read_your_write(&shared, &client, &name, *k, *version, *delete, &out.token)
                    .await;
            }
        }
        shared.pace(shared.config.write_pause).await;
    }
}

/// Reads back an acknowledged write with its session token, by get and by
/// search for the version's unique term: both must show exactly it (the
/// writer is the document's only writer, so nothing newer can exist).
async fn check_read_your_write(
    shared: &Shared,
    client: &TesseraClient,
    tenant: &str,
    k: u32,
    version: u64,
    delete: bool,
    token: &str,
) {
    let h = &shared.history;
    let id = model::doc_id(tenant, k);
    match client.get(tenant, &id, model::ROOT_USER, Some(token)).await {
        Ok(r) => {
            let seen = r.document().map(|d| d.version);
            let good = if delete {
                !r.found
            } else {
                r.found && seen == Some(version)
            };
            if good {
                h.with_findings(|f| f.rw_ok += 1);
            } else {
                let t = shared.clock.ms();
                h.with_findings(|f| {
                    f.rw_violations.add(|| {
                        format!(
                            "t={t}ms get {id} with the token of its acked {} v{version} saw {}",
                            if delete { "delete" } else { "write" },
                            match seen {
                                Some(v) => format!("v{v}"),
                                None if r.found => "an unparsable document".into(),
                                None => "nothing".into(),
                            }
                        )
                    })
                });
            }
        }
        Err(_) => h.with_findings(|f| f.rw_unavailable += 1),
    }
    if delete {
        return;
    }
    let term = model::version_term(tenant, k, version);
    let q = SearchQuery::new(tenant, model::ROOT_USER, term.clone())
        .token(token)
        .limit(10);
    match client.search(&q).await {
        Ok(page) => {
            if page.hits.iter().any(|hit| hit.id == id) {
                h.with_findings(|f| f.rw_ok += 1);
            } else {
                let t = shared.clock.ms();
                let served = page
                    .served_by
                    .iter()
                    .map(|s| format!("shard {} node {} applied {}", s.shard, s.node, s.applied))
                    .collect::<Vec<_>>()
                    .join(", ");
                h.with_findings(|f| {
                    f.rw_violations.add(|| {
                        format!(
                            "t={t}ms search {term:?} with the token of the acked write of {id} v{version} missed it (served by {served})"
                        )
                    })
                });
            }
        }
        Err(_) => h.with_findings(|f| f.rw_unavailable += 1),
    }
}

/// One reader: random users, random queries and gets, every result checked
/// by the permission oracle; every attempt recorded for availability.
pub async fn reader(shared: Shared, client: TesseraClient, router: usize, idx: usize) {
    let mut rng = SeededRng::derive(shared.config.seed, &format!("reader/{idx}"));
    let users = model::reader_users();
    let h = &shared.history;
    while !shared.stopped() {
        shared.ops.fetch_add(1, Ordering::Relaxed);
        let Some(t) = rng.pick(&shared.tenants).cloned() else {
            return;
        };
        let tenant = t.plan.name.clone();
        let user = rng.pick(&users).copied().unwrap_or(model::ROOT_USER);
        let roll = rng.unit();
        let start = shared.clock.ms();
        let ok = if roll < 0.7 {
            let text = if roll < 0.1 {
                String::new()
            } else {
                let n = rng.range(1, 2);
                (0..n)
                    .filter_map(|_| rng.pick(model::VOCABULARY).copied())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let q = SearchQuery::new(tenant.clone(), user, text.clone()).limit(50);
            match client.search(&q).await {
                Ok(page) => {
                    let ids: Vec<String> = page.hits.iter().map(|x| x.id.clone()).collect();
                    check_hits(h, &tenant, user, &text, &ids);
                    true
                }
                Err(e) => {
                    let t = shared.clock.ms();
                    h.with_findings(|f| {
                        f.failed_reads.add(|| {
                            format!(
                                "t={start}..{t}ms router {router} search {tenant} as {user}: {e}"
                            )
                        })
                    });
                    false
                }
            }
        } else {
            let k = rng.below(t.plan.docs.max(1) as usize) as u32;
            let id = model::doc_id(&tenant, k);
            match client.get(&tenant, &id, user, None).await {
                Ok(r) => {
                    if r.found {
                        match r.document() {
                            Some(doc) => {
                                if let Err(f) = h.check_returned(&tenant, user, &doc) {
                                    h.report(f);
                                }
                            }
                            None => h.report(Finding::Corrupt(format!(
                                "get {id} as {user} returned a document that does not parse: {:?}",
                                r.doc
                            ))),
                        }
                    }
                    true
                }
                Err(e) => {
                    let t = shared.clock.ms();
                    h.with_findings(|f| {
                        f.failed_reads.add(|| {
                            format!("t={start}..{t}ms router {router} get {id} as {user}: {e}")
                        })
                    });
                    false
                }
            }
        };
        h.record_read(ReadSample {
            start_ms: start,
            end_ms: shared.clock.ms(),
            router,
            tenant,
            ok,
        });
        shared.pace(shared.config.read_pause).await;
    }
}

/// Checks one page of hits: no duplicates, nothing of another tenant,
/// nothing never written, nothing the user may not see under any version.
pub fn check_hits(h: &History, tenant: &str, user: &str, query: &str, ids: &[String]) {
    h.with_findings(|f| {
        f.hits_checked += ids.len() as u64;
        if user != model::ROOT_USER {
            f.non_root_checked += ids.len() as u64;
        }
    });
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(id.as_str()) {
            h.report(Finding::Duplicate(format!(
                "{id} twice in one page of {query:?} as {user} in {tenant}"
            )));
        }
        let Some(k) = model::parse_doc_id(tenant, id) else {
            h.report(Finding::Leak(format!(
                "search {query:?} as {user} in {tenant} returned foreign document {id}"
            )));
            continue;
        };
        match h.may_see(tenant, k, user) {
            None => h.report(Finding::Phantom(format!(
                "search {query:?} as {user} in {tenant} returned {id}, which was never written"
            ))),
            Some(false) => h.report(Finding::Leak(format!(
                "search {query:?} as {user} in {tenant} returned {id}, which no written version lets {user} see"
            ))),
            Some(true) => {}
        }
    }
}

static PROBE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Probes writes to the first shard of `tenant` through `client` until one
/// is acknowledged; returns milliseconds from `since_ms` to that ack, or
/// `None` if none succeeded by `deadline`. Each attempt writes a fresh
/// probe document (recorded in the history, so it is checked like any
/// other write).
pub async fn write_probe(
    history: Arc<History>,
    clock: Clock,
    client: TesseraClient,
    tenant: TenantState,
    since_ms: u64,
    deadline: Instant,
) -> Option<u64> {
    let name = tenant.plan.name.clone();
    let first = tenant.shards.first().copied();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while Instant::now() < deadline {
        tick.tick().await;
        // A probe document that lands on the shard whose leader was hit.
        let k = loop {
            let k = PROBE_BASE + PROBE_SEQ.fetch_add(1, Ordering::Relaxed) as u32;
            if tenant.shard_of(&model::doc_id(&name, k)) == first {
                break k;
            }
        };
        let doc = model::document(&name, k, 1);
        let Ok(json) = serde_json::to_vec(&doc) else {
            return None;
        };
        history.attempt(&name, k, 1, false, clock.ms());
        let result = client
            .put_documents(&name, vec![json], Vec::new(), "")
            .await;
        let done = clock.ms();
        match result {
            Ok(out) if out.rejected.is_empty() && out.acked == 1 => {
                history.finish(&name, k, 1, OpStatus::Acked, done);
                return Some(done.saturating_sub(since_ms));
            }
            Ok(_) => history.finish(&name, k, 1, OpStatus::Rejected, done),
            Err(_) => history.finish(&name, k, 1, OpStatus::Indeterminate, done),
        }
    }
    None
}

/// Probes reads of `tenant` through `client` (a router in a surviving
/// region) until one succeeds; returns milliseconds from `since_ms`.
pub async fn read_probe(
    clock: Clock,
    client: TesseraClient,
    tenant: String,
    since_ms: u64,
    deadline: Instant,
) -> Option<u64> {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while Instant::now() < deadline {
        tick.tick().await;
        let q = SearchQuery::new(tenant.clone(), model::ROOT_USER, "").limit(1);
        if client.search(&q).await.is_ok() {
            return Some(clock.ms().saturating_sub(since_ms));
        }
    }
    None
}
