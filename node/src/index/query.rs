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

use super::candidates::{Candidates, NO_SPACE};

use super::any_of::AnyOfQuery;
use super::query_syntax::{parse_syntax, SyntaxQueries};
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
    /// A second phase's search ([`super::ShardIndex::search_candidates`]) gets its page here
    /// instead of in `hits`, with each hit's space as indexed when every segment has the
    /// `space` fast column (indexes built before it existed do not): the second phase reads
    /// user×space features with it without loading 100 stored rows first.
    pub candidates: Option<Candidates>,
}

/// Normalises plain text before parsing: lowercase (so nothing in it is a tantivy operator
/// such as `AND`) and without `:`, so user text can only address `title`/`body` and never
/// other fields such as `tenant` or `acl`. The analyser splits on `:` anyway, so no word is
/// lost. Text that uses the documented syntax goes through [`SyntaxQueries`] instead.
fn normalize_text(text: &str) -> String {
    text.to_lowercase().replace(':', " ")
}

/// Builds tantivy queries for one index; holds the parsers so they are built once.
pub(crate) struct QueryBuilder {
    fields: Fields,
    title_and_body: QueryParser,
    title_only: QueryParser,
    syntax: SyntaxQueries,
}

impl QueryBuilder {
    /// Parsers over `[title, body]` and `[title]`, default OR.
    pub(crate) fn new(index: &Index, fields: Fields) -> Self {
        Self {
            fields,
            title_and_body: QueryParser::for_index(index, vec![fields.title, fields.body]),
            title_only: QueryParser::for_index(index, vec![fields.title]),
            syntax: SyntaxQueries::new(index, fields),
        }
    }

