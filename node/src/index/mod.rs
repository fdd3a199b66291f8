//! One tantivy index per shard, derived from RocksDB (the truth).
//!
//! The state machine applies a Raft entry to RocksDB and then hands the document changes to
//! [`ShardIndex::submit`]. A dedicated indexer thread applies them and commits in batches (near
//! real time). Each commit records, in tantivy's commit payload, the Raft applied index it covers:
//! the *watermark*. After a crash the node re-indexes RocksDB's change sequence after the
//! watermark, so the index never needs to be durable on its own, only honest about what it
//! covers. Search, DFS statistics and acl-token listing read the last committed state.

mod any_of;
mod candidates;
mod query;
mod query_syntax;
mod schema;
mod snippet;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tantivy::directory::error::OpenDirectoryError;
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::{
    DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, TantivyError, Term,
    TERMINATED,
};
use tokio::sync::watch;

pub use candidates::{CandidateRef, Candidates, NO_SPACE};
pub use query::{CollectionStats, IndexQuery, IndexResults, TenantTermStats, MAX_SEARCH_LIMIT};
pub use schema::{build_schema, count_tokens, doc_key, names, Fields, ACL_TENANT_SEPARATOR};
pub use snippet::{Snippets, SNIPPET_CHARS};

use query::{DfsStatistics, IdColumns, OrderedCollector, QueryBuilder};

/// Errors of the shard index. Indexing itself is asynchronous; its failures surface through
/// [`ShardIndex::flush`] and stop the watermark from advancing.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// tantivy failed (I/O, corrupt segment, schema mismatch on open, ...).
    #[error("tantivy: {0}")]
    Tantivy(#[from] TantivyError),
    /// The index directory could not be opened.
    #[error("opening index directory: {0}")]
    Directory(#[from] OpenDirectoryError),
    /// Filesystem or thread-spawn failure.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The index on disk does not have the fields this code expects.
    #[error("index schema: {0}")]
    Schema(String),
    /// The commit payload is not a watermark; the index must be rebuilt from RocksDB.
    #[error("invalid commit payload {0:?}: expected an applied index")]
    InvalidPayload(String),
    /// The indexer thread has stopped (after `close`, or after it panicked).
    #[error("the index is closed")]
    Closed,
    /// The indexer thread panicked.
    #[error("the indexer thread panicked")]
    IndexerPanicked,
    /// `wait_for` gave up before the index caught up.
    #[error("index watermark {watermark} did not reach {applied} in time")]
    Timeout {
        /// The applied index waited for.
        applied: u64,
        /// The watermark when the wait gave up.
        watermark: u64,
    },
    /// Indexing failed earlier; the index no longer advances until `reset` or a reopen (which
    /// re-indexes from RocksDB after the watermark).
    #[error("indexing failed, index stalled: {0}")]
    Indexer(String),
}

/// A document as the index sees it: the searchable projection of the RocksDB document, with its
/// permissions already compiled into acl tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexedDoc {
    /// Owning tenant; several tenants share a shard.
    pub tenant: String,
    /// Document id, unique within the tenant.
    pub id: String,
    /// Space key, for the space filter.
    pub space: String,
    /// Title text, scored.
    pub title: String,
    /// Body text, scored.
    pub body: String,
    /// Every ancestor page id, so "under page X" is a term lookup.
    pub ancestors: Vec<String>,
    /// Labels, for the label filter.
    pub labels: Vec<String>,
    /// Contributor principals.
    pub contributors: Vec<String>,
    /// Compiled permission conjuncts, each `tenant|conjunct` (or `tenant|*` when unrestricted).
    pub acl_tokens: Vec<String>,
    /// Last update, ms since the epoch (fast field for ranking features).
    pub updated_at_ms: i64,
}

/// One document change, in the order the state machine applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOp {
    /// Insert or replace the document (`tenant`, `id`).
    Upsert(IndexedDoc),
    /// Remove the document if present.
    Delete {
        /// Owning tenant.
        tenant: String,
        /// Document id.
        id: String,
    },
}

