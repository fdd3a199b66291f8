//! Automatic growth: on the meta leader, a tenant whose partition holds
//! more documents than the map's `split_docs`, or more bytes than its
//! `split_bytes`, doubles its partition count,
//! through the same online resize an operator starts by hand (see
//! [`super::resize`]).
//!
//! Sizes come from the shards themselves (each replica counts its tenants'
//! documents as it applies writes), read from any replica: a lagging one
//! only delays a split by a check. One placement change runs at a time in
//! the cluster, so growth never piles copies onto a busy cluster, and a
//! tenant is never split while it is being moved or resized.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_proto::{pb, ShardId};
use tokio::sync::watch;

use super::mover::leads_meta;
use super::{ClusterMap, MetaCommand, MAX_PARTITIONS};
use crate::node::NodeInner;

/// How often the meta leader checks sizes.
const TICK: Duration = Duration::from_secs(2);
/// How long one size query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// When tenants grow by themselves. It lives in the replicated map (set
/// from cluster.toml's `[growth]` by the meta leader), so a new meta
/// leader applies the same rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrowthSettings {
    /// A partition holding more live documents than this doubles its
    /// tenant's partition count; 0: never by count.
    pub split_docs: u64,
    /// A partition holding more bytes of live documents (their JSON as
    /// written) than this doubles its tenant's partition count; 0: never
    /// by size.
    pub split_bytes: u64,
}

impl Default for GrowthSettings {
    /// A million documents or 4 GiB a partition: well inside what one
    /// tantivy index searches in a few milliseconds, and far above small
    /// tenants, which stay packed on one shard.
    fn default() -> Self {
        GrowthSettings {
            split_docs: 1_000_000,
            split_bytes: 4 << 30,
        }
    }
}

impl GrowthSettings {
    /// Whether any limit is set.
    pub fn enabled(&self) -> bool {
        self.split_docs > 0 || self.split_bytes > 0
    }

    /// How far over its limits a partition of `docs` documents and `bytes` bytes is: above
    /// 1.0 it must split; the larger, the more urgently.
    fn overshoot(&self, docs: u64, bytes: u64) -> f64 {
        let ratio = |have: u64, limit: u64| {
            if limit == 0 {
                0.0
            } else {
                have as f64 / limit as f64
            }
        };
        ratio(docs, self.split_docs).max(ratio(bytes, self.split_bytes))
    }
}

/// The form of `MetaCommand::ConfigureGrowth` log entries, written before
/// limits by size existed; kept so that those entries still read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocsOnlyGrowth {
    pub split_docs: u64,
}

