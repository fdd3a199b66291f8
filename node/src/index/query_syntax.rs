//! Turning a parsed search-box query ([`tessera_proto::query_syntax`]) into
//! a tantivy query over `title` and `body`.
//!
//! Plain text never comes here: it keeps the path it always had, so its
//! BM25 scores stay exactly what they were. A query that uses the syntax is
//! built clause by clause, and each word or phrase is handed to tantivy's
//! parser as a quoted literal, so it is analysed exactly like plain text
//! (a word that splits into two tokens, such as `e-mail`, matches as the
//! phrase it was in plain text too). Prefixes are built directly: tantivy's
//! parser would stem them (`deploym*` would lose its tail) and refuses a
//! one-word prefix.

use tantivy::query::{
    AllQuery, BooleanQuery, EmptyQuery, Occur, PhrasePrefixQuery, Query, QueryParser,
};
use tantivy::schema::Field;
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{Index, Term};
use tessera_proto::query_syntax::{self, Atom, ParsedQuery, Scope};

use super::schema::Fields;

/// Builds the tantivy query of a parsed query; holds what it needs once.
pub(crate) struct SyntaxQueries {
    fields: Fields,
    title_and_body: QueryParser,
    title: QueryParser,
    body: QueryParser,
    /// The `title`/`body` analyser, for the whole words before a prefix.
    analyzer: Option<TextAnalyzer>,
}

impl SyntaxQueries {
    pub(crate) fn new(index: &Index, fields: Fields) -> Self {
        Self {
            fields,
            title_and_body: QueryParser::for_index(index, vec![fields.title, fields.body]),
            title: QueryParser::for_index(index, vec![fields.title]),
            body: QueryParser::for_index(index, vec![fields.body]),
            analyzer: index.tokenizer_for_field(fields.body).ok(),
        }
    }

    /// The query of `parsed` (which uses the syntax). `title_only` narrows
    /// every clause to the title: a `body:` clause then matches nothing.
    pub(crate) fn build(&self, parsed: &ParsedQuery, title_only: bool) -> Box<dyn Query> {
        self.build_clauses(parsed, title_only, true)
    }

    /// The query whose terms a snippet highlights: [`Self::build`] without
    /// the excluded clauses, whose words are by definition not in the hit.
    pub(crate) fn build_for_highlight(
        &self,
        parsed: &ParsedQuery,
        title_only: bool,
    ) -> Box<dyn Query> {
        self.build_clauses(parsed, title_only, false)
    }

    fn build_clauses(
        &self,
        parsed: &ParsedQuery,
        title_only: bool,
        with_exclusions: bool,
    ) -> Box<dyn Query> {
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = parsed
            .clauses
            .iter()
            .filter(|c| with_exclusions || c.occur != query_syntax::Occur::MustNot)
            .map(|c| {
                let scope = narrow(c.scope, title_only);
                (occur(c.occur), self.atom(&c.atom, scope))
            })
            .collect();
        if clauses.iter().all(|(o, _)| *o == Occur::MustNot) {
            // Only exclusions: everything else matches, as in a search box.
            clauses.push((Occur::Must, Box::new(AllQuery)));
        }
        Box::new(BooleanQuery::new(clauses))
    }

    fn atom(&self, atom: &Atom, scope: Option<Scope>) -> Box<dyn Query> {
        let Some(scope) = scope else {
            return Box::new(EmptyQuery);
        };
        match atom {
            Atom::Word(text) | Atom::Phrase(text) => self.literal(text, scope),
            Atom::Prefix(text) | Atom::PhrasePrefix(text) => self.prefix(text, scope),
        }
    }

    /// A word or phrase, analysed by tantivy's parser as a quoted literal.
    fn literal(&self, text: &str, scope: Scope) -> Box<dyn Query> {
        let parser = match scope {
            Scope::Both => &self.title_and_body,
            Scope::Title => &self.title,
            Scope::Body => &self.body,
        };
        let (query, errors) = parser.parse_query_lenient(&format!("\"{}\"", words_only(text)));
        if !errors.is_empty() {
            tracing::debug!(
                ?errors,
                "lenient parse of a query literal dropped parts of it"
            );
        }
        query
    }

    /// Documents with the words of `text` in order, the last one as a
    /// prefix (lowercased, not stemmed). One word is a plain prefix match.
    fn prefix(&self, text: &str, scope: Scope) -> Box<dyn Query> {
        let words = words_only(text);
        let mut words: Vec<&str> = words.split_whitespace().collect();
        let Some(last) = words.pop() else {
            return Box::new(EmptyQuery);
        };
        let per_field = self
            .fields_of(scope)
            .into_iter()
            .map(|field| {
                let mut terms = self.analysed(field, &words.join(" "));
                let next = terms.last().map_or(0, |(p, _)| p + 1);
                terms.push((next, Term::from_field_text(field, last)));
                let q: Box<dyn Query> = Box::new(PhrasePrefixQuery::new_with_offset(terms));
                (Occur::Should, q)
            })
            .collect();
        Box::new(BooleanQuery::new(per_field))
    }

    /// `(position, term)` of each token of `text` in `field`.
    fn analysed(&self, field: Field, text: &str) -> Vec<(usize, Term)> {
        let mut out = Vec::new();
        let Some(mut analyzer) = self.analyzer.clone() else {
            return out;
        };
        let mut stream = analyzer.token_stream(text);
        stream.process(&mut |token| {
            out.push((token.position, Term::from_field_text(field, &token.text)))
        });
        out
    }

    fn fields_of(&self, scope: Scope) -> Vec<Field> {
        match scope {
            Scope::Both => vec![self.fields.title, self.fields.body],
            Scope::Title => vec![self.fields.title],
            Scope::Body => vec![self.fields.body],
        }
    }
}

/// Parses `text` when it uses the syntax; `None` for plain text (and for
/// malformed text, which validation refused before any search got here).
pub(crate) fn parse_syntax(text: &str) -> Option<ParsedQuery> {
    query_syntax::parse(text).ok().filter(|q| !q.plain)
}

/// The scope a clause searches under `title_only`; `None` when nothing is left.
fn narrow(scope: Scope, title_only: bool) -> Option<Scope> {
    match (scope, title_only) {
        (_, false) => Some(scope),
        (Scope::Body, true) => None,
        (_, true) => Some(Scope::Title),
    }
}

fn occur(o: query_syntax::Occur) -> Occur {
    match o {
        query_syntax::Occur::Should => Occur::Should,
        query_syntax::Occur::Must => Occur::Must,
        query_syntax::Occur::MustNot => Occur::MustNot,
    }
}

/// Lowercased, with everything but letters and digits turned into spaces:
/// nothing of it can be read as tantivy syntax, and the analyser splits at
/// the same places anyway.
fn words_only(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect()
}
