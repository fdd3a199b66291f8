//! The tantivy schema of a shard index and the mapping from [`IndexedDoc`] to a tantivy document.
//!
//! Every field except `id` is index-only: RocksDB is the truth and holds the full document, so the
//! index stores nothing it would have to keep consistent. `id` is stored and a fast field so that
//! search can return ids and break score ties without touching RocksDB.

use std::cell::RefCell;

use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, FAST, STORED,
    STRING,
};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer, TokenStream,
    TokenizerManager,
};
use tantivy::{TantivyDocument, Term};

use super::{IndexError, IndexedDoc};

/// Name of the analyser used for `title` and `body`; tantivy registers it by default.
pub const EN_STEM: &str = "en_stem";

/// Separator between tenant and id in the `key` field. A control character cannot appear in a
/// validated tenant id, so `tenant + SEP + id` is unambiguous.
pub const KEY_SEPARATOR: char = '\u{1f}';

/// Separator between the tenant and the conjunct in an `acl` token (`acme|g:eng&u:alice`).
pub const ACL_TENANT_SEPARATOR: char = '|';

/// Field names, shared with the statistics map of [`super::CollectionStats`].
pub mod names {
    /// Tenant id, raw.
    pub const TENANT: &str = "tenant";
    /// `tenant \u{1f} id`, the unique key used to replace or delete a document.
    pub const KEY: &str = "key";
    /// Document id (stored, fast).
    pub const ID: &str = "id";
    /// Space key, raw.
    pub const SPACE: &str = "space";
    /// Title text (`en_stem`).
    pub const TITLE: &str = "title";
    /// Body text (`en_stem`).
    pub const BODY: &str = "body";
    /// Ancestor page ids, raw, multi-valued.
    pub const ANCESTORS: &str = "ancestors";
    /// Labels, raw, multi-valued.
    pub const LABELS: &str = "labels";
    /// Contributor principals, raw, multi-valued.
    pub const CONTRIBUTORS: &str = "contributors";
    /// Compiled permission conjunct tokens, raw, multi-valued.
    pub const ACL: &str = "acl";
    /// Last update time in ms since the epoch (fast).
    pub const UPDATED_AT: &str = "updated_at";
}

/// Resolved field handles, so hot paths never look fields up by name.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    /// See [`names::TENANT`].
    pub tenant: Field,
    /// See [`names::KEY`].
    pub key: Field,
    /// See [`names::ID`].
    pub id: Field,
    /// See [`names::SPACE`].
    pub space: Field,
    /// See [`names::TITLE`].
    pub title: Field,
    /// See [`names::BODY`].
    pub body: Field,
    /// See [`names::ANCESTORS`].
    pub ancestors: Field,
    /// See [`names::LABELS`].
    pub labels: Field,
    /// See [`names::CONTRIBUTORS`].
    pub contributors: Field,
    /// See [`names::ACL`].
    pub acl: Field,
    /// See [`names::UPDATED_AT`].
    pub updated_at: Field,
}

impl Fields {
    /// Resolves the handles in a schema (one we built, or one read back from an index on disk).
    pub fn from_schema(schema: &Schema) -> Result<Self, IndexError> {
        let get = |name: &str| {
            schema
                .get_field(name)
                .map_err(|_| IndexError::Schema(format!("field `{name}` is missing")))
        };
        Ok(Self {
            tenant: get(names::TENANT)?,
            key: get(names::KEY)?,
            id: get(names::ID)?,
            space: get(names::SPACE)?,
            title: get(names::TITLE)?,
            body: get(names::BODY)?,
            ancestors: get(names::ANCESTORS)?,
            labels: get(names::LABELS)?,
            contributors: get(names::CONTRIBUTORS)?,
            acl: get(names::ACL)?,
            updated_at: get(names::UPDATED_AT)?,
        })
    }

