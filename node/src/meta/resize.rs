//! Changing a tenant's partition count online.
//!
//! A document lives on partition `hash(id) % p`. Growing to `P = k·p`
//! partitions keeps every document of new partition `j` inside old
//! partition `j % p`, so each new partition is fed by exactly one old one.
//! The resize runs in three phases, each recorded in the replicated map so
//! that a mover that crashes resumes where the map says:
//!
//! 1. **Begin** (map epoch `fence`): the new partitions get shards. From
//!    this epoch on, routers read the union of the old and new shards
//!    (deduplicating by id) and write every document to both its old and
//!    its new shard. The tenant's shards refuse requests made with an older
//!    map (see the shard fence), so no write can slip past the copy.
//! 2. **Copying**: the mover fences each old shard, then copies its
//!    documents (tombstones too, versions kept, so copies never override a
//!    newer write), restrictions and memberships to their new shards.
//! 3. **Dropping**: every shard of either placement deletes the tenant's
//!    rows it does not own under the new placement and from then on
//!    ignores writes of documents it does not own. The union read still
//!    finds every document on its new shard.
//!
//! When every shard has dropped, the map cuts over: `partitions` becomes
//! the new placement and reads and writes use it alone.

use super::{placement, ClusterMap, MetaOutcome, Policy, MAX_PARTITIONS};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tessera_proto::ShardId;

/// A resize in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    /// The new placement: partition index → shard, `P` entries.
    pub to: Vec<ShardId>,
    /// The map epoch that began the resize. Shards of the tenant refuse
    /// requests made with an older map once fenced.
    pub fence: u64,
    /// Old shards whose documents have been copied to their new shards.
    pub copied: Vec<ShardId>,
    /// Shards (old or new) that have dropped the rows they no longer own.
    pub dropped: Vec<ShardId>,
    /// Per shard, the log index a replica must have applied to hold every
    /// row the resize put there or took away (see [`ResizeStep`]).
    #[serde(default)]
    pub floors: BTreeMap<ShardId, u64>,
}

/// Where a resize stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizePhase {
    /// Old shards are being copied to the new placement.
    Copying,
    /// Shards are dropping the rows the new placement gives to others.
    Dropping,
}

impl ResizePhase {
    /// The name shown by `tessera tenant show`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Copying => "copying",
            Self::Dropping => "dropping",
        }
    }
}

/// A finished step of a resize, with the log indexes it reached.
///
/// A client's session token covers only its own writes: a replica of a
/// new shard can have applied them and still lack the mover's copies,
/// which may sit later in the shard's log. Routers therefore read each
/// shard of a resized tenant only from replicas that applied its floor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResizeStep {
    /// Every document of old shard `source` is on its new shard; `floors`
    /// holds, per destination shard, the index of the last copy written.
    Copied {
        source: ShardId,
        floors: Vec<(ShardId, u64)>,
    },
    /// `shard` holds only rows it owns under the new placement, as of log
    /// index `applied`.
    Dropped { shard: ShardId, applied: u64 },
}

impl Resize {
    /// The old shards, each once, in partition order.
    pub fn sources(old: &[ShardId]) -> Vec<ShardId> {
        distinct(old.iter())
    }

    /// Every shard of either placement, each once.
    pub fn all_shards(&self, old: &[ShardId]) -> Vec<ShardId> {
        distinct(old.iter().chain(self.to.iter()))
    }

    /// The phase, given the tenant's current (old) partitions.
    pub fn phase(&self, old: &[ShardId]) -> ResizePhase {
        if Self::sources(old).iter().all(|s| self.copied.contains(s)) {
            ResizePhase::Dropping
        } else {
            ResizePhase::Copying
        }
    }
}

fn distinct<'a>(shards: impl Iterator<Item = &'a ShardId>) -> Vec<ShardId> {
    let mut out = Vec::new();
    for s in shards {
        if !out.contains(s) {
            out.push(*s);
        }
    }
    out
}

