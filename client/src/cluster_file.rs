//! `.cluster/cluster.json`, written by `scripts/cluster.sh up`: where the
//! routers (and nodes) of a local cluster listen. The CLI reads it to find
//! a router when `--router` is not given.

use crate::error::ClientError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Default location, relative to the working directory.
pub const DEFAULT_PATH: &str = ".cluster/cluster.json";

/// One router of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterEntry {
    /// The router's region.
    pub region: String,
    /// Its gRPC address.
    pub addr: String,
    /// Its process id, when started by the cluster script.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Node id.
    pub id: u64,
    /// Region.
    pub region: String,
    /// Zone.
    #[serde(default)]
    pub zone: String,
    /// gRPC address.
    pub grpc: String,
    /// Process id.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// The file's contents. Unknown fields are ignored so the script may add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    /// Routers, in the order the script started them.
    pub routers: Vec<RouterEntry>,
    /// Nodes.
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
    /// The cluster CA certificate (path), which routers' TLS certificates
    /// chain to. Absent: routers serve plaintext (`--insecure`).
    #[serde(default)]
    pub ca: Option<String>,
    /// The file holding the cluster-level admin key.
    #[serde(default)]
    pub admin_key_file: Option<String>,
    /// Per tenant, the file holding that tenant's key (search, write,
    /// features), so that tenant commands do not use the admin key.
    #[serde(default)]
    pub tenant_keys: std::collections::BTreeMap<String, String>,
}

impl ClusterFile {
    /// Reads and parses the file.
    pub fn load(path: &Path) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::InvalidInput(format!(
                "cannot read cluster file {}: {e}; pass --router ADDR or start a cluster with scripts/cluster.sh up",
                path.display()
            ))
        })?;
        Self::parse(&text)
            .map_err(|e| ClientError::InvalidInput(format!("cluster file {}: {e}", path.display())))
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// The key file for a command on `tenant` (`None`: a cluster-level
    /// command): that tenant's key when the file has one, else the admin
    /// key.
    pub fn key_file_for(&self, tenant: Option<&str>) -> Option<&str> {
        tenant
            .and_then(|t| self.tenant_keys.get(t))
            .or(self.admin_key_file.as_ref())
            .map(String::as_str)
    }

    /// The router of `region`, or the first router when no region is given.
    pub fn router_for(&self, region: Option<&str>) -> Result<&str, ClientError> {
        let found = match region {
            Some(r) => self.routers.iter().find(|e| e.region == r),
            None => self.routers.first(),
        };
        found.map(|e| e.addr.as_str()).ok_or_else(|| {
            let known: Vec<&str> = self.routers.iter().map(|e| e.region.as_str()).collect();
            ClientError::InvalidInput(match region {
                Some(r) => {
                    format!("no router in region {r:?}; the cluster has routers in {known:?}")
                }
                None => "the cluster file lists no routers".to_string(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"routers":[{"region":"us-east","addr":"127.0.0.1:7300","pid":11},
        {"region":"eu-west","addr":"127.0.0.1:7301","pid":12}],
        "nodes":[{"id":1,"region":"us-east","zone":"a","grpc":"127.0.0.11:7201","pid":13}],
        "extra":"ignored"}"#;

    #[test]
    fn picks_first_or_regional_router() {
        let f = ClusterFile::parse(SAMPLE).expect("parses");
        assert_eq!(f.router_for(None).expect("first"), "127.0.0.1:7300");
        assert_eq!(f.router_for(Some("eu-west")).expect("eu"), "127.0.0.1:7301");
        let e = f.router_for(Some("mars")).expect_err("no such region");
        assert!(e.to_string().contains("eu-west"), "{e}");
        assert_eq!(f.nodes[0].grpc, "127.0.0.11:7201");
    }

    #[test]
    fn missing_file_is_bad_input_with_a_hint() {
        let e = ClusterFile::load(Path::new("/nonexistent/cluster.json")).expect_err("missing");
        assert_eq!(e.exit_code(), crate::exit::BAD_INPUT);
        assert!(e.to_string().contains("--router"), "{e}");
    }
}
