//! Permissions: compile a document's AND-of-ORs levels into an OR of ANDs
//! (DNF) whose conjuncts are indexed as keyword tokens, and decide on the
//! query side which tokens a user's principals satisfy.
//!
//! Indexing conjuncts turns "may this user see this page?" into a term-set
//! filter whose cost depends on the number of distinct conjuncts of the
//! tenant, never on how many documents the user cannot see.

pub mod cache;
pub mod world;

use std::collections::BTreeSet;
use tessera_proto::limits::MAX_CONJUNCTS;
use tessera_proto::Permissions;

/// Separates the tenant from the conjunct in a token.
pub const TENANT_SEP: char = '|';
/// Joins the principals of one conjunct.
pub const AND_SEP: char = '&';
/// The conjunct of a document without any restriction.
pub const OPEN: &str = "*";

/// A permission compile failure: the permissions are too complex to index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permissions compile to more than {MAX_CONJUNCTS} conjuncts (MAX_CONJUNCTS); simplify the restrictions")]
pub struct TooComplex;

type Conjunct = BTreeSet<String>;

/// Compiles permissions into the DNF conjuncts, each a sorted principal set.
/// An empty result is impossible: no restriction at all yields `{*}`.
pub fn compile(perms: &Permissions) -> Result<Vec<Vec<String>>, TooComplex> {
    let levels = perms
        .ancestors
        .iter()
        .chain(std::iter::once(&perms.space))
        .chain(std::iter::once(&perms.page))
        .filter(|level| !level.is_empty());
    let mut conjuncts: Vec<Conjunct> = vec![Conjunct::new()];
    for level in levels {
        conjuncts = extend(&conjuncts, level)?;
    }
    if conjuncts.len() == 1 && conjuncts[0].is_empty() {
        return Ok(vec![vec![OPEN.to_string()]]);
    }
    Ok(conjuncts
        .into_iter()
        .map(|c| c.into_iter().collect())
        .collect())
}

/// ANDs one OR-level into the DNF, then simplifies.
fn extend(conjuncts: &[Conjunct], level: &[String]) -> Result<Vec<Conjunct>, TooComplex> {
    let alternatives: BTreeSet<&String> = level.iter().collect();
    let mut next = Vec::with_capacity(conjuncts.len() * alternatives.len());
    for c in conjuncts {
        for p in &alternatives {
            let mut n = c.clone();
            n.insert((*p).clone());
            if satisfiable(&n) {
                next.push(n);
            }
        }
        if next.len() > MAX_CONJUNCTS * 8 {
            return Err(TooComplex);
        }
    }
    let minimal = drop_subsumed(next);
    if minimal.len() > MAX_CONJUNCTS {
        return Err(TooComplex);
    }
    Ok(minimal)
}

/// A conjunct naming two different users can never hold: one request has one user.
fn satisfiable(c: &Conjunct) -> bool {
    c.iter().filter(|p| p.starts_with("u:")).count() <= 1
}

/// Keeps only the minimal conjuncts: a superset of another adds nothing to an OR.
fn drop_subsumed(mut conjuncts: Vec<Conjunct>) -> Vec<Conjunct> {
    conjuncts.sort_by_key(|c| c.len());
    conjuncts.dedup();
    let mut kept: Vec<Conjunct> = Vec::with_capacity(conjuncts.len());
    for c in conjuncts {
        if !kept.iter().any(|k| k.is_subset(&c)) {
            kept.push(c);
        }
    }
    kept
}

/// The index token of one conjunct: `tenant|p1&p2` (principals sorted).
pub fn token(tenant: &str, conjunct: &[String]) -> String {
    let mut t = String::with_capacity(
        tenant.len() + 1 + conjunct.iter().map(|p| p.len() + 1).sum::<usize>(),
    );
    t.push_str(tenant);
    t.push(TENANT_SEP);
    for (i, p) in conjunct.iter().enumerate() {
        if i > 0 {
            t.push(AND_SEP);
        }
        t.push_str(p);
    }
    t
}

/// Compiles and renders the tokens of a document.
pub fn tokens(tenant: &str, perms: &Permissions) -> Result<Vec<String>, TooComplex> {
    Ok(compile(perms)?.iter().map(|c| token(tenant, c)).collect())
}

/// The token every unrestricted document of `tenant` carries.
pub fn open_token(tenant: &str) -> String {
    token(tenant, &[OPEN.to_string()])
}

/// Whether `principals` (a user plus their groups) satisfy the conjunct a
/// token encodes. Tokens of other tenants never match.
pub fn token_allows(tenant: &str, token: &str, principals: &BTreeSet<String>) -> bool {
    let Some(rest) = token
        .strip_prefix(tenant)
        .and_then(|r| r.strip_prefix(TENANT_SEP))
    else {
        return false;
    };
    rest == OPEN || rest.split(AND_SEP).all(|p| principals.contains(p))
}

