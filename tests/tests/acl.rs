//! Issue 5 acceptance, end to end: permission-aware search and get through
//! the nodes' gRPC API on a real in-process 3-node cluster (Raft over QUIC,
//! RocksDB, tantivy), on a tenant with 1 partition and one with 3.
//!
//! The writes play the router: each document goes to its partition's
//! leader, memberships go to every partition, and each document's own
//! restriction set is fanned out to the tenant's other partitions.
//! Reads carry the write's session token and go to every replica in turn.

use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::{BTreeMap, BTreeSet};
use tessera_node::acl::world::{Rng, World, USERS};
use tessera_proto::{partition_of, pb, Document};
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::{Layout, TestCluster};

/// Shard of each partition, and the highest applied index written to each.
struct Tenant {
    id: String,
    shards: Vec<u64>,
    tokens: BTreeMap<u64, u64>,
}

/// A world's names made unique per case, so many cases share one tenant:
/// ids `c<case>-p<i>`, principals `u:c<case>-a`, `g:c<case>-1`.
struct Names(u64);

impl Names {
    fn page(&self, id: &str) -> String {
        format!("c{}-{id}", self.0)
    }
    fn principal(&self, p: &str) -> String {
        match p.split_once(':') {
            Some((kind, name)) => format!("{kind}:c{}-{name}", self.0),
            None => p.to_string(),
        }
    }
    fn set(&self, v: &[String]) -> Vec<String> {
        v.iter().map(|p| self.principal(p)).collect()
    }
    fn doc(&self, d: &Document) -> Document {
        let mut out = d.clone();
        out.id = self.page(&d.id);
        out.ancestors = d.ancestors.iter().map(|a| self.page(a)).collect();
        out.permissions.space = self.set(&d.permissions.space);
        out.permissions.page = self.set(&d.permissions.page);
        out.permissions.ancestors = d
            .permissions
            .ancestors
            .iter()
            .map(|l| self.set(l))
            .collect();
        out
    }
}

