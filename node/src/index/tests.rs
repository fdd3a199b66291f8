//! Tests of the shard index: lifecycle (watermark, crash, reset), search semantics (filters,
//! ordering, pagination) and DFS statistics. All sleep-free: they wait with `flush`/`wait_for`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use super::query::hit_order;
use super::*;

const LONG: Duration = Duration::from_secs(3600);

fn open(dir: &Path) -> ShardIndex {
    ShardIndex::open(dir, IndexConfig::default()).expect("open index")
}

/// An index that only commits on `flush` (or close), so tests control every commit.
fn open_manual(dir: &Path) -> ShardIndex {
    let config = IndexConfig {
        commit_interval: LONG,
        commit_ops: usize::MAX,
        ..IndexConfig::default()
    };
    ShardIndex::open(dir, config).expect("open index")
}

fn public(tenant: &str) -> String {
    format!("{tenant}|*")
}

fn doc(tenant: &str, id: &str, title: &str, body: &str) -> IndexedDoc {
    IndexedDoc {
        tenant: tenant.to_string(),
        id: id.to_string(),
        space: "ENG".to_string(),
        title: title.to_string(),
        body: body.to_string(),
        acl_tokens: vec![public(tenant)],
        updated_at_ms: 1_700_000_000_000,
        ..IndexedDoc::default()
    }
}

fn query(tenant: &str, text: &str) -> IndexQuery {
    IndexQuery {
        tenant: tenant.to_string(),
        text: text.to_string(),
        allowed_acl_tokens: vec![public(tenant)],
        limit: 100,
        ..IndexQuery::default()
    }
}

fn ids(results: &IndexResults) -> Vec<&str> {
    results.hits.iter().map(|(id, _)| id.as_str()).collect()
}

fn search_ids(index: &ShardIndex, q: &IndexQuery) -> Vec<String> {
    let results = index.search(q).expect("search");
    results.hits.into_iter().map(|(id, _)| id).collect()
}

fn upserts(docs: &[IndexedDoc]) -> Vec<IndexOp> {
    docs.iter().cloned().map(IndexOp::Upsert).collect()
}

#[test]
fn shard_index_is_send_sync_and_wait_for_is_send() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>(_: &T) {}
    assert_send_sync::<ShardIndex>();
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    let future = index.wait_for(0, Duration::from_secs(1));
    assert_send(&future);
}

#[test]
fn upsert_delete_and_reupsert_are_visible_after_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open_manual(dir.path());
    assert_eq!(index.watermark(), 0);

    index.submit(
        1,
        upserts(&[
            doc("acme", "p-1", "Deploy runbook", "how to deploy"),
            doc("acme", "p-2", "Incident review", "what went wrong"),
        ]),
    );
    // Not visible before a commit: the reader only moves on commit.
    assert!(search_ids(&index, &query("acme", "deploy")).is_empty());
    assert_eq!(index.flush().expect("flush"), 1);
    assert_eq!(index.watermark(), 1);
    assert_eq!(search_ids(&index, &query("acme", "deploy")), ["p-1"]);
    assert_eq!(index.num_docs(), 2);

    // Replacing a document removes its old terms and never duplicates it.
    index.submit(
        2,
        upserts(&[doc("acme", "p-1", "Onboarding guide", "welcome aboard")]),
    );
    index.flush().expect("flush");
    assert!(search_ids(&index, &query("acme", "deploy")).is_empty());
    assert_eq!(search_ids(&index, &query("acme", "onboarding")), ["p-1"]);
    assert_eq!(index.num_docs(), 2);

    index.submit(
        3,
        vec![IndexOp::Delete {
            tenant: "acme".to_string(),
            id: "p-2".to_string(),
        }],
    );
    index.flush().expect("flush");
    assert!(search_ids(&index, &query("acme", "incident")).is_empty());
    assert_eq!(search_ids(&index, &query("acme", "")), ["p-1"]);
    assert_eq!(index.num_docs(), 1);

    // Re-upsert after delete, and two versions of one document in a single batch.
    index.submit(
        4,
        upserts(&[
            doc("acme", "p-2", "Incident review v1", "first"),
            doc("acme", "p-2", "Incident review v2", "second"),
        ]),
    );
    assert_eq!(index.flush().expect("flush"), 4);
    let results = index.search(&query("acme", "incident")).expect("search");
    assert_eq!(ids(&results), ["p-2"]);
    assert_eq!(results.total_matches, 1);
    assert_eq!(search_ids(&index, &query("acme", "second")), ["p-2"]);
    assert!(search_ids(&index, &query("acme", "first")).is_empty());
    assert_eq!(index.num_docs(), 2);
}

#[test]
fn watermark_persists_across_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let index = open(dir.path());
        index.submit(7, upserts(&[doc("acme", "p-1", "Deploy runbook", "")]));
        assert_eq!(index.flush().expect("flush"), 7);
        // A lower applied index (a replay after reopen) never moves the watermark back.
        index.submit(5, vec![]);
        assert_eq!(index.flush().expect("flush"), 7);
        index.close().expect("close");
        index.close().expect("close is idempotent");
        assert!(matches!(index.flush(), Err(IndexError::Closed)));
    }
    {
        let index = open(dir.path());
        assert_eq!(index.watermark(), 7);
        assert_eq!(search_ids(&index, &query("acme", "deploy")), ["p-1"]);
        // An entry without document changes still advances the watermark; drop closes.
        index.submit(9, vec![]);
    }
    let index = open(dir.path());
    assert_eq!(index.watermark(), 9);
    assert_eq!(index.num_docs(), 1);
}

