//! The client's typed view of requests and answers.
//!
//! The answer types serialise to exactly the `--json` shapes of DESIGN.md
//! ("Interfaces"), which the CLI prints; fields may be added, never removed.

use serde::{Deserialize, Serialize};
use tessera_proto::pb;

/// What `create_tenant` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSpec {
    /// Tenant id.
    pub id: String,
    /// Regions the tenant's data may live in (data residency).
    pub regions: Vec<String>,
    /// Home region; empty = the first allowed region.
    pub home: String,
    /// `zone` (voters in the home region) or `region` (voters across regions); empty = zone.
    pub survival: String,
    /// Partition count; 0 = 1.
    pub partitions: u32,
}

impl TenantSpec {
    /// A zone-survival, single-partition tenant homed in its first region.
    pub fn new<I, S>(id: impl Into<String>, regions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TenantSpec {
            id: id.into(),
            regions: regions.into_iter().map(Into::into).collect(),
            home: String::new(),
            survival: String::new(),
            partitions: 0,
        }
    }

    /// Sets the home region.
    pub fn home(mut self, home: impl Into<String>) -> Self {
        self.home = home.into();
        self
    }

    /// Sets the survival goal (`zone` or `region`).
    pub fn survival(mut self, survival: impl Into<String>) -> Self {
        self.survival = survival.into();
        self
    }

    /// Fixes the partition count.
    pub fn partitions(mut self, p: u32) -> Self {
        self.partitions = p;
        self
    }
}

/// One partition of a tenant and the shard holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionView {
    /// Partition index (`hash(doc id) % p`).
    pub index: u32,
    /// The shard (Raft group) holding it.
    pub shard: u64,
}

/// A tenant as `tenant show --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantView {
    /// Tenant id.
    pub id: String,
    /// Allowed regions.
    pub regions: Vec<String>,
    /// Home region.
    pub home: String,
    /// Survival goal.
    pub survival: String,
    /// Partition → shard.
    pub partitions: Vec<PartitionView>,
    /// Documents over all partitions.
    pub docs: u64,
    /// The shards holding the tenant's data, with their replicas.
    #[serde(default)]
    pub shards: Vec<ShardView>,
    /// A partition-count change in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<ResizeView>,
}

/// One shard of a tenant and where its replicas are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardView {
    /// Shard (Raft group) id.
    pub id: u64,
    /// Voting replicas (node ids).
    pub voters: Vec<u64>,
    /// Non-voting replicas in the tenant's other regions.
    pub learners: Vec<u64>,
    /// Nodes catching up to take a replica's place (a drain, a repair or rebalancing).
    #[serde(default)]
    pub joining: Vec<u64>,
}

/// A resize in progress, as `tenant show` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeView {
    /// The new placement: partition index → shard.
    pub to: Vec<u64>,
    /// `copying` or `dropping`.
    pub phase: String,
    /// The map epoch that began it.
    pub fence: u64,
    /// Old shards already copied.
    pub copied: Vec<u64>,
    /// Shards that have dropped what they no longer own.
    pub dropped: Vec<u64>,
}

impl TenantView {
    /// Adds the shards (with replicas) of a `GetTenant` answer.
    pub fn with_shards(mut self, shards: Vec<pb::ShardInfo>) -> Self {
        self.shards = shards
            .into_iter()
            .map(|s| ShardView {
                id: s.id,
                voters: s.voters,
                learners: s.learners,
                joining: s.joining,
            })
            .collect();
        self
    }

    /// Builds the view from the API's tenant record and document count.
    pub fn from_info(t: pb::TenantInfo, docs: u64) -> Self {
        TenantView {
            resize: t.resize.map(|r| ResizeView {
                to: r.to,
                phase: r.phase,
                fence: r.fence,
                copied: r.copied,
                dropped: r.dropped,
            }),
            shards: Vec::new(),
            partitions: t
                .partitions
                .iter()
                .enumerate()
                .map(|(i, s)| PartitionView {
                    index: i as u32,
                    shard: *s,
                })
                .collect(),
            id: t.id,
            regions: t.regions,
            home: t.home,
            survival: t.survival,
            docs,
        }
    }
}

/// Which kind of input item a rejection is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// An upserted document.
    Doc,
    /// A delete.
    Delete,
    /// A group membership.
    Membership,
}

