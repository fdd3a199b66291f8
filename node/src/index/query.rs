//! Query building, DFS statistics and the ordered, cursor-aware collector.
//!
//! Scores must be comparable across shards and across pages, so three things live here:
//! - the query is the user's text query with every filter attached as a zero-scoring conjunct, so
//!   the score is exactly the text query's BM25 score;
//! - BM25 statistics can be supplied by the caller ([`CollectionStats`]), so that the shards of a
//!   tenant (or a tenant sharing a shard with others) score as one index of that tenant alone;
//! - hits are ordered by score descending, then id ascending, a total order that a cursor
//!   `(score, id)` can resume from without duplicates or gaps.

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::StrColumn;
use tantivy::index::SegmentId;
use tantivy::query::{
    AllQuery, Bm25StatisticsProvider, BooleanQuery, ConstScoreQuery, EmptyQuery, Occur, Query,
    QueryParser, TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, Index, Score, Searcher, SegmentOrdinal, SegmentReader, TantivyError, Term};

use super::any_of::AnyOfQuery;
use super::schema::{names, Fields};

/// Largest page a search may ask for; larger limits are clamped (the router pages with cursors).
pub const MAX_SEARCH_LIMIT: usize = 1000;

/// One search against one shard index, already scoped to a tenant and a permission set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexQuery {
    /// Only this tenant's documents can match: shards are shared between tenants.
    pub tenant: String,
    /// User text in tantivy's query syntax (lowercased, parsed leniently; never an error).
    /// Empty text matches every document of the tenant.
    pub text: String,
    /// Acl tokens the user satisfies (see the permission compiler). Empty means the user may see
    /// nothing, never "no filter".
    pub allowed_acl_tokens: Vec<String>,
    /// When non-empty, the document's space must be one of these.
    pub spaces: Vec<String>,
    /// When non-empty, the document must be under (have as ancestor) one of these pages.
    pub ancestors: Vec<String>,
    /// When non-empty, the document must carry one of these labels.
    pub labels: Vec<String>,
    /// Match the text against titles only.
    pub title_only: bool,
    /// Page size, clamped to [`MAX_SEARCH_LIMIT`].
    pub limit: usize,
    /// Cursor: return only hits strictly after this `(score, id)` in (score desc, id asc) order.
    pub after: Option<(f32, String)>,
    /// Tenant-wide BM25 statistics (DFS). `None` scores with this index's own statistics.
    pub stats: Option<CollectionStats>,
}

/// BM25 statistics of a whole tenant (all its shards), so every shard scores with the same idf
/// and average field length, and tenants sharing a shard do not skew each other's scores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectionStats {
    /// Live documents of the tenant.
    pub num_docs: u64,
    /// Sum of [`super::count_tokens`] over the tenant's live titles.
    pub title_tokens: u64,
    /// Sum of [`super::count_tokens`] over the tenant's live bodies.
    pub body_tokens: u64,
    /// `(field name ("title"|"body"), analysed term) -> live docs of the tenant containing it`.
    /// A term missing here falls back to this index's own (shard-wide) document frequency.
    pub doc_freq: HashMap<(String, String), u64>,
}

/// One shard's share of a tenant's DFS statistics; the router sums these over shards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantTermStats {
    /// Live documents of the tenant in this index.
    pub num_docs: u64,
    /// `(field name, analysed term, live docs of the tenant containing it)`, one per distinct
    /// term of the query.
    pub doc_freq: Vec<(String, String, u64)>,
}

/// A page of hits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexResults {
    /// `(id, score)` ordered by score descending, then id ascending.
    pub hits: Vec<(String, f32)>,
    /// Every matching document (ignoring `limit` and `after`), for "about N results".
    pub total_matches: u64,
    /// Each hit's space as indexed, aligned with `hits`, when the search asked for it and every
    /// segment has the `space` fast column (indexes built before it existed do not). The second
    /// phase reads user×space features with it without loading 100 stored rows first.
    pub spaces: Option<Vec<String>>,
}