#[test]
fn crash_keeps_the_old_watermark_and_loses_uncommitted_docs() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let index = open_manual(dir.path());
        index.submit(5, upserts(&[doc("acme", "p-1", "Committed page", "")]));
        assert_eq!(index.flush().expect("flush"), 5);
        index.submit(6, upserts(&[doc("acme", "p-2", "Uncommitted page", "")]));
        index.submit(
            7,
            vec![IndexOp::Delete {
                tenant: "acme".to_string(),
                id: "p-1".to_string(),
            }],
        );
        index.abandon_uncommitted();
        assert_eq!(index.watermark(), 5);
    }
    let index = open(dir.path());
    assert_eq!(index.watermark(), 5);
    assert_eq!(search_ids(&index, &query("acme", "")), ["p-1"]);
    // The caller re-indexes the change sequence after the watermark; replay is idempotent.
    index.submit(6, upserts(&[doc("acme", "p-2", "Uncommitted page", "")]));
    index.submit(
        7,
        vec![IndexOp::Delete {
            tenant: "acme".to_string(),
            id: "p-1".to_string(),
        }],
    );
    assert_eq!(index.flush().expect("flush"), 7);
    assert_eq!(search_ids(&index, &query("acme", "")), ["p-2"]);
}

/// Chaos BUG-2: a process killed inside a tantivy commit leaves that
/// commit's files (e.g. `<segment>.<opstamp>.del`) on disk, listed in
/// `.managed.json`, while `meta.json` still names the previous commit. The
/// restart replays the same changes, reaches the same opstamp and used to
/// fail with `FileAlreadyExists`, stalling the index for good. The test
/// recreates exactly that directory state: it commits the second batch,
/// then puts the first commit's `meta.json` back.
#[test]
fn replay_after_a_crash_inside_a_commit_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first: Vec<IndexedDoc> = (0..20)
        .map(|i| doc("acme", &format!("p-{i}"), "first version", ""))
        .collect();
    let second: Vec<IndexedDoc> = (0..10)
        .map(|i| doc("acme", &format!("p-{i}"), "second version", ""))
        .collect();
    let meta = dir.path().join("meta.json");
    let committed_meta;
    {
        let index = open_manual(dir.path());
        index.submit(5, upserts(&first));
        assert_eq!(index.flush().expect("flush"), 5);
        committed_meta = std::fs::read(&meta).expect("meta.json");
        // Updates delete from the committed segment: the commit writes a .del file.
        index.submit(6, upserts(&second));
        assert_eq!(index.flush().expect("flush"), 6);
        index.close().expect("close");
    }
    let has_del = |dir: &Path| {
        std::fs::read_dir(dir)
            .expect("read dir")
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(".del"))
    };
    assert!(has_del(dir.path()), "the second commit wrote a delete file");
    // The crash: the second commit's files exist, its meta.json does not.
    std::fs::write(&meta, &committed_meta).expect("restore meta.json");

    // A live writer runs two opstamps ahead of a reopened one, so the
    // replay plus one more change (applied after the crash) lands on the
    // crashed commit's opstamp, as it did in the chaos run.
    let index = open_manual(dir.path());
    assert_eq!(index.watermark(), 5);
    index.submit(6, upserts(&second));
    index.submit(7, upserts(&[doc("acme", "p-new", "second version", "")]));
    assert_eq!(index.flush().expect("replayed commit"), 7);
    assert_eq!(search_ids(&index, &query("acme", "second")).len(), 11);
    assert_eq!(search_ids(&index, &query("acme", "first")).len(), 10);
    assert_eq!(index.num_docs(), 21);
}

#[test]
fn reset_deletes_everything_and_sets_the_watermark() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let index = open_manual(dir.path());
        index.submit(10, upserts(&[doc("acme", "p-1", "Old", "")]));
        index.flush().expect("flush");
        // Queued but uncommitted ops are superseded by the snapshot as well.
        index.submit(11, upserts(&[doc("acme", "p-2", "Queued", "")]));
        index.reset(42).expect("reset");
        assert_eq!(index.watermark(), 42);
        assert_eq!(index.num_docs(), 0);
        assert_eq!(index.flush().expect("flush"), 42);
        assert_eq!(index.num_docs(), 0);
        // Rebuild from RocksDB after the reset.
        index.submit(42, upserts(&[doc("acme", "p-3", "Rebuilt", "")]));
        index.submit(43, vec![]);
        assert_eq!(index.flush().expect("flush"), 43);
    }
    let index = open(dir.path());
    assert_eq!(index.watermark(), 43);
    assert_eq!(search_ids(&index, &query("acme", "")), ["p-3"]);
}

#[tokio::test]
async fn wait_for_sees_commits_triggered_by_op_count_and_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    // commit_ops = 2 with an endless interval: the second op must trigger the commit.
    let by_ops = ShardIndex::open(
        &dir.path().join("ops"),
        IndexConfig {
            commit_interval: LONG,
            commit_ops: 2,
            ..IndexConfig::default()
        },
    )
    .expect("open");
    by_ops.submit(1, upserts(&[doc("acme", "p-1", "one", "")]));
    by_ops.submit(2, upserts(&[doc("acme", "p-2", "two", "")]));
    by_ops.wait_for(2, LONG).await.expect("commit by op count");
    // Read-your-writes: once the watermark is visible, so are the documents.
    assert_eq!(search_ids(&by_ops, &query("acme", "")), ["p-1", "p-2"]);
    let timed_out = by_ops.wait_for(100, Duration::from_millis(1)).await;
    assert!(matches!(
        timed_out,
        Err(IndexError::Timeout {
            applied: 100,
            watermark: 2
        })
    ));

    // A short interval commits an entry with no ops by itself.
    let by_time = ShardIndex::open(
        &dir.path().join("time"),
        IndexConfig {
            commit_interval: Duration::from_millis(1),
            ..IndexConfig::default()
        },
    )
    .expect("open");
    by_time.submit(3, upserts(&[doc("acme", "p-3", "three", "")]));
    by_time.submit(4, vec![]);
    by_time.wait_for(4, LONG).await.expect("commit by interval");
    assert_eq!(search_ids(&by_time, &query("acme", "three")), ["p-3"]);

    // After close nobody will ever advance the watermark: fail fast instead of timing out.
    by_time.close().expect("close");
    assert!(by_time.wait_for(4, LONG).await.is_ok());
    assert!(matches!(
        by_time.wait_for(5, LONG).await,
        Err(IndexError::Closed)
    ));
}

