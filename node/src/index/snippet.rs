//! Highlighted excerpts of a hit's body, so a result list can show why a
//! page matched without a second call per hit.
//!
//! A snippet is cut from the hit's own stored body (the row the permission
//! re-check just read), so it can only ever show text of a document the
//! user may see. Every query term weighs the same: tantivy's default
//! weights come from the shard's document frequencies, which would let
//! other tenants' documents decide which excerpt this tenant sees.

use std::collections::BTreeMap;

use tantivy::query::Query;
use tantivy::snippet::SnippetGenerator;
use tantivy::Searcher;

use super::schema::Fields;
use super::IndexError;

/// Longest excerpt, in characters (tantivy's default, about two lines).
pub const SNIPPET_CHARS: usize = 150;

/// Makes the snippets of one search's hits.
pub struct Snippets {
    generator: SnippetGenerator,
}

impl std::fmt::Debug for Snippets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snippets").finish_non_exhaustive()
    }
}

impl Snippets {
    /// A generator for the body terms of `text_query` (the scored part of
    /// the search, not its filters).
    pub(crate) fn new(
        searcher: &Searcher,
        text_query: &dyn Query,
        fields: Fields,
    ) -> Result<Self, IndexError> {
        let mut terms: BTreeMap<String, f32> = BTreeMap::new();
        text_query.query_terms(&mut |term, _| {
            if term.field() == fields.body {
                if let Some(text) = term.value().as_str() {
                    terms.insert(text.to_string(), 1.0);
                }
            }
        });
        let tokenizer = searcher.index().tokenizer_for_field(fields.body)?;
        Ok(Snippets {
            generator: SnippetGenerator::new(terms, tokenizer, fields.body, SNIPPET_CHARS),
        })
    }

    /// The excerpt of `body`: the best fragment around the query's terms,
    /// HTML-escaped with each match in `<b></b>`; when no term occurs in
    /// the body (a title match, a match-all search), its opening words.
    pub fn of(&self, body: &str) -> String {
        let snippet = self.generator.snippet(body);
        if !snippet.is_empty() {
            return snippet.to_html();
        }
        opening(body)
    }
}

/// The first [`SNIPPET_CHARS`] characters of `body`, cut at a word
/// boundary when there is one, HTML-escaped.
fn opening(body: &str) -> String {
    let trimmed = body.trim();
    let cut = match trimmed.char_indices().nth(SNIPPET_CHARS) {
        None => trimmed,
        Some((end, _)) => {
            let head = &trimmed[..end];
            head.rfind(char::is_whitespace)
                .map_or(head, |space| &head[..space])
        }
    };
    escape(cut)
}

/// Minimal HTML escaping, the same set tantivy's `to_html` escapes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_opening_is_cut_at_a_word_and_escaped() {
        assert_eq!(
            opening("  short <b> & \"x\"  "),
            "short &lt;b&gt; &amp; &quot;x&quot;"
        );
        let long = "word ".repeat(100);
        let o = opening(&long);
        assert!(o.chars().count() <= SNIPPET_CHARS, "{}", o.len());
        assert!(o.ends_with("word"), "{o:?}");
        let unbroken = "x".repeat(400);
        assert_eq!(opening(&unbroken).chars().count(), SNIPPET_CHARS);
    }
}