/// Batching knobs of the indexer thread: the trade-off between freshness and commit cost.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// Longest time an op waits for its commit (freshness bound).
    pub commit_interval: Duration,
    /// Commit early once this many ops are pending (bounds memory and catch-up latency).
    pub commit_ops: usize,
    /// tantivy writer heap; tantivy requires at least 15 MB.
    pub writer_memory: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            commit_interval: Duration::from_millis(100),
            commit_ops: 10_000,
            writer_memory: 64 << 20,
        }
    }
}

/// Work for the indexer thread, in submission order.
enum Command {
    Ops {
        applied: u64,
        ops: Vec<IndexOp>,
    },
    Flush(SyncSender<Result<u64, IndexError>>),
    Reset {
        watermark: u64,
        reply: SyncSender<Result<(), IndexError>>,
    },
    Close(SyncSender<Result<(), IndexError>>),
    Abandon,
}

/// Tenants whose token lists one index keeps; past it the cache starts over (a shard holds a
/// few hundred small tenants at most).
const MAX_CACHED_TOKEN_LISTS: usize = 4096;

/// A tenant's distinct acl tokens and the searcher generation they were listed at.
type ListedTokens = (u64, Arc<[String]>);

/// The tantivy index of one shard. `Send + Sync`; share it as `Arc<ShardIndex>`.
pub struct ShardIndex {
    reader: IndexReader,
    fields: Fields,
    queries: QueryBuilder,
    commands: Sender<Command>,
    watermark: watch::Receiver<u64>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Per tenant: the searcher generation listed at and its distinct acl tokens.
    token_lists: Mutex<HashMap<String, ListedTokens>>,
    id_columns: IdColumns,
}

impl std::fmt::Debug for ShardIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardIndex")
            .field("watermark", &*self.watermark.borrow())
            .finish_non_exhaustive()
    }
}

fn read_watermark(index: &Index) -> Result<u64, IndexError> {
    match index.load_metas()?.payload {
        None => Ok(0),
        Some(payload) => payload
            .trim()
            .parse()
            .map_err(|_| IndexError::InvalidPayload(payload)),
    }
}

/// Opens the index in `directory` if it has the current or the legacy schema, or creates one
/// with the current schema.
fn open_index(directory: MmapDirectory) -> Result<Index, IndexError> {
    if !Index::exists(&directory).map_err(TantivyError::from)? {
        return Ok(Index::create(
            directory,
            build_schema(),
            tantivy::IndexSettings::default(),
        )?);
    }
    let index = Index::open(directory)?;
    let schema = index.schema();
    if schema != build_schema() && schema != schema::legacy_schema() {
        return Err(IndexError::Schema(
            "the index on disk was built with another schema; delete it to rebuild".to_string(),
        ));
    }
    Ok(index)
}

impl ShardIndex {
    /// Opens or creates the index in `dir` and starts its indexer thread. The watermark comes
    /// from the last commit's payload (0 for a new index): the caller re-indexes RocksDB's change
    /// sequence after it. An index with a different schema is an error (delete and rebuild).
    pub fn open(dir: &Path, config: IndexConfig) -> Result<Self, IndexError> {
        std::fs::create_dir_all(dir)?;
        let index = open_index(MmapDirectory::open(dir)?)?;
        let fields = Fields::from_schema(&index.schema())?;
        let watermark = read_watermark(&index)?;
        let writer: IndexWriter<TantivyDocument> =
            index.writer_with_num_threads(1, config.writer_memory)?;
        // A process killed inside a commit leaves that commit's files behind
        // (listed as managed, named by opstamp) while meta.json names the
        // previous commit. The replay after the watermark can reach the same
        // opstamp, and writing the same file name then fails for good
        // (chaos BUG-2), so drop every file the last commit does not use.
        writer
            .garbage_collect_files()
            .wait()
            .map_err(IndexError::from)?;
        let reader: IndexReader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let (watermark_tx, watermark_rx) = watch::channel(watermark);
        let (commands, receiver) = mpsc::channel();
        let indexer = Indexer {
            writer,
            reader: reader.clone(),
            fields,
            config,
            watermark: watermark_tx,
            committed: watermark,
            published: watermark,
            pending: None,
            broken: None,
        };
        let thread = std::thread::Builder::new()
            .name("tessera-indexer".to_string())
            .spawn(move || indexer.run(receiver))?;
        Ok(Self {
            queries: QueryBuilder::new(&index, fields),
            reader,
            fields,
            commands,
            watermark: watermark_rx,
            thread: Mutex::new(Some(thread)),
            token_lists: Mutex::new(HashMap::new()),
            id_columns: IdColumns::default(),
        })
    }

