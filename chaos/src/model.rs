//! The workload's data model: which users and groups exist, what every
//! version of every document looks like, and the brute-force permission
//! rule the checkers hold the cluster to.
//!
//! Every document version is a pure function of `(tenant, doc, version)`,
//! so a checker can regenerate exactly what was written instead of keeping
//! a copy, and can tell a genuine version from a corrupted one.

use std::collections::{BTreeMap, BTreeSet};

use tessera_proto::{Document, Permissions};

use crate::rng::SeededRng;

/// The user every non-empty permission level admits (through `g:staff`):
/// checkers read as this user to see every document.
pub const ROOT_USER: &str = "u:root";
/// The group only [`ROOT_USER`] belongs to.
pub const STAFF_GROUP: &str = "g:staff";

/// Users the readers act as, and their groups. Fixed for the whole run
/// (written once before the workload starts), so the permission oracle
/// never has to guess which membership a replica had applied.
pub const USERS: &[(&str, &[&str])] = &[
    ("u:alice", &["g:eng"]),
    ("u:bob", &["g:ops"]),
    ("u:carol", &["g:eng", "g:ops"]),
    ("u:dave", &[]),
    ("u:erin", &["g:sales"]),
    ("u:frank", &["g:eng", "g:sales"]),
    (ROOT_USER, &[STAFF_GROUP]),
];

/// Principals documents grant access to (besides `g:staff`).
const GRANTABLE: &[&str] = &[
    "u:alice", "u:bob", "u:carol", "u:dave", "u:erin", "g:eng", "g:ops", "g:sales",
];

/// Words titles and bodies are made of; readers query them, so most
/// queries match many documents and the permission filter has real work.
pub const VOCABULARY: &[&str] = &[
    "deploy",
    "runbook",
    "incident",
    "rollback",
    "database",
    "migration",
    "quorum",
    "leader",
    "capacity",
    "latency",
    "search",
    "index",
    "replica",
    "region",
    "failover",
    "budget",
    "roadmap",
    "hiring",
    "security",
    "review",
];

const SPACES: &[&str] = &["ENG", "OPS", "SALES"];

/// A user's principals: the user plus their groups.
pub fn principals_of(user: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    out.insert(user.to_string());
    if let Some((_, groups)) = USERS.iter().find(|(u, _)| *u == user) {
        out.extend(groups.iter().map(|g| g.to_string()));
    }
    out
}

/// The brute-force rule of DESIGN.md "Permissions": a user sees a document
/// only if every non-empty level (space, each ancestor, page) contains one
/// of the user's principals. Deliberately naive: it is the oracle the
/// node's compiled DNF filter is checked against.
pub fn admits(perms: &Permissions, principals: &BTreeSet<String>) -> bool {
    let level_ok = |set: &[String]| set.is_empty() || set.iter().any(|p| principals.contains(p));
    level_ok(&perms.space) && perms.ancestors.iter().all(|a| level_ok(a)) && level_ok(&perms.page)
}

/// The id of document number `k` of `tenant`. Ids carry the tenant, so a
/// hit from another tenant can never be mistaken for one of ours.
pub fn doc_id(tenant: &str, k: u32) -> String {
    format!("{tenant}-d{k}")
}

/// A word unique to one version of one document, so a session-token search
/// can ask for exactly the version it wrote.
pub fn version_term(tenant: &str, k: u32, version: u64) -> String {
    format!("{tenant}x{k}x{version}").to_lowercase()
}