/// Normalises user text before parsing: lowercase (so `AND`/`OR` are plain words and never
/// operators) and without `:`, so user text can only address `title`/`body` and never other
/// fields such as `tenant` or `acl`. The analyser splits on `:` anyway, so no word is lost.
fn normalize_text(text: &str) -> String {
    text.to_lowercase().replace(':', " ")
}

/// Builds tantivy queries for one index; holds the parsers so they are built once.
pub(crate) struct QueryBuilder {
    fields: Fields,
    title_and_body: QueryParser,
    title_only: QueryParser,
}

impl QueryBuilder {
    /// Parsers over `[title, body]` and `[title]`, default OR.
    pub(crate) fn new(index: &Index, fields: Fields) -> Self {
        Self {
            fields,
            title_and_body: QueryParser::for_index(index, vec![fields.title, fields.body]),
            title_only: QueryParser::for_index(index, vec![fields.title]),
        }
    }

    /// The scored part of a search. Empty text matches everything (the tenant filter scopes it).
    pub(crate) fn text_query(&self, text: &str, title_only: bool) -> Box<dyn Query> {
        let text = normalize_text(text);
        if text.trim().is_empty() {
            return Box::new(AllQuery);
        }
        let parser = if title_only {
            &self.title_only
        } else {
            &self.title_and_body
        };
        let (query, errors) = parser.parse_query_lenient(&text);
        if !errors.is_empty() {
            tracing::debug!(?errors, "lenient query parse dropped parts of the query");
        }
        query
    }

    /// A zero-scoring conjunct that keeps documents whose `field` holds one of `values`.
    fn any_of(field: Field, values: &[String]) -> Box<dyn Query> {
        let terms = values
            .iter()
            .map(|v| Term::from_field_text(field, v))
            .collect();
        Box::new(ConstScoreQuery::new(Box::new(AnyOfQuery::new(terms)), 0.0))
    }

    /// A zero-scoring conjunct restricting the search to one tenant.
    pub(crate) fn tenant_filter(&self, tenant: &str) -> Box<dyn Query> {
        let term = Term::from_field_text(self.fields.tenant, tenant);
        Box::new(ConstScoreQuery::new(
            Box::new(TermQuery::new(term, IndexRecordOption::Basic)),
            0.0,
        ))
    }

    /// The full query: text AND tenant AND acl AND the optional filters. Returns an
    /// [`EmptyQuery`] when the user may see nothing.
    pub(crate) fn build(&self, q: &IndexQuery) -> Box<dyn Query> {
        if q.allowed_acl_tokens.is_empty() {
            return Box::new(EmptyQuery);
        }
        // The permission filter comes first: tantivy builds a conjunction's scorers in clause
        // order and stops at the first empty one, so a segment holding none of the user's
        // documents never builds (or scores a first block of) the text query.
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![
            (
                Occur::Must,
                Self::any_of(self.fields.acl, &q.allowed_acl_tokens),
            ),
            (Occur::Must, self.text_query(&q.text, q.title_only)),
        ];
        // Acl tokens are `tenant|conjunct` and a document only carries tokens
        // of its own tenant, so when every allowed token names this tenant
        // the acl clause already scopes the search and the tenant term (whose
        // postings list every document of the tenant, hidden ones included)
        // would only add work that grows with the hidden documents.
        let prefix = format!("{}{}", q.tenant, super::ACL_TENANT_SEPARATOR);
        if !q.allowed_acl_tokens.iter().all(|t| t.starts_with(&prefix)) {
            clauses.push((Occur::Must, self.tenant_filter(&q.tenant)));
        }
        for (field, values) in [
            (self.fields.space, &q.spaces),
            (self.fields.ancestors, &q.ancestors),
            (self.fields.labels, &q.labels),
        ] {
            if !values.is_empty() {
                clauses.push((Occur::Must, Self::any_of(field, values)));
            }
        }
        Box::new(BooleanQuery::new(clauses))
    }

