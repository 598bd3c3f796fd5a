//! The embedded store: one SQLite file in WAL mode. Reads go through a small pool of
//! connections; every write goes to one writer thread that commits in groups, so a write is
//! acknowledged only once it is on disk (synchronous=FULL) and many writes share one fsync.
use super::{StoreError, StoreResult};
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::{oneshot, Semaphore};

mod clients;
mod customers;
mod insights;
mod search;
mod sync;
mod webhooks;

/// Each area's schema; run in order, idempotently, at open.
const SCHEMA: &[&str] = &[customers::SCHEMA, clients::SCHEMA, insights::SCHEMA, webhooks::SCHEMA, sync::SCHEMA];

/// Writes grouped into one transaction at most.
const MAX_BATCH: usize = 512;

pub struct SqliteStore {
    path: PathBuf,
    readers: Arc<ReaderPool>,
    writer: Mutex<Option<mpsc::Sender<Box<dyn Job>>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    hot: Arc<search::HotCounts>,
}

pub(crate) fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                StoreError::Unavailable(e.to_string())
            }
            other => StoreError::Internal(other.to_string()),
        }
    }
}

fn open(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Query-planner stability: without it a statement with `LIMIT ?` (every list page) is
    // marked expired whenever its parameters are bound, and parsed and planned again on every
    // run, which was 14 % of a search request's CPU. Our plans never depend on bound values.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch(
        // No mmap: a mapping per connection is re-made each time the file grows and counts every
        // touched page once per connection in RSS; the OS page cache serves reads as well.
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;
         PRAGMA cache_size=-16384; PRAGMA mmap_size=0; PRAGMA temp_store=MEMORY;",
    )?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) `<dir>/customer360.db`.
    pub fn open(dir: &Path) -> StoreResult<Arc<SqliteStore>> {
        std::fs::create_dir_all(dir).map_err(|e| internal(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("customer360.db");
        let conn = open(&path, false)?;
        // The writer never checkpoints: a checkpoint copies WAL pages into the database file
        // and syncs it, which took a sixth of the writer's time and landed on whichever write
        // crossed the threshold. The checkpointer thread does it beside the writer instead.
        // When the log rewinds, its file is cut back to 64 MiB (it otherwise keeps its largest
        // size on disk until shutdown).
        conn.execute_batch("PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=67108864;")?;
        let checkpointer = open(&path, false)?;
        for sql in SCHEMA {
            conn.execute_batch(sql)?;
        }
        customers::migrate(&conn)?;
        let readers = ReaderPool::new(&path, 4)?;
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        let hot = Arc::new(search::HotCounts::default());
        let writer_hot = hot.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, &writer_hot, checkpointer))
            .map_err(internal)?;
        Ok(Arc::new(SqliteStore {
            path,
            readers: Arc::new(readers),
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            hot,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a read connection off the async threads.
    pub(crate) async fn read<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        self.readers.with(f).await
    }

    /// A short read (one row by key, or a page straight off an index: microseconds) runs right
    /// here when a connection is free: the hop to the blocking pool would cost more than the
    /// read itself.
    pub(crate) async fn read_point<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        if let Ok(_permit) = self.readers.permits.try_acquire() {
            let conn = self.readers.conns.lock().pop();
            if let Some(conn) = conn {
                let out = f(&conn);
                self.readers.conns.lock().push(conn);
                return out;
            }
        }
        self.read(f).await
    }

    /// Runs `f` inside the writer's current transaction (in its own savepoint: an error
    /// undoes only this write) and answers once the transaction is durable.
    pub(crate) async fn write<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(TypedJob { f: Some(f), out: None, reply: Some(tx) });
        {
            let guard = self.writer.lock();
            let sender = guard.as_ref().ok_or_else(|| StoreError::Unavailable("store is closing".into()))?;
            sender.send(job).map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        }
        rx.await.map_err(|_| StoreError::Internal("writer dropped the write".into()))?
    }

    /// Closes the write queue; the writer commits what is queued, then its thread ends.
    fn stop_writer(&self) -> Option<std::thread::JoinHandle<()>> {
        drop(self.writer.lock().take());
        self.writer_thread.lock().take()
    }

    /// Waits for every queued write to commit, then stops the writer.
    pub fn shutdown(&self) {
        if let Some(t) = self.stop_writer() {
            let _ = t.join();
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct ReaderPool {
    conns: Mutex<Vec<Connection>>,
    permits: Semaphore,
    path: PathBuf,
}

impl ReaderPool {
    fn new(path: &Path, size: usize) -> StoreResult<Self> {
        let conns = (0..size).map(|_| open(path, true)).collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Self { conns: Mutex::new(conns), permits: Semaphore::new(size), path: path.to_path_buf() })
    }

    async fn with<R, F>(self: &Arc<Self>, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let _permit = self.permits.acquire().await.map_err(internal)?;
        let conn = self.conns.lock().pop();
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match conn {
                Some(c) => c,
                None => open(&pool.path, true)?,
            };
            let out = f(&conn);
            pool.conns.lock().push(conn);
            out
        })
        .await
        .map_err(internal)?
    }
}

