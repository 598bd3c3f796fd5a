//! Exact totals for frequent search terms without counting on every request.
//!
//! Counting a common substring ("maria" in a million customers) through the trigram index costs
//! ~13 ms. A term whose count is large becomes *hot*: its count is computed once by the writer
//! thread between transactions, and from then on every committed write that touches a searched
//! field adjusts it by comparing old and new values. The count stays exact because it is only
//! ever changed by the one thread that commits, in commit order.
use parking_lot::RwLock;
use std::cell::RefCell;
use std::collections::HashMap;

/// A term is worth keeping hot when counting it touches at least this many rows.
pub(super) const HOT_THRESHOLD: u64 = 1_000;
const MAX_HOT_TERMS: usize = 128;

/// The searched fields of one customer, lower-cased as stored (name_key, email, ext_key).
#[derive(Debug, Clone)]
pub(super) struct Searchable([String; 3]);

impl Searchable {
    pub(super) fn new(name_key: &str, email: Option<&str>, ext_key: Option<&str>) -> Self {
        Searchable([name_key.to_string(), email.unwrap_or_default().to_string(), ext_key.unwrap_or_default().to_string()])
    }

    /// The same predicate as the scan plan: `instr(column, term) > 0` on any field.
    pub(super) fn contains(&self, term: &str) -> bool {
        self.0.iter().any(|f| f.contains(term))
    }
}

/// A committed write's effect on searchable text: (before, after); None for absent.
pub(super) type TextChange = (Option<Searchable>, Option<Searchable>);

/// A change to the trigram index, applied once per batch: FTS5 flushes its pending terms at
/// every savepoint, so writing the index inside each write's savepoint would cost a flush (and
/// a new index segment) per customer.
#[derive(Debug)]
pub(super) enum FtsOp {
    Delete(i64),
    Insert { seq: i64, name: String, email: Option<String>, external_id: Option<String> },
}

#[derive(Default)]
struct Pending {
    text: Vec<TextChange>,
    fts: Vec<FtsOp>,
}

thread_local! {
    /// What the writer's current transaction has done to searchable text, for the counts (at
    /// commit) and for the trigram index (just before commit).
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
}

/// Called by a write running on the writer thread.
pub(super) fn record(change: TextChange) {
    PENDING.with(|p| p.borrow_mut().text.push(change));
}

/// Called by a write running on the writer thread instead of touching the index itself.
pub(super) fn defer_fts(op: FtsOp) {
    PENDING.with(|p| p.borrow_mut().fts.push(op));
}

pub(super) fn pending_mark() -> (usize, usize) {
    PENDING.with(|p| {
        let p = p.borrow();
        (p.text.len(), p.fts.len())
    })
}

/// Forgets what a rolled-back savepoint recorded.
pub(super) fn rollback_to(mark: (usize, usize)) {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        p.text.truncate(mark.0);
        p.fts.truncate(mark.1);
    });
}

/// Writes the batch's index changes, in order, inside its transaction.
pub(super) fn flush_fts(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let ops = PENDING.with(|p| std::mem::take(&mut p.borrow_mut().fts));
    for op in ops {
        match op {
            FtsOp::Delete(seq) => {
                conn.prepare_cached("DELETE FROM customers_fts WHERE rowid = ?1")?.execute([seq])?;
            }
            FtsOp::Insert { seq, name, email, external_id } => {
                conn.prepare_cached("INSERT INTO customers_fts (rowid, name, email, external_id) VALUES (?1, ?2, ?3, ?4)")?
                    .execute(rusqlite::params![seq, name, email, external_id])?;
            }
        }
    }
    Ok(())
}

/// Drops everything pending (a batch that did not commit).
pub(super) fn discard() {
    PENDING.with(|p| *p.borrow_mut() = Pending::default());
}

#[derive(Default)]
pub(super) struct HotCounts {
    terms: RwLock<HashMap<String, u64>>,
}

impl HotCounts {
    pub(super) fn get(&self, term: &str) -> Option<u64> {
        self.terms.read().get(term).copied()
    }

    pub(super) fn contains(&self, term: &str) -> bool {
        self.terms.read().contains_key(term)
    }

    /// Applies the committed transaction's changes (or drops them if it failed).
    pub(super) fn commit(&self, committed: bool) {
        let changes = PENDING.with(|p| std::mem::take(&mut p.borrow_mut().text));
        if !committed || changes.is_empty() {
            return;
        }
        let mut terms = self.terms.write();
        for (term, count) in terms.iter_mut() {
            for (before, after) in &changes {
                let was = before.as_ref().is_some_and(|s| s.contains(term));
                let is = after.as_ref().is_some_and(|s| s.contains(term));
                match (was, is) {
                    (false, true) => *count += 1,
                    (true, false) => *count = count.saturating_sub(1),
                    _ => {}
                }
            }
        }
    }

    /// Makes `term` hot with a count taken on the writer thread outside any transaction.
    pub(super) fn insert(&self, term: String, count: u64) {
        let mut terms = self.terms.write();
        if terms.len() >= MAX_HOT_TERMS && !terms.contains_key(&term) {
            if let Some(victim) = terms.keys().next().cloned() {
                terms.remove(&victim);
            }
        }
        terms.insert(term, count);
    }
}
