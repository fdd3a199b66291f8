//! Simulated search sessions with clicks: the demo set's relevance judgments for ranking
//! experiments (`<tenant>/clicks.jsonl`, `tessera eval --clicks`).
//!
//! # The model
//!
//! A session is one search with one click. It is made in three steps:
//!
//! 1. **Who and what.** The searcher is drawn like the author of an event (heavy users more
//!    often) and looks for a *target* page. With probability [`OWN_PAGE_SHARE`] the target is a
//!    page of their own: one they edited in the event history (a page edited more often is
//!    likelier) or one that lists them as a contributor. Otherwise it is drawn by the same
//!    behaviour model as the events: mostly a page of their own team's space, popular pages
//!    more often. Either way it is a page the user may see.
//! 2. **The query.** One word (or, with probability [`TWO_WORD_SHARE`], two words) that the
//!    user remembers from the target's title: among the title's words that at least
//!    [`MIN_OTHER_MATCHES`] other pages of the tenant also contain (so BM25 sees competition
//!    for the click), one of the [`WORD_POOL`] rarest (so the word is distinctive, not
//!    filler). A title without such a word falls back to the body's words by the same rule;
//!    a page with neither makes no session (another target is drawn). Words are lowercase,
//!    alphabetic, 4 to 24 letters, and not on the generator's stop list.
//! 3. **The click** is on the target, at a time in the last [`SESSION_WINDOW_DAYS`] days
//!    before [`super::EPOCH_END`], a window the event history never reaches.
//!
//! The sessions are held out: they are drawn from their own random stream (so changing them
//! never shifts the events) and are never written as events, so no session's click feeds the
//! features that rank it; every feature value at search time comes from strictly older
//! activity. The same seed and text give the same sessions.
//!
//! The model is what makes personalised ranking pay off, on purpose and for the reasons it
//! does in a real wiki: people search mostly for pages of their own space and for pages they
//! worked on, with words that also occur in other spaces' pages.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tessera_proto::Document;

use super::rng::Rng;
use super::Event;

/// Share of sessions whose target is a page the user edited or contributed to.
pub const OWN_PAGE_SHARE: f64 = 0.2;
/// Share of sessions whose query has two words (the others have one).
pub const TWO_WORD_SHARE: f64 = 0.5;
/// A query word must also occur in at least this many pages other than the target.
pub const MIN_OTHER_MATCHES: usize = 3;
/// Query words are drawn among this many of the target's rarest eligible words.
pub const WORD_POOL: usize = 3;
/// Sessions happen in this many days before the demo world's end; events happen before.
pub const SESSION_WINDOW_DAYS: i64 = 14;
/// Target draws per wanted session before generation gives up on the rest (pages without a
/// usable word, users who may see nothing).
const ATTEMPTS_PER_SESSION: usize = 8;

/// One search with a click (a `clicks.jsonl` line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Who searched (`u:<user>`); the search runs with their permissions.
    pub user: String,
    /// What they typed: one or two lowercase words.
    pub query: String,
    /// The page they clicked (the one relevant result).
    pub doc: String,
    /// When (RFC 3339), after every event of the history.
    pub ts: String,
}

/// What session generation needs from the tenant: its people and the behaviour model the
/// events were drawn with.
pub(super) trait Searchers {
    /// Number of users.
    fn users(&self) -> usize;
    /// The `u:` id of user `u`.
    fn user_id(&self, u: usize) -> &str;
    /// A user, drawn as the events draw their authors.
    fn pick_user(&self, rng: &mut Rng) -> usize;
    /// A page user `u` may see and that exists before the session window, drawn as the events
    /// draw theirs (`None` when the draws found none).
    fn pick_page(&self, rng: &mut Rng, u: usize) -> Option<usize>;
    /// Whether user `u` may see page `d` and it exists before the session window.
    fn may_find(&self, u: usize, d: usize) -> bool;
}

/// Lowercase alphabetic words of 4 to 24 letters, not on the stop list: what a user might
/// type, and what a query is made of.
fn query_words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| (4..=24).contains(&w.len()) && w.chars().all(|c| c.is_ascii_alphabetic()))
        .map(str::to_lowercase)
        .filter(|w| !super::tenant::STOP.contains(&w.as_str()))
}

/// In how many pages (title or body) each word occurs.
fn document_frequencies(docs: &[Document]) -> HashMap<String, usize> {
    let mut df: HashMap<String, usize> = HashMap::new();
    for d in docs {
        let distinct: HashSet<String> = query_words(&d.title).chain(query_words(&d.body)).collect();
        for w in distinct {
            *df.entry(w).or_default() += 1;
        }
    }
    df
}