trait Job: Send {
    /// Runs the write; false means it failed and its savepoint must be rolled back.
    fn apply(&mut self, conn: &Connection) -> bool;
    /// Runs after the batch commits, outside any transaction (e.g. to count committed rows).
    fn after_commit(&self) -> bool {
        false
    }
    /// Answers the caller once the transaction's fate is known.
    fn finish(self: Box<Self>, committed: &StoreResult<()>);
}

struct TypedJob<R, F> {
    f: Option<F>,
    out: Option<StoreResult<R>>,
    reply: Option<oneshot::Sender<StoreResult<R>>>,
}

impl<R: Send, F: FnOnce(&Connection) -> StoreResult<R> + Send> Job for TypedJob<R, F> {
    fn apply(&mut self, conn: &Connection) -> bool {
        let f = self.f.take().expect("a job runs once");
        let out = f(conn);
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(mut self: Box<Self>, committed: &StoreResult<()>) {
        let out = match (committed, self.out.take()) {
            (Err(e), Some(Ok(_))) => Err(e.clone()),
            (_, Some(out)) => out,
            (Err(e), None) => Err(e.clone()),
            (Ok(()), None) => Err(StoreError::Internal("write never ran".into())),
        };
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(out);
        }
    }
}

/// Counts a search term on the writer thread between transactions and makes it hot.
struct HotTermJob {
    term: String,
    hot: Arc<search::HotCounts>,
}

impl Job for HotTermJob {
    fn apply(&mut self, conn: &Connection) -> bool {
        if self.hot.contains(&self.term) {
            return true;
        }
        match customers::count_matches(conn, &self.term) {
            Ok(n) => {
                self.hot.insert(std::mem::take(&mut self.term), n);
                true
            }
            Err(_) => false,
        }
    }

    fn after_commit(&self) -> bool {
        true
    }

    fn finish(self: Box<Self>, _committed: &StoreResult<()>) {}
}

impl SqliteStore {
    pub(crate) fn hot_count(&self, term: &str) -> Option<u64> {
        self.hot.get(term)
    }

    /// Asks the writer to keep `term`'s count from now on (fire and forget).
    pub(crate) fn make_hot(&self, term: &str) {
        if let Some(sender) = self.writer.lock().as_ref() {
            let _ = sender.send(Box::new(HotTermJob { term: term.to_string(), hot: self.hot.clone() }));
        }
    }
}

/// At most one checkpoint a second; commits in between are copied by the next one. Fewer,
/// larger checkpoints write a page changed many times once. (Write tails with pauses of 50,
/// 200, 250 and 1,000 ms differed by less than run-to-run noise in bench runs.)
const CHECKPOINT_PAUSE: std::time::Duration = std::time::Duration::from_millis(1000);

/// A WAL longer than this (pages, 256 MiB) is caught up by the writer itself: under steady
/// writes the checkpointer never reaches the end of the log, and SQLite only rewinds a log that
/// is wholly copied. A blocking RESTART here held the writer for 50-90 ms (a sync of the
/// database file, or the busy handler's sleeps while the checkpointer ran), so the writer
/// only tries a PASSIVE catch-up, which never waits.
const WAL_RESTART_PAGES: i64 = 65_536;

