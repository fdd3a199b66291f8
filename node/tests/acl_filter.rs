//! Issue 5 acceptance at the state-machine level: real RocksDB, real
//! tantivy, the real Raft apply path (`StateMachine::apply`) and the real
//! read path (`ShardData::allowed_tokens` + `ShardIndex::search`, and
//! `ShardData::visible_doc` for `get`), without the network.
//!
//! One property-test case is one random world (a page forest of depth up
//! to 6, random space, page and ancestor restrictions, random group
//! memberships) written as a tenant with 1 partition AND as a tenant with
//! 3 partitions, then checked for every (user, page) pair by search and by
//! get against the brute-force oracle in three phases:
//! 1. as written: results equal the truth (0 leaks, 0 misses);
//! 2. after a restriction change on one page (only that page re-sent, its
//!    descendants keep stale ancestor levels) and a membership change:
//!    results equal the documented stricter-wins rule, and never show a
//!    page the truth hides (0 leaks);
//! 3. after the writer re-sends the descendants: results equal the truth.
//!
//! The number of cases comes from `ACL_PROPTEST_CASES` (default 10,000).

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tessera_node::acl::cache::AllowedCache;
use tessera_node::acl::world::{Rng, World, USERS};
use tessera_node::index::{IndexConfig, IndexQuery, ShardIndex};
use tessera_node::raft::state_machine::{GroupData, ShardData, StateMachine};
use tessera_node::raft::{Request, ShardCommand, TypeConfig};
use tessera_node::storage::Storage;
use tessera_proto::{partition_of, Document};

/// One shard group: its data, its state machine and its next log index.
struct Shard {
    data: Arc<ShardData>,
    sm: StateMachine,
    next: u64,
}

struct Harness {
    rt: tokio::runtime::Runtime,
    single: Vec<Shard>,
    multi: Vec<Shard>,
    cache: AllowedCache,
    tenants: u64,
    _dir: tempfile::TempDir,
}

fn scratch_dir() -> tempfile::TempDir {
    // tmpfs when there is one: the property runs thousands of index commits.
    tempfile::Builder::new()
        .prefix("tessera-acl-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("temp dir")
}

impl Harness {
    fn new() -> Self {
        let dir = scratch_dir();
        let storage = Storage::open(&dir.path().join("db")).expect("rocksdb");
        let config = IndexConfig {
            commit_interval: Duration::from_secs(3600),
            commit_ops: usize::MAX,
            ..IndexConfig::default()
        };
        let shard = |group: u64| {
            let index = ShardIndex::open(&dir.path().join(format!("ix{group}")), config.clone())
                .expect("index");
            let data = Arc::new(ShardData {
                group,
                storage: storage.clone(),
                index: Arc::new(index),
            });
            let sm = StateMachine::open(group, storage.clone(), GroupData::Shard(data.clone()))
                .expect("state machine");
            Shard { data, sm, next: 1 }
        };
        Self {
            rt: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
            single: vec![shard(1)],
            multi: vec![shard(2), shard(3), shard(4)],
            cache: AllowedCache::default(),
            tenants: 0,
            _dir: dir,
        }
    }
}

fn apply(rt: &tokio::runtime::Runtime, shard: &mut Shard, cmd: ShardCommand) {
    let entry = Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), shard.next),
        payload: EntryPayload::Normal(Request::Shard(cmd)),
    };
    shard.next += 1;
    rt.block_on(shard.sm.apply(vec![entry])).expect("apply");
}

/// Writes documents and memberships the way the router does: each document
/// to its partition, memberships to every partition, and (with several
/// partitions) each document's own restriction set to the other partitions.
fn write(
    h: &mut Harness,
    multi: bool,
    tenant: &str,
    docs: &[Document],
    members: &[(String, Vec<String>)],
) {
    let Harness {
        rt,
        single,
        multi: m,
        ..
    } = h;
    let shards = if multi { m } else { single };
    let p = shards.len() as u32;
    let mut cmds: Vec<ShardCommand> = (0..p)
        .map(|_| ShardCommand {
            tenant: tenant.to_string(),
            memberships: members.to_vec(),
            ..ShardCommand::default()
        })
        .collect();
    for doc in docs {
        let home = partition_of(&doc.id, p) as usize;
        cmds[home]
            .upserts
            .push(serde_json::to_vec(doc).expect("json"));
        for (i, cmd) in cmds.iter_mut().enumerate() {
            if i != home {
                cmd.restrictions
                    .push((doc.id.clone(), doc.version, doc.permissions.page.clone()));
            }
        }
    }
    for (shard, cmd) in shards.iter_mut().zip(cmds) {
        apply(rt, shard, cmd);
        shard.data.index.flush().expect("index commit");
    }
}

