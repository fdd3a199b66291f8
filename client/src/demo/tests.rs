//! Tests of the demo generator: determinism, Zipf shape, and that every
//! document, membership and event is well-formed and consistent.

use super::text::{SyntheticText, WikiText};
use super::*;
use crate::types::GroupMembership;
use std::collections::{BTreeMap, BTreeSet};

fn small() -> DemoConfig {
    DemoConfig {
        tenants: 6,
        docs: 1_500,
        seed: 7,
        ..DemoConfig::default()
    }
}

fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .expect("prefix")
                    .to_string_lossy()
                    .to_string();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

fn lines<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

#[test]
fn same_seed_same_bytes_other_seed_other_set() {
    let a = tempfile::tempdir().expect("tmp");
    let b = tempfile::tempdir().expect("tmp");
    let c = tempfile::tempdir().expect("tmp");
    generate(&small(), &mut SyntheticText::new(1), a.path()).expect("a");
    generate(&small(), &mut SyntheticText::new(1), b.path()).expect("b");
    let other = DemoConfig { seed: 8, ..small() };
    generate(&other, &mut SyntheticText::new(1), c.path()).expect("c");
    let (ta, tb, tc) = (
        read_tree(a.path()),
        read_tree(b.path()),
        read_tree(c.path()),
    );
    assert_eq!(ta.len(), 1 + 4 * 6, "manifest + 4 files per tenant");
    assert_eq!(ta, tb, "same seed, same bytes");
    assert_ne!(ta, tc, "another seed changes the set");
}

#[test]
fn tenant_sizes_are_zipf_and_large_tenants_are_partitioned() {
    let cfg = DemoConfig::default();
    let sizes = tenant_sizes(&cfg);
    assert_eq!(sizes.len(), 20);
    assert_eq!(sizes.iter().sum::<usize>(), 10_000);
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
    let r = sizes[0] as f64 / sizes[1] as f64;
    assert!((1.8..2.2).contains(&r), "{sizes:?}");
    assert!(sizes[0] > 10 * sizes[19], "a long tail: {sizes:?}");

    let dir = tempfile::tempdir().expect("tmp");
    let m = generate(&small(), &mut SyntheticText::new(2), dir.path()).expect("gen");
    let parts: Vec<u32> = m.tenants.iter().map(|t| t.partitions).collect();
    assert!(parts.iter().all(|p| (1..=4).contains(p)), "{parts:?}");
    assert!(
        parts[0] >= 2,
        "the largest tenant is partitioned: {parts:?}"
    );
    assert_eq!(*parts.last().expect("some"), 1, "{parts:?}");
    let on_disk: Manifest =
        serde_json::from_slice(&std::fs::read(dir.path().join("tenants.json")).expect("read"))
            .expect("manifest");
    assert_eq!(on_disk, m);
    for t in &m.tenants {
        assert_eq!(t.home, t.regions[0]);
        assert!(t.regions.iter().all(|r| m.regions.contains(r)), "{t:?}");
        let distinct: BTreeSet<&String> = t.regions.iter().collect();
        assert_eq!(distinct.len(), t.regions.len());
        match t.survival.as_str() {
            "zone" => assert!(t.regions.len() >= 2),
            "region" => assert!(t.regions.len() >= 3),
            other => panic!("survival {other}"),
        }
    }
    assert!(m.tenants.iter().any(|t| t.survival == "region"));
}