    /// The Raft applied index covered by the last commit: everything at or below it is
    /// searchable. Log purging must not pass it.
    pub fn watermark(&self) -> u64 {
        *self.watermark.borrow()
    }

    /// Queues the document changes of Raft entry `applied` (ops may be empty, which still
    /// advances the watermark). Never blocks: the apply loop must not wait on tantivy. Ops are
    /// applied in submission order; upsert replaces any previous version of the document.
    pub fn submit(&self, applied: u64, ops: Vec<IndexOp>) {
        if self.commands.send(Command::Ops { applied, ops }).is_err() {
            tracing::warn!(
                applied,
                "index closed; ops dropped (re-indexed from RocksDB on open)"
            );
        }
    }

    /// Waits until the watermark reaches `applied`, for read-your-writes with a session token.
    pub async fn wait_for(&self, applied: u64, timeout: Duration) -> Result<(), IndexError> {
        let mut rx = self.watermark.clone();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|w| *w >= applied).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(IndexError::Closed),
            Err(_) => Err(IndexError::Timeout {
                applied,
                watermark: self.watermark(),
            }),
        }
    }

    /// Commits everything queued so far and returns the new watermark. Blocking (use
    /// `spawn_blocking`); for shutdown, snapshots and tests.
    pub fn flush(&self) -> Result<u64, IndexError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.commands
            .send(Command::Flush(reply))
            .map_err(|_| IndexError::Closed)?;
        rx.recv().map_err(|_| IndexError::Closed)?
    }

    /// Deletes every document (including queued, uncommitted ops) and commits `watermark`, for
    /// snapshot install, which then rebuilds the index from RocksDB. Also the way out of a
    /// stalled index. Blocking.
    pub fn reset(&self, watermark: u64) -> Result<(), IndexError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.commands
            .send(Command::Reset { watermark, reply })
            .map_err(|_| IndexError::Closed)?;
        rx.recv().map_err(|_| IndexError::Closed)?
    }

    /// The snippet maker for the hits of a search of `text`, over the
    /// current searcher (the one the search itself used, or a newer one:
    /// snippets are cut from the stored rows, not from the index).
    pub fn snippets(&self, text: &str, title_only: bool) -> Result<Snippets, IndexError> {
        let query = self.queries.highlight_query(text, title_only);
        Snippets::new(&self.reader.searcher(), query.as_ref(), self.fields)
    }

    /// Runs one search (blocking; use `spawn_blocking`). See [`IndexQuery`] for the semantics.
    pub fn search(&self, q: &IndexQuery) -> Result<IndexResults, IndexError> {
        self.search_impl(q, false)
    }

    /// [`Self::search`] for a second phase: the page as [`Candidates`], each with its indexed
    /// space where every segment has the `space` column (for the user×space features), and
    /// the count of every match.
    pub fn search_candidates(&self, q: &IndexQuery) -> Result<(Candidates, u64), IndexError> {
        let results = self.search_impl(q, true)?;
        let candidates = results
            .candidates
            .unwrap_or_else(|| Candidates::with_capacity(0, true));
        Ok((candidates, results.total_matches))
    }

    fn search_impl(&self, q: &IndexQuery, as_candidates: bool) -> Result<IndexResults, IndexError> {
        if q.allowed_acl_tokens.is_empty() {
            return Ok(IndexResults::default());
        }
        let query = self.queries.build(q);
        let searcher = self.reader.searcher();
        self.id_columns.retain_live(&searcher);
        let collector = OrderedCollector {
            limit: q.limit.min(MAX_SEARCH_LIMIT),
            after: q.after.clone(),
            ids: self.id_columns.clone(),
            as_candidates,
        };
        let results = match &q.stats {
            Some(stats) => {
                let provider = DfsStatistics {
                    stats,
                    searcher: &searcher,
                    fields: self.fields,
                };
                searcher.search_with_statistics_provider(query.as_ref(), &collector, &provider)?
            }
            None => searcher.search(query.as_ref(), &collector)?,
        };
        Ok(results)
    }

    /// This index's share of a tenant's DFS statistics for `text`: the tenant's live documents,
    /// and for each analysed term of the query (title, and body unless `title_only`) the live
    /// documents of the tenant containing it. Summed over shards by the router into
    /// [`CollectionStats`]. Blocking.
    pub fn term_stats(
        &self,
        tenant: &str,
        text: &str,
        title_only: bool,
    ) -> Result<TenantTermStats, IndexError> {
        let searcher = self.reader.searcher();
        let tenant_query = TermQuery::new(
            Term::from_field_text(self.fields.tenant, tenant),
            IndexRecordOption::Basic,
        );
        let num_docs = tenant_query.count(&searcher)? as u64;
        let mut doc_freq = Vec::new();
        for (term, field_name) in self.queries.scored_terms(text, title_only) {
            let Some(term_text) = term.value().as_str().map(str::to_string) else {
                continue;
            };
            let count = if num_docs == 0 {
                0
            } else {
                let both = BooleanQuery::new(vec![
                    (
                        Occur::Must,
                        Box::new(TermQuery::new(term, IndexRecordOption::Basic)) as Box<dyn Query>,
                    ),
                    (Occur::Must, Box::new(tenant_query.clone())),
                ]);
                both.count(&searcher)? as u64
            };
            doc_freq.push((field_name.to_string(), term_text, count));
        }
        Ok(TenantTermStats { num_docs, doc_freq })
    }

    /// Every distinct acl token of the tenant, for compiling a user's allowed-token set: see
    /// [`Self::list_acl_tokens`]. The list depends only on the searcher generation, so it is
    /// listed once per tenant and index reload and shared by every user of the tenant (the
    /// listing costs one dictionary scan per segment). Blocking.
    pub fn acl_tokens(&self, tenant: &str) -> Result<Arc<[String]>, IndexError> {
        let searcher = self.reader.searcher();
        let generation = searcher.generation().generation_id();
        if let Some((listed_at, tokens)) = self.token_lists.lock().get(tenant) {
            if *listed_at == generation {
                return Ok(tokens.clone());
            }
        }
        let tokens: Arc<[String]> = self.list_acl_tokens_in(&searcher, tenant)?.into();
        let mut lists = self.token_lists.lock();
        if lists.len() >= MAX_CACHED_TOKEN_LISTS {
            lists.clear();
        }
        lists.insert(tenant.to_string(), (generation, tokens.clone()));
        Ok(tokens)
    }

    /// [`Self::acl_tokens`] without the per-generation cache: what the first search of a tenant
    /// after an index reload pays. Public for the permission benchmark. Blocking.
    pub fn list_acl_tokens(&self, tenant: &str) -> Result<Vec<String>, IndexError> {
        self.list_acl_tokens_in(&self.reader.searcher(), tenant)
    }

    /// A prefix scan of the `acl` term dictionary (`tenant|`) of every segment: the cost grows
    /// with the number of distinct conjuncts and segments, never with the number of documents.
    /// Tokens whose documents are all deleted are left out. Assumes tenant ids contain no `|`.
    fn list_acl_tokens_in(
        &self,
        searcher: &tantivy::Searcher,
        tenant: &str,
    ) -> Result<Vec<String>, IndexError> {
        let lower = format!("{tenant}{ACL_TENANT_SEPARATOR}");
        // The character after '|' bounds the prefix range.
        let upper = format!("{tenant}}}");
        let mut tokens = BTreeSet::new();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(self.fields.acl)?;
            let alive = segment.alive_bitset();
            let mut stream = inverted
                .terms()
                .range()
                .ge(lower.as_bytes())
                .lt(upper.as_bytes())
                .into_stream()?;
            while stream.advance() {
                let Ok(token) = std::str::from_utf8(stream.key()) else {
                    continue;
                };
                if tokens.contains(token) {
                    continue;
                }
                let live = match alive {
                    None => true,
                    Some(alive) => {
                        // Stops at the first live posting; only deleted postings are skipped.
                        let mut postings = inverted.read_postings_from_terminfo(
                            stream.value(),
                            IndexRecordOption::Basic,
                        )?;
                        let mut doc = postings.doc();
                        while doc != TERMINATED && !alive.is_alive(doc) {
                            doc = postings.advance();
                        }
                        doc != TERMINATED
                    }
                };
                if live {
                    tokens.insert(token.to_string());
                }
            }
        }
        Ok(tokens.into_iter().collect())
    }

    /// Live documents of all tenants, for status pages.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Commits what is queued and stops the indexer thread. Idempotent; also attempted on drop.
    /// Blocking.
    pub fn close(&self) -> Result<(), IndexError> {
        let Some(thread) = self.thread.lock().take() else {
            return Ok(());
        };
        let (reply, rx) = mpsc::sync_channel(1);
        let result = match self.commands.send(Command::Close(reply)) {
            Ok(()) => rx.recv().unwrap_or(Err(IndexError::Closed)),
            Err(_) => Err(IndexError::Closed),
        };
        if thread.join().is_err() {
            return Err(IndexError::IndexerPanicked);
        }
        result
    }

    /// Simulates a crash: stops the indexer thread WITHOUT committing, so everything since the
    /// last commit is lost exactly as in a process crash. For crash-recovery tests only.
    #[doc(hidden)]
    pub fn abandon_uncommitted(&self) {
        if let Some(thread) = self.thread.lock().take() {
            let _ = self.commands.send(Command::Abandon);
            let _ = thread.join();
        }
    }
}