/// What each user sees through search (union over partitions) and get.
fn observe(
    h: &Harness,
    multi: bool,
    tenant: &str,
    ids: &[String],
) -> Vec<(String, BTreeSet<String>, BTreeSet<String>)> {
    let shards = if multi { &h.multi } else { &h.single };
    let p = shards.len() as u32;
    USERS
        .iter()
        .map(|user| {
            let mut searched = BTreeSet::new();
            for (i, shard) in shards.iter().enumerate() {
                let principals = shard.data.principals(tenant, user).expect("principals");
                let allowed = shard
                    .data
                    .allowed_tokens(&h.cache, tenant, &principals)
                    .expect("tokens");
                for text in ["", "runbook"] {
                    let q = IndexQuery {
                        tenant: tenant.to_string(),
                        text: text.to_string(),
                        allowed_acl_tokens: allowed.as_ref().clone(),
                        limit: 1000,
                        ..IndexQuery::default()
                    };
                    let results = shard.data.index.search(&q).expect("search");
                    let found: BTreeSet<String> =
                        results.hits.into_iter().map(|(id, _)| id).collect();
                    assert!(
                        found.iter().all(|id| partition_of(id, p) as usize == i),
                        "a partition returned another partition's page"
                    );
                    searched.extend(found);
                }
            }
            let got = ids
                .iter()
                .filter(|id| {
                    let shard = &shards[partition_of(id, p) as usize];
                    let principals = shard.data.principals(tenant, user).expect("principals");
                    shard
                        .data
                        .visible_doc(tenant, id, &principals)
                        .expect("get")
                        .is_some()
                })
                .cloned()
                .collect();
            (user.to_string(), searched, got)
        })
        .collect()
}

fn check(
    phase: &str,
    seen: &[(String, BTreeSet<String>, BTreeSet<String>)],
    expected: impl Fn(&str) -> BTreeSet<String>,
) -> Result<(), TestCaseError> {
    for (user, searched, got) in seen {
        let want = expected(user);
        if *searched != want || *got != want {
            return Err(TestCaseError::fail(format!(
                "{phase}: {user} expected {want:?}, search gave {searched:?}, get gave {got:?}"
            )));
        }
    }
    Ok(())
}

fn members(world: &World) -> Vec<(String, Vec<String>)> {
    world
        .members
        .iter()
        .map(|(u, g)| (u.clone(), g.clone()))
        .collect()
}

fn run_case(h: &mut Harness, seed: u64, multi: bool) -> Result<(), TestCaseError> {
    h.tenants += 1;
    let tenant = format!("t{}", h.tenants);
    let mut rng = Rng::new(seed);
    let mut world = World::random(&mut rng, 14);
    let ids: Vec<String> = world.pages.iter().map(|p| p.id.clone()).collect();

    // Phase 1: every page written fresh, children possibly before parents.
    let mut order: Vec<usize> = (0..world.pages.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut written: Vec<Document> = (0..world.pages.len()).map(|i| world.document(i)).collect();
    let docs: Vec<Document> = order.iter().map(|i| written[*i].clone()).collect();
    write(h, multi, &tenant, &docs, &members(&world));
    let truth = |w: &World, user: &str| -> BTreeSet<String> {
        let p = w.principals(user);
        (0..w.pages.len())
            .filter(|i| w.visible(*i, &p))
            .map(|i| w.pages[i].id.clone())
            .collect()
    };
    let seen = observe(h, multi, &tenant, &ids);
    check("as written", &seen, |u| truth(&world, u))?;

    // Phase 2: one page's restriction changes (only that page is re-sent)
    // and one user's groups change.
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
    write(h, multi, &tenant, &[written[k].clone()], &[(user, groups)]);
    let seen = observe(h, multi, &tenant, &ids);
    let rule = |u: &str| -> BTreeSet<String> {
        let p = world.principals(u);
        written
            .iter()
            .filter(|d| world.visible_stale(d, &p))
            .map(|d| d.id.clone())
            .collect()
    };
    check("after the change", &seen, rule)?;
    for (u, searched, got) in &seen {
        let allowed = truth(&world, u);
        if !searched.is_subset(&allowed) || !got.is_subset(&allowed) {
            return Err(TestCaseError::fail(format!("leak to {u}")));
        }
    }

    // Phase 3: the writer re-sends the descendants with fresh levels.
    let under: Vec<usize> = (0..world.pages.len())
        .filter(|i| world.ancestors(*i).contains(&k))
        .collect();
    let stale: Vec<Document> = under
        .into_iter()
        .map(|i| {
            world.pages[i].version += 1;
            written[i] = world.document(i);
            written[i].clone()
        })
        .collect();
    if !stale.is_empty() {
        write(h, multi, &tenant, &stale, &[]);
    }
    let seen = observe(h, multi, &tenant, &ids);
    check("after re-sending descendants", &seen, |u| truth(&world, u))
}

#[test]
fn permission_filter_matches_oracle() {
    let cases: u32 = std::env::var("ACL_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let harness = RefCell::new(Harness::new());
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let ran = std::cell::Cell::new(0u64);
    let result = runner.run(&proptest::prelude::any::<u64>(), |seed| {
        let mut h = harness.borrow_mut();
        run_case(&mut h, seed, false)?;
        run_case(&mut h, seed, true)?;
        ran.set(ran.get() + 1);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(ran.get() >= u64::from(cases), "ran {} cases", ran.get());
    let (hits, misses) = harness.borrow().cache.stats();
    assert!(hits > 0 && misses > 0, "the allowed-token cache is used");
    eprintln!(
        "permission_filter_matches_oracle: {} cases x (1 + 3 partitions) x 3 phases; cache hits {hits}, misses {misses}",
        ran.get()
    );
}