    /// The distinct scored terms of `text` as the search would analyse it, as
    /// `(field, field name, term text)`.
    pub(crate) fn scored_terms(&self, text: &str, title_only: bool) -> Vec<(Term, &'static str)> {
        let query = self.text_query(text, title_only);
        let mut seen = BTreeSet::new();
        query.query_terms(&mut |term, _positions| {
            if self.fields.text_field_name(term.field()).is_some() {
                seen.insert(term.clone());
            }
        });
        seen.into_iter()
            .filter_map(|term| {
                let name = self.fields.text_field_name(term.field())?;
                Some((term, name))
            })
            .collect()
    }
}

/// Supplies caller-given tenant-wide statistics to BM25 (DFS).
pub(crate) struct DfsStatistics<'a> {
    pub(crate) stats: &'a CollectionStats,
    pub(crate) searcher: &'a Searcher,
    pub(crate) fields: Fields,
}

impl DfsStatistics<'_> {
    /// At least 1: BM25 divides by it, and tantivy asserts `doc_freq <= num_docs`.
    fn num_docs(&self) -> u64 {
        self.stats.num_docs.max(1)
    }
}

impl Bm25StatisticsProvider for DfsStatistics<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        // At least 1 so the average field length is never 0 (which would turn scores into NaN
        // on inconsistent input); consistent statistics are never 0 when a term can match.
        if field == self.fields.title {
            Ok(self.stats.title_tokens.max(1))
        } else if field == self.fields.body {
            Ok(self.stats.body_tokens.max(1))
        } else {
            Bm25StatisticsProvider::total_num_tokens(self.searcher, field)
        }
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.num_docs())
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let given = match (
            self.fields.text_field_name(term.field()),
            term.value().as_str(),
        ) {
            (Some(field), Some(text)) => self
                .stats
                .doc_freq
                .get(&(field.to_string(), text.to_string()))
                .copied(),
            _ => None,
        };
        let doc_freq = match given {
            Some(doc_freq) => doc_freq,
            None => self.searcher.doc_freq(term)?,
        };
        // The shard-wide fallback counts other tenants (and deleted docs) and may exceed the
        // tenant's document count; tantivy's idf asserts it does not.
        Ok(doc_freq.min(self.num_docs()))
    }
}

/// A candidate inside one segment: the id is kept as its term ordinal in the segment's `id`
/// dictionary, which sorts exactly like the id strings, so ties never need string decoding.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: Score,
    ord: u64,
    doc: DocId,
}

/// "Greater" means worse: lower score, or equal score and larger id. A max-heap of candidates
/// therefore keeps the worst kept hit on top.
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.ord.cmp(&other.ord))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

/// Total order of hits: score descending, then id ascending.
pub(crate) fn hit_order(a: &(String, f32), b: &(String, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0))
}

/// The `id` and `space` fast columns of each segment, opened once per segment rather than once
/// per search. Opening a column decodes its block index, which costs in proportion to the
/// segment's size: per search, that would make every query slower as documents (even ones the
/// user cannot see) accumulate. A segment's columns never change (deletes live in a separate
/// bitset), so the cache only has to forget segments that merges removed.
#[derive(Clone, Default)]
pub(crate) struct IdColumns(Arc<Mutex<HashMap<SegmentId, SegmentColumns>>>);

/// One segment's columns; `None` where the segment has no such column (`space` is absent from
/// indexes built before it became a fast field).
#[derive(Clone)]
struct SegmentColumns {
    ids: Option<StrColumn>,
    spaces: Option<StrColumn>,
}

impl IdColumns {
    /// The segment's columns (a missing `id` column is reported by the search).
    fn get(&self, segment: &SegmentReader) -> tantivy::Result<SegmentColumns> {
        let key = segment.segment_id();
        if let Some(columns) = self.0.lock().get(&key) {
            return Ok(columns.clone());
        }
        let fast = segment.fast_fields();
        let columns = SegmentColumns {
            ids: fast.str(names::ID)?,
            spaces: fast.str(names::SPACE).ok().flatten(),
        };
        self.0.lock().insert(key, columns.clone());
        Ok(columns)
    }

