//! Simulated search sessions with clicks: the demo set's relevance judgments for ranking
//! experiments (`<tenant>/clicks.jsonl`, `tessera eval --clicks`).
//!
//! The simulated activity already says what each user looks for: views and clicks follow the
//! behaviour model of `make_events` (mostly the user's own team space, popular pages more
//! often, only pages the user may see). The newest `HOLDOUT` of those views and clicks are
//! taken out of the history and turned into sessions: the user searched for the page with a
//! word of its title and clicked it. Features are computed from the remaining, older history
//! only, so no session's click feeds the features that rank it (point-in-time correct by
//! construction). The query is the title word that the most other pages' titles share, so
//! BM25 alone sees real competition for the click.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tessera_proto::Document;

use super::Event;

/// Share of the newest views and clicks that become sessions.
pub const HOLDOUT: f64 = 0.1;

/// One search with a click (`clicks.jsonl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Who searched (`u:<user>`).
    pub user: String,
    /// What they typed.
    pub query: String,
    /// The page they clicked.
    pub doc: String,
    /// When (RFC 3339), after every history event.
    pub ts: String,
}

/// Lowercase alphabetic title words of 4 to 12 letters.
fn title_words(title: &str) -> impl Iterator<Item = String> + '_ {
    title
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| (4..=12).contains(&w.len()) && w.chars().all(|c| c.is_ascii_alphabetic()))
        .map(str::to_lowercase)
}

/// Splits time-ordered `events` into the history (all but the newest [`HOLDOUT`] of views
/// and clicks; every edit stays) and the sessions made from the held-out views and clicks.
/// A held-out event whose page has no title word shared with another page makes no session.
pub fn split(docs: &[Document], events: Vec<Event>) -> (Vec<Event>, Vec<Session>) {
    let mut title_df: HashMap<String, usize> = HashMap::new();
    for d in docs {
        let distinct: HashSet<String> = title_words(&d.title).collect();
        for w in distinct {
            *title_df.entry(w).or_default() += 1;
        }
    }
    let titles: HashMap<&str, &str> = docs
        .iter()
        .map(|d| (d.id.as_str(), d.title.as_str()))
        .collect();
    let searchable = events.iter().filter(|e| e.kind != "edit").count();
    let held = (searchable as f64 * HOLDOUT).round() as usize;
    let mut seen = 0;
    let cut = searchable - held;
    let mut history = Vec::with_capacity(events.len());
    let mut sessions = Vec::with_capacity(held);
    for e in events {
        if e.kind == "edit" {
            history.push(e);
            continue;
        }
        seen += 1;
        if seen <= cut {
            history.push(e);
            continue;
        }
        let query = titles.get(e.doc.as_str()).and_then(|title| {
            title_words(title)
                .filter(|w| title_df.get(w).is_some_and(|n| *n >= 2))
                .max_by(|a, b| title_df[a].cmp(&title_df[b]).then_with(|| b.cmp(a)))
        });
        if let Some(query) = query {
            sessions.push(Session {
                user: e.user,
                query,
                doc: e.doc,
                ts: e.ts,
            });
        }
    }
    (history, sessions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, title: &str) -> Document {
        let json = serde_json::json!({"id": id, "title": title, "space": "ENG", "version": 1});
        Document::from_json_bytes(json.to_string().as_bytes()).expect("document")
    }

    fn ev(kind: &str, doc: &str, ts: &str) -> Event {
        Event {
            kind: kind.into(),
            user: "u:a".into(),
            doc: doc.into(),
            space: "ENG".into(),
            ts: ts.into(),
        }
    }

    #[test]
    fn the_newest_views_and_clicks_become_sessions_with_a_shared_title_word() {
        let docs = vec![
            doc("p-1", "Deploy runbook"),
            doc("p-2", "Runbook index"),
            doc("p-3", "Lonely"),
        ];
        let mut events: Vec<Event> = (0..18)
            .map(|i| ev("view", "p-2", &format!("2024-01-01T00:00:{i:02}Z")))
            .collect();
        events.push(ev("edit", "p-1", "2024-01-01T00:00:30Z"));
        events.push(ev("click", "p-1", "2024-01-01T00:00:31Z"));
        events.push(ev("view", "p-3", "2024-01-01T00:00:32Z"));
        let (history, sessions) = split(&docs, events);
        // 20 views and clicks: the newest 2 are held out; p-3's title shares no word.
        assert_eq!(history.len(), 18 + 1);
        assert!(history.iter().any(|e| e.kind == "edit"), "edits stay");
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].doc, "p-1");
        assert_eq!(sessions[0].query, "runbook");
        assert!(history.iter().all(|e| e.ts < sessions[0].ts));
    }
}