impl Drop for ShardIndex {
    fn drop(&mut self) {
        if let Err(error) = self.close() {
            tracing::warn!(%error, "closing shard index on drop");
        }
    }
}

/// Uncommitted work of the indexer thread.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Highest applied index among the uncommitted batches.
    applied: u64,
    /// Uncommitted ops (empty batches count for nothing).
    ops: usize,
    /// When the first uncommitted batch arrived; the commit deadline runs from here.
    since: Instant,
}

/// State owned by the indexer thread; nothing else touches the writer.
struct Indexer {
    writer: IndexWriter<TantivyDocument>,
    reader: IndexReader,
    fields: Fields,
    config: IndexConfig,
    watermark: watch::Sender<u64>,
    /// Watermark of the last tantivy commit.
    committed: u64,
    /// Watermark readers can see (reader reloaded); lags `committed` only if a reload failed.
    published: u64,
    pending: Option<Pending>,
    /// Set when an op or commit failed: committing a watermark past a lost op would hide it
    /// from recovery forever, so nothing is committed until `reset` (or a reopen).
    broken: Option<String>,
}

impl Indexer {
    fn run(mut self, commands: Receiver<Command>) {
        loop {
            // A stalled indexer has nothing it may commit; it only answers commands.
            let deadline = self
                .pending
                .filter(|_| self.broken.is_none())
                .and_then(|p| p.since.checked_add(self.config.commit_interval));
            let command = match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        self.commit_logged();
                        continue;
                    }
                    match commands.recv_timeout(deadline - now) {
                        Ok(command) => command,
                        Err(RecvTimeoutError::Timeout) => {
                            self.commit_logged();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match commands.recv() {
                    Ok(command) => command,
                    Err(_) => break,
                },
            };
            match command {
                Command::Ops { applied, ops } => {
                    self.apply(applied, ops);
                    if self
                        .pending
                        .is_some_and(|p| p.ops >= self.config.commit_ops.max(1))
                    {
                        self.commit_logged();
                    }
                }
                Command::Flush(reply) => {
                    let _ = reply.send(self.commit());
                }
                Command::Reset { watermark, reply } => {
                    let _ = reply.send(self.reset(watermark));
                }
                Command::Close(reply) => {
                    let _ = reply.send(self.shutdown());
                    return;
                }
                // Dropping the writer without a commit discards everything uncommitted.
                Command::Abandon => return,
            }
        }
        // Every handle is gone without `close` (cannot normally happen: drop closes).
        if let Err(error) = self.shutdown() {
            tracing::warn!(%error, "final index commit failed");
        }
    }

