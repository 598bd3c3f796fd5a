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

thread_local! {
    /// Changes made by the writer's current transaction, applied to the counts at commit.
    static PENDING: RefCell<Vec<TextChange>> = const { RefCell::new(Vec::new()) };
}

/// Called by a write running on the writer thread.
pub(super) fn record(change: TextChange) {
    PENDING.with(|p| p.borrow_mut().push(change));
}

pub(super) fn pending_mark() -> usize {
    PENDING.with(|p| p.borrow().len())
}

/// Forgets what a rolled-back savepoint recorded.
pub(super) fn rollback_to(mark: usize) {
    PENDING.with(|p| p.borrow_mut().truncate(mark));
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
        let changes = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
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