async fn write(
    cluster: &TestCluster,
    tenant: &mut Tenant,
    docs: &[Document],
    members: &[(String, Vec<String>)],
) {
    let p = tenant.shards.len() as u32;
    let mut reqs: Vec<pb::WriteRequest> = tenant
        .shards
        .iter()
        .map(|shard| pb::WriteRequest {
            tenant: tenant.id.clone(),
            shard: *shard,
            memberships: members
                .iter()
                .map(|(user, groups)| pb::Membership {
                    user: user.clone(),
                    groups: groups.clone(),
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    for doc in docs {
        let home = partition_of(&doc.id, p) as usize;
        reqs[home]
            .docs_json
            .push(serde_json::to_vec(doc).expect("json"));
        for (i, req) in reqs.iter_mut().enumerate() {
            if i != home {
                req.restrictions.push(pb::Restriction {
                    page: doc.id.clone(),
                    version: doc.version,
                    principals: doc.permissions.page.clone(),
                });
            }
        }
    }
    for req in reqs {
        if req.docs_json.is_empty() && req.memberships.is_empty() && req.restrictions.is_empty() {
            continue;
        }
        let token = cluster
            .write(req, SETTLE)
            .await
            .expect("write acknowledged");
        let seen = tenant.tokens.entry(token.shard).or_default();
        *seen = (*seen).max(token.applied);
    }
}

/// What `user` finds by search (union over the tenant's shards, on node
/// `node`) and by get, restricted to `ids`.
async fn observe(
    cluster: &TestCluster,
    tenant: &Tenant,
    node: u64,
    user: &str,
    ids: &[String],
) -> Result<(BTreeSet<String>, BTreeSet<String>), String> {
    let mut client = cluster.client(node).await?;
    let mut searched = BTreeSet::new();
    let shards: BTreeSet<u64> = tenant.shards.iter().copied().collect();
    for shard in shards {
        let resp = client
            .search(pb::SearchRequest {
                tenant: tenant.id.clone(),
                shard,
                user: user.to_string(),
                query: String::new(),
                limit: 1000,
                min_applied: tenant.tokens.get(&shard).copied().unwrap_or(0),
                timeout_ms: 20_000,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        searched.extend(
            resp.hits
                .into_iter()
                .map(|h| h.id)
                .filter(|id| ids.contains(id)),
        );
    }
    let p = tenant.shards.len() as u32;
    let mut got = BTreeSet::new();
    for id in ids {
        let shard = tenant.shards[partition_of(id, p) as usize];
        let resp = client
            .get(pb::GetRequest {
                tenant: tenant.id.clone(),
                shard,
                id: id.clone(),
                user: user.to_string(),
                min_applied: tenant.tokens.get(&shard).copied().unwrap_or(0),
                map_epoch: 0,
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        if resp.found {
            got.insert(id.clone());
        }
    }
    Ok((searched, got))
}

async fn run_case(
    cluster: &TestCluster,
    tenant: &mut Tenant,
    case: u64,
    seed: u64,
) -> Result<(), TestCaseError> {
    let names = Names(case);
    let mut rng = Rng::new(seed);
    let mut world = World::random(&mut rng, 10);
    let ids: Vec<String> = world.pages.iter().map(|p| names.page(&p.id)).collect();
    let members = |w: &World| -> Vec<(String, Vec<String>)> {
        w.members
            .iter()
            .map(|(u, g)| (names.principal(u), names.set(g)))
            .collect()
    };
    let mut written: Vec<Document> = (0..world.pages.len()).map(|i| world.document(i)).collect();
    let docs: Vec<Document> = written.iter().map(|d| names.doc(d)).collect();
    write(cluster, tenant, &docs, &members(&world)).await;
    let node = 1 + case % 3;
    for user in USERS {
        let p = world.principals(user);
        let want: BTreeSet<String> = (0..world.pages.len())
            .filter(|i| world.visible(*i, &p))
            .map(|i| ids[i].clone())
            .collect();
        let (searched, got) = observe(cluster, tenant, node, &names.principal(user), &ids)
            .await
            .map_err(TestCaseError::fail)?;
        if searched != want || got != want {
            return Err(TestCaseError::fail(format!(
                "case {case} seed {seed}: {user} expected {want:?}, search {searched:?}, get {got:?}"
            )));
        }
    }

    // One page's restriction changes (only that page is re-sent) and one
    // user's groups change; checked on another replica.
    let k = rng.below(world.pages.len());
    world.pages[k].restriction = rng.restriction(0.2);
    world.pages[k].version += 1;
    written[k] = world.document(k);
    let user = USERS[rng.below(USERS.len())].to_string();
    let groups: Vec<String> = world.members[&user]
        .iter()
        .filter(|_| rng.chance(0.5))
        .cloned()
        .collect();
    world.members.insert(user.clone(), groups.clone());
    write(
        cluster,
        tenant,
        &[names.doc(&written[k])],
        &[(names.principal(&user), names.set(&groups))],
    )
    .await;
    let node = 1 + (case + 1) % 3;
    for user in USERS {
        let p = world.principals(user);
        let want: BTreeSet<String> = written
            .iter()
            .filter(|d| world.visible_stale(d, &p))
            .map(|d| names.page(&d.id))
            .collect();
        let truth: BTreeSet<String> = (0..world.pages.len())
            .filter(|i| world.visible(*i, &p))
            .map(|i| ids[i].clone())
            .collect();
        let (searched, got) = observe(cluster, tenant, node, &names.principal(user), &ids)
            .await
            .map_err(TestCaseError::fail)?;
        if !searched.is_subset(&truth) || !got.is_subset(&truth) {
            return Err(TestCaseError::fail(format!(
                "case {case} seed {seed}: leak to {user}: truth {truth:?}, search {searched:?}, get {got:?}"
            )));
        }
        if searched != want || got != want {
            return Err(TestCaseError::fail(format!(
                "case {case} seed {seed} after change: {user} expected {want:?}, search {searched:?}, get {got:?}"
            )));
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("ACL_E2E_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

/// Random worlds through gRPC search and get on 1 and 3 partitions; each
/// case checks every (user, page) pair before and after a change.
#[test]
fn grpc_search_and_get_match_oracle_on_one_and_three_partitions() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let mut cluster = rt.block_on(TestCluster::start(
        &Layout::one_region_three_zones(),
        Mode::InProc,
    ));
    let mut total = 0u64;
    for partitions in [1u32, 3] {
        let name = format!("acl{partitions}");
        let info = rt.block_on(cluster.create_tenant(&name, &["us-east"], partitions));
        assert_eq!(info.partitions.len(), partitions as usize);
        let tenant = std::cell::RefCell::new(Tenant {
            id: name,
            shards: info.partitions.clone(),
            tokens: BTreeMap::new(),
        });
        let case = std::cell::Cell::new(0u64);
        let mut runner = TestRunner::new(Config {
            cases: cases(),
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&proptest::prelude::any::<u64>(), |seed| {
            case.set(case.get() + 1);
            let mut t = tenant.borrow_mut();
            rt.block_on(run_case(&cluster, &mut t, case.get(), seed))
        });
        if let Err(e) = result {
            panic!("{partitions} partition(s): {e}");
        }
        total += case.get();
    }
    assert!(total >= 2 * u64::from(cases()), "ran {total} cases");
    rt.block_on(cluster.stop_all());
}

fn doc(id: &str, version: u64, ancestors: &[(&str, &[&str])], page: &[&str]) -> Vec<u8> {
    let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let d = Document {
        id: id.to_string(),
        space: "ENG".into(),
        title: format!("{id} runbook"),
        body: "deploy steps".into(),
        ancestors: ancestors.iter().map(|(a, _)| a.to_string()).collect(),
        labels: vec![],
        contributors: vec![],
        created_at: None,
        updated_at: None,
        version,
        permissions: tessera_proto::Permissions {
            space: vec![],
            ancestors: ancestors.iter().map(|(_, set)| s(set)).collect(),
            page: s(page),
        },
    };
    serde_json::to_vec(&d).expect("json")
}

/// What `user` sees of `ids` on node `node` with `token`, by search (with
/// and without the session token) and by get.
async fn visible_everywhere(
    cluster: &TestCluster,
    shard: u64,
    user: &str,
    token: u64,
    ids: &[&str],
) -> Vec<(u64, BTreeSet<String>, BTreeSet<String>)> {
    let mut out = Vec::new();
    for node in [1u64, 2, 3] {
        let mut c = cluster.client(node).await.expect("client");
        let mut searched = BTreeSet::new();
        for text in ["", "runbook"] {
            let resp = c
                .search(pb::SearchRequest {
                    tenant: "tight".into(),
                    shard,
                    user: user.into(),
                    query: text.into(),
                    limit: 100,
                    min_applied: token,
                    timeout_ms: 20_000,
                    ..Default::default()
                })
                .await
                .expect("search")
                .into_inner();
            assert!(resp.applied >= token, "the replica caught up to the token");
            searched.extend(resp.hits.into_iter().map(|h| h.id));
        }
        let mut got = BTreeSet::new();
        for id in ids {
            let resp = c
                .get(pb::GetRequest {
                    tenant: "tight".into(),
                    shard,
                    id: id.to_string(),
                    user: user.into(),
                    min_applied: token,
                    map_epoch: 0,
                })
                .await
                .expect("get")
                .into_inner();
            if resp.found {
                got.insert(id.to_string());
            }
        }
        out.push((node, searched, got));
    }
    out
}

/// After a tightening on an ancestor is acknowledged, descendants vanish
/// from search and get on every replica (with the session token, and on
/// the leader even without it); after a group removal is acknowledged, the
/// pages that group granted vanish too, without rewriting any page.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tightening_and_group_removal_take_effect_once_acknowledged() {
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::InProc).await;
    let shard = cluster
        .create_tenant("tight", &["us-east"], 1)
        .await
        .partitions[0];
    let ids = ["root", "child", "grandchild", "eng-only"];
    let w = |docs: Vec<Vec<u8>>, members: Vec<pb::Membership>| pb::WriteRequest {
        tenant: "tight".into(),
        shard,
        docs_json: docs,
        memberships: members,
        ..Default::default()
    };
    let ann = |groups: &[&str]| pb::Membership {
        user: "u:ann".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    };
    let first = cluster
        .write(
            w(
                vec![
                    doc("root", 1, &[], &[]),
                    doc("child", 1, &[("root", &[])], &[]),
                    doc("grandchild", 1, &[("root", &[]), ("child", &[])], &[]),
                    doc("eng-only", 1, &[], &["g:eng"]),
                ],
                vec![ann(&["g:eng"])],
            ),
            SETTLE,
        )
        .await
        .expect("written");
    let all: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
    for (node, searched, got) in
        visible_everywhere(&cluster, shard, "u:ann", first.applied, &ids).await
    {
        assert_eq!(searched, all, "node {node}: ann sees everything by search");
        assert_eq!(got, all, "node {node}: ann sees everything by get");
    }

    // Tighten the root to g:ops; only the root is re-sent.
    let tightened = cluster
        .write(w(vec![doc("root", 2, &[], &["g:ops"])], vec![]), SETTLE)
        .await
        .expect("tightening acknowledged");
    // The leader answers without a session token, right after the ack.
    let leader = cluster.leader_of(shard).await;
    let mut c = cluster.client(leader).await.expect("client");
    let resp = c
        .search(pb::SearchRequest {
            tenant: "tight".into(),
            shard,
            user: "u:ann".into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner();
    let on_leader: BTreeSet<String> = resp.hits.into_iter().map(|h| h.id).collect();
    assert!(
        !on_leader.contains("root")
            && !on_leader.contains("child")
            && !on_leader.contains("grandchild"),
        "leader search right after the ack leaks {on_leader:?}"
    );
    let only_eng: BTreeSet<String> = ["eng-only".to_string()].into_iter().collect();
    for (node, searched, got) in
        visible_everywhere(&cluster, shard, "u:ann", tightened.applied, &ids).await
    {
        assert_eq!(
            searched, only_eng,
            "node {node}: the subtree is hidden from search"
        );
        assert_eq!(got, only_eng, "node {node}: the subtree is hidden from get");
    }
    // A member of g:ops still sees the whole subtree.
    let ops = cluster
        .write(
            w(
                vec![],
                vec![pb::Membership {
                    user: "u:olga".into(),
                    groups: vec!["g:ops".into()],
                }],
            ),
            SETTLE,
        )
        .await
        .expect("membership");
    let subtree: BTreeSet<String> = ["root", "child", "grandchild"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (node, searched, got) in
        visible_everywhere(&cluster, shard, "u:olga", ops.applied, &ids).await
    {
        assert_eq!(searched, subtree, "node {node}: olga sees the subtree");
        assert_eq!(got, subtree, "node {node}: olga sees the subtree by get");
    }

    // Group removal: ann leaves g:eng; no page is rewritten.
    let removed = cluster
        .write(w(vec![], vec![ann(&[])]), SETTLE)
        .await
        .expect("removal acknowledged");
    for (node, searched, got) in
        visible_everywhere(&cluster, shard, "u:ann", removed.applied, &ids).await
    {
        assert!(
            searched.is_empty(),
            "node {node}: ann still finds {searched:?}"
        );
        assert!(got.is_empty(), "node {node}: ann still gets {got:?}");
    }
}
