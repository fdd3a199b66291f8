//! What a result list shows for each hit (title, space, last update and a
//! highlighted snippet), so a search box needs one call, not one per hit.
//!
//! Every field comes from the hit's own stored row, the one the permission
//! re-check has just admitted, so nothing of a document the user cannot
//! see ever reaches a hit.

use serde::Deserialize;
use tessera_proto::pb;

use crate::index::Snippets;
use crate::raft::state_machine::StoredDoc;

/// The parts of a stored document a hit shows; the rest of the JSON
/// (permissions, contributors, ...) is not decoded.
#[derive(Deserialize)]
struct Shown {
    #[serde(default)]
    title: String,
    #[serde(default)]
    space: String,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    body: String,
}

/// Fills `hit`'s title, space, update time and snippet from `stored`.
/// A row that does not decode (it was validated on write, so it should
/// not happen) leaves the hit bare rather than failing the search.
pub(super) fn describe(hit: &mut pb::Hit, stored: &StoredDoc, snippets: &Snippets) {
    let Ok(shown) = serde_json::from_slice::<Shown>(&stored.json) else {
        tracing::warn!(id = %hit.id, "stored row does not decode; hit left without fields");
        return;
    };
    hit.snippet = snippets.of(&shown.body);
    hit.title = shown.title;
    hit.space = shown.space;
    hit.updated_at = shown.updated_at.unwrap_or_default();
}
