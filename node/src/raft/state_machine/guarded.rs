//! Applying [`GuardedCommand`]s: fenced writes, fences and drops (see
//! `crate::raft::guard` and `crate::meta::resize`).

use std::collections::BTreeSet;

use tessera_proto::{Document, ShardId};

use super::{stored_ancestors, ShardApplier, StoredDoc};
use crate::index::IndexOp;
use crate::raft::guard::{GuardedCommand, TenantGuard};
use crate::raft::{Response, ShardCommand};
use crate::storage::{keys, StorageError, CF_DOCS, CF_MEMBERS, CF_SM_META};

impl ShardApplier<'_> {
    /// Applies one guarded command at log `index`.
    pub(super) fn apply_guarded(
        &mut self,
        index: u64,
        cmd: &GuardedCommand,
    ) -> Result<Response, StorageError> {
        match cmd {
            GuardedCommand::Write {
                map_epoch,
                keep_memberships,
                cmd,
            } => self.guarded_write(index, *map_epoch, *keep_memberships, cmd, &[]),
            GuardedCommand::WriteUnder {
                map_epoch,
                keep_memberships,
                cmd,
                placement,
            } => self.guarded_write(index, *map_epoch, *keep_memberships, cmd, placement),
            GuardedCommand::Fence { tenant, fence } => {
                let mut guard = self.guard(tenant)?;
                if *fence > guard.fence {
                    guard.fence = *fence;
                    self.set_guard(tenant, guard)?;
                }
                Ok(Response::Shard {
                    applied_ops: 0,
                    noop_ops: 0,
                })
            }
            GuardedCommand::Drop { tenant, fence, to } => {
                self.drop_unowned(index, tenant, *fence, to)
            }
            // Feature events need the feature applier: the state machine applies them after
            // asking [`Self::refusal`].
            GuardedCommand::Events { .. } => Ok(Response::Empty),
        }
    }

    /// The fence that refuses a request of `tenant` made with the map at `map_epoch`, if any.
    pub(crate) fn refusal(
        &self,
        tenant: &str,
        map_epoch: u64,
    ) -> Result<Option<u64>, StorageError> {
        let guard = self.guard(tenant)?;
        Ok((!guard.admits(map_epoch)).then_some(guard.fence))
    }

    fn guard(&self, tenant: &str) -> Result<TenantGuard, StorageError> {
        if let Some(g) = self.pending_guards.get(tenant) {
            return Ok(g.clone());
        }
        TenantGuard::load(&self.data.storage, self.data.group, tenant)
    }

    fn set_guard(&mut self, tenant: &str, guard: TenantGuard) -> Result<(), StorageError> {
        let (key, value) = guard.row(self.data.group, tenant)?;
        self.batch
            .put_cf(self.data.storage.cf(CF_SM_META)?, key, value);
        self.pending_guards.insert(tenant.to_string(), guard);
        Ok(())
    }

    fn membership_exists(&self, tenant: &str, user: &str) -> Result<bool, StorageError> {
        let key = keys::entity_key(self.data.group, tenant, user);
        Ok(self.pending_members.contains(&key)
            || self.data.storage.get(CF_MEMBERS, &key)?.is_some())
    }

    /// A write made with the map at `map_epoch`: refused when the map is
    /// older than the tenant's fence; documents this shard owns neither
    /// under its last drop's placement nor under the running resize's
    /// `placement` are skipped (their owner gets the same write).
    fn guarded_write(
        &mut self,
        index: u64,
        map_epoch: u64,
        keep_memberships: bool,
        cmd: &ShardCommand,
        placement: &[ShardId],
    ) -> Result<Response, StorageError> {
        let guard = self.guard(&cmd.tenant)?;
        if !guard.admits(map_epoch) {
            return Ok(Response::Stale { fence: guard.fence });
        }
        let group = self.data.group;
        let mut kept = ShardCommand {
            tenant: cmd.tenant.clone(),
            restrictions: cmd.restrictions.clone(),
            ..ShardCommand::default()
        };
        for json in &cmd.upserts {
            let owned = guard.owned_under.is_none()
                || Document::from_json_bytes(json)
                    .is_ok_and(|d| guard.owns_under(group, &d.id, placement));
            if owned {
                kept.upserts.push(json.clone());
            }
        }
        kept.deletes = cmd
            .deletes
            .iter()
            .filter(|(id, _)| guard.owns_under(group, id, placement))
            .cloned()
            .collect();
        for (user, groups) in &cmd.memberships {
            if !(keep_memberships && self.membership_exists(&cmd.tenant, user)?) {
                kept.memberships.push((user.clone(), groups.clone()));
            }
        }
        let skipped = cmd.upserts.len() + cmd.deletes.len() + cmd.memberships.len()
            - kept.upserts.len()
            - kept.deletes.len()
            - kept.memberships.len();
        match self.apply(index, &kept)? {
            Response::Shard {
                applied_ops,
                noop_ops,
            } => Ok(Response::Shard {
                applied_ops,
                noop_ops: noop_ops + skipped as u32,
            }),
            other => Ok(other),
        }
    }

    /// Deletes `tenant`'s documents that `to` places on other shards (all
    /// of the tenant's rows when `to` leaves this shard out), and records
    /// `to` so that later writes of those documents are ignored. The
    /// state machine applies a drop in a batch of its own and deletes the
    /// matching feature rows beside it (`FeatureApplier::drop_documents`).
    fn drop_unowned(
        &mut self,
        index: u64,
        tenant: &str,
        fence: u64,
        to: &[ShardId],
    ) -> Result<Response, StorageError> {
        let group = self.data.group;
        let mut guard = self.guard(tenant)?;
        guard.fence = guard.fence.max(fence);
        guard.owned_under = Some(to.to_vec());
        self.set_guard(tenant, guard.clone())?;
        let prefix = keys::tenant_prefix(group, tenant);
        let end = keys::prefix_end(&prefix);
        let mut doomed: BTreeSet<String> = BTreeSet::new();
        self.data.storage.for_each(CF_DOCS, &prefix, &end, |k, _| {
            if let Ok(id) = std::str::from_utf8(&k[prefix.len()..]) {
                if !guard.owns(group, id) {
                    doomed.insert(id.to_string());
                }
            }
            true
        })?;
        for key in self.pending_docs.keys() {
            if let Some(id) = key
                .strip_prefix(prefix.as_slice())
                .and_then(|id| std::str::from_utf8(id).ok())
            {
                if !guard.owns(group, id) {
                    doomed.insert(id.to_string());
                }
            }
        }
        let mut seq = 0u32;
        let mut dropped = 0u32;
        for id in &doomed {
            let key = keys::entity_key(group, tenant, id);
            let Some(old) = self.current(&key)? else {
                continue;
            };
            if old.deleted && self.data.storage.get(CF_DOCS, &key)?.is_none() {
                continue;
            }
            self.adjust_stats(tenant, Some(&old), None)?;
            self.reindex_ancestors(tenant, id, &stored_ancestors(Some(&old)), &[])?;
            self.batch.delete_cf(self.data.storage.cf(CF_DOCS)?, &key);
            self.record_change(index, &mut seq, tenant, id)?;
            self.index_ops.push(IndexOp::Delete {
                tenant: tenant.to_string(),
                id: id.clone(),
            });
            // `current` reads the batch first: a deleted row reads as a
            // tombstone of its last version, so nothing in this batch
            // resurrects it (writes of unowned documents are skipped anyway).
            self.pending_docs.insert(
                key,
                StoredDoc {
                    deleted: true,
                    json: Vec::new(),
                    acl: Vec::new(),
                    title_tokens: 0,
                    body_tokens: 0,
                    ..old
                },
            );
            dropped += 1;
        }
        if !to.contains(&group) {
            self.drop_tenant_rows(tenant)?;
        }
        Ok(Response::Shard {
            applied_ops: dropped,
            noop_ops: 0,
        })
    }

    /// Deletes `tenant`'s memberships and restriction sets on this shard
    /// (its feature rows go in `FeatureApplier::drop_tenant`, run beside).
    fn drop_tenant_rows(&mut self, tenant: &str) -> Result<(), StorageError> {
        let group = self.data.group;
        let members = keys::tenant_prefix(group, tenant);
        self.batch.delete_range_cf(
            self.data.storage.cf(CF_MEMBERS)?,
            &members,
            &keys::prefix_end(&members),
        );
        let restrictions = keys::restriction_key(group, tenant, "");
        let mut rows = Vec::new();
        self.data.storage.for_each(
            CF_SM_META,
            &restrictions,
            &keys::prefix_end(&restrictions),
            |k, _| {
                rows.push(k.to_vec());
                true
            },
        )?;
        for k in rows {
            self.delete_meta_row(k)?;
        }
        Ok(())
    }
}