#[test]
fn documents_groups_and_events_are_well_formed_and_consistent() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = generate(&small(), &mut SyntheticText::new(3), dir.path()).expect("gen");
    let (mut total, mut open, mut group_restricted, mut user_restricted) = (0, 0, 0, 0);
    let mut max_depth = 0;
    for t in &m.tenants {
        let tdir = dir.path().join(&t.dir);
        // Documents parse with the contract's own validator.
        let text = std::fs::read_to_string(tdir.join("docs.jsonl")).expect("docs");
        let docs: Vec<Document> = text
            .lines()
            .map(|l| Document::from_json_bytes(l.as_bytes()).expect("valid document"))
            .collect();
        assert_eq!(docs.len(), t.docs);
        total += docs.len();
        let by_id: BTreeMap<&str, (usize, &Document)> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.as_str(), (i, d)))
            .collect();
        assert_eq!(by_id.len(), docs.len(), "ids are unique");
        for (i, d) in docs.iter().enumerate() {
            assert_eq!(d.version, 1);
            assert!(t.spaces.contains(&d.space));
            assert!(d.ancestors.len() <= MAX_DEPTH);
            max_depth = max_depth.max(d.ancestors.len());
            assert_eq!(d.permissions.ancestors.len(), d.ancestors.len());
            assert!(d.created_at <= d.updated_at);
            for (k, a) in d.ancestors.iter().enumerate() {
                let (ai, ad) = by_id[a.as_str()];
                assert!(ai < i, "{a} comes before its descendant {}", d.id);
                assert_eq!(ad.space, d.space);
                assert_eq!(ad.ancestors, d.ancestors[..k], "chain of {}", d.id);
                assert_eq!(
                    d.permissions.ancestors[k], ad.permissions.page,
                    "level {k} of {} is {a}'s own restriction",
                    d.id
                );
                assert_eq!(ad.permissions.space, d.permissions.space);
                assert!(ad.created_at < d.created_at);
            }
            let levels = std::iter::once(&d.permissions.page).chain(&d.permissions.ancestors);
            let restricted: Vec<&Vec<String>> = levels.filter(|s| !s.is_empty()).collect();
            if restricted.is_empty() {
                open += 1;
            }
            if !d.permissions.page.is_empty() {
                if d.permissions.page.iter().all(|p| p.starts_with("u:")) {
                    user_restricted += 1;
                } else {
                    group_restricted += 1;
                }
            }
        }
        // Memberships parse as the CLI's `groups` lines.
        let groups: Vec<GroupMembership> = lines(&tdir.join("groups.jsonl"));
        assert_eq!(groups.len(), t.users);
        let principals: BTreeMap<String, BTreeSet<String>> = groups
            .iter()
            .map(|g| {
                tessera_proto::document::validate_principal(&g.user).expect("user");
                assert!(g.user.starts_with("u:"));
                for p in &g.groups {
                    tessera_proto::document::validate_principal(p).expect("group");
                    assert!(p.starts_with("g:"));
                }
                let mut set: BTreeSet<String> = g.groups.iter().cloned().collect();
                set.insert(g.user.clone());
                (g.user.clone(), set)
            })
            .collect();
        // Every principal a document names exists.
        let known: BTreeSet<&String> = principals.values().flatten().collect();
        for d in &docs {
            let p = &d.permissions;
            for x in p
                .space
                .iter()
                .chain(&p.page)
                .chain(p.ancestors.iter().flatten())
            {
                assert!(known.contains(x), "{x} in {} is nobody", d.id);
            }
            for c in &d.contributors {
                assert!(principals.contains_key(c));
            }
        }
        // Events: known users and visible documents, in time order.
        let events: Vec<Event> = lines(&tdir.join("events.jsonl"));
        assert_eq!(events.len(), t.events);
        assert!(events.len() > t.docs, "about two events per doc");
        assert!(events.windows(2).all(|w| w[0].ts <= w[1].ts));
        for e in &events {
            assert!(["view", "edit", "click"].contains(&e.kind.as_str()));
            let (_, d) = by_id[e.doc.as_str()];
            assert_eq!(d.space, e.space);
            assert!(visible(d, &principals[&e.user]), "{e:?}");
            assert!(chrono::DateTime::parse_from_rfc3339(&e.ts).is_ok());
            assert!(d.created_at.as_deref() <= Some(e.ts.as_str()));
        }
        // The example shows permission filtering at work.
        let ex = &t.example;
        assert!(ex.matching_docs >= 1, "{t:?}");
        assert!(ex.other_matching_docs <= ex.matching_docs + t.docs / 2);
        assert_ne!(ex.user, ex.other_user);
    }
    assert_eq!(total, 1_500);
    assert!(max_depth >= 4, "trees get deep: {max_depth}");
    assert!(
        open * 100 / total >= 75,
        "most pages open to their space: {open}/{total}"
    );
    eprintln!("open {open}, group-restricted {group_restricted}, user-restricted {user_restricted}, of {total}; depth {max_depth}");
    assert!(group_restricted > 0 && user_restricted > 0);
}