impl ClusterMap {
    /// Starts a resize of `tenant` to `partitions` partitions. Asking again
    /// for the resize already running is a no-op, so the call can be retried.
    pub(super) fn begin_resize(
        &mut self,
        tenant: &str,
        partitions: u32,
    ) -> Result<MetaOutcome, String> {
        let entry = self
            .tenants
            .get(tenant)
            .ok_or_else(|| format!("tenant {tenant:?} does not exist"))?;
        let current = entry.partitions.len();
        let target = partitions as usize;
        if let Some(r) = &entry.resize {
            return if r.to.len() == target && target != current {
                Ok(MetaOutcome::Tenant {
                    tenant: Box::new(entry.clone()),
                    epoch: self.epoch,
                })
            } else {
                Err(format!(
                    "tenant {tenant:?} is already being resized or moved (to {:?}); \
                     wait for it to finish",
                    r.to
                ))
            };
        }
        if partitions > MAX_PARTITIONS {
            return Err(format!(
                "{partitions} partitions is over the limit of {MAX_PARTITIONS} (MAX_PARTITIONS)"
            ));
        }
        if target == current {
            return Ok(MetaOutcome::Tenant {
                tenant: Box::new(entry.clone()),
                epoch: self.epoch,
            });
        }
        if target < current || current == 0 || !target.is_multiple_of(current) {
            return Err(format!(
                "tenant {tenant:?} has {current} partitions; it can grow to a multiple of \
                 that (e.g. {}), not to {target}: shrinking is not supported",
                current * 2
            ));
        }
        let policy = Policy {
            regions: entry.regions.clone(),
            home: entry.home.clone(),
            survival: entry.survival,
        };
        let old = entry.partitions.clone();
        // Placement may create shards before failing; a rejection must leave
        // the map as it was.
        let before = self.clone();
        let to = match placement::assign_growth(self, tenant, &policy, &old, target) {
            Ok(to) => to,
            Err(e) => {
                *self = before;
                return Err(e);
            }
        };
        let fence = self.bump();
        let entry = self
            .tenants
            .get_mut(tenant)
            .ok_or_else(|| format!("tenant {tenant:?} vanished"))?;
        entry.resize = Some(Resize {
            to,
            fence,
            copied: Vec::new(),
            dropped: Vec::new(),
            floors: BTreeMap::new(),
        });
        Ok(MetaOutcome::Tenant {
            tenant: Box::new(entry.clone()),
            epoch: fence,
        })
    }

    /// Records a finished step; the last drop cuts over.
    pub(super) fn resize_step(
        &mut self,
        tenant: &str,
        fence: u64,
        step: &ResizeStep,
    ) -> Result<MetaOutcome, String> {
        let entry = self
            .tenants
            .get_mut(tenant)
            .ok_or_else(|| format!("tenant {tenant:?} does not exist"))?;
        let old = entry.partitions.clone();
        let Some(resize) = entry.resize.as_mut().filter(|r| r.fence == fence) else {
            // Already cut over (a retried last step) or a stale mover.
            return Ok(MetaOutcome::Ok { epoch: self.epoch });
        };
        let changed = match step {
            ResizeStep::Copied { source, floors } => {
                if !Resize::sources(&old).contains(source) {
                    return Err(format!("shard {source} is not an old shard of {tenant:?}"));
                }
                raise_floors(&mut resize.floors, floors.iter().copied());
                push_once(&mut resize.copied, *source)
            }
            ResizeStep::Dropped { shard, applied } => {
                if resize.phase(&old) != ResizePhase::Dropping {
                    return Err(format!(
                        "tenant {tenant:?}: shard {shard} dropped rows before the copy finished"
                    ));
                }
                if !resize.all_shards(&old).contains(shard) {
                    return Err(format!(
                        "shard {shard} takes no part in {tenant:?}'s resize"
                    ));
                }
                raise_floors(&mut resize.floors, [(*shard, *applied)]);
                push_once(&mut resize.dropped, *shard)
            }
        };
        if !changed {
            return Ok(MetaOutcome::Ok { epoch: self.epoch });
        }
        let all = resize.all_shards(&old);
        if all.iter().all(|s| resize.dropped.contains(s)) {
            entry.partitions = std::mem::take(&mut resize.to);
            let floors = std::mem::take(&mut resize.floors);
            raise_floors(&mut entry.read_floors, floors);
            let kept = entry.partitions.clone();
            entry.read_floors.retain(|s, _| kept.contains(s));
            entry.resize = None;
        }
        let epoch = self.bump();
        Ok(MetaOutcome::Ok { epoch })
    }
}