#[test]
fn tenants_never_mix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    index.submit(
        1,
        upserts(&[
            doc("acme", "p-1", "Deploy runbook", "deploy deploy"),
            doc("acme", "p-2", "Holiday policy", ""),
            doc("globex", "p-1", "Deploy runbook", "deploy"),
            doc("globex", "p-3", "Deploy pipeline", ""),
        ]),
    );
    index.flush().expect("flush");
    assert_eq!(search_ids(&index, &query("acme", "deploy")), ["p-1"]);
    assert_eq!(
        search_ids(&index, &query("globex", "deploy")),
        ["p-1", "p-3"]
    );
    assert_eq!(search_ids(&index, &query("acme", "")), ["p-1", "p-2"]);
    assert!(search_ids(&index, &query("initech", "")).is_empty());

    // Another tenant's acl tokens admit nothing: the tenant term is a separate conjunct.
    let mut crossed = query("acme", "deploy");
    crossed.allowed_acl_tokens = vec![public("globex")];
    assert!(search_ids(&index, &crossed).is_empty());

    // Deleting acme/p-1 leaves globex/p-1 alone (keys are tenant-qualified).
    index.submit(
        2,
        vec![IndexOp::Delete {
            tenant: "acme".to_string(),
            id: "p-1".to_string(),
        }],
    );
    index.flush().expect("flush");
    assert!(search_ids(&index, &query("acme", "deploy")).is_empty());
    assert_eq!(
        search_ids(&index, &query("globex", "deploy")),
        ["p-1", "p-3"]
    );
}

#[test]
fn user_text_never_errors_and_never_escapes_its_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    index.submit(
        1,
        upserts(&[
            doc("acme", "p-1", "Deploy runbook", ""),
            doc("globex", "p-2", "Secret plans", ""),
        ]),
    );
    index.flush().expect("flush");
    for text in [
        "\"unclosed",
        "title:",
        "AND OR (",
        "[a TO",
        "tenant:globex",
        "acl:globex|*",
        "-",
        "((((",
        "deploy^",
        "*",
        "💥 \u{1f}",
    ] {
        let results = index
            .search(&query("acme", text))
            .unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(
            results.hits.iter().all(|(id, _)| id == "p-1"),
            "{text:?} leaked {results:?}"
        );
        index.term_stats("acme", text, false).expect("term stats");
    }
    // `OR` is the default spelled out; `AND` requires both sides.
    assert_eq!(
        search_ids(&index, &query("acme", "DEPLOY OR Nothing")),
        ["p-1"]
    );
    assert!(search_ids(&index, &query("acme", "runbook AND zzz")).is_empty());
    // Prefixes and scopes stay inside the tenant and its text fields.
    assert_eq!(
        search_ids(&index, &query("acme", "s*")),
        Vec::<String>::new()
    );
    assert_eq!(
        search_ids(&index, &query("acme", "title:secret*")),
        Vec::<String>::new()
    );
    // Stemming applies to queries as to documents.
    assert_eq!(
        search_ids(&index, &query("acme", "deploying runbooks")),
        ["p-1"]
    );
}

#[test]
fn acl_filter_admits_only_allowed_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    let mut eng = doc("acme", "p-eng", "roadmap", "");
    eng.acl_tokens = vec!["acme|g:eng".to_string()];
    let mut alice = doc("acme", "p-alice", "roadmap", "");
    alice.acl_tokens = vec!["acme|g:eng&u:alice".to_string()];
    let mut either = doc("acme", "p-either", "roadmap", "");
    either.acl_tokens = vec!["acme|g:hr".to_string(), "acme|u:bob".to_string()];
    let open_doc = doc("acme", "p-public", "roadmap", "");
    index.submit(1, upserts(&[eng, alice, either, open_doc]));
    index.flush().expect("flush");

    let with = |tokens: &[&str], text: &str| {
        let mut q = query("acme", text);
        q.allowed_acl_tokens = tokens.iter().map(|t| t.to_string()).collect();
        search_ids(&index, &q)
    };
    // Empty allowed list means "sees nothing", never "no filter".
    assert!(with(&[], "roadmap").is_empty());
    assert!(with(&[], "").is_empty());
    let mut none = query("acme", "");
    none.allowed_acl_tokens.clear();
    assert_eq!(index.search(&none).expect("search").total_matches, 0);

    assert_eq!(with(&["acme|*"], "roadmap"), ["p-public"]);
    assert_eq!(
        with(&["acme|*", "acme|g:eng"], "roadmap"),
        ["p-eng", "p-public"]
    );
    assert_eq!(
        with(&["acme|*", "acme|g:eng", "acme|g:eng&u:alice"], ""),
        ["p-alice", "p-eng", "p-public"]
    );
    // Any one of a document's conjuncts admits it.
    assert_eq!(with(&["acme|u:bob"], "roadmap"), ["p-either"]);
    assert!(with(&["acme|g:nobody"], "roadmap").is_empty());
}

