//! Issue 21, what a search box needs, through a real router process and
//! three real node processes: hits carry title, space, update time and a
//! highlighted snippet (in the Rust client and the CLI's `--json`), can be
//! asked for bare with `ids_only`, and a snippet never shows text of a
//! document the user may not see (checked against a brute-force oracle
//! over seeded random permissions on two partitions).

use std::collections::BTreeMap;

use serde_json::{json, Value};
use tessera_client::{SearchPage, SearchQuery, TenantSpec, TesseraClient};
use tessera_tests::cluster::Mode;
use tessera_tests::routers::{cli, client, create_tenant, put_all, spawn_router};
use tessera_tests::{Layout, TestCluster};

const USERS: [&str; 4] = ["u:ann", "u:ben", "u:cat", "u:dan"];
/// Documents with random page permissions, each with a word of its own.
const RANDOM_DOCS: u64 = 60;

fn search_as(tenant: &str, user: &str, text: &str, token: &str) -> SearchQuery {
    SearchQuery::new(tenant, user, text)
        .limit(1000)
        .token(token)
}

async fn run(c: &TesseraClient, q: &SearchQuery) -> SearchPage {
    c.search(q)
        .await
        .unwrap_or_else(|e| panic!("search {:?} as {}: {e}", q.query, q.user))
}

/// Who may read random document `i`: a seeded subset of [`USERS`] (empty
/// = everyone), from a SplitMix64 step so the set is reproducible.
fn readers_of(i: u64) -> Vec<&'static str> {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    USERS
        .iter()
        .enumerate()
        .filter(|(k, _)| z >> k & 1 == 1)
        .map(|(_, u)| *u)
        .collect()
}

fn own_word(i: u64) -> String {
    format!("w{i:03}zq")
}

fn random_doc(i: u64) -> Vec<u8> {
    let readers = readers_of(i);
    let mut doc = json!({
        "id": format!("r-{i:03}"),
        "title": format!("note {i}"),
        "space": "OPS",
        "body": format!("shared words about the rollout and {} only here", own_word(i)),
        "version": 1,
    });
    if !readers.is_empty() {
        doc["permissions"] = json!({ "page": readers });
    }
    serde_json::to_vec(&doc).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hits_show_title_space_date_and_snippet_and_nothing_hidden() {
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::Process).await;
    let router = spawn_router(&cluster, 1, "us-east", &[]).await;
    let c = client(&router.endpoint())
        .await
        .with_timeout(std::time::Duration::from_secs(60));
    create_tenant(&c, &TenantSpec::new("box", ["us-east"]).partitions(2)).await;
    let open = json!({
        "id": "open-1", "title": "Deploy runbook", "space": "ENG",
        "updated_at": "2026-03-01T09:00:00Z", "version": 1,
        "body": "Before you deploy the <billing> service, drain it & wait. Then deploy again.",
    });
    let secret = json!({
        "id": "secret-1", "title": "Deploy plan", "space": "ENG", "version": 1,
        "body": "deploy aardvarkcodeword tonight",
        "permissions": {"page": ["u:boss"]},
    });
    let mut docs = vec![
        serde_json::to_vec(&open).expect("json"),
        serde_json::to_vec(&secret).expect("json"),
    ];
    docs.extend((0..RANDOM_DOCS).map(random_doc));
    let token = put_all(&c, "box", docs, 100).await;

    // The fields, from the hit's own document.
    let page = run(&c, &search_as("box", "u:ann", "deploy", &token)).await;
    let ids: Vec<&str> = page.hits.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["open-1"], "only the open page matches for u:ann");
    let hit = &page.hits[0];
    assert_eq!(hit.title, "Deploy runbook");
    assert_eq!(hit.space, "ENG");
    assert_eq!(hit.updated_at, "2026-03-01T09:00:00Z");
    assert!(hit.snippet.contains("<b>deploy</b>"), "{}", hit.snippet);
    assert!(
        hit.snippet.contains("&lt;billing&gt;") && !hit.snippet.contains("<billing>"),
        "the body's markup is escaped: {}",
        hit.snippet
    );
    let boss = run(&c, &search_as("box", "u:boss", "deploy", &token)).await;
    let secret_hit = boss
        .hits
        .iter()
        .find(|h| h.id == "secret-1")
        .expect("u:boss sees the secret page");
    assert!(secret_hit.snippet.contains("aardvarkcodeword"));
    assert!(secret_hit.updated_at.is_empty(), "no date was written");

    // Bare hits on request; a match-all search shows the body's opening.
    let bare = run(
        &c,
        &search_as("box", "u:ann", "deploy", &token).ids_only(true),
    )
    .await;
    assert_eq!(bare.hits.len(), 1);
    let b = &bare.hits[0];
    assert!(b.title.is_empty() && b.space.is_empty() && b.snippet.is_empty());
    let all = run(&c, &search_as("box", "u:ann", "", &token)).await;
    let opening = all
        .hits
        .iter()
        .find(|h| h.id == "open-1")
        .expect("match-all finds the open page");
    assert!(
        opening
            .snippet
            .starts_with("Before you deploy the &lt;billing&gt;"),
        "{}",
        opening.snippet
    );

    query_syntax_through_the_router(&c, &token).await;
    snippets_match_the_oracle(&c, &token).await;
    cli_json_carries_the_fields(&router.endpoint(), &token).await;
}