#[test]
fn the_oracle_is_an_and_of_ors() {
    let doc = Document::from_json_bytes(
        br#"{"id":"p","version":1,"ancestors":["a","b"],
            "permissions":{"space":["g:eng","u:cto"],"ancestors":[["g:eng"],[]],"page":["u:alice","u:bob"]}}"#,
    )
    .expect("doc");
    let p = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
    assert!(visible(&doc, &p(&["u:alice", "g:eng"])));
    assert!(!visible(&doc, &p(&["u:carol", "g:eng"])), "page level");
    assert!(!visible(&doc, &p(&["u:cto"])), "ancestor level");
    assert!(!visible(&doc, &p(&["u:bob"])), "space level");
}

#[test]
fn bad_configurations_are_refused() {
    let bad = [
        DemoConfig {
            tenants: 0,
            ..small()
        },
        DemoConfig { docs: 3, ..small() },
        DemoConfig {
            regions: vec![],
            ..small()
        },
        DemoConfig {
            regions: vec!["a".into(), "a".into()],
            ..small()
        },
    ];
    for cfg in bad {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(matches!(
            generate(&cfg, &mut SyntheticText::new(1), dir.path()),
            Err(DemoError::Config(_))
        ));
    }
}

#[test]
fn one_region_clusters_get_single_region_tenants() {
    let cfg = DemoConfig {
        regions: vec!["us-east".into()],
        tenants: 3,
        docs: 60,
        ..DemoConfig::default()
    };
    let dir = tempfile::tempdir().expect("tmp");
    let m = generate(&cfg, &mut SyntheticText::new(1), dir.path()).expect("gen");
    assert!(m.tenants.iter().all(|t| t.regions == ["us-east"]));
}

/// Uses the real dump when it is there (`../shared/data`, as on the
/// project's machines); only its first few hundred articles are read.
#[test]
fn real_wikipedia_text_when_available() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/enwiki2014_chunk_262k.jsonl.zst");
    if !path.exists() {
        eprintln!("skipping: {} is not here", path.display());
        return;
    }
    let cfg = DemoConfig {
        tenants: 2,
        docs: 200,
        ..DemoConfig::default()
    };
    let mut text = WikiText::open(&path, cfg.max_body_bytes).expect("open");
    let data = generate_tenant(&cfg, 0, 150, &mut text).expect("tenant");
    assert_eq!(data.docs.len(), 150);
    assert!(data
        .docs
        .iter()
        .all(|d| !d.title.is_empty() && d.body.len() >= 80));
    assert!(data.docs.iter().all(|d| d.body.len() <= cfg.max_body_bytes));
    let mut again = WikiText::open(&path, cfg.max_body_bytes).expect("open");
    assert_eq!(
        generate_tenant(&cfg, 0, 150, &mut again).expect("tenant"),
        data
    );
}