/// The permission filter lists sparse matches and bitsets dense ones; both shapes, several
/// segments (one without any allowed document) and deletions must give the same answer as
/// checking every document.
#[test]
fn acl_filter_is_exact_for_sparse_dense_and_absent_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    // Per 300-document segment: 3 rare and 6 few documents (sparse, alone or together),
    // and the open ones (dense).
    let token_of = |n: usize| match n % 100 {
        0 => "acme|g:rare",
        1..=2 => "acme|g:few",
        _ => "acme|*",
    };
    let batch = |range: std::ops::Range<usize>| -> Vec<IndexOp> {
        range
            .map(|n| {
                let mut d = doc("acme", &format!("p-{n:04}"), "runbook", "");
                d.acl_tokens = vec![token_of(n).to_string()];
                IndexOp::Upsert(d)
            })
            .collect()
    };
    index.submit(1, batch(0..300));
    index.flush().expect("flush");
    // A second segment, then one holding only open documents.
    index.submit(2, batch(300..600));
    index.flush().expect("flush");
    let mut only_open: Vec<IndexOp> = Vec::new();
    for n in 600..650 {
        let mut d = doc("acme", &format!("p-{n:04}"), "runbook", "");
        d.acl_tokens = vec!["acme|*".to_string()];
        only_open.push(IndexOp::Upsert(d));
    }
    index.submit(3, only_open);
    index.flush().expect("flush");
    index.submit(
        4,
        vec![IndexOp::Delete {
            tenant: "acme".to_string(),
            id: "p-0100".to_string(),
        }],
    );
    index.flush().expect("flush");

    for allowed in [
        vec!["acme|g:rare"],
        vec!["acme|g:few"],
        vec!["acme|g:rare", "acme|g:few"],
        vec!["acme|*"],
        vec!["acme|*", "acme|g:rare", "acme|g:absent"],
        vec!["acme|g:absent"],
    ] {
        let mut q = query("acme", "runbook");
        q.limit = 1000;
        q.allowed_acl_tokens = allowed.iter().map(|t| t.to_string()).collect();
        let mut got = search_ids(&index, &q);
        got.sort();
        let expected: Vec<String> = (0..650)
            .filter(|&n| n != 100)
            .filter(|&n| {
                let token = if n >= 600 { "acme|*" } else { token_of(n) };
                allowed.contains(&token)
            })
            .map(|n| format!("p-{n:04}"))
            .collect();
        assert_eq!(got, expected, "allowed {allowed:?}");
    }
}

#[test]
fn space_ancestor_label_and_title_only_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    let mut a = doc("acme", "a", "Deploy runbook", "kubernetes");
    a.space = "ENG".to_string();
    a.ancestors = vec!["root".to_string(), "ops".to_string()];
    a.labels = vec!["ops".to_string(), "howto".to_string()];
    let mut b = doc("acme", "b", "Kubernetes notes", "deploy steps");
    b.space = "ENG".to_string();
    b.ancestors = vec!["root".to_string()];
    b.labels = vec!["notes".to_string()];
    let mut c = doc("acme", "c", "Deploy calendar", "");
    c.space = "HR".to_string();
    c.ancestors = vec!["people".to_string()];
    index.submit(1, upserts(&[a, b, c]));
    index.flush().expect("flush");

    let base = query("acme", "deploy");
    assert_eq!(sorted(search_ids(&index, &base)), ["a", "b", "c"]);

    let mut q = base.clone();
    q.spaces = vec!["ENG".to_string()];
    assert_eq!(sorted(search_ids(&index, &q)), ["a", "b"]);
    q.spaces = vec!["HR".to_string(), "ENG".to_string()];
    assert_eq!(sorted(search_ids(&index, &q)), ["a", "b", "c"]);
    q.spaces = vec!["eng".to_string()];
    assert!(search_ids(&index, &q).is_empty(), "raw fields are exact");

    let mut q = base.clone();
    q.ancestors = vec!["ops".to_string()];
    assert_eq!(search_ids(&index, &q), ["a"]);
    q.ancestors = vec!["root".to_string()];
    assert_eq!(sorted(search_ids(&index, &q)), ["a", "b"]);
    q.ancestors = vec!["people".to_string(), "ops".to_string()];
    assert_eq!(sorted(search_ids(&index, &q)), ["a", "c"]);

    let mut q = base.clone();
    q.labels = vec!["howto".to_string(), "notes".to_string()];
    assert_eq!(sorted(search_ids(&index, &q)), ["a", "b"]);
    q.spaces = vec!["ENG".to_string()];
    q.ancestors = vec!["root".to_string()];
    q.labels = vec!["notes".to_string()];
    assert_eq!(search_ids(&index, &q), ["b"]);

    let mut q = base.clone();
    q.title_only = true;
    assert_eq!(sorted(search_ids(&index, &q)), ["a", "c"]);
    let mut q = query("acme", "kubernetes");
    assert_eq!(sorted(search_ids(&index, &q)), ["a", "b"]);
    q.title_only = true;
    assert_eq!(search_ids(&index, &q), ["b"]);
    // Field syntax cannot reach the body when title_only is set.
    q.text = "body:kubernetes".to_string();
    assert!(search_ids(&index, &q).is_empty());
    q.text = "title:kubernetes".to_string();
    assert_eq!(search_ids(&index, &q), ["b"]);
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn filters_add_nothing_to_the_score() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    let mut d = doc("acme", "a", "Deploy runbook", "deploy steps");
    d.labels = vec!["ops".to_string()];
    d.ancestors = vec!["root".to_string()];
    index.submit(
        1,
        upserts(&[d, doc("acme", "b", "Other", "deploy deploy deploy")]),
    );
    index.flush().expect("flush");
    let plain = index.search(&query("acme", "deploy")).expect("search");
    let mut filtered = query("acme", "deploy");
    filtered.labels = vec!["ops".to_string()];
    filtered.ancestors = vec!["root".to_string()];
    filtered.spaces = vec!["ENG".to_string()];
    let filtered = index.search(&filtered).expect("search");
    let plain_a = plain.hits.iter().find(|(id, _)| id == "a").expect("a");
    assert_eq!(filtered.hits, vec![plain_a.clone()]);
    assert!(plain_a.1 > 0.0);

    // Empty text matches the tenant with a constant score, ordered by id.
    let all = index.search(&query("acme", "")).expect("search");
    assert_eq!(ids(&all), ["a", "b"]);
    assert_eq!(all.hits[0].1, all.hits[1].1);
}