    /// The scored part of a search. Empty text matches everything (the tenant filter scopes it).
    /// Text using the query syntax (see [`tessera_proto::query_syntax`]) is built from its
    /// clauses; plain text keeps the lenient parse it always had, so its scores never change.
    pub(crate) fn text_query(&self, text: &str, title_only: bool) -> Box<dyn Query> {
        if let Some(parsed) = parse_syntax(text) {
            return self.syntax.build(&parsed, title_only);
        }
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

    /// The query whose body terms a hit's snippet highlights: [`Self::text_query`] without
    /// its exclusions.
    pub(crate) fn highlight_query(&self, text: &str, title_only: bool) -> Box<dyn Query> {
        match parse_syntax(text) {
            Some(parsed) => self.syntax.build_for_highlight(&parsed, title_only),
            None => self.text_query(text, title_only),
        }
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
    ids: Option<TermColumn>,
    spaces: Option<TermColumn>,
}

/// Segments with more distinct values than this keep their column's dictionary on disk only
/// (about 4M ids: ~100 MB decoded); smaller ones are decoded once (see [`DecodedTerms`]).
const MAX_DECODED_TERMS: usize = 1 << 22;

/// A string fast column with, for segments of bounded size, its dictionary decoded in memory.
///
/// Turning an ordinal back into its string through tantivy's dictionary decompresses the
/// sstable block that holds it, with a fresh zstd context each time; a page of 100 candidates
/// spread over the segment pays that about 100 times, which profiled as a third of a reranked
/// search. Segments never change, so decoding each one's dictionary once makes every later
/// lookup an index into a buffer.
#[derive(Clone)]
struct TermColumn {
    column: StrColumn,
    decoded: Option<Arc<DecodedTerms>>,
}

impl TermColumn {
    fn open(column: StrColumn) -> Self {
        let decoded = DecodedTerms::decode(&column).map(Arc::new);
        Self { column, decoded }
    }

    /// The strings of `ords` (ascending), in order.
    fn terms(&self, ords: &[u64], what: &str) -> Result<Vec<String>, String> {
        let mut out = Vec::with_capacity(ords.len());
        self.for_each_term(ords, what, |_, term| out.push(term.to_string()))?;
        Ok(out)
    }

    /// Calls `f(i, term)` with the string of each of `ords` (ascending), in order, without
    /// copying it where the dictionary is decoded.
    fn for_each_term(
        &self,
        ords: &[u64],
        what: &str,
        mut f: impl FnMut(usize, &str),
    ) -> Result<(), String> {
        if let Some(decoded) = &self.decoded {
            for (i, &ord) in ords.iter().enumerate() {
                let term = decoded
                    .get(ord)
                    .ok_or_else(|| format!("an `{what}` ordinal is out of range"))?;
                f(i, term);
            }
            return Ok(());
        }
        let mut seen = 0;
        let mut bad_utf8 = false;
        let complete = self
            .column
            .dictionary()
            .sorted_ords_to_term_cb(ords, |bytes| match std::str::from_utf8(bytes) {
                Ok(term) => {
                    f(seen, term);
                    seen += 1;
                }
                Err(_) => bad_utf8 = true,
            })
            .map_err(|e| format!("reading `{what}` values: {e}"))?;
        if bad_utf8 {
            return Err(format!("an `{what}` value is not valid UTF-8"));
        }
        if !complete || seen != ords.len() {
            return Err(format!("an `{what}` ordinal is out of range"));
        }
        Ok(())
    }
}

/// Every term of a column's dictionary in ordinal order, in one buffer.
struct DecodedTerms {
    text: String,
    /// Term `i` is `text[ends[i - 1]..ends[i]]` (from 0 for the first).
    ends: Vec<u32>,
}

impl DecodedTerms {
    /// `None` when the dictionary is too large to keep, or unreadable or not UTF-8 (lookups
    /// then go to the dictionary, which reports such errors for the hits concerned).
    fn decode(column: &StrColumn) -> Option<Self> {
        let dictionary = column.dictionary();
        if dictionary.num_terms() > MAX_DECODED_TERMS {
            return None;
        }
        let mut text = String::new();
        let mut ends = Vec::with_capacity(dictionary.num_terms());
        let mut stream = dictionary.stream().ok()?;
        while stream.advance() {
            text.push_str(std::str::from_utf8(stream.key()).ok()?);
            ends.push(u32::try_from(text.len()).ok()?);
        }
        Some(Self { text, ends })
    }

    fn get(&self, ord: u64) -> Option<&str> {
        let i = usize::try_from(ord).ok()?;
        let end = *self.ends.get(i)? as usize;
        let start = match i.checked_sub(1) {
            Some(prev) => self.ends[prev] as usize,
            None => 0,
        };
        self.text.get(start..end)
    }
}

impl IdColumns {
    /// The segment's columns (a missing `id` column is reported by the search). The first
    /// search to see a segment decodes its dictionaries, outside the lock.
    fn get(&self, segment: &SegmentReader) -> tantivy::Result<SegmentColumns> {
        let key = segment.segment_id();
        if let Some(columns) = self.0.lock().get(&key) {
            return Ok(columns.clone());
        }
        let fast = segment.fast_fields();
        let columns = SegmentColumns {
            ids: fast.str(names::ID)?.map(TermColumn::open),
            spaces: fast.str(names::SPACE).ok().flatten().map(TermColumn::open),
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
    /// Return the page as [`IndexResults::candidates`], with each hit's space.
    pub(crate) as_candidates: bool,
}

/// What one segment found: its best candidates with ids still as ordinals. Only the hits that
/// make the global top are decoded to strings (in `merge_fruits`), so a search over many
/// segments decodes `limit` ids, not `limit` per segment.
pub(crate) struct SegmentHits {
    count: u64,
    candidates: Vec<Candidate>,
    ids: Option<TermColumn>,
    /// The segment's `space` column, only when the collector resolves spaces.
    spaces: Option<TermColumn>,
    error: Option<String>,
}

/// Per-segment state of [`OrderedCollector`].
pub(crate) struct OrderedSegmentCollector {
    limit: usize,
    after_score: Option<Score>,
    /// First ordinal whose id is strictly greater than the cursor id.
    after_ord: u64,
    ids: Option<TermColumn>,
    /// The segment's `space` column, only when the collector resolves spaces.
    spaces: Option<TermColumn>,
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
                match ids
                    .column
                    .dictionary()
                    .term_ord_or_next(after_id.as_bytes())?
                {
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
            spaces: spaces.filter(|_| self.as_candidates),
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
        for fruit in &segment_fruits {
            if let Some(error) = &fruit.error {
                return Err(TantivyError::InternalError(error.clone()));
            }
            total_matches += fruit.count;
        }
        let chosen = global_top(&segment_fruits, self.limit);
        if self.as_candidates {
            let candidates = merge_candidates(&segment_fruits, &chosen, self.limit)
                .map_err(TantivyError::InternalError)?;
            return Ok(IndexResults {
                hits: Vec::new(),
                total_matches,
                candidates: Some(candidates),
            });
        }
        let mut hits = Vec::with_capacity(chosen.iter().map(Vec::len).sum());
        for (fruit, candidates) in segment_fruits.iter().zip(&chosen) {
            if candidates.is_empty() {
                continue;
            }
            let ids =
                resolve_ids(fruit.ids.as_ref(), candidates).map_err(TantivyError::InternalError)?;
            hits.extend(ids.into_iter().zip(candidates).map(|(id, c)| (id, c.score)));
        }
        hits.sort_unstable_by(hit_order);
        hits.truncate(self.limit);
        Ok(IndexResults {
            hits,
            total_matches,
            candidates: None,
        })
    }
}

/// The global top as [`Candidates`]: each id copied once, from its segment's column into the
/// page's buffer, and each distinct space of a segment interned once.
fn merge_candidates(
    fruits: &[SegmentHits],
    chosen: &[Vec<Candidate>],
    limit: usize,
) -> Result<Candidates, String> {
    let spaces_known = fruits
        .iter()
        .zip(chosen)
        .all(|(fruit, candidates)| candidates.is_empty() || fruit.spaces.is_some());
    let mut page = Candidates::with_capacity(chosen.iter().map(Vec::len).sum(), spaces_known);
    for (fruit, candidates) in fruits.iter().zip(chosen) {
        if candidates.is_empty() {
            continue;
        }
        let ids = fruit
            .ids
            .as_ref()
            .ok_or_else(|| "a segment has no `id` fast field".to_string())?;
        let spaces = match (&fruit.spaces, spaces_known) {
            (Some(column), true) => intern_spaces(column, candidates, &mut page)?,
            _ => vec![NO_SPACE; candidates.len()],
        };
        let ords: Vec<u64> = candidates.iter().map(|c| c.ord).collect();
        ids.for_each_term(&ords, "id", |i, id| {
            page.push(id, candidates[i].score, spaces[i])
        })?;
    }
    page.keep_best(limit);
    Ok(page)
}

/// Per segment, in ordinal order, the candidates that can make the global top `limit` by
/// score: every candidate that scores above the `limit`-th best score, and every one that
/// ties it (ties are broken by id, which only decoding can tell across segments). Usually
/// exactly `limit` in all.
fn global_top(fruits: &[SegmentHits], limit: usize) -> Vec<Vec<Candidate>> {
    let mut scores: Vec<Score> = fruits
        .iter()
        .flat_map(|f| f.candidates.iter().map(|c| c.score))
        .collect();
    let cut = match limit.checked_sub(1) {
        None => return vec![Vec::new(); fruits.len()],
        Some(nth) if nth < scores.len() => {
            let (_, nth_best, _) = scores.select_nth_unstable_by(nth, |a, b| b.total_cmp(a));
            Some(*nth_best)
        }
        Some(_) => None,
    };
    fruits
        .iter()
        .map(|f| {
            let mut kept: Vec<Candidate> = f
                .candidates
                .iter()
                .filter(|c| cut.is_none_or(|cut| c.score.total_cmp(&cut) != Ordering::Less))
                .copied()
                .collect();
            kept.sort_unstable_by_key(|c| c.ord);
            kept
        })
        .collect()
}

/// The ids of `candidates` (sorted by ordinal), in order.
fn resolve_ids(ids: Option<&TermColumn>, candidates: &[Candidate]) -> Result<Vec<String>, String> {
    let ids = ids.ok_or_else(|| "a segment has no `id` fast field".to_string())?;
    let ords: Vec<u64> = candidates.iter().map(|c| c.ord).collect();
    ids.terms(&ords, "id")
}

impl OrderedSegmentCollector {
    fn ord(&mut self, doc: DocId) -> Option<u64> {
        let ord = self
            .ids
            .as_ref()
            .and_then(|ids| ids.column.ords().first(doc));
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
        SegmentHits {
            count: self.count,
            candidates: self.heap.into_vec(),
            ids: self.ids,
            spaces: self.spaces,
            error: self.error,
        }
    }
}

/// The space number (in `page`) of each candidate, in order: one ordinal per document from the
/// column, and each distinct ordinal decoded and interned once (a page of candidates spans few
/// spaces). A document without a value (an empty space indexes no term) has the empty space.
fn intern_spaces(
    column: &TermColumn,
    candidates: &[Candidate],
    page: &mut Candidates,
) -> Result<Vec<u32>, String> {
    let ords: Vec<Option<u64>> = candidates
        .iter()
        .map(|c| column.column.ords().first(c.doc))
        .collect();
    let mut distinct: Vec<u64> = ords.iter().flatten().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    let mut numbers = Vec::with_capacity(distinct.len());
    column.for_each_term(&distinct, "space", |_, name| {
        numbers.push(page.intern_space(name))
    })?;
    ords.iter()
        .map(|ord| match ord {
            None => Ok(NO_SPACE),
            Some(ord) => distinct
                .binary_search(ord)
                .ok()
                .and_then(|i| numbers.get(i).copied())
                .ok_or_else(|| "a `space` ordinal did not resolve".to_string()),
        })
        .collect()
}
