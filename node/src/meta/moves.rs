//! Moving a tenant's partitions to another shard (off a hot shard, or onto
//! a fresh one).
//!
//! A move is a resize that keeps the partition count: the new placement
//! differs from the old only in the moved partitions' shard. Everything
//! else is the resize protocol of [`super::resize`] unchanged: the fence,
//! the mover's copy of the documents the new placement gives the target,
//! the union read and double writes while copying, the drop of what the
//! source no longer owns, and the cut-over. So a move inherits the
//! resize's guarantees, crash resumption included, without a second
//! protocol to get right.

use super::{placement, resize::Resize, ClusterMap, MetaOutcome, Policy, TenantEntry};
use std::collections::BTreeMap;
use tessera_proto::ShardId;

impl ClusterMap {
    /// Starts moving `partitions` of `tenant` (all of them when empty) to
    /// shard `to`, or, when `to` is `None`, to the open shard of the
    /// tenant's policy that holds none of its partitions and the fewest
    /// tenants (a new shard when there is none). Asking again for the move
    /// already running is a no-op, so the call can be retried.
    pub(super) fn begin_move(
        &mut self,
        tenant: &str,
        partitions: &[u32],
        to: Option<ShardId>,
    ) -> Result<MetaOutcome, String> {
        let entry = self
            .tenants
            .get(tenant)
            .ok_or_else(|| format!("tenant {tenant:?} does not exist"))?;
        let moving = moving_partitions(entry, partitions)?;
        if let Some(r) = &entry.resize {
            return if is_this_move(entry, r, &moving, to) {
                Ok(self.tenant_outcome(tenant))
            } else {
                Err(format!(
                    "tenant {tenant:?} is already being resized or moved (to {:?}); \
                     wait for it to finish",
                    r.to
                ))
            };
        }
        let policy = Policy {
            regions: entry.regions.clone(),
            home: entry.home.clone(),
            survival: entry.survival,
        };
        let old = entry.partitions.clone();
        // Placement may create a shard before failing; a rejection must
        // leave the map as it was.
        let before = self.clone();
        let target = match to {
            Some(shard) => self.check_target(shard, &policy),
            None => placement::assign_move_target(self, &policy, &old),
        };
        let target = match target {
            Ok(t) => t,
            Err(e) => {
                *self = before;
                return Err(e);
            }
        };
        let mut new = old.clone();
        for p in &moving {
            new[*p] = target;
        }
        if new == old {
            return Ok(self.tenant_outcome(tenant));
        }
        let fence = self.bump();
        let entry = self
            .tenants
            .get_mut(tenant)
            .ok_or_else(|| format!("tenant {tenant:?} vanished"))?;
        entry.resize = Some(Resize {
            to: new,
            fence,
            copied: Vec::new(),
            dropped: Vec::new(),
            floors: BTreeMap::new(),
        });
        Ok(self.tenant_outcome(tenant))
    }

    /// A named target shard must exist and share the tenant's residency
    /// policy: shards are only shared by tenants with the same policy, so
    /// that is what keeps every replica inside the tenant's regions.
    fn check_target(&self, shard: ShardId, policy: &Policy) -> Result<ShardId, String> {
        let entry = self
            .shards
            .get(&shard)
            .ok_or_else(|| format!("shard {shard} does not exist"))?;
        if &entry.policy != policy {
            return Err(format!(
                "shard {shard} serves regions {:?} (home {}, survival {}); the tenant needs \
                 regions {:?} (home {}, survival {}): pick a shard with the same policy, or \
                 leave --to-shard out to let placement choose",
                entry.policy.regions,
                entry.policy.home,
                entry.policy.survival.as_str(),
                policy.regions,
                policy.home,
                policy.survival.as_str()
            ));
        }
        Ok(shard)
    }

    fn tenant_outcome(&self, tenant: &str) -> MetaOutcome {
        match self.tenants.get(tenant) {
            Some(t) => MetaOutcome::Tenant {
                tenant: Box::new(t.clone()),
                epoch: self.epoch,
            },
            None => MetaOutcome::Rejected(format!("tenant {tenant:?} does not exist")),
        }
    }
}

