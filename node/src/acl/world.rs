//! A random page-tree world with a brute-force permission oracle, shared by
//! the property tests (node and end-to-end) and the `acl_filter` benchmark.
//!
//! It models what a writer such as Confluence sends: every page carries its
//! space's set, the restriction set of each ancestor as it is *now*, and
//! its own set. The oracle reads the tree, never the compiled tokens, so a
//! test comparing the filter with it checks the compiler, the indexing and
//! the query side together.

use std::collections::{BTreeMap, BTreeSet};
use tessera_proto::{Document, Permissions};

/// Deepest ancestor chain a generated page gets (DESIGN.md demo depth).
pub const MAX_DEPTH: usize = 6;
/// Users of every world.
pub const USERS: [&str; 5] = ["u:a", "u:b", "u:c", "u:d", "u:e"];
/// Groups of every world.
pub const GROUPS: [&str; 4] = ["g:1", "g:2", "g:3", "g:4"];

/// A small deterministic generator (splitmix64): worlds are reproducible
/// from a seed printed by a failing test.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// A random restriction set: empty with probability `open`, else one
    /// to three principals drawn from users and groups.
    pub fn restriction(&mut self, open: f64) -> Vec<String> {
        if self.chance(open) {
            return Vec::new();
        }
        let n = 1 + self.below(3);
        (0..n)
            .map(|_| {
                if self.chance(0.6) {
                    GROUPS[self.below(GROUPS.len())].to_string()
                } else {
                    USERS[self.below(USERS.len())].to_string()
                }
            })
            .collect()
    }
}

/// One page of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Document id.
    pub id: String,
    /// Index of the parent page, `None` for a space root.
    pub parent: Option<usize>,
    /// Index into [`World::spaces`].
    pub space: usize,
    /// The page's own restriction set (empty = open).
    pub restriction: Vec<String>,
    /// The document version last written.
    pub version: u64,
}

/// Spaces, a page forest, and group memberships of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// `(space key, space permission set)`.
    pub spaces: Vec<(String, Vec<String>)>,
    /// Parents always come before their children.
    pub pages: Vec<Page>,
    /// Every user of [`USERS`] with their groups.
    pub members: BTreeMap<String, Vec<String>>,
}

impl World {
    /// A random world of 1 to `max_pages` pages, depth at most [`MAX_DEPTH`].
    pub fn random(rng: &mut Rng, max_pages: usize) -> Self {
        let spaces = (0..1 + rng.below(2))
            .map(|s| (format!("S{s}"), rng.restriction(0.5)))
            .collect::<Vec<_>>();
        let n = 1 + rng.below(max_pages.max(1));
        let mut pages: Vec<Page> = Vec::with_capacity(n);
        for i in 0..n {
            let parent = if i == 0 || rng.chance(0.2) {
                None
            } else {
                Some(rng.below(i))
            };
            let world = World {
                spaces: spaces.clone(),
                pages: pages.clone(),
                members: BTreeMap::new(),
            };
            // Keep the chain within MAX_DEPTH ancestors: fall back to a root.
            let parent = parent.filter(|p| world.ancestors(*p).len() < MAX_DEPTH);
            let space = match parent {
                Some(p) => pages[p].space,
                None => rng.below(spaces.len()),
            };
            pages.push(Page {
                id: format!("p{i}"),
                parent,
                space,
                restriction: rng.restriction(0.6),
                version: 1,
            });
        }
        let members = USERS
            .iter()
            .map(|u| {
                let groups = GROUPS
                    .iter()
                    .filter(|_| rng.chance(0.4))
                    .map(|g| g.to_string())
                    .collect();
                (u.to_string(), groups)
            })
            .collect();
        World {
            spaces,
            pages,
            members,
        }
    }

    /// Indexes of the ancestors of page `i`, root first.
    pub fn ancestors(&self, i: usize) -> Vec<usize> {
        let mut chain = Vec::new();
        let mut at = self.pages.get(i).and_then(|p| p.parent);
        while let Some(p) = at {
            chain.push(p);
            at = self.pages.get(p).and_then(|page| page.parent);
        }
        chain.reverse();
        chain
    }

    /// Page `i` as a writer sends it now: the current sets of its space and
    /// every ancestor, and its own.
    pub fn document(&self, i: usize) -> Document {
        let page = &self.pages[i];
        let chain = self.ancestors(i);
        Document {
            id: page.id.clone(),
            space: self.spaces[page.space].0.clone(),
            title: format!("page {i} runbook"),
            body: format!("depth {} of space {}", chain.len(), page.space),
            ancestors: chain.iter().map(|a| self.pages[*a].id.clone()).collect(),
            labels: Vec::new(),
            contributors: Vec::new(),
            created_at: None,
            updated_at: None,
            version: page.version,
            permissions: Permissions {
                space: self.spaces[page.space].1.clone(),
                ancestors: chain
                    .iter()
                    .map(|a| self.pages[*a].restriction.clone())
                    .collect(),
                page: page.restriction.clone(),
            },
        }
    }

    /// The principals of `user`: the user and their groups.
    pub fn principals(&self, user: &str) -> BTreeSet<String> {
        super::principals(user, self.members.get(user).map_or(&[][..], |g| &g[..]))
    }

    /// The truth: the space set, every ancestor's current set and the
    /// page's own set each admit one of `principals` (or are empty).
    pub fn visible(&self, i: usize, principals: &BTreeSet<String>) -> bool {
        let admits = |set: &[String]| set.is_empty() || set.iter().any(|p| principals.contains(p));
        let page = &self.pages[i];
        admits(&self.spaces[page.space].1)
            && admits(&page.restriction)
            && self
                .ancestors(i)
                .iter()
                .all(|a| admits(&self.pages[*a].restriction))
    }

    /// The documented rule for a document written earlier (`written`, with
    /// possibly stale ancestor levels) after its ancestors changed: its
    /// stored levels AND every ancestor's current set must admit
    /// (see [`super::effective`]).
    pub fn visible_stale(&self, written: &Document, principals: &BTreeSet<String>) -> bool {
        let admits = |set: &[String]| set.is_empty() || set.iter().any(|p| principals.contains(p));
        let current = |id: &str| {
            self.pages
                .iter()
                .find(|p| p.id == id)
                .map(|p| p.restriction.clone())
                .unwrap_or_default()
        };
        super::oracle_allows(&written.permissions, principals)
            && written.ancestors.iter().all(|a| admits(&current(a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worlds_respect_depth_and_order() {
        for seed in 0..500 {
            let w = World::random(&mut Rng::new(seed), 40);
            for (i, p) in w.pages.iter().enumerate() {
                assert!(p.parent.is_none_or(|parent| parent < i));
                assert!(w.ancestors(i).len() <= MAX_DEPTH);
                let doc = w.document(i);
                assert_eq!(doc.ancestors.len(), doc.permissions.ancestors.len());
                doc.validate().expect("generated documents are valid");
            }
        }
    }

    #[test]
    fn truth_and_stale_rule_agree_on_fresh_documents() {
        for seed in 0..200 {
            let w = World::random(&mut Rng::new(seed), 20);
            for i in 0..w.pages.len() {
                let doc = w.document(i);
                for u in USERS {
                    let p = w.principals(u);
                    assert_eq!(w.visible(i, &p), w.visible_stale(&doc, &p));
                    assert_eq!(
                        w.visible(i, &p),
                        super::super::oracle_allows(&doc.permissions, &p)
                    );
                }
            }
        }
    }
}