/// Pages through `q` with cursors until a page comes back empty.
fn all_pages(index: &ShardIndex, q: &IndexQuery, page: usize) -> Vec<(String, f32)> {
    let mut q = q.clone();
    q.limit = page;
    q.after = None;
    let mut out: Vec<(String, f32)> = Vec::new();
    loop {
        let results = index.search(&q).expect("search");
        assert!(results.hits.len() <= page);
        // A cursor that does not advance would page forever: fail instead.
        assert!(
            out.len() <= results.total_matches as usize,
            "pages return more hits than match"
        );
        let Some(last) = results.hits.last().cloned() else {
            return out;
        };
        out.extend(results.hits);
        q.after = Some((last.1, last.0));
    }
}

#[test]
fn cursor_pages_concatenate_to_the_full_ordered_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open_manual(dir.path());
    const N: usize = 1500;
    // Three batches (three segments at least), ids interleaved across them so every page must
    // merge segments; three title lengths give ~500-way score ties spread over all segments.
    for batch in 0..3 {
        let docs: Vec<IndexedDoc> = (0..N)
            .filter(|i| i % 3 == batch)
            .map(|i| {
                let title = format!("common{}", " extra".repeat((i / 3) % 3));
                doc(
                    "acme",
                    &format!("doc-{:05}", (i * 7919) % N),
                    &title,
                    "filler",
                )
            })
            .collect();
        index.submit(batch as u64 + 1, upserts(&docs));
        index.flush().expect("flush");
    }
    // Another tenant with the same words must not disturb the pages.
    index.submit(
        9,
        upserts(&[doc("globex", "doc-00000", "common", "filler")]),
    );
    index.flush().expect("flush");

    for text in ["common", ""] {
        let q = query("acme", text);
        let pages = all_pages(&index, &q, 100);
        assert_eq!(pages.len(), N, "{text:?}");
        let unique: HashSet<&str> = pages.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(unique.len(), N, "{text:?}: duplicates");
        for pair in pages.windows(2) {
            assert_eq!(
                hit_order(&pair[0], &pair[1]),
                std::cmp::Ordering::Less,
                "{text:?}: out of order {pair:?}"
            );
        }
        let distinct_scores: HashSet<u32> = pages.iter().map(|(_, s)| s.to_bits()).collect();
        if text.is_empty() {
            assert_eq!(distinct_scores.len(), 1);
        } else {
            assert_eq!(distinct_scores.len(), 3);
        }

        // The same order as one big page (clamped to MAX_SEARCH_LIMIT), and as odd page sizes.
        let mut big = q.clone();
        big.limit = 5000;
        let big = index.search(&big).expect("search");
        assert_eq!(big.total_matches, N as u64);
        assert_eq!(big.hits.len(), MAX_SEARCH_LIMIT);
        assert_eq!(big.hits[..], pages[..MAX_SEARCH_LIMIT]);
        assert_eq!(all_pages(&index, &q, 37), pages);

        // A cursor on a position that is not a hit (a deleted doc) still resumes exactly.
        let (cut_id, cut_score) = pages[250].clone();
        let mut resumed = q.clone();
        resumed.after = Some((cut_score, format!("{cut_id}~")));
        resumed.limit = 10;
        let page = index.search(&resumed).expect("search");
        assert_eq!(page.hits[..], pages[251..261]);
        assert_eq!(page.total_matches, N as u64);
    }

    // limit 0 still counts.
    let mut zero = query("acme", "common");
    zero.limit = 0;
    let zero = index.search(&zero).expect("search");
    assert!(zero.hits.is_empty());
    assert_eq!(zero.total_matches, N as u64);
}

/// A deterministic corpus over a small vocabulary, so terms repeat and scores tie.
fn corpus(tenant: &str, n: usize, seed: u64, skew: usize) -> Vec<IndexedDoc> {
    const VOCAB: [&str; 16] = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
        "deploy",
        "deploying",
        "runbook",
        "incident",
    ];
    let mut state = seed;
    let mut next = move |bound: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as usize) % bound
    };
    (0..n)
        .map(|i| {
            let title_len = 1 + next(5);
            let body_len = next(30 + skew);
            let mut word = |_| VOCAB[(next(VOCAB.len()) + skew) % VOCAB.len()];
            let title: Vec<&str> = (0..title_len).map(&mut word).collect();
            let body: Vec<&str> = (0..body_len).map(&mut word).collect();
            doc(
                tenant,
                &format!("{tenant}-{i:04}"),
                &title.join(" "),
                &body.join(" "),
            )
        })
        .collect()
}