/// The query for a page with `text` (its title, or its body as the fallback): one or two of
/// the [`WORD_POOL`] rarest words that at least [`MIN_OTHER_MATCHES`] other pages share.
fn pick_query(rng: &mut Rng, text: &str, df: &HashMap<String, usize>) -> Option<String> {
    let mut candidates: Vec<(usize, String)> = Vec::new();
    for w in query_words(text) {
        let n = df.get(&w).copied().unwrap_or(0);
        if n > MIN_OTHER_MATCHES && !candidates.iter().any(|(_, c)| *c == w) {
            candidates.push((n, w));
        }
    }
    candidates.sort();
    candidates.truncate(WORD_POOL);
    if candidates.is_empty() {
        return None;
    }
    let first = candidates.remove(rng.below(candidates.len())).1;
    if candidates.is_empty() || !rng.chance(TWO_WORD_SHARE) {
        return Some(first);
    }
    let second = &candidates[rng.below(candidates.len())].1;
    Some(format!("{first} {second}"))
}

/// Pages of their own per user: every page they edited in `events` (once per edit, so a page
/// edited more often is likelier) and every page that lists them as a contributor, as long
/// as they may find it.
fn own_pages(world: &impl Searchers, docs: &[Document], events: &[Event]) -> Vec<Vec<usize>> {
    let user_index: HashMap<&str, usize> =
        (0..world.users()).map(|u| (world.user_id(u), u)).collect();
    let doc_index: HashMap<&str, usize> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i))
        .collect();
    let mut own: Vec<Vec<usize>> = vec![Vec::new(); world.users()];
    let edits = events.iter().filter(|e| e.kind == "edit").filter_map(|e| {
        Some((
            *user_index.get(e.user.as_str())?,
            *doc_index.get(e.doc.as_str())?,
        ))
    });
    let user_index = &user_index;
    let contributed = docs.iter().enumerate().flat_map(|(d, doc)| {
        doc.contributors
            .iter()
            .filter_map(move |c| Some((*user_index.get(c.as_str())?, d)))
    });
    for (u, d) in edits.chain(contributed) {
        if world.may_find(u, d) {
            own[u].push(d);
        }
    }
    own
}