/// Raises each shard's floor to the given index (floors never fall).
pub fn raise_floors(
    floors: &mut BTreeMap<ShardId, u64>,
    new: impl IntoIterator<Item = (ShardId, u64)>,
) {
    for (shard, index) in new {
        let f = floors.entry(shard).or_default();
        *f = (*f).max(index);
    }
}

fn push_once(list: &mut Vec<ShardId>, shard: ShardId) -> bool {
    if list.contains(&shard) {
        false
    } else {
        list.push(shard);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MetaCommand, NodeEntry, TenantSpec};
    use super::*;

    fn cluster() -> ClusterMap {
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
        m.apply(&MetaCommand::CreateTenant(TenantSpec {
            id: "acme".into(),
            regions: vec!["us".into()],
            home: "us".into(),
            survival: "zone".into(),
            partitions: 1,
        }));
        m
    }

    fn step(m: &mut ClusterMap, fence: u64, step: ResizeStep) -> MetaOutcome {
        m.apply(&MetaCommand::ResizeStep {
            tenant: "acme".into(),
            fence,
            step,
        })
    }

    #[test]
    fn growth_copies_then_drops_then_cuts_over() {
        let mut m = cluster();
        let old = m.tenants["acme"].partitions.clone();
        let out = m.apply(&MetaCommand::BeginResize {
            tenant: "acme".into(),
            partitions: 8,
        });
        assert!(matches!(out, MetaOutcome::Tenant { .. }), "{out:?}");
        let r = m.tenants["acme"].resize.clone().expect("resize");
        assert_eq!(r.to.len(), 8);
        assert_eq!(r.to[0], old[0], "partition 0 stays where it was");
        let distinct = r.all_shards(&old);
        assert!(distinct.len() >= 4, "8 partitions over {distinct:?}");
        assert!(m.residency_violations().is_empty());
        // Dropping before the copy is refused; copying is idempotent.
        let early = ResizeStep::Dropped {
            shard: old[0],
            applied: 5,
        };
        assert!(matches!(
            step(&mut m, r.fence, early),
            MetaOutcome::Rejected(_)
        ));
        let dest = *r.to.iter().find(|s| **s != old[0]).expect("a new shard");
        let copied = |floor| ResizeStep::Copied {
            source: old[0],
            floors: vec![(dest, floor)],
        };
        step(&mut m, r.fence, copied(40));
        step(&mut m, r.fence, copied(30));
        for s in &distinct {
            assert!(m.tenants["acme"].resize.is_some());
            let dropped = ResizeStep::Dropped {
                shard: *s,
                applied: 10,
            };
            step(&mut m, r.fence, dropped);
        }
        let t = &m.tenants["acme"];
        assert!(t.resize.is_none());
        assert_eq!(t.partitions, r.to);
        assert_eq!(t.read_floors[&dest], 40, "floors only rise");
        assert_eq!(t.read_floors[&old[0]], 10);
        // A retried step after the cut-over changes nothing.
        let before = m.clone();
        let late = ResizeStep::Dropped {
            shard: old[0],
            applied: 99,
        };
        step(&mut m, r.fence, late);
        assert_eq!(m, before);
    }

    #[test]
    fn bad_targets_are_refused_and_change_nothing() {
        let mut m = cluster();
        m.apply(&MetaCommand::BeginResize {
            tenant: "acme".into(),
            partitions: 2,
        });
        let r = m.tenants["acme"].resize.clone().expect("resize");
        for source in Resize::sources(&m.tenants["acme"].partitions) {
            let floors = Vec::new();
            step(&mut m, r.fence, ResizeStep::Copied { source, floors });
        }
        for shard in r.all_shards(&m.tenants["acme"].partitions.clone()) {
            step(&mut m, r.fence, ResizeStep::Dropped { shard, applied: 1 });
        }
        let before = m.clone();
        for p in [3, 1, MAX_PARTITIONS * 2] {
            let out = m.apply(&MetaCommand::BeginResize {
                tenant: "acme".into(),
                partitions: p,
            });
            assert!(matches!(out, MetaOutcome::Rejected(_)), "{p}: {out:?}");
        }
        assert!(matches!(
            m.apply(&MetaCommand::BeginResize {
                tenant: "nobody".into(),
                partitions: 2
            }),
            MetaOutcome::Rejected(_)
        ));
        assert_eq!(m, before);
    }
}