/// An input item that was not written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Position in the request's list of that kind.
    pub index: u32,
    /// Which list.
    pub kind: ItemKind,
    /// Why (names the rule or limit).
    pub error: String,
}

/// The answer to a write.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PutOutcome {
    /// Items durably committed.
    pub acked: u64,
    /// Items refused, with reasons.
    pub rejected: Vec<Rejection>,
    /// Session token covering this write and the session passed in; pass it
    /// to reads that must see the write.
    pub token: String,
}

impl PutOutcome {
    pub(crate) fn from_parts(acked: u32, rejected: Vec<pb::ItemRejection>, token: String) -> Self {
        PutOutcome {
            acked: u64::from(acked),
            rejected: rejected
                .into_iter()
                .map(|r| Rejection {
                    kind: match pb::ItemKind::try_from(r.kind) {
                        Ok(pb::ItemKind::Delete) => ItemKind::Delete,
                        Ok(pb::ItemKind::Membership) => ItemKind::Membership,
                        _ => ItemKind::Doc,
                    },
                    index: r.index,
                    error: r.error,
                })
                .collect(),
            token,
        }
    }
}

/// A delete of one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Document id.
    pub id: String,
    /// Version of the delete; it wins over stored versions below it.
    pub version: u64,
}

/// One `groups` line: a user and the groups they belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMembership {
    /// `u:<user>`.
    pub user: String,
    /// `g:<group>` principals.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A search request; build it with [`SearchQuery::new`] and the setters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchQuery {
    /// Tenant.
    pub tenant: String,
    /// The user the permission filter runs for (`u:alice`).
    pub user: String,
    /// Query text.
    pub query: String,
    /// Only these spaces.
    pub spaces: Vec<String>,
    /// Only documents under these pages.
    pub ancestors: Vec<String>,
    /// Only documents with these labels.
    pub labels: Vec<String>,
    /// Match titles only.
    pub title_only: bool,
    /// Page size (0 = 10).
    pub limit: u32,
    /// Cursor of the previous page.
    pub cursor: Option<String>,
    /// Session token (read-your-writes).
    pub token: Option<String>,
    /// Rank profile.
    pub profile: Option<String>,
    /// Ask for each hit's feature values and score parts (with a profile).
    pub explain: bool,
    /// An experiment of the tenant's features.toml: the user's variant picks the profile
    /// (exclusive with `profile`).
    pub experiment: Option<String>,
    /// Hits carry only id and score: for callers that fetch documents
    /// themselves and do not want to pay for titles and snippets.
    pub ids_only: bool,
}

impl SearchQuery {
    /// A first-page query.
    pub fn new(
        tenant: impl Into<String>,
        user: impl Into<String>,
        query: impl Into<String>,
    ) -> Self {
        SearchQuery {
            tenant: tenant.into(),
            user: user.into(),
            query: query.into(),
            ..Default::default()
        }
    }

    /// Adds a space filter.
    pub fn space(mut self, s: impl Into<String>) -> Self {
        self.spaces.push(s.into());
        self
    }

    /// Adds an ancestor filter (everything under that page).
    pub fn ancestor(mut self, id: impl Into<String>) -> Self {
        self.ancestors.push(id.into());
        self
    }

    /// Adds a label filter.
    pub fn label(mut self, l: impl Into<String>) -> Self {
        self.labels.push(l.into());
        self
    }

    /// Searches titles only.
    pub fn title_only(mut self, yes: bool) -> Self {
        self.title_only = yes;
        self
    }