const STAT_QUERIES: [(&str, bool); 6] = [
    ("alpha", false),
    ("beta gamma", false),
    ("deploy runbook incident", false),
    ("\"alpha beta\"", false),
    ("theta kappa", true),
    ("", false),
];

fn index_with(dir: &Path, docs: &[IndexedDoc]) -> ShardIndex {
    let index = open(dir);
    index.submit(1, upserts(docs));
    index.flush().expect("flush");
    index
}

/// Tenant-wide statistics from per-shard `term_stats` and the caller's token counts.
fn collection_stats(
    shards: &[&ShardIndex],
    tenant: &str,
    docs: &[IndexedDoc],
    text: &str,
    title_only: bool,
) -> CollectionStats {
    let mut stats = CollectionStats {
        title_tokens: docs.iter().map(|d| count_tokens(&d.title)).sum(),
        body_tokens: docs.iter().map(|d| count_tokens(&d.body)).sum(),
        ..CollectionStats::default()
    };
    for shard in shards {
        let part = shard
            .term_stats(tenant, text, title_only)
            .expect("term stats");
        stats.num_docs += part.num_docs;
        for (field, term, n) in part.doc_freq {
            *stats.doc_freq.entry((field, term)).or_default() += n;
        }
    }
    stats
}

fn assert_same_ranking(expected: &[(String, f32)], actual: &[(String, f32)], what: &str) {
    assert_eq!(expected.len(), actual.len(), "{what}: hit counts differ");
    for (e, a) in expected.iter().zip(actual) {
        assert_eq!(e.0, a.0, "{what}: order differs");
        assert!((e.1 - a.1).abs() <= 1e-5, "{what}: {e:?} vs {a:?}");
    }
}

#[test]
fn dfs_stats_make_split_shards_score_like_one_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let docs = corpus("acme", 300, 7, 0);
    let (even, odd): (Vec<_>, Vec<_>) = docs
        .iter()
        .cloned()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let even: Vec<IndexedDoc> = even.into_iter().map(|(_, d)| d).collect();
    let odd: Vec<IndexedDoc> = odd.into_iter().map(|(_, d)| d).collect();
    let whole = index_with(&dir.path().join("whole"), &docs);
    let a = index_with(&dir.path().join("a"), &even);
    let b = index_with(&dir.path().join("b"), &odd);

    for (text, title_only) in STAT_QUERIES {
        let mut q = query("acme", text);
        q.title_only = title_only;
        q.limit = MAX_SEARCH_LIMIT;
        let expected = whole.search(&q).expect("search");
        assert!(
            expected.hits.len() > 1,
            "{text:?} should match several docs"
        );

        q.stats = Some(collection_stats(&[&a, &b], "acme", &docs, text, title_only));
        let mut merged = a.search(&q).expect("search a");
        let from_b = b.search(&q).expect("search b");
        merged.total_matches += from_b.total_matches;
        merged.hits.extend(from_b.hits);
        merged.hits.sort_by(hit_order);
        assert_eq!(merged.total_matches, expected.total_matches);
        assert_same_ranking(&expected.hits, &merged.hits, text);

        // Without DFS the halves disagree with the whole (so the test above means something).
        if !text.is_empty() {
            let mut local = q.clone();
            local.stats = None;
            let local_a = a.search(&local).expect("search");
            let differs = local_a.hits.iter().any(|(id, s)| {
                expected
                    .hits
                    .iter()
                    .any(|(eid, es)| eid == id && (es - s).abs() > 1e-4)
            });
            assert!(differs, "{text:?}: local statistics happen to be global");
        }
    }
}

#[test]
fn dfs_stats_make_a_shared_shard_score_like_a_private_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mine = corpus("acme", 240, 11, 0);
    // The neighbour uses the vocabulary differently and writes longer bodies.
    let theirs = corpus("globex", 200, 23, 5);
    let private = index_with(&dir.path().join("private"), &mine);
    let shared_docs: Vec<IndexedDoc> = mine.iter().chain(&theirs).cloned().collect();
    let shared = index_with(&dir.path().join("shared"), &shared_docs);

    for (text, title_only) in STAT_QUERIES {
        let mut q = query("acme", text);
        q.title_only = title_only;
        q.limit = MAX_SEARCH_LIMIT;
        let expected = private.search(&q).expect("search");
        assert!(
            expected.hits.len() > 1,
            "{text:?} should match several docs"
        );

        q.stats = Some(collection_stats(
            &[&shared],
            "acme",
            &mine,
            text,
            title_only,
        ));
        let stats = q.stats.as_ref().expect("stats");
        assert_eq!(stats.num_docs, mine.len() as u64);
        let actual = shared.search(&q).expect("search");
        assert_eq!(actual.total_matches, expected.total_matches);
        assert_same_ranking(&expected.hits, &actual.hits, text);

        // The neighbour does skew the shard's own statistics.
        if !text.is_empty() {
            let mut local = q.clone();
            local.stats = None;
            let skewed = shared.search(&local).expect("search");
            let differs = skewed
                .hits
                .iter()
                .zip(&expected.hits)
                .any(|(s, e)| (s.1 - e.1).abs() > 1e-4);
            assert!(
                differs,
                "{text:?}: the neighbour does not change the scores"
            );
        }
    }
}