/// The held-out sessions of a generated tenant: deterministic, later than every event, never
/// among the events, only pages the user may see, query words from the target, and the
/// model's mix of one- and two-word queries, own pages and primary-space pages.
#[test]
fn sessions_are_held_out_visible_and_match_their_targets() {
    let cfg = DemoConfig {
        tenants: 1,
        docs: 600,
        ..DemoConfig::default()
    };
    let data = generate_tenant(&cfg, 0, 600, &mut SyntheticText::new(cfg.seed)).expect("tenant");
    let again = generate_tenant(&cfg, 0, 600, &mut SyntheticText::new(cfg.seed)).expect("again");
    assert_eq!(data.sessions, again.sessions, "deterministic");
    let fewer = DemoConfig {
        sessions_per_doc: 0.05,
        ..cfg.clone()
    };
    let other = generate_tenant(&fewer, 0, 600, &mut SyntheticText::new(cfg.seed)).expect("less");
    assert_eq!(other.events, data.events, "sessions never shift the events");
    assert_eq!(other.sessions.len(), 30);

    assert_eq!(data.sessions.len(), 120, "0.2 per document");
    assert_eq!(data.manifest.sessions, 120);
    let last_event = data
        .events
        .iter()
        .map(|e| e.ts.as_str())
        .max()
        .expect("events");
    let by_id: BTreeMap<&str, &Document> = data.docs.iter().map(|d| (d.id.as_str(), d)).collect();
    let principals: BTreeMap<&str, BTreeSet<String>> = data
        .groups
        .iter()
        .map(|g| {
            let mut p: BTreeSet<String> = g.groups.iter().cloned().collect();
            p.insert(g.user.clone());
            (g.user.as_str(), p)
        })
        .collect();
    let events: BTreeSet<(&str, &str, &str)> = data
        .events
        .iter()
        .map(|e| (e.user.as_str(), e.doc.as_str(), e.ts.as_str()))
        .collect();
    let edited: BTreeSet<(&str, &str)> = data
        .events
        .iter()
        .filter(|e| e.kind == "edit")
        .map(|e| (e.user.as_str(), e.doc.as_str()))
        .collect();
    let (mut two_words, mut own, mut title_only) = (0, 0, 0);
    let mut home_space = 0;
    for s in &data.sessions {
        assert!(
            s.ts.as_str() > last_event && s.ts.as_str() <= EPOCH_END,
            "{s:?}"
        );
        assert!(!events.contains(&(s.user.as_str(), s.doc.as_str(), s.ts.as_str())));
        let d = by_id[s.doc.as_str()];
        assert!(visible(d, &principals[s.user.as_str()]), "{s:?}");
        let lower = |t: &str| t.to_lowercase();
        let words: Vec<&str> = s.query.split(' ').collect();
        assert!((1..=2).contains(&words.len()), "{s:?}");
        two_words += usize::from(words.len() == 2);
        let tokens = |t: &str| -> BTreeSet<String> {
            lower(t)
                .split(|c: char| !c.is_alphanumeric())
                .map(str::to_string)
                .collect()
        };
        let (title, body) = (tokens(&d.title), tokens(&d.body));
        assert!(
            words
                .iter()
                .all(|w| title.contains(*w) || body.contains(*w)),
            "{s:?} vs {d:?}"
        );
        title_only += usize::from(words.iter().all(|w| title.contains(*w)));
        // Competition: every word is in at least 4 pages.
        for w in &words {
            let n = data
                .docs
                .iter()
                .filter(|x| tokens(&x.title).contains(*w) || tokens(&x.body).contains(*w))
                .count();
            assert!(n > sessions::MIN_OTHER_MATCHES, "{w}: {n} pages");
        }
        if d.contributors.contains(&s.user) || edited.contains(&(s.user.as_str(), s.doc.as_str())) {
            own += 1;
        }
        let team = principals[s.user.as_str()]
            .iter()
            .any(|g| *g == format!("g:{}", d.space.to_lowercase()));
        home_space += usize::from(team);
    }
    let n = data.sessions.len();
    eprintln!("{n} sessions: {two_words} two-word, {own} own pages, {title_only} title words, {home_space} in a team space");
    assert!(
        two_words > n / 4 && two_words < n * 3 / 4,
        "{two_words}/{n}"
    );
    assert!(own >= n / 10, "own pages: {own}/{n}");
    assert_eq!(title_only, n, "synthetic titles always have a usable word");
    assert!(
        home_space > n / 2,
        "mostly the user's own space: {home_space}/{n}"
    );
}