/// Document `k` of `tenant` at `version`: content and permissions are drawn
/// from a stream seeded by all three, so permissions change between
/// versions (exercising recompilation) yet stay reproducible.
pub fn document(tenant: &str, k: u32, version: u64) -> Document {
    let mut rng = SeededRng::derive(version, &format!("{tenant}/{k}"));
    let id = doc_id(tenant, k);
    let space = SPACES[k as usize % SPACES.len()].to_string();
    let ancestors: Vec<String> = (0..rng.below(3))
        .map(|i| format!("{tenant}-p{}", (k as usize + i) % 7))
        .collect();
    let level = |rng: &mut SeededRng, p_empty: f64| -> Vec<String> {
        if rng.chance(p_empty) {
            return Vec::new();
        }
        let mut set: BTreeSet<String> = BTreeSet::new();
        for _ in 0..rng.range(1, 3) {
            if let Some(p) = rng.pick(GRANTABLE) {
                set.insert(p.to_string());
            }
        }
        set.insert(STAFF_GROUP.to_string());
        set.into_iter().collect()
    };
    let space_perm = level(&mut rng, 0.4);
    let ancestor_perms: Vec<Vec<String>> = if rng.chance(0.5) {
        Vec::new()
    } else {
        ancestors.iter().map(|_| level(&mut rng, 0.5)).collect()
    };
    let page_perm = level(&mut rng, 0.5);
    let words = |rng: &mut SeededRng, n: u64| -> Vec<&'static str> {
        (0..n)
            .filter_map(|_| rng.pick(VOCABULARY).copied())
            .collect()
    };
    let title = format!("{} {} {id}", words(&mut rng, 2).join(" "), tenant);
    let body = format!(
        "{} {}",
        words(&mut rng, 12).join(" "),
        version_term(tenant, k, version)
    );
    Document {
        id,
        space,
        title,
        body,
        ancestors,
        labels: vec![format!("l{}", k % 4)],
        contributors: Vec::new(),
        created_at: None,
        updated_at: None,
        version,
        permissions: Permissions {
            space: space_perm,
            ancestors: ancestor_perms,
            page: page_perm,
        },
    }
}

/// The memberships the setup writes: `(user, groups)` for every user.
pub fn memberships() -> BTreeMap<String, Vec<String>> {
    USERS
        .iter()
        .map(|(u, g)| (u.to_string(), g.iter().map(|s| s.to_string()).collect()))
        .collect()
}

/// Users readers pick from (everyone, root included).
pub fn reader_users() -> Vec<&'static str> {
    USERS.iter().map(|(u, _)| *u).collect()
}

/// Parses `{tenant}-d{k}` back into `k`, for hits and probes.
pub fn parse_doc_id(tenant: &str, id: &str) -> Option<u32> {
    id.strip_prefix(tenant)?.strip_prefix("-d")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn brute_force_rule_is_and_of_ors() {
        let alice = principals_of("u:alice");
        let bob = principals_of("u:bob");
        let open = Permissions::default();
        assert!(admits(&open, &alice));
        let p = Permissions {
            space: set(&["g:eng", "u:bob"]),
            ancestors: vec![set(&["g:eng"]), Vec::new()],
            page: Vec::new(),
        };
        assert!(admits(&p, &alice));
        assert!(!admits(&p, &bob), "bob passes space but not the ancestor");
        let page_only = Permissions {
            page: set(&["u:dave"]),
            ..Permissions::default()
        };
        assert!(!admits(&page_only, &alice));
        assert!(admits(&page_only, &principals_of("u:dave")));
    }

    #[test]
    fn documents_are_reproducible_valid_and_visible_to_root() {
        let root = principals_of(ROOT_USER);
        for k in 0..50 {
            for v in 1..6 {
                let d = document("zt", k, v);
                assert_eq!(d, document("zt", k, v));
                d.validate().expect("generated documents are valid");
                assert!(admits(&d.permissions, &root), "{d:?}");
                assert!(d.body.contains(&version_term("zt", k, v)));
                assert_eq!(parse_doc_id("zt", &d.id), Some(k));
            }
        }
        assert_eq!(parse_doc_id("zt", "rt-d3"), None);
    }

    #[test]
    fn permissions_vary_so_the_oracle_has_work() {
        let alice = principals_of("u:alice");
        let visible = (0..200)
            .filter(|k| admits(&document("zt", *k, 1).permissions, &alice))
            .count();
        assert!(visible > 10 && visible < 190, "alice sees {visible} of 200");
    }
}