    /// Forgets the columns of segments that `searcher` no longer has.
    pub(crate) fn retain_live(&self, searcher: &Searcher) {
        let mut columns = self.0.lock();
        if columns.len() <= searcher.segment_readers().len() {
            return;
        }
        let live: HashSet<SegmentId> = searcher
            .segment_readers()
            .iter()
            .map(SegmentReader::segment_id)
            .collect();
        columns.retain(|id, _| live.contains(id));
    }
}

/// Top `limit` hits after an optional cursor, in (score desc, id asc) order, plus a count of
/// every match.
pub(crate) struct OrderedCollector {
    pub(crate) limit: usize,
    pub(crate) after: Option<(f32, String)>,
    pub(crate) ids: IdColumns,
    /// Also resolve each hit's space (see [`IndexResults::spaces`]).
    pub(crate) with_spaces: bool,
}

/// What one segment found.
pub(crate) struct SegmentHits {
    count: u64,
    hits: Vec<(String, f32)>,
    /// Aligned with `hits`, when asked for and the segment has the column.
    spaces: Option<Vec<String>>,
    error: Option<String>,
}

/// Per-segment state of [`OrderedCollector`].
pub(crate) struct OrderedSegmentCollector {
    limit: usize,
    after_score: Option<Score>,
    /// First ordinal whose id is strictly greater than the cursor id.
    after_ord: u64,
    ids: Option<StrColumn>,
    /// The segment's `space` column, only when the collector resolves spaces.
    spaces: Option<StrColumn>,
    with_spaces: bool,
    heap: BinaryHeap<Candidate>,
    count: u64,
    error: Option<String>,
}

impl Collector for OrderedCollector {
    type Fruit = IndexResults;
    type Child = OrderedSegmentCollector;