    fn apply(&mut self, applied: u64, ops: Vec<IndexOp>) {
        let count = ops.len();
        for op in ops {
            match op {
                IndexOp::Upsert(doc) => {
                    self.writer
                        .delete_term(self.fields.key_term(&doc.tenant, &doc.id));
                    if let Err(error) = self.writer.add_document(self.fields.to_document(&doc)) {
                        self.mark_broken(format!("adding {}/{}: {error}", doc.tenant, doc.id));
                    }
                }
                IndexOp::Delete { tenant, id } => {
                    self.writer.delete_term(self.fields.key_term(&tenant, &id));
                }
            }
        }
        let pending = self.pending.get_or_insert(Pending {
            applied,
            ops: 0,
            since: Instant::now(),
        });
        pending.applied = pending.applied.max(applied);
        pending.ops += count;
    }

    fn mark_broken(&mut self, reason: String) {
        if self.broken.is_none() {
            tracing::error!(%reason, "shard index stalled until reset or reopen");
            metrics::counter!("tessera_index_failures_total").increment(1);
            self.broken = Some(reason);
        }
    }

    /// Time-triggered commits have nobody to report to: log, and retry one interval later.
    fn commit_logged(&mut self) {
        if let Err(error) = self.commit() {
            tracing::warn!(%error, "index commit failed");
            if let Some(pending) = &mut self.pending {
                pending.since = Instant::now();
            }
        }
    }