/// Copies committed WAL pages into the database after commits (PASSIVE: never waits for or
/// blocks readers and the writer), and reports the log's length. Ends when `commits` closes.
fn checkpoint_loop(conn: Connection, commits: mpsc::Receiver<()>, wal_pages: &AtomicI64) {
    use mpsc::RecvTimeoutError::{Disconnected, Timeout};
    // Wait for a commit, checkpoint, then let commits gather for the pause; a closed channel
    // (the writer stopping) ends the loop at once, pause or not.
    if commits.recv().is_err() {
        return;
    }
    loop {
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
            Ok(pages) => wal_pages.store(pages, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "checkpoint failed; the next commit retries"),
        }
        let until = std::time::Instant::now() + CHECKPOINT_PAUSE;
        let mut pending = false;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match commits.recv_timeout(left) {
                Ok(()) => pending = true,
                Err(Timeout) => break,
                Err(Disconnected) => return,
            }
        }
        if !pending && commits.recv().is_err() {
            return;
        }
    }
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Box<dyn Job>>, hot: &search::HotCounts, checkpointer: Connection) {
    let (commits, commit_rx) = mpsc::sync_channel::<()>(1);
    let wal_pages = Arc::new(AtomicI64::new(0));
    let reported = wal_pages.clone();
    let ckpt_thread = std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || checkpoint_loop(checkpointer, commit_rx, &reported))
        .map_err(|e| tracing::error!(error = %e, "no checkpoint thread; the WAL is checkpointed at shutdown only"))
        .ok();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (mut later, mut batch): (Vec<_>, Vec<_>) = batch.into_iter().partition(|j| j.after_commit());
        let committed = if batch.is_empty() { Ok(()) } else { run_batch(&conn, &mut batch) };
        if committed.is_ok() && !batch.is_empty() {
            if wal_pages.load(Ordering::Relaxed) > WAL_RESTART_PAGES {
                // Most of the log is copied already: copy the rest here, between transactions,
                // so the next one rewinds the log. PASSIVE never waits: while the checkpointer
                // is busy this answers "busy" at once and the next commit tries again.
                match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                }) {
                    Ok((0, log, copied)) if log == copied => wal_pages.store(0, Ordering::Relaxed),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "WAL catch-up failed; retried after the next commit")
                    }
                }
            }
            // Full means a checkpoint is already due.
            let _ = commits.try_send(());
        }
        hot.commit(committed.is_ok());
        search::discard();
        if let Err(e) = &committed {
            tracing::error!(error = %e, writes = batch.len(), "write batch failed");
        }
        for job in batch {
            job.finish(&committed);
        }
        for mut job in later.drain(..) {
            let _ = job.apply(&conn);
            job.finish(&Ok(()));
        }
    }
    drop(commits);
    if let Some(t) = ckpt_thread {
        let _ = t.join();
    }
    // Leave a clean WAL behind for the next start.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>]) -> StoreResult<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    for job in batch.iter_mut() {
        let mark = search::pending_mark();
        let step = (|| -> rusqlite::Result<()> {
            conn.execute_batch("SAVEPOINT w")?;
            if job.apply(conn) {
                conn.execute_batch("RELEASE w")
            } else {
                search::rollback_to(mark);
                conn.execute_batch("ROLLBACK TO w; RELEASE w")
            }
        })();
        if let Err(e) = step {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
    }
    if let Err(e) = search::flush_fts(conn).and_then(|_| conn.execute_batch("COMMIT")) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e.into());
    }
    Ok(())
}

#[async_trait::async_trait]
impl super::Health for SqliteStore {
    async fn ready(&self) -> StoreResult<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(Into::into)).await
    }

    async fn close(&self) {
        // The writer drains its queue first: everything acknowledged is already committed.
        if let Some(t) = self.stop_writer() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached statement with bound LIMIT/OFFSET runs again without being parsed again.
    #[test]
    fn cached_statements_with_a_bound_limit_are_not_reprepared() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("t.db"), false).unwrap();
        conn.execute_batch("CREATE TABLE t(x INTEGER); INSERT INTO t VALUES (1), (2), (3);").unwrap();
        for (limit, offset) in [(1, 0), (2, 1), (3, 0), (1, 2)] {
            let mut stmt = conn.prepare_cached("SELECT x FROM t ORDER BY x LIMIT ? OFFSET ?").unwrap();
            let n = stmt.query_map([limit, offset], |r| r.get::<_, i64>(0)).unwrap().count();
            assert_eq!(n as i64, limit.min(3 - offset));
            assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0, "limit {limit} offset {offset}");
        }
    }
}
