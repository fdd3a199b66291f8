//! The residency check through the router (`tessera admin check-residency`):
//! whether any replica of a tenant's shard sits outside the regions the
//! tenant allows, in the map or on the nodes. Needs an admin key.

use crate::error::ClientError;
use crate::TesseraClient;
use serde::Serialize;
use tessera_proto::pb;

/// One replica outside its tenant's regions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The tenant whose data it holds.
    pub tenant: String,
    /// The shard.
    pub shard: u64,
    /// The node holding it.
    pub node: u64,
    /// The node's region.
    pub region: String,
    /// `map` (the map places it there) or `node` (the node hosts it).
    pub seen_in: String,
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResidencyReport {
    /// The map epoch checked.
    pub epoch: u64,
    /// Tenant shards checked.
    pub shards: u32,
    /// Replicas checked (placed in the map, and hosted by nodes).
    pub replicas: u32,
    /// Empty when the invariant holds.
    pub violations: Vec<Violation>,
    /// Nodes that did not answer: what they host was not checked.
    pub unreachable: Vec<u64>,
}

impl From<pb::CheckResidencyResponse> for ResidencyReport {
    fn from(r: pb::CheckResidencyResponse) -> Self {
        ResidencyReport {
            epoch: r.epoch,
            shards: r.shards,
            replicas: r.replicas,
            violations: r
                .violations
                .into_iter()
                .map(|v| Violation {
                    tenant: v.tenant,
                    shard: v.shard,
                    node: v.node,
                    region: v.region,
                    seen_in: v.seen_in,
                })
                .collect(),
            unreachable: r.unreachable,
        }
    }
}

impl TesseraClient {
    /// Checks every replica of every shard against its tenants' allowed
    /// regions, as the map places them and as the nodes host them.
    pub async fn check_residency(&self) -> Result<ResidencyReport, ClientError> {
        let req = self.request(pb::CheckResidencyRequest {
            timeout_ms: self.timeout_ms(),
        });
        Ok(self
            .inner
            .clone()
            .check_residency(req)
            .await?
            .into_inner()
            .into())
    }
}