#[test]
fn term_stats_count_live_docs_of_the_tenant_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path());
    index.submit(
        1,
        upserts(&[
            doc("acme", "1", "Deploy runbook", "deploy often"),
            doc("acme", "2", "Deploying", "nothing"),
            doc("acme", "3", "Other", "runbook"),
            doc("globex", "1", "Deploy", "deploy"),
        ]),
    );
    index.submit(
        2,
        vec![IndexOp::Delete {
            tenant: "acme".to_string(),
            id: "3".to_string(),
        }],
    );
    index.flush().expect("flush");
    let stats = index
        .term_stats("acme", "DEPLOYS runbook", false)
        .expect("term stats");
    assert_eq!(stats.num_docs, 2);
    let freq: HashMap<(String, String), u64> = stats
        .doc_freq
        .into_iter()
        .map(|(f, t, n)| ((f, t), n))
        .collect();
    let get = |f: &str, t: &str| freq.get(&(f.to_string(), t.to_string())).copied();
    // "deploys", "deploying" and "deploy" all stem to "deploy".
    assert_eq!(get("title", "deploy"), Some(2));
    assert_eq!(get("body", "deploy"), Some(1));
    assert_eq!(get("title", "runbook"), Some(1));
    assert_eq!(get("body", "runbook"), Some(0), "deleted docs do not count");
    assert_eq!(freq.len(), 4);

    let title_only = index
        .term_stats("acme", "deploy", true)
        .expect("term stats");
    assert_eq!(
        title_only.doc_freq,
        vec![("title".to_string(), "deploy".to_string(), 2)]
    );
    let empty = index.term_stats("initech", "deploy", false).expect("stats");
    assert_eq!(empty.num_docs, 0);
    assert!(empty.doc_freq.iter().all(|(_, _, n)| *n == 0));
    assert!(index
        .term_stats("acme", "", false)
        .expect("stats")
        .doc_freq
        .is_empty());
}

#[test]
fn acl_tokens_lists_only_the_tenants_live_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open_manual(dir.path());
    let with_tokens = |tenant: &str, id: &str, tokens: &[&str]| {
        let mut d = doc(tenant, id, "t", "");
        d.acl_tokens = tokens.iter().map(|t| t.to_string()).collect();
        d
    };
    index.submit(
        1,
        upserts(&[
            with_tokens("acme", "1", &["acme|*"]),
            with_tokens("acme", "2", &["acme|g:eng", "acme|g:eng&u:alice"]),
            with_tokens("acme", "3", &["acme|g:eng"]),
            with_tokens("acme", "4", &["acme|u:gone"]),
            with_tokens("acme2", "1", &["acme2|g:eng"]),
            with_tokens("acm", "1", &["acm|*"]),
            with_tokens("globex", "1", &["globex|*"]),
        ]),
    );
    index.flush().expect("flush");
    assert_eq!(
        *index.acl_tokens("acme").expect("tokens"),
        ["acme|*", "acme|g:eng", "acme|g:eng&u:alice", "acme|u:gone"]
    );
    // A token whose only document is deleted disappears (even before segments merge); a token
    // still held by another document stays.
    index.submit(
        2,
        vec![
            IndexOp::Delete {
                tenant: "acme".to_string(),
                id: "4".to_string(),
            },
            IndexOp::Delete {
                tenant: "acme".to_string(),
                id: "3".to_string(),
            },
        ],
    );
    index.flush().expect("flush");
    assert_eq!(
        *index.acl_tokens("acme").expect("tokens"),
        ["acme|*", "acme|g:eng", "acme|g:eng&u:alice"]
    );
    assert_eq!(*index.acl_tokens("acme2").expect("tokens"), ["acme2|g:eng"]);
    assert_eq!(*index.acl_tokens("acm").expect("tokens"), ["acm|*"]);
    assert!(index.acl_tokens("initech").expect("tokens").is_empty());
}

#[test]
fn dfs_stats_tolerate_inconsistent_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = index_with(dir.path(), &corpus("acme", 50, 3, 0));
    let mut q = query("acme", "alpha beta");
    // A doc_freq above num_docs, zero totals and missing terms must not panic or yield NaN.
    q.stats = Some(CollectionStats {
        num_docs: 0,
        title_tokens: 0,
        body_tokens: 0,
        doc_freq: HashMap::from([(("title".to_string(), "alpha".to_string()), 1_000)]),
    });
    let results = index.search(&q).expect("search");
    assert!(!results.hits.is_empty());
    assert!(results.hits.iter().all(|(_, s)| s.is_finite()));
}

#[test]
fn candidates_carry_each_hits_space_across_segments_in_hit_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open_manual(dir.path());
    let spaces = ["ENG", "OPS", "", "HR"];
    // Three commits: three segments, and one document without a space.
    for (batch, chunk) in (0..12).collect::<Vec<_>>().chunks(4).enumerate() {
        let docs: Vec<IndexedDoc> = chunk
            .iter()
            .map(|i| IndexedDoc {
                space: spaces[i % spaces.len()].to_string(),
                ..doc(
                    "t",
                    &format!("p-{i:02}"),
                    "runbook",
                    &"deploy ".repeat(i + 1),
                )
            })
            .collect();
        index.submit(batch as u64 + 1, upserts(&docs));
        index.flush().expect("flush");
    }
    let (candidates, total) = index
        .search_candidates(&query("t", "deploy"))
        .expect("search");
    assert!(candidates.spaces_known(), "spaces from the fast column");
    assert_eq!(candidates.len(), 12);
    assert_eq!(total, 12);
    for hit in candidates.iter() {
        let i: usize = hit.id.trim_start_matches("p-").parse().expect("id");
        assert_eq!(hit.space, spaces[i % spaces.len()], "space of {}", hit.id);
    }
    let plain = index.search(&query("t", "deploy")).expect("search");
    let mut best: Vec<(String, f32)> = candidates
        .iter()
        .map(|h| (h.id.to_string(), h.score))
        .collect();
    best.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    assert_eq!(best, plain.hits, "the plain search's hits and scores");
    let mut top = query("t", "deploy");
    top.limit = 5;
    let (five, _) = index.search_candidates(&top).expect("search");
    let mut five: Vec<String> = five.iter().map(|h| h.id.to_string()).collect();
    five.sort();
    let mut expected: Vec<String> = index
        .search(&top)
        .expect("search")
        .hits
        .into_iter()
        .map(|h| h.0)
        .collect();
    expected.sort();
    assert_eq!(five, expected, "a limit keeps the same best candidates");
    assert_eq!(
        plain.candidates, None,
        "plain searches do not resolve spaces"
    );
}