    /// Sets the page size.
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = n;
        self
    }

    /// Continues after a previous page.
    pub fn cursor(mut self, c: impl Into<String>) -> Self {
        let c = c.into();
        self.cursor = (!c.is_empty()).then_some(c);
        self
    }

    /// Requires the effects of the writes behind this session token.
    pub fn token(mut self, t: impl Into<String>) -> Self {
        let t = t.into();
        self.token = (!t.is_empty()).then_some(t);
        self
    }

    /// Uses a named rank profile.
    pub fn profile(mut self, p: impl Into<String>) -> Self {
        let p = p.into();
        self.profile = (!p.is_empty()).then_some(p);
        self
    }

    /// Asks for each hit's feature values and score parts, to see why a rank profile ordered
    /// the hits as it did.
    pub fn explain(mut self, yes: bool) -> Self {
        self.explain = yes;
        self
    }

    /// Searches under an experiment: the user's variant ranks the results, and the page is
    /// logged as an impression (when the router keeps a log) that clicks can cite.
    pub fn experiment(mut self, e: impl Into<String>) -> Self {
        let e = e.into();
        self.experiment = (!e.is_empty()).then_some(e);
        self
    }

    /// Hits without title, space, date or snippet (see [`SearchQuery::ids_only`]).
    pub fn ids_only(mut self, yes: bool) -> Self {
        self.ids_only = yes;
        self
    }

    pub(crate) fn to_request(&self, timeout_ms: u32) -> pb::RouterSearchRequest {
        let filters = pb::SearchFilters {
            spaces: self.spaces.clone(),
            ancestors: self.ancestors.clone(),
            labels: self.labels.clone(),
            title_only: self.title_only,
        };
        pb::RouterSearchRequest {
            tenant: self.tenant.clone(),
            user: self.user.clone(),
            query: self.query.clone(),
            filters: Some(filters),
            limit: self.limit,
            cursor: self.cursor.clone().unwrap_or_default(),
            token: self.token.clone().unwrap_or_default(),
            profile: self.profile.clone().unwrap_or_default(),
            experiment: self.experiment.clone().unwrap_or_default(),
            timeout_ms,
            selection: pb::ReplicaSelection::Default as i32,
            explain: self.explain,
            ids_only: self.ids_only,
        }
    }
}

/// One search hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    /// Document id.
    pub id: String,
    /// Score (higher is better): BM25, or the rank profile's score.
    pub score: f32,
    /// Why the hit scored so, when the search asked to explain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<Explanation>,
    /// The page's title (empty with `ids_only`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    /// Its space.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub space: String,
    /// When it was last updated (RFC 3339, as written).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub updated_at: String,
    /// An excerpt of the body around the query's terms: HTML-escaped, each
    /// match in `<b></b>`; the body's opening words when no term is in it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub snippet: String,
}

/// A hit's score under a rank profile, part by part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The profile and its version.
    pub profile: String,
    /// Version of the profile.
    pub version: u64,
    /// The first-phase (BM25) score.
    pub bm25: f64,
    /// The final score.
    pub score: f64,
    /// Each feature: name, value as served (`None` = null), contribution to the score.
    pub features: Vec<(String, Option<f64>, f64)>,
}

impl From<pb::HitExplanation> for Explanation {
    fn from(e: pb::HitExplanation) -> Self {
        Explanation {
            profile: e.profile,
            version: e.version,
            bm25: e.bm25,
            score: e.score,
            features: e
                .features
                .into_iter()
                .map(|f| (f.name, f.value, f.contribution))
                .collect(),
        }
    }
}

/// Which replica served one shard of a read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedBy {
    /// Shard.
    pub shard: u64,
    /// Node.
    pub node: u64,
    /// The node's region.
    pub region: String,
    /// The replica's applied Raft index.
    pub applied: u64,
    /// How far it was behind the newest index the router knew (staleness).
    pub behind: u64,
}

impl From<pb::ServedBy> for ServedBy {
    fn from(s: pb::ServedBy) -> Self {
        ServedBy {
            shard: s.shard,
            node: s.node,
            region: s.region,
            applied: s.applied,
            behind: s.behind,
        }
    }
}

/// One page of search results, as `search --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchPage {
    /// Hits, best first.
    pub hits: Vec<SearchHit>,
    /// Cursor of the next page; `None` on the last page.
    pub cursor: Option<String>,
    /// Which replicas served it.
    pub served_by: Vec<ServedBy>,
    /// Time the router spent, in ms.
    pub took_ms: f64,
    /// Under an experiment: the user's variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Under an experiment, with the router's log on: the impression id clicks cite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impression: Option<String>,
}

impl From<pb::RouterSearchResponse> for SearchPage {
    fn from(r: pb::RouterSearchResponse) -> Self {
        SearchPage {
            hits: r
                .hits
                .into_iter()
                .map(|h| SearchHit {
                    id: h.id,
                    score: h.score,
                    explanation: h.explanation.map(Explanation::from),
                    title: h.title,
                    space: h.space,
                    updated_at: h.updated_at,
                    snippet: h.snippet,
                })
                .collect(),
            cursor: (!r.cursor.is_empty()).then_some(r.cursor),
            served_by: r.served_by.into_iter().map(ServedBy::from).collect(),
            took_ms: r.took_ms,
            variant: (!r.variant.is_empty()).then_some(r.variant),
            impression: (!r.impression.is_empty()).then_some(r.impression),
        }
    }
}

