//! Group commit: one thread turns the synced writes of every Raft group into
//! as few fsyncs as possible.
//!
//! A Raft append may only count toward a quorum once it is on disk. Doing
//! one fsync per append per group would cap the node at a few hundred
//! appends per second; collecting whatever is queued while the previous
//! fsync ran and writing it as one synced batch keeps latency at one fsync
//! while throughput grows with load.

use rocksdb::{WriteBatch, WriteOptions, DB};
use std::sync::mpsc;
use std::sync::Arc;

/// What a queued write does once its batch is durable.
pub enum Completion {
    /// Wake an async caller.
    Oneshot(tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Run a callback (openraft's `LogFlushed`).
    Callback(Box<dyn FnOnce(Result<(), String>) + Send>),
}

struct Job {
    batch: WriteBatch,
    done: Completion,
}

/// Owns the writer thread; dropping the last handle drains the queue and
/// joins the thread, so the database is closed when `Storage` goes away
/// (a node restarted in the same process can reopen it at once).
struct WriterThread {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Handle to the node-wide synced writer thread.
#[derive(Clone)]
pub struct SyncWriter {
    inner: Arc<WriterThread>,
}

impl SyncWriter {
    /// Starts the writer thread; it exits when every handle is dropped.
    pub fn start(db: Arc<DB>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("tessera-sync-writer".into())
            .spawn(move || run(db, rx));
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!("cannot start the synced writer thread: {e}");
                None
            }
        };
        Self {
            inner: Arc::new(WriterThread {
                tx: Some(tx),
                thread,
            }),
        }
    }

    /// Queues `batch`; `done` runs after it (and everything queued before it)
    /// is fsynced. Order of submission is the order of application.
    pub fn submit(&self, batch: WriteBatch, done: Completion) {
        let Some(tx) = &self.inner.tx else {
            complete(done, Err("synced writer stopped".to_string()));
            return;
        };
        if let Err(mpsc::SendError(job)) = tx.send(Job { batch, done }) {
            complete(job.done, Err("synced writer stopped".to_string()));
        }
    }

    /// Writes `batch` durably and waits for it.
    pub async fn write(&self, batch: WriteBatch) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(batch, Completion::Oneshot(tx));
        rx.await
            .unwrap_or_else(|_| Err("synced writer stopped".to_string()))
    }
}

fn complete(done: Completion, result: Result<(), String>) {
    match done {
        Completion::Oneshot(tx) => {
            let _ = tx.send(result);
        }
        Completion::Callback(f) => f(result),
    }
}

fn run(db: Arc<DB>, rx: mpsc::Receiver<Job>) {
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    let unsynced = WriteOptions::default();
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while let Ok(more) = rx.try_recv() {
            jobs.push(more);
        }
        // The WAL is sequential: syncing the last write makes every earlier
        // one durable too, so only the last write of the group pays an fsync.
        let last = jobs.len() - 1;
        let mut results = Vec::with_capacity(jobs.len());
        let mut dones = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.into_iter().enumerate() {
            let opts = if i == last { &synced } else { &unsynced };
            results.push(db.write_opt(job.batch, opts).map_err(|e| e.to_string()));
            dones.push(job.done);
        }
        let sync_result = results.last().cloned().unwrap_or(Ok(()));
        metrics::histogram!("tessera_sync_writer_batch_jobs").record(dones.len() as f64);
        for (done, result) in dones.into_iter().zip(results) {
            // A write only counts as durable if the closing fsync succeeded.
            let result = result.and(sync_result.clone());
            complete(done, result);
        }
    }
}