/// Draws `count` sessions (fewer only when the tenant has too few usable pages) with `rng`,
/// a stream of their own, timed in `(after, until]` (Unix seconds) and returned in time
/// order. `events` is the history (its edits make pages a user's own).
pub(super) fn make_sessions(
    world: &impl Searchers,
    docs: &[Document],
    events: &[Event],
    count: usize,
    (after, until): (i64, i64),
    rng: &mut Rng,
) -> Vec<Session> {
    if world.users() == 0 || docs.is_empty() || count == 0 {
        return Vec::new();
    }
    let df = document_frequencies(docs);
    let own = own_pages(world, docs, events);
    let span = (until - after).max(1);
    let mut out: Vec<(i64, Session)> = Vec::with_capacity(count);
    for _ in 0..count * ATTEMPTS_PER_SESSION {
        if out.len() == count {
            break;
        }
        let u = world.pick_user(rng);
        let target = if rng.chance(OWN_PAGE_SHARE) && !own[u].is_empty() {
            rng.pick(&own[u]).copied()
        } else {
            world.pick_page(rng, u)
        };
        let Some(d) = target else { continue };
        let doc = &docs[d];
        let Some(query) =
            pick_query(rng, &doc.title, &df).or_else(|| pick_query(rng, &doc.body, &df))
        else {
            continue;
        };
        let ts = after + 1 + rng.below(span as usize) as i64;
        out.push((
            ts,
            Session {
                user: world.user_id(u).to_string(),
                query,
                doc: doc.id.clone(),
                ts: super::tenant::fmt_ts(ts),
            },
        ));
    }
    // Stable: equal times keep generation order.
    out.sort_by_key(|(ts, _)| *ts);
    out.into_iter().map(|(_, s)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two users; `u:a` may see p-1..p-6, `u:b` everything; the behaviour model always draws
    /// page `rng % visible`.
    struct Toy {
        ids: Vec<String>,
        visible: Vec<Vec<usize>>,
    }

    impl Searchers for Toy {
        fn users(&self) -> usize {
            self.ids.len()
        }
        fn user_id(&self, u: usize) -> &str {
            &self.ids[u]
        }
        fn pick_user(&self, rng: &mut Rng) -> usize {
            rng.below(self.ids.len())
        }
        fn pick_page(&self, rng: &mut Rng, u: usize) -> Option<usize> {
            rng.pick(&self.visible[u]).copied()
        }
        fn may_find(&self, u: usize, d: usize) -> bool {
            self.visible[u].contains(&d)
        }
    }

    fn doc(i: usize, title: &str, body: &str, contributors: &[&str]) -> Document {
        let json = serde_json::json!({
            "id": format!("p-{i}"), "title": title, "body": body, "space": "ENG", "version": 1,
            "contributors": contributors,
        });
        Document::from_json_bytes(json.to_string().as_bytes()).expect("document")
    }

    fn toy() -> (Toy, Vec<Document>, Vec<Event>) {
        let docs = vec![
            doc(1, "Deploy runbook", "steps", &["u:a"]),
            doc(2, "Runbook index", "deploy notes", &[]),
            doc(3, "Deploy pipeline", "runbook", &[]),
            doc(4, "Pipeline runbook", "deploy", &[]),
            doc(5, "Zyzzyva", "deploy runbook pipeline", &[]),
            doc(6, "Quarterly planning", "budget", &[]),
            doc(7, "Secret deploy runbook", "pipeline", &["u:a"]),
        ];
        let world = Toy {
            ids: vec!["u:a".into(), "u:b".into()],
            visible: vec![(0..6).collect(), (0..7).collect()],
        };
        let events = vec![Event {
            kind: "edit".into(),
            user: "u:b".into(),
            doc: "p-6".into(),
            space: "ENG".into(),
            ts: "2024-01-01T00:00:00Z".into(),
            id: "e0".into(),
        }];
        (world, docs, events)
    }

    #[test]
    fn sessions_are_deterministic_visible_timed_and_their_words_are_the_targets() {
        let (world, docs, events) = toy();
        let window = (1_000_000, 2_000_000);
        let a = make_sessions(&world, &docs, &events, 200, window, &mut Rng::new(1));
        let b = make_sessions(&world, &docs, &events, 200, window, &mut Rng::new(1));
        let c = make_sessions(&world, &docs, &events, 200, window, &mut Rng::new(2));
        assert_eq!(a, b, "same stream, same sessions");
        assert_ne!(a, c);
        let df = document_frequencies(&docs);
        let (mut two, mut body) = (0, 0);
        for s in &a {
            let i: usize = s.doc[2..].parse().expect("id");
            let d = &docs[i - 1];
            let u = world.ids.iter().position(|x| *x == s.user).expect("user");
            assert!(world.may_find(u, i - 1), "{s:?} is not visible to its user");
            let title: Vec<String> = query_words(&d.title).collect();
            let all: Vec<String> = title.iter().cloned().chain(query_words(&d.body)).collect();
            let words: Vec<&str> = s.query.split(' ').collect();
            assert!((1..=2).contains(&words.len()), "{s:?}");
            two += usize::from(words.len() == 2);
            for w in &words {
                assert!(all.iter().any(|x| x == w), "{w} is not in {d:?}");
                assert!(df[*w] > MIN_OTHER_MATCHES, "{w} has competition");
                if !title.iter().any(|x| x == w) {
                    body += 1;
                }
            }
            assert!(
                s.ts.as_str() > "1970-01-12T13:46:40Z" && s.ts.as_str() <= "1970-01-24T03:33:20Z"
            );
        }
        assert!(
            a.len() > 150,
            "p-6 has no usable word; the rest do: {}",
            a.len()
        );
        assert!(a.iter().all(|s| s.doc != "p-6"));
        assert!(two > 20 && two < a.len() - 20, "{two} of {}", a.len());
        assert!(body > 0, "Zyzzyva falls back to its body");
        assert!(a.windows(2).all(|w| w[0].ts <= w[1].ts));
        assert!(
            a.iter().all(|s| !(s.user == "u:a" && s.doc == "p-7")),
            "u:a contributed to p-7 but may not see it"
        );
    }

    #[test]
    fn own_pages_are_edits_and_contributions_the_user_may_see() {
        let (world, docs, events) = toy();
        let own = own_pages(&world, &docs, &events);
        assert_eq!(own[0], vec![0], "u:a: p-1 (p-7 is hidden from them)");
        assert_eq!(own[1], vec![5], "u:b edited p-6");
    }

    #[test]
    fn queries_prefer_rare_words_with_competition() {
        let (_, docs, _) = toy();
        let df = document_frequencies(&docs);
        // "steps" occurs once, "quarterly" once: no competition.
        assert_eq!(pick_query(&mut Rng::new(1), "steps quarterly", &df), None);
        let mut rng = Rng::new(3);
        for _ in 0..20 {
            let q = pick_query(&mut rng, "Deploy runbook pipeline", &df).expect("words");
            assert!(q
                .split(' ')
                .all(|w| ["deploy", "runbook", "pipeline"].contains(&w)));
        }
    }
}