    fn for_segment(
        &self,
        _segment_local_id: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<Self::Child> {
        let SegmentColumns { ids, spaces } = self.ids.get(segment)?;
        let after_ord = match (&self.after, &ids) {
            (Some((_, after_id)), Some(ids)) => {
                match ids.dictionary().term_ord_or_next(after_id.as_bytes())? {
                    tantivy::columnar::TermOrdHit::Exact(ord) => ord.saturating_add(1),
                    tantivy::columnar::TermOrdHit::Next(ord) => ord,
                }
            }
            _ => 0,
        };
        Ok(OrderedSegmentCollector {
            limit: self.limit,
            after_score: self.after.as_ref().map(|(score, _)| *score),
            after_ord,
            ids,
            spaces: spaces.filter(|_| self.with_spaces),
            with_spaces: self.with_spaces,
            heap: BinaryHeap::with_capacity(self.limit.min(MAX_SEARCH_LIMIT)),
            count: 0,
            error: None,
        })
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    fn merge_fruits(&self, segment_fruits: Vec<SegmentHits>) -> tantivy::Result<IndexResults> {
        let mut total_matches = 0;
        let mut hits = Vec::new();
        let mut every_space = self.with_spaces;
        for fruit in segment_fruits {
            if let Some(error) = fruit.error {
                return Err(TantivyError::InternalError(error));
            }
            total_matches += fruit.count;
            let spaces = match fruit.spaces {
                Some(spaces) => spaces.into_iter().map(Some).collect(),
                None => {
                    every_space &= fruit.hits.is_empty();
                    vec![None; fruit.hits.len()]
                }
            };
            hits.extend(fruit.hits.into_iter().zip(spaces));
        }
        hits.sort_unstable_by(|a, b| hit_order(&a.0, &b.0));
        hits.truncate(self.limit);
        let (hits, spaces): (Vec<_>, Vec<_>) = hits.into_iter().unzip();
        Ok(IndexResults {
            hits,
            total_matches,
            spaces: every_space.then(|| spaces.into_iter().flatten().collect()),
        })
    }
}

impl OrderedSegmentCollector {
    fn ord(&mut self, doc: DocId) -> Option<u64> {
        let ord = self.ids.as_ref().and_then(|ids| ids.ords().first(doc));
        if ord.is_none() && self.error.is_none() {
            self.error = Some(format!("document {doc} has no `id` fast field value"));
        }
        ord
    }
}

impl SegmentCollector for OrderedSegmentCollector {
    type Fruit = SegmentHits;

    fn collect(&mut self, doc: DocId, score: Score) {
        self.count += 1;
        if self.limit == 0 {
            return;
        }
        // Cheap rejections on the score alone; the id is only looked up for possible keepers.
        if let Some(after) = self.after_score {
            if score.total_cmp(&after) == Ordering::Greater {
                return;
            }
        }
        if self.heap.len() >= self.limit {
            if let Some(worst) = self.heap.peek() {
                if score.total_cmp(&worst.score) == Ordering::Less {
                    return;
                }
            }
        }
        let Some(ord) = self.ord(doc) else {
            return;
        };
        if let Some(after) = self.after_score {
            if score.total_cmp(&after) == Ordering::Equal && ord < self.after_ord {
                return;
            }
        }
        let candidate = Candidate { score, ord, doc };
        if self.heap.len() < self.limit {
            self.heap.push(candidate);
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if candidate < *worst {
                *worst = candidate;
            }
        }
    }

    fn harvest(self) -> SegmentHits {
        let mut candidates = self.heap.into_vec();
        candidates.sort_unstable_by_key(|c| c.ord);
        let mut hits = Vec::with_capacity(candidates.len());
        let mut error = self.error;
        if let (Some(ids), false) = (&self.ids, candidates.is_empty()) {
            let ords: Vec<u64> = candidates.iter().map(|c| c.ord).collect();
            let mut scores = candidates.iter().map(|c| c.score);
            let result = ids.dictionary().sorted_ords_to_term_cb(&ords, |bytes| {
                let score = scores.next().unwrap_or_default();
                match std::str::from_utf8(bytes) {
                    Ok(id) => hits.push((id.to_string(), score)),
                    Err(_) => {
                        error.get_or_insert_with(|| "an `id` is not valid UTF-8".to_string());
                    }
                }
            });
            match result {
                Ok(true) => {}
                Ok(false) => {
                    error.get_or_insert_with(|| "an `id` ordinal is out of range".to_string());
                }
                Err(e) => {
                    error.get_or_insert_with(|| format!("reading ids: {e}"));
                }
            }
        }
        let spaces = match (&self.spaces, self.with_spaces) {
            (Some(column), true) => match resolve_spaces(column, &candidates) {
                Ok(spaces) => Some(spaces),
                Err(e) => {
                    error.get_or_insert(e);
                    None
                }
            },
            _ => None,
        };
        SegmentHits {
            count: self.count,
            hits,
            spaces,
            error,
        }
    }
}

/// The space of each candidate, in order: one ordinal per document from the column, and each
/// distinct ordinal decoded once (a page of candidates spans few spaces). A document without a
/// value (an empty space indexes no term) has the empty space.
fn resolve_spaces(column: &StrColumn, candidates: &[Candidate]) -> Result<Vec<String>, String> {
    let ords: Vec<Option<u64>> = candidates
        .iter()
        .map(|c| column.ords().first(c.doc))
        .collect();
    let mut distinct: Vec<u64> = ords.iter().flatten().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    let mut names = Vec::with_capacity(distinct.len());
    let mut bad = false;
    let complete = column
        .dictionary()
        .sorted_ords_to_term_cb(&distinct, |bytes| match std::str::from_utf8(bytes) {
            Ok(name) => names.push(name.to_string()),
            Err(_) => bad = true,
        })
        .map_err(|e| format!("reading spaces: {e}"))?;
    if bad || !complete {
        return Err("a `space` ordinal is out of range or not UTF-8".to_string());
    }
    ords.iter()
        .map(|ord| match ord {
            None => Ok(String::new()),
            Some(ord) => distinct
                .binary_search(ord)
                .ok()
                .and_then(|i| names.get(i).cloned())
                .ok_or_else(|| "a `space` ordinal did not resolve".to_string()),
        })
        .collect()
}
