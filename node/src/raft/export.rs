//! Reading out what a resize moves off a shard: the documents (tombstones
//! included, with their versions) that a new placement gives to other
//! shards, plus the tenant data every shard of a tenant holds (restriction
//! sets and memberships). Pages are bounded by a scan budget and resume
//! after the last document id, so a mover can stop and start anywhere.

use tessera_proto::ShardId;

use super::guard::owner;
use super::state_machine::{Restriction, ShardData, StoredDoc};
use crate::storage::{decode, keys, StorageError, CF_DOCS, CF_MEMBERS, CF_SM_META};

/// One page of an export.
#[derive(Debug, Default)]
pub struct ExportPage {
    /// Live documents that move, as stored.
    pub docs: Vec<Vec<u8>>,
    /// Deleted documents that move: `(id, delete version)`.
    pub tombstones: Vec<(String, u64)>,
    /// Every restriction set of the tenant (first page only).
    pub restrictions: Vec<(String, Restriction)>,
    /// Every membership of the tenant (first page only).
    pub memberships: Vec<(String, Vec<String>)>,
    /// The id to resume after; `None` when the scan is complete.
    pub next: Option<String>,
}

impl ShardData {
    /// Exports `tenant`'s documents that `to` places elsewhere, scanning at
    /// most `limit` rows after document id `after` ("" = from the start).
    pub fn export(
        &self,
        tenant: &str,
        after: &str,
        limit: usize,
        to: &[ShardId],
    ) -> Result<ExportPage, StorageError> {
        let mut page = ExportPage::default();
        let prefix = keys::tenant_prefix(self.group, tenant);
        let start = keys::entity_key(self.group, tenant, after);
        let end = keys::prefix_end(&prefix);
        let mut scanned = 0usize;
        let mut last = String::new();
        let mut failure: Option<StorageError> = None;
        self.storage.for_each(CF_DOCS, &start, &end, |k, v| {
            let Ok(id) = std::str::from_utf8(&k[prefix.len()..]) else {
                return true;
            };
            if id == after {
                return true;
            }
            if scanned >= limit {
                page.next = Some(last.clone());
                return false;
            }
            scanned += 1;
            last = id.to_string();
            if owner(to, id) == Some(self.group) {
                return true;
            }
            match decode::<StoredDoc>(CF_DOCS, v) {
                Ok(doc) if doc.deleted => page.tombstones.push((id.to_string(), doc.version)),
                Ok(doc) => page.docs.push(doc.json),
                Err(e) => {
                    failure = Some(e);
                    return false;
                }
            }
            true
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        if after.is_empty() {
            self.export_tenant_rows(tenant, &mut page)?;
        }
        Ok(page)
    }

    fn export_tenant_rows(&self, tenant: &str, page: &mut ExportPage) -> Result<(), StorageError> {
        let restrictions = keys::restriction_key(self.group, tenant, "");
        let mut bad: Option<StorageError> = None;
        self.storage.for_each(
            CF_SM_META,
            &restrictions,
            &keys::prefix_end(&restrictions),
            |k, v| {
                let page_id = String::from_utf8_lossy(&k[restrictions.len()..]).to_string();
                match decode::<Restriction>(CF_SM_META, v) {
                    Ok(r) => page.restrictions.push((page_id, r)),
                    Err(e) => bad = Some(e),
                }
                bad.is_none()
            },
        )?;
        let members = keys::tenant_prefix(self.group, tenant);
        self.storage
            .for_each(CF_MEMBERS, &members, &keys::prefix_end(&members), |k, v| {
                let user = String::from_utf8_lossy(&k[members.len()..]).to_string();
                match decode::<Vec<String>>(CF_MEMBERS, v) {
                    Ok(groups) => page.memberships.push((user, groups)),
                    Err(e) => bad = Some(e),
                }
                bad.is_none()
            })?;
        match bad {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