    /// Name of a scored text field, for the DFS statistics map; `None` for every other field.
    pub fn text_field_name(&self, field: Field) -> Option<&'static str> {
        if field == self.title {
            Some(names::TITLE)
        } else if field == self.body {
            Some(names::BODY)
        } else {
            None
        }
    }

    /// The unique key term of a document, used to replace or delete it.
    pub fn key_term(&self, tenant: &str, id: &str) -> Term {
        Term::from_field_text(self.key, &doc_key(tenant, id))
    }

    /// Converts a document into its tantivy form.
    pub fn to_document(&self, doc: &IndexedDoc) -> TantivyDocument {
        let mut out = TantivyDocument::new();
        out.add_text(self.tenant, &doc.tenant);
        out.add_text(self.key, doc_key(&doc.tenant, &doc.id));
        out.add_text(self.id, &doc.id);
        out.add_text(self.space, &doc.space);
        out.add_text(self.title, &doc.title);
        out.add_text(self.body, &doc.body);
        for value in &doc.ancestors {
            out.add_text(self.ancestors, value);
        }
        for value in &doc.labels {
            out.add_text(self.labels, value);
        }
        for value in &doc.contributors {
            out.add_text(self.contributors, value);
        }
        for value in &doc.acl_tokens {
            out.add_text(self.acl, value);
        }
        out.add_i64(self.updated_at, doc.updated_at_ms);
        out
    }
}

/// `tenant \u{1f} id`: ids are only unique within a tenant, and several tenants share a shard.
pub fn doc_key(tenant: &str, id: &str) -> String {
    let mut key = String::with_capacity(tenant.len() + 1 + id.len());
    key.push_str(tenant);
    key.push(KEY_SEPARATOR);
    key.push_str(id);
    key
}

/// Builds the schema. The field set and options are part of the on-disk format: an index created
/// with a different schema is rejected on open, except [`legacy_schema`].
pub fn build_schema() -> Schema {
    schema_with(STRING | FAST)
}

/// The schema before `space` became a fast field. Indexes built with it still open and serve
/// (the second phase then reads spaces from stored rows), so upgrading a node needs no rebuild;
/// an index directory created afresh (a new replica, or a deleted directory that the node
/// rebuilds from RocksDB) gets the current schema.
pub fn legacy_schema() -> Schema {
    schema_with(STRING)
}

fn schema_with(space: TextOptions) -> Schema {
    let mut builder = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(EN_STEM)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions)
            .set_fieldnorms(true),
    );
    builder.add_text_field(names::TENANT, STRING);
    builder.add_text_field(names::KEY, STRING);
    builder.add_text_field(names::ID, STRING | FAST | STORED);
    builder.add_text_field(names::SPACE, space);
    builder.add_text_field(names::TITLE, text.clone());
    builder.add_text_field(names::BODY, text);
    builder.add_text_field(names::ANCESTORS, STRING);
    builder.add_text_field(names::LABELS, STRING);
    builder.add_text_field(names::CONTRIBUTORS, STRING);
    builder.add_text_field(names::ACL, STRING);
    builder.add_i64_field(names::UPDATED_AT, NumericOptions::default().set_fast());
    builder.build()
}

/// The `en_stem` analyser exactly as tantivy registers it (the fallback mirrors tantivy's own
/// definition and is only used if the stemmer feature were ever compiled out).
fn en_stem_analyzer() -> TextAnalyzer {
    TokenizerManager::default().get(EN_STEM).unwrap_or_else(|| {
        TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(40))
            .filter(LowerCaser)
            .filter(Stemmer::new(Language::English))
            .build()
    })
}

thread_local! {
    static ANALYZER: RefCell<TextAnalyzer> = RefCell::new(en_stem_analyzer());
}

/// Counts tokens exactly as tantivy's `en_stem` analyser produces them for one field value.
///
/// The caller keeps per-tenant token totals of `title` and `body` with this, so that BM25's
/// average field length can be computed per tenant ([`super::CollectionStats`]) rather than per
/// shard. It must agree with what tantivy adds to a field's `total_num_tokens`.
pub fn count_tokens(text: &str) -> u64 {
    ANALYZER.with(|analyzer| {
        let mut analyzer = analyzer.borrow_mut();
        let mut stream = analyzer.token_stream(text);
        let mut count = 0u64;
        while stream.advance() {
            count += 1;
        }
        count
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_tokens_matches_the_analyser() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("Deploy runbook"), 2);
        assert_eq!(count_tokens("the deploy-runbook, v2!"), 4);
        // Tokens longer than 40 bytes are dropped by en_stem and never counted by tantivy.
        let long = "x".repeat(41);
        assert_eq!(count_tokens(&format!("a {long} b")), 2);
    }

    #[test]
    fn schema_resolves_every_field() {
        let schema = build_schema();
        let fields = Fields::from_schema(&schema).expect("fields");
        assert_eq!(fields.text_field_name(fields.title), Some(names::TITLE));
        assert_eq!(fields.text_field_name(fields.body), Some(names::BODY));
        assert_eq!(fields.text_field_name(fields.acl), None);
        assert_eq!(doc_key("acme", "p-1"), "acme\u{1f}p-1");
    }
}