    /// Commits pending work with the highest applied index as payload, reloads the reader and
    /// only then publishes the watermark, so a waiter that sees it can search its writes.
    fn commit(&mut self) -> Result<u64, IndexError> {
        if let Some(reason) = &self.broken {
            return Err(IndexError::Indexer(reason.clone()));
        }
        if let Some(pending) = self.pending {
            let target = pending.applied.max(self.committed);
            let started = Instant::now();
            let committed = self.writer.prepare_commit().and_then(|mut prepared| {
                prepared.set_payload(&target.to_string());
                prepared.commit()
            });
            if let Err(error) = committed {
                self.mark_broken(format!("commit: {error}"));
                return Err(error.into());
            }
            self.pending = None;
            self.committed = target;
            metrics::counter!("tessera_index_commits_total").increment(1);
            metrics::histogram!("tessera_index_commit_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        self.publish()
    }

    fn publish(&mut self) -> Result<u64, IndexError> {
        if self.published != self.committed || *self.watermark.borrow() != self.committed {
            self.reader.reload()?;
            self.published = self.committed;
            self.watermark.send_replace(self.committed);
        }
        Ok(self.committed)
    }

    fn reset(&mut self, watermark: u64) -> Result<(), IndexError> {
        // Queued ops are superseded by the snapshot: drop them rather than index them.
        self.writer.rollback()?;
        self.pending = None;
        self.writer.delete_all_documents()?;
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&watermark.to_string());
        prepared.commit()?;
        self.broken = None;
        self.committed = watermark;
        self.publish().map(|_| ())
    }

    /// Final commit, then wait for background merges so the directory lock is released when
    /// `close` returns (a reopen in the same process must be able to take it).
    fn shutdown(mut self) -> Result<(), IndexError> {
        let committed = if self.pending.is_some() || self.broken.is_some() {
            self.commit().map(|_| ())
        } else {
            Ok(())
        };
        let merged = self.writer.wait_merging_threads().map_err(IndexError::from);
        committed.and(merged)
    }
}