/// A point read, as `get --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetResult {
    /// False both when the document does not exist and when the user may not see it.
    pub found: bool,
    /// The document in the input schema.
    pub doc: Option<serde_json::Value>,
}

impl GetResult {
    /// The document as the typed schema, if found and well-formed.
    pub fn document(&self) -> Option<tessera_proto::Document> {
        self.doc
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

/// A node as `status --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: u64,
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// `up` or `down`.
    pub state: String,
}

/// A shard as `status --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    /// Shard id.
    pub id: u64,
    /// Current leader, if known.
    pub leader: Option<u64>,
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
}

/// The cluster as `status --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Cluster map epoch.
    pub epoch: u64,
    /// Nodes.
    pub nodes: Vec<NodeStatus>,
    /// Shards.
    pub shards: Vec<ShardStatus>,
}

impl From<pb::RouterStatusResponse> for ClusterStatus {
    fn from(r: pb::RouterStatusResponse) -> Self {
        ClusterStatus {
            epoch: r.epoch,
            nodes: r
                .nodes
                .into_iter()
                .map(|n| NodeStatus {
                    id: n.id,
                    region: n.region,
                    zone: n.zone,
                    state: n.state,
                })
                .collect(),
            shards: r
                .shards
                .into_iter()
                .map(|s| ShardStatus {
                    id: s.id,
                    leader: s.leader,
                    voters: s.voters,
                    learners: s.learners,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn search_page_json_shape() {
        let page = SearchPage::from(pb::RouterSearchResponse {
            hits: vec![pb::Hit {
                id: "p-1".into(),
                score: 1.5,
                explanation: None,
                ..Default::default()
            }],
            cursor: String::new(),
            served_by: vec![pb::ServedBy {
                shard: 3,
                node: 7,
                region: "us-east".into(),
                applied: 42,
                behind: 0,
                hedged: false,
            }],
            took_ms: 2.5,
            variant: String::new(),
            impression: String::new(),
            total_matches: 1,
        });
        let v = serde_json::to_value(&page).expect("json");
        assert_eq!(
            v,
            json!({"hits":[{"id":"p-1","score":1.5}],"cursor":null,
                   "served_by":[{"shard":3,"node":7,"region":"us-east","applied":42,"behind":0}],
                   "took_ms":2.5})
        );
    }

    #[test]
    fn tenant_and_status_json_shapes() {
        let t = TenantView::from_info(
            pb::TenantInfo {
                id: "acme".into(),
                regions: vec!["us-east".into()],
                home: "us-east".into(),
                survival: "zone".into(),
                partitions: vec![4, 9],
                resize: Some(pb::ResizeInfo {
                    to: vec![4, 9, 4, 7],
                    fence: 3,
                    phase: "copying".into(),
                    copied: vec![4],
                    dropped: vec![],
                }),
                read_floors: Vec::new(),
            },
            12,
        );
        assert_eq!(
            serde_json::to_value(&t).expect("json"),
            json!({"id":"acme","regions":["us-east"],"home":"us-east","survival":"zone",
                   "partitions":[{"index":0,"shard":4},{"index":1,"shard":9}],"docs":12,
                   "shards":[],
                   "resize":{"to":[4,9,4,7],"phase":"copying","fence":3,"copied":[4],"dropped":[]}})
        );
        let s = ClusterStatus::from(pb::RouterStatusResponse {
            epoch: 5,
            nodes: vec![pb::RouterNodeStatus {
                id: 1,
                region: "us-east".into(),
                zone: "a".into(),
                state: "up".into(),
                grpc_addr: "x".into(),
                breaker: "closed".into(),
            }],
            shards: vec![pb::RouterShardStatus {
                id: 2,
                leader: None,
                voters: vec![1],
                learners: vec![],
                regions: vec![],
            }],
            region: "us-east".into(),
        });
        assert_eq!(
            serde_json::to_value(&s).expect("json"),
            json!({"epoch":5,"nodes":[{"id":1,"region":"us-east","zone":"a","state":"up"}],
                   "shards":[{"id":2,"leader":null,"voters":[1],"learners":[]}]})
        );
    }

    #[test]
    fn get_result_json_shape() {
        let g = GetResult {
            found: false,
            doc: None,
        };
        assert_eq!(
            serde_json::to_value(&g).expect("json"),
            json!({"found":false,"doc":null})
        );
    }
}