#[test]
fn an_index_with_the_legacy_schema_opens_and_reports_no_spaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let legacy = tantivy::Index::create_in_dir(dir.path(), schema::legacy_schema())
            .expect("legacy index");
        drop(legacy);
    }
    let index = open_manual(dir.path());
    index.submit(1, upserts(&[doc("t", "p-1", "runbook", "deploy")]));
    index.flush().expect("flush");
    let (candidates, _) = index
        .search_candidates(&query("t", "deploy"))
        .expect("search");
    assert_eq!(
        candidates.iter().map(|h| h.id).collect::<Vec<_>>(),
        vec!["p-1"]
    );
    assert!(
        !candidates.spaces_known(),
        "no space column: callers read stored rows"
    );
}

#[test]
fn an_index_with_another_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut builder = tantivy::schema::Schema::builder();
    builder.add_text_field("other", tantivy::schema::STRING);
    drop(tantivy::Index::create_in_dir(dir.path(), builder.build()).expect("index"));
    assert!(matches!(
        ShardIndex::open(dir.path(), IndexConfig::default()),
        Err(IndexError::Schema(_))
    ));
}

fn syntax_corpus(dir: &Path) -> ShardIndex {
    index_with(
        dir,
        &[
            doc(
                "acme",
                "budget",
                "Error budget policy",
                "When the error budget is spent, freeze deploys.",
            ),
            doc(
                "acme",
                "handling",
                "Budget for error handling",
                "Error handling costs budget.",
            ),
            doc(
                "acme",
                "deploy",
                "Deployment runbook",
                "How we deploy on Fridays.",
            ),
            doc(
                "acme",
                "draft",
                "Deploy draft",
                "A draft of the deploy guide.",
            ),
            doc(
                "acme",
                "redeploy",
                "Redeploying",
                "Redeploy after a failed rollout.",
            ),
            doc(
                "globex",
                "g-deploy",
                "Deployment secrets",
                "Globex deploys too.",
            ),
        ],
    )
}

#[test]
fn query_syntax_phrases_exclusions_prefixes_and_scopes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = syntax_corpus(dir.path());
    let found = |text: &str| sorted(search_ids(&index, &query("acme", text)));
    let expect = |ids: &[&str]| sorted(ids.iter().map(|s| s.to_string()).collect());
    assert_eq!(
        found("\"error budget\""),
        expect(&["budget"]),
        "a phrase keeps its order"
    );
    assert_eq!(
        found("deploy -draft"),
        expect(&["budget", "deploy"]),
        "exclusion"
    );
    assert_eq!(
        found("-draft -\"error budget\""),
        expect(&["deploy", "handling", "redeploy"])
    );
    assert_eq!(
        found("depl*"),
        expect(&["budget", "deploy", "draft"]),
        "prefix, not infix"
    );
    assert_eq!(
        found("\"error bud\"*"),
        expect(&["budget"]),
        "phrase prefix"
    );
    assert_eq!(found("title:runbook"), expect(&["deploy"]));
    assert_eq!(found("body:fridays"), expect(&["deploy"]));
    assert!(
        found("title:fridays").is_empty(),
        "a title scope skips the body"
    );
    assert_eq!(found("deploy AND guide"), expect(&["draft"]));
    assert_eq!(found("+rollout deploy"), expect(&["redeploy"]));
    let title_only = IndexQuery {
        title_only: true,
        ..query("acme", "body:fridays OR title:runbook")
    };
    assert_eq!(
        search_ids(&index, &title_only),
        ["deploy"],
        "title-only drops body clauses"
    );
}

#[test]
fn words_in_a_query_with_syntax_score_as_in_plain_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = syntax_corpus(dir.path());
    let plain = index
        .search(&query("acme", "error deploy budget"))
        .expect("plain");
    let spelled = index
        .search(&query("acme", "error OR deploy OR budget"))
        .expect("with OR");
    assert_eq!(plain.hits, spelled.hits, "OR changes no score");
    let stats = index
        .term_stats("acme", "\"error budget\" -draft", false)
        .expect("stats");
    let terms: HashSet<&str> = stats.doc_freq.iter().map(|(_, t, _)| t.as_str()).collect();
    assert!(
        terms.contains("error") && terms.contains("budget"),
        "{terms:?}"
    );
}

#[test]
fn snippets_highlight_phrase_words_and_never_excluded_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = syntax_corpus(dir.path());
    let snippets = index
        .snippets("\"error budget\" -freeze", false)
        .expect("snippets");
    let s = snippets.of("When the error budget is spent, freeze deploys.");
    assert!(s.contains("<b>error</b> <b>budget</b>"), "{s}");
    assert!(!s.contains("<b>freeze</b>"), "{s}");
}