/// The query syntax end to end: phrases, exclusions, prefixes and scopes
/// keep the permission filter, and a malformed query is refused with the
/// position of the problem.
async fn query_syntax_through_the_router(c: &TesseraClient, token: &str) {
    let ids = |page: SearchPage| -> Vec<String> { page.hits.into_iter().map(|h| h.id).collect() };
    for (user, text, want) in [
        ("u:ann", "\"drain it\" -aardvarkcodeword", vec!["open-1"]),
        ("u:ann", "title:runbook", vec!["open-1"]),
        ("u:ann", "depl*", vec!["open-1"]),
        ("u:ann", "aardvark*", vec![]),
        ("u:boss", "deploy -runbook", vec!["secret-1"]),
        ("u:boss", "deploy AND tonight", vec!["secret-1"]),
    ] {
        let got = ids(run(c, &search_as("box", user, text, token)).await);
        assert_eq!(got, want, "{text:?} as {user}");
    }
    let err = c
        .search(&search_as("box", "u:ann", "deploy \"unclosed", token))
        .await
        .expect_err("an unclosed quote is refused");
    assert!(
        err.to_string()
            .contains("query syntax error at character 8"),
        "{err}"
    );
}

/// Every user's hits for a word all random documents share are exactly the
/// ones the oracle admits, and each snippet holds its own document's word
/// and no other's.
async fn snippets_match_the_oracle(c: &TesseraClient, token: &str) {
    let words: BTreeMap<String, u64> = (0..RANDOM_DOCS).map(|i| (own_word(i), i)).collect();
    for user in USERS.iter().copied().chain(["u:nobody"]) {
        let page = run(c, &search_as("box", user, "rollout", token)).await;
        let mut got: Vec<u64> = Vec::new();
        for h in &page.hits {
            let i: u64 =
                h.id.strip_prefix("r-")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected hit {} for {user}", h.id));
            got.push(i);
            let shown: Vec<u64> = words
                .iter()
                .filter(|(w, _)| h.snippet.contains(w.as_str()))
                .map(|(_, i)| *i)
                .collect();
            assert_eq!(shown, [i], "{user}: snippet of {} is {:?}", h.id, h.snippet);
        }
        got.sort_unstable();
        let want: Vec<u64> = (0..RANDOM_DOCS)
            .filter(|i| {
                let r = readers_of(*i);
                r.is_empty() || r.contains(&user)
            })
            .collect();
        assert_eq!(got, want, "{user} sees exactly what the oracle admits");
    }
}

/// `tessera search --json` prints the same fields.
async fn cli_json_carries_the_fields(router: &str, token: &str) {
    let out = cli(&[
        "--router", router, "search", "box", "--user", "u:ann", "deploy", "--token", token,
        "--json",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let hit = &v["hits"][0];
    assert_eq!(hit["id"], "open-1");
    assert_eq!(hit["title"], "Deploy runbook");
    assert_eq!(hit["space"], "ENG");
    assert!(
        hit["snippet"]
            .as_str()
            .is_some_and(|s| s.contains("<b>deploy</b>")),
        "{hit}"
    );
}