/// The subset of a tenant's distinct tokens that `principals` satisfy.
pub fn allowed_tokens<'a>(
    tenant: &str,
    tenant_tokens: impl IntoIterator<Item = &'a String>,
    principals: &BTreeSet<String>,
) -> Vec<String> {
    tenant_tokens
        .into_iter()
        .filter(|t| token_allows(tenant, t, principals))
        .cloned()
        .collect()
}

/// The permissions a document is compiled with, given the *current*
/// restriction set of each of its ancestors as this shard knows it
/// (`current[i]` for `Document::ancestors[i]`; `None` when unknown).
///
/// Both the level the document carries for an ancestor (what the writer
/// knew when it sent the document) and the ancestor's current page set
/// must admit the user: they are ANDed as two separate levels rather than
/// one replacing the other. A stored level is stale exactly when the
/// ancestor changed after the document was written, and nothing tells the
/// shard which of the two is newer in intent, so the stricter reading
/// wins: a tightening of the ancestor takes effect on the descendant at
/// once, and a loosening only once the descendant is re-sent with its
/// fresh level. This can hide a document for a while (never leak one),
/// which is the direction DESIGN.md ("Permissions") asks for.
pub fn effective(perms: &Permissions, current: &[Option<Vec<String>>]) -> Permissions {
    let mut ancestors = perms.ancestors.clone();
    ancestors.extend(
        current
            .iter()
            .flatten()
            .filter(|set| !set.is_empty())
            .cloned(),
    );
    Permissions {
        space: perms.space.clone(),
        ancestors,
        page: perms.page.clone(),
    }
}

/// The principals of a user: the user and every group they belong to.
pub fn principals(user: &str, groups: &[String]) -> BTreeSet<String> {
    std::iter::once(user.to_string())
        .chain(groups.iter().cloned())
        .collect()
}

/// The brute-force reading of the permission rules, used as the oracle in
/// tests: every non-empty level must admit one of the principals.
pub fn oracle_allows(perms: &Permissions, principals: &BTreeSet<String>) -> bool {
    perms
        .ancestors
        .iter()
        .chain([&perms.space, &perms.page])
        .all(|level| level.is_empty() || level.iter().any(|p| principals.contains(p)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn design_example() {
        let perms = Permissions {
            space: set(&["g:eng", "u:cto"]),
            ancestors: vec![set(&["g:eng"]), vec![]],
            page: vec![],
        };
        // (eng | cto) & eng  ==  eng  (eng&cto is subsumed by eng)
        assert_eq!(compile(&perms).expect("small"), vec![set(&["g:eng"])]);
        assert_eq!(tokens("acme", &perms).expect("small"), set(&["acme|g:eng"]));
    }

    #[test]
    fn unrestricted_gets_open_token() {
        assert_eq!(
            tokens("acme", &Permissions::default()).expect("small"),
            set(&["acme|*"])
        );
    }

    #[test]
    fn two_users_are_impossible() {
        let perms = Permissions {
            space: set(&["u:a"]),
            ancestors: vec![],
            page: set(&["u:b"]),
        };
        assert!(
            compile(&perms).expect("small").is_empty(),
            "nobody can see it"
        );
    }

    #[test]
    fn other_tenants_tokens_never_match() {
        let p = principals("u:a", &set(&["g:x"]));
        assert!(token_allows("acme", "acme|g:x", &p));
        assert!(!token_allows("acm", "acme|g:x", &p));
        assert!(!token_allows("acme2", "acme|g:x", &p));
        assert!(token_allows("acme", "acme|*", &p));
    }

    fn arb_level() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(
            prop::sample::select(vec!["u:a", "u:b", "u:c", "g:1", "g:2", "g:3", "g:4"]),
            0..4,
        )
        .prop_map(|v| v.into_iter().map(String::from).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// The DNF tokens admit exactly the principal sets the AND-of-ORs admits.
        #[test]
        fn dnf_matches_oracle(
            space in arb_level(),
            ancestors in prop::collection::vec(arb_level(), 0..6),
            page in arb_level(),
            user in prop::sample::select(vec!["u:a", "u:b", "u:c", "u:d"]),
            groups in prop::collection::vec(prop::sample::select(vec!["g:1", "g:2", "g:3", "g:4"]), 0..4),
        ) {
            let perms = Permissions { space, ancestors, page };
            let groups: Vec<String> = groups.into_iter().map(String::from).collect();
            let p = principals(user, &groups);
            let toks = tokens("t", &perms).expect("bounded");
            let via_tokens = toks.iter().any(|t| token_allows("t", t, &p));
            prop_assert_eq!(via_tokens, oracle_allows(&perms, &p));
        }
    }
}