/// Runs until `shutdown` flips.
pub async fn run(node: Arc<NodeInner>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        if leads_meta(&node) {
            if let Err(e) = check_once(&node).await {
                tracing::debug!("growth check: {e}");
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
    }
}

async fn check_once(node: &NodeInner) -> Result<(), String> {
    let map = node.meta.map();
    if !map.growth.enabled() || map.tenants.values().any(|t| t.resize.is_some()) {
        return Ok(());
    }
    let mut sizes: BTreeMap<ShardId, Vec<pb::TenantSize>> = BTreeMap::new();
    for shard in hosting_shards(&map) {
        match query_sizes(node, &map, shard).await {
            Ok(s) => {
                sizes.insert(shard, s);
            }
            Err(e) => tracing::debug!(shard, "no size report: {e}"),
        }
    }
    let Some(over) = most_over(&map, &sizes) else {
        return Ok(());
    };
    let tenant = over.tenant;
    let partitions = map.tenants[&tenant].partitions.len() as u32 * 2;
    tracing::info!(
        tenant,
        docs_per_partition = over.docs,
        bytes_per_partition = over.bytes,
        split_docs = map.growth.split_docs,
        split_bytes = map.growth.split_bytes,
        partitions,
        "tenant outgrew its partitions; doubling them"
    );
    node.propose_meta(MetaCommand::BeginResize { tenant, partitions })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Shards holding a partition of some tenant.
fn hosting_shards(map: &ClusterMap) -> Vec<ShardId> {
    let mut out: Vec<ShardId> = map
        .tenants
        .values()
        .flat_map(|t| t.partitions.iter().copied())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// A tenant whose partition outgrew the limits, with that partition's size.
#[derive(Debug, Clone, PartialEq)]
struct Outgrown {
    tenant: String,
    docs: u64,
    bytes: u64,
    overshoot: f64,
}

/// The tenant whose partition is furthest over the limits (documents and
/// bytes on a shard divided by the tenant's partitions there), if any can
/// still double.
fn most_over(map: &ClusterMap, sizes: &BTreeMap<ShardId, Vec<pb::TenantSize>>) -> Option<Outgrown> {
    let mut best: Option<Outgrown> = None;
    for (shard, tenants) in sizes {
        for size in tenants {
            let Some(entry) = map.tenants.get(&size.tenant) else {
                continue;
            };
            let here = entry.partitions.iter().filter(|s| *s == shard).count() as u64;
            let can_double = entry.partitions.len() as u32 * 2 <= MAX_PARTITIONS;
            if here == 0 || !can_double {
                continue;
            }
            let (docs, bytes) = (size.docs / here, size.bytes / here);
            let overshoot = map.growth.overshoot(docs, bytes);
            if overshoot > 1.0 && best.as_ref().is_none_or(|b| overshoot > b.overshoot) {
                best = Some(Outgrown {
                    tenant: size.tenant.clone(),
                    docs,
                    bytes,
                    overshoot,
                });
            }
        }
    }
    best
}

/// A shard's tenant sizes from the first of its voters that answers.
async fn query_sizes(
    node: &NodeInner,
    map: &ClusterMap,
    shard: ShardId,
) -> Result<Vec<pb::TenantSize>, String> {
    let voters = map
        .shards
        .get(&shard)
        .map(|s| s.voters.clone())
        .unwrap_or_default();
    let mut last = format!("shard {shard} has no voters");
    for v in voters {
        let Some(addr) = map.nodes.get(&v).map(|n| n.grpc_addr.clone()) else {
            continue;
        };
        let query = async {
            let mut c = node.peer_client(&addr).await?;
            c.tenant_sizes(pb::TenantSizesRequest { shard })
                .await
                .map(|r| r.into_inner().tenants)
                .map_err(|s| s.message().to_string())
        };
        match tokio::time::timeout(QUERY_TIMEOUT, query).await {
            Ok(Ok(tenants)) => return Ok(tenants),
            Ok(Err(e)) => last = format!("node {v}: {e}"),
            Err(_) => last = format!("node {v}: no answer in {QUERY_TIMEOUT:?}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::super::{NodeEntry, TenantSpec};
    use super::*;

    fn map_with(tenants: &[(&str, u32)]) -> ClusterMap {
        let mut m = ClusterMap::default();
        m.apply(&MetaCommand::RegisterNodes(
            (1..=3)
                .map(|id| NodeEntry {
                    id,
                    region: "us".into(),
                    zone: format!("z{id}"),
                    raft_addr: format!("127.0.0.{id}:7000"),
                    grpc_addr: format!("127.0.0.{id}:8000"),
                })
                .collect(),
        ));
        for (id, partitions) in tenants {
            m.apply(&MetaCommand::CreateTenant(TenantSpec {
                id: id.to_string(),
                regions: vec!["us".into()],
                home: "us".into(),
                survival: "zone".into(),
                partitions: *partitions,
            }));
        }
        m.growth = GrowthSettings {
            split_docs: 100,
            split_bytes: 0,
        };
        m
    }

    fn size(tenant: &str, docs: u64) -> pb::TenantSize {
        pb::TenantSize {
            tenant: tenant.into(),
            docs,
            bytes: docs * 10,
        }
    }

    fn grown(found: Option<Outgrown>) -> Option<(String, u64)> {
        found.map(|o| (o.tenant, o.docs))
    }

    #[test]
    fn the_tenant_most_over_the_limit_per_partition_grows() {
        let m = map_with(&[("small", 1), ("big", 1), ("bigger", 1)]);
        let mut sizes: BTreeMap<ShardId, Vec<pb::TenantSize>> = BTreeMap::new();
        for t in ["small", "big", "bigger"] {
            let shard = m.tenants[t].partitions[0];
            let docs = match t {
                "small" => 100,
                "big" => 150,
                _ => 400,
            };
            sizes.entry(shard).or_default().push(size(t, docs));
        }
        assert_eq!(grown(most_over(&m, &sizes)), Some(("bigger".into(), 400)));
    }

    #[test]
    fn nothing_grows_at_or_under_the_limit_or_past_the_partition_cap() {
        let m = map_with(&[("even", 1), ("capped", MAX_PARTITIONS)]);
        let mut sizes: BTreeMap<ShardId, Vec<pb::TenantSize>> = BTreeMap::new();
        let even = m.tenants["even"].partitions[0];
        sizes.entry(even).or_default().push(size("even", 100));
        for shard in &m.tenants["capped"].partitions {
            sizes
                .entry(*shard)
                .or_default()
                .push(size("capped", 10_000));
        }
        sizes.entry(even).or_default().push(size("unknown", 10_000));
        assert_eq!(grown(most_over(&m, &sizes)), None);
    }

    #[test]
    fn two_partitions_on_one_shard_split_its_count() {
        let mut m = map_with(&[("pair", 2)]);
        let first = m.tenants["pair"].partitions[0];
        if let Some(t) = m.tenants.get_mut("pair") {
            t.partitions = vec![first, first];
        }
        let sizes = BTreeMap::from([(first, vec![size("pair", 180)])]);
        assert_eq!(
            grown(most_over(&m, &sizes)),
            None,
            "90 a partition is under 100"
        );
        let sizes = BTreeMap::from([(first, vec![size("pair", 202)])]);
        assert_eq!(grown(most_over(&m, &sizes)), Some(("pair".into(), 101)));
    }

    #[test]
    fn a_partition_over_the_byte_limit_grows_whatever_its_count() {
        let mut m = map_with(&[("few_large", 1), ("many_small", 1)]);
        m.growth = GrowthSettings {
            split_docs: 0,
            split_bytes: 1_000,
        };
        let few = m.tenants["few_large"].partitions[0];
        let many = m.tenants["many_small"].partitions[0];
        let mut sizes: BTreeMap<ShardId, Vec<pb::TenantSize>> = BTreeMap::new();
        sizes.entry(few).or_default().push(pb::TenantSize {
            tenant: "few_large".into(),
            docs: 2,
            bytes: 5_000,
        });
        sizes.entry(many).or_default().push(pb::TenantSize {
            tenant: "many_small".into(),
            docs: 90_000,
            bytes: 900,
        });
        let found = most_over(&m, &sizes).expect("over the byte limit");
        assert_eq!((found.tenant.as_str(), found.bytes), ("few_large", 5_000));
        // Both limits set: the one overshot furthest decides.
        m.growth.split_docs = 10_000;
        let found = most_over(&m, &sizes).expect("over the count limit");
        assert_eq!(
            found.tenant, "many_small",
            "9x its count beats 5x its bytes"
        );
        m.growth = GrowthSettings {
            split_docs: 0,
            split_bytes: 0,
        };
        assert!(!m.growth.enabled());
    }
}