/// The partition indexes to move, checked against the tenant's count.
fn moving_partitions(entry: &TenantEntry, partitions: &[u32]) -> Result<Vec<usize>, String> {
    let count = entry.partitions.len();
    if partitions.is_empty() {
        return Ok((0..count).collect());
    }
    let mut out = Vec::with_capacity(partitions.len());
    for p in partitions {
        let p = *p as usize;
        if p >= count {
            return Err(format!(
                "tenant {:?} has partitions 0..{count}; there is no partition {p}",
                entry.id
            ));
        }
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Whether the running resize is the move asked for (a retry): the count is
/// unchanged and every asked-for partition is leaving for the asked-for
/// shard (any shard, when none was named).
fn is_this_move(entry: &TenantEntry, r: &Resize, moving: &[usize], to: Option<ShardId>) -> bool {
    r.to.len() == entry.partitions.len()
        && moving
            .iter()
            .all(|p| r.to[*p] != entry.partitions[*p] && to.is_none_or(|shard| r.to[*p] == shard))
}

#[cfg(test)]
mod tests {
    use super::super::resize::ResizeStep;
    use super::super::{MetaCommand, NodeEntry, TenantSpec};
    use super::*;

    fn cluster(partitions: u32) -> ClusterMap {
        let mut m = ClusterMap::default();
        m.apply(&MetaCommand::RegisterNodes(
            (1..=6)
                .map(|id| NodeEntry {
                    id,
                    region: if id <= 3 { "us" } else { "eu" }.into(),
                    zone: format!("z{id}"),
                    raft_addr: format!("127.0.0.{id}:7000"),
                    grpc_addr: format!("127.0.0.{id}:8000"),
                })
                .collect(),
        ));
        for (id, regions) in [("acme", vec!["us"]), ("other", vec!["us"])] {
            m.apply(&MetaCommand::CreateTenant(TenantSpec {
                id: id.into(),
                regions: regions.into_iter().map(String::from).collect(),
                home: "us".into(),
                survival: "zone".into(),
                partitions,
            }));
        }
        m
    }

    fn begin(m: &mut ClusterMap, partitions: Vec<u32>, to: Option<ShardId>) -> MetaOutcome {
        m.apply(&MetaCommand::BeginMove {
            tenant: "acme".into(),
            partitions,
            to,
        })
    }

    fn finish(m: &mut ClusterMap) {
        let old = m.tenants["acme"].partitions.clone();
        let r = m.tenants["acme"].resize.clone().expect("a move runs");
        for source in Resize::sources(&old) {
            let floors = Vec::new();
            m.apply(&MetaCommand::ResizeStep {
                tenant: "acme".into(),
                fence: r.fence,
                step: ResizeStep::Copied { source, floors },
            });
        }
        for shard in r.all_shards(&old) {
            m.apply(&MetaCommand::ResizeStep {
                tenant: "acme".into(),
                fence: r.fence,
                step: ResizeStep::Dropped { shard, applied: 1 },
            });
        }
    }

    #[test]
    fn a_partition_moves_to_a_shard_without_the_tenant_and_keeps_the_count() {
        let mut m = cluster(2);
        let old = m.tenants["acme"].partitions.clone();
        let out = begin(&mut m, vec![1], None);
        assert!(matches!(out, MetaOutcome::Tenant { .. }), "{out:?}");
        let r = m.tenants["acme"].resize.clone().expect("resize");
        assert_eq!(r.to.len(), 2, "a move keeps the partition count");
        assert_eq!(r.to[0], old[0], "partition 0 stays");
        assert!(
            !old.contains(&r.to[1]),
            "partition 1 goes to a shard without acme"
        );
        // A retry is a no-op; another resize is refused meanwhile.
        let epoch = m.epoch;
        assert!(matches!(
            begin(&mut m, vec![1], None),
            MetaOutcome::Tenant { .. }
        ));
        assert_eq!(m.epoch, epoch);
        let grow = m.apply(&MetaCommand::BeginResize {
            tenant: "acme".into(),
            partitions: 4,
        });
        assert!(matches!(grow, MetaOutcome::Rejected(_)), "{grow:?}");
        finish(&mut m);
        let t = &m.tenants["acme"];
        assert!(t.resize.is_none());
        assert_eq!(t.partitions, r.to);
        assert!(m.residency_violations().is_empty());
    }

    #[test]
    fn a_named_target_must_exist_and_share_the_policy() {
        let mut m = cluster(1);
        m.apply(&MetaCommand::CreateTenant(TenantSpec {
            id: "strict".into(),
            regions: vec!["eu".into()],
            home: "eu".into(),
            survival: "zone".into(),
            partitions: 1,
        }));
        let foreign = m.tenants["strict"].partitions[0];
        let before = m.clone();
        for (partitions, to) in [
            (vec![], Some(999)),
            (vec![], Some(foreign)),
            (vec![5], None),
        ] {
            let out = begin(&mut m, partitions.clone(), to);
            assert!(
                matches!(out, MetaOutcome::Rejected(_)),
                "{partitions:?} {to:?}: {out:?}"
            );
        }
        assert_eq!(m, before, "rejections change nothing");
        // Moving onto the shard it is already on changes nothing either.
        let here = m.tenants["acme"].partitions[0];
        assert!(matches!(
            begin(&mut m, vec![0], Some(here)),
            MetaOutcome::Tenant { .. }
        ));
        assert_eq!(m, before);
    }

    #[test]
    fn a_named_target_of_the_same_policy_is_used() {
        let mut m = cluster(1);
        // A tenant on two partitions makes sure a second shard exists.
        m.apply(&MetaCommand::CreateTenant(TenantSpec {
            id: "wide".into(),
            regions: vec!["us".into()],
            home: "us".into(),
            survival: "zone".into(),
            partitions: 2,
        }));
        let mine = m.tenants["acme"].partitions[0];
        let to = *m
            .shards
            .keys()
            .find(|s| **s != mine)
            .expect("a second shard");
        let out = begin(&mut m, vec![], Some(to));
        assert!(matches!(out, MetaOutcome::Tenant { .. }), "{out:?}");
        let r = m.tenants["acme"].resize.clone().expect("a move runs");
        assert_eq!(r.to, vec![to]);
    }
}
