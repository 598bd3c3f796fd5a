//! Customers, their stage history, the outbox and idempotency records on SQLite.
use super::{internal, SqliteStore};
use crate::domain::{Customer, StageChange};
use crate::store::{
    CustomerPage, CustomerStore, CustomerWrite, IdempotencyRecord, ListQuery, Order, OutboxEvent, SortField, SortKey,
    Start, StoreError, StoreResult, SummaryPage, WriteKind,
};
use chrono::{DateTime, Duration, Utc};
use rusqlite::{params, Connection, OptionalExtension, ToSql};
use serde_json::Value;

pub(super) const SCHEMA: &str = "
-- summary: the list representation, rendered at write time (NULL in rows written before it
-- existed; see migrate).
CREATE TABLE IF NOT EXISTS customers (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  ext_key TEXT UNIQUE,
  email TEXT UNIQUE,
  name_key TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  version INTEGER NOT NULL,
  doc TEXT NOT NULL,
  summary TEXT
);
-- The sort indexes also carry the searched columns, so a search for a common term walks the
-- index in order and tests each entry without touching the table.
DROP INDEX IF EXISTS customers_by_created;
DROP INDEX IF EXISTS customers_by_name;
CREATE INDEX IF NOT EXISTS customers_created_search ON customers(created_at, id, name_key, email, ext_key);
CREATE INDEX IF NOT EXISTS customers_name_search ON customers(name_key, id, email, ext_key);
CREATE VIRTUAL TABLE IF NOT EXISTS customers_fts USING fts5(
  name, email, external_id, content='', contentless_delete=1, tokenize='trigram');
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO counters(name, value) VALUES ('customers', 0);
CREATE TABLE IF NOT EXISTS stage_changes (
  seq INTEGER PRIMARY KEY,
  customer_id TEXT NOT NULL,
  from_stage TEXT,
  to_stage TEXT NOT NULL,
  at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS stage_changes_by_customer ON stage_changes(customer_id, seq);
CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  event_type TEXT NOT NULL,
  timestamp INTEGER NOT NULL,
  payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
  scope TEXT NOT NULL,
  key TEXT NOT NULL,
  request_hash TEXT NOT NULL,
  status INTEGER NOT NULL,
  body TEXT NOT NULL,
  location TEXT,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (scope, key)
) WITHOUT ROWID;
";

/// Adds what later versions added to a database created by an earlier one.
pub(super) fn migrate(conn: &Connection) -> StoreResult<()> {
    let has_summary: bool =
        conn.query_row("SELECT count(*) FROM pragma_table_info('customers') WHERE name = 'summary'", [], |r| r.get(0))?;
    if !has_summary {
        conn.execute_batch("ALTER TABLE customers ADD COLUMN summary TEXT")?;
    }
    Ok(())
}

/// Stores an event in the outbox, in the caller's transaction; the same id twice is stored once.
pub(super) fn insert_outbox(conn: &Connection, e: &OutboxEvent) -> StoreResult<()> {
    conn.prepare_cached("INSERT OR IGNORE INTO outbox (id, event_type, timestamp, payload) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![e.id, e.event_type, micros(e.timestamp), e.payload.to_string()])?;
    Ok(())
}

pub(crate) const IDEMPOTENCY_TTL_HOURS: i64 = 24;

pub(super) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(super) fn from_micros(m: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(m).unwrap_or_default()
}

fn row_to_customer(doc: &str, version: i64) -> StoreResult<Customer> {
    let mut c: Customer = serde_json::from_str(doc).map_err(internal)?;
    c.etag = version.to_string();
    Ok(c)
}

fn get_by(conn: &Connection, column: &str, value: &str) -> StoreResult<Option<Customer>> {
    let sql = format!("SELECT doc, version FROM customers WHERE {column} = ?1");
    let row = conn
        .prepare_cached(&sql)?
        .query_row([value], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .optional()?;
    row.map(|(d, v)| row_to_customer(&d, v)).transpose()
}

/// Escapes a user string as one FTS5 phrase (a substring query under the trigram tokenizer).
fn fts_phrase(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Trigram search needs three characters; shorter terms fall back to a scan.
fn uses_fts(term: &str) -> bool {
    term.chars().count() >= 3
}

fn unique_violation(conn: &Connection, e: &rusqlite::Error, c: &Customer) -> Option<StoreError> {
    let msg = e.to_string();
    if !msg.contains("UNIQUE constraint failed") {
        return None;
    }
    let (field, column, value) = if msg.contains("customers.email") {
        ("email", "email", c.email.clone().unwrap_or_default())
    } else if msg.contains("customers.ext_key") {
        ("externalId", "ext_key", c.external_id.clone().unwrap_or_default().to_lowercase())
    } else if msg.contains("idempotency") {
        return Some(StoreError::Conflict { field: "idempotencyKey", existing_id: String::new() });
    } else {
        return None;
    };
    let existing = conn
        .query_row(&format!("SELECT id FROM customers WHERE {column} = ?1"), [&value], |r| r.get::<_, String>(0))
        .unwrap_or_default();
    Some(StoreError::Conflict { field, existing_id: existing })
}

pub(super) fn apply_write(conn: &Connection, w: &CustomerWrite) -> StoreResult<String> {
    let c = &w.customer;
    let doc = serde_json::to_string(c).map_err(internal)?;
    let summary = serde_json::to_string(&c.summary()).map_err(internal)?;
    let ext_key = c.external_id.as_ref().map(|e| e.to_lowercase());
    let conflict = |e: rusqlite::Error| unique_violation(conn, &e, c).unwrap_or_else(|| e.into());
    let mut old_text = None;
    let (seq, version, fts_changed) = match &w.kind {
        WriteKind::Insert => {
            conn.prepare_cached(
                "INSERT INTO customers (id, ext_key, email, name_key, created_at, version, doc, summary)
                 VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7)",
            )?
            // The sort key at the precision the customer is stored and returned with (ms), so a
            // keyset cursor built from a returned customer matches its own row exactly.
            .execute(params![
                c.id,
                ext_key,
                c.email,
                c.name_key(),
                c.created_at.timestamp_millis() * 1000,
                doc,
                summary
            ])
            .map_err(conflict)?;
            conn.prepare_cached("UPDATE counters SET value = value + 1 WHERE name = 'customers'")?.execute([])?;
            (conn.last_insert_rowid(), 1i64, true)
        }
        WriteKind::Update { expected_etag } => {
            let current = conn
                .prepare_cached("SELECT seq, version, doc FROM customers WHERE id = ?1")?
                .query_row([&c.id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))
                .optional()?;
            let Some((seq, version, old_doc)) = current else { return Err(StoreError::NotFound) };
            if version.to_string() != *expected_etag {
                return Err(StoreError::PreconditionFailed);
            }
            let old: Customer = serde_json::from_str(&old_doc).map_err(internal)?;
            conn.prepare_cached(
                "UPDATE customers SET ext_key = ?2, email = ?3, name_key = ?4, version = ?5, doc = ?6, summary = ?7
                 WHERE seq = ?1",
            )?
            .execute(params![seq, ext_key, c.email, c.name_key(), version + 1, doc, summary])
            .map_err(conflict)?;
            let fts_changed = old.name != c.name || old.email != c.email || old.external_id != c.external_id;
            if fts_changed {
                let old_ext = old.external_id.as_ref().map(|e| e.to_lowercase());
                old_text = Some(super::search::Searchable::new(&old.name_key(), old.email.as_deref(), old_ext.as_deref()));
                super::search::defer_fts(super::search::FtsOp::Delete(seq));
            }
            (seq, version + 1, fts_changed)
        }
    };
    if fts_changed {
        super::search::record((old_text, Some(super::search::Searchable::new(&c.name_key(), c.email.as_deref(), ext_key.as_deref()))));
        super::search::defer_fts(super::search::FtsOp::Insert {
            seq,
            name: c.name.clone(),
            email: c.email.clone(),
            external_id: c.external_id.clone(),
        });
    }
    for s in &w.stage_changes {
        conn.prepare_cached("INSERT INTO stage_changes (customer_id, from_stage, to_stage, at) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![s.customer_id, s.from.map(|f| f.as_str()), s.to.as_str(), micros(s.at)])?;
    }
    super::insights::apply_rollups(conn, &w.rollups)?;
    for e in &w.events {
        insert_outbox(conn, e)?;
    }
    if let Some(r) = &w.idempotency {
        insert_idempotency(conn, r).map_err(conflict)?;
    }
    Ok(version.to_string())
}

/// Stores the first answer to an Idempotency-Key (replacing an expired one).
pub(super) fn insert_idempotency(conn: &Connection, r: &IdempotencyRecord) -> rusqlite::Result<()> {
    let cutoff = micros(r.created_at - Duration::hours(IDEMPOTENCY_TTL_HOURS));
    conn.prepare_cached("DELETE FROM idempotency WHERE scope = ?1 AND key = ?2 AND created_at < ?3")?
        .execute(params![r.scope, r.key, cutoff])?;
    conn.prepare_cached(
        "INSERT INTO idempotency (scope, key, request_hash, status, body, location, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![r.scope, r.key, r.request_hash, r.status, r.body, r.location, micros(r.created_at)])?;
    Ok(())
}

#[async_trait::async_trait]
impl CustomerStore for SqliteStore {
    async fn get_customer(&self, id: &str) -> StoreResult<Option<Customer>> {
        let id = id.to_string();
        self.read_point(move |c| get_by(c, "id", &id)).await
    }

    async fn find_customer_by_external_id(&self, external_id: &str) -> StoreResult<Option<Customer>> {
        let key = external_id.to_lowercase();
        self.read_point(move |c| get_by(c, "ext_key", &key)).await
    }

    async fn list_customers(&self, q: &ListQuery) -> StoreResult<CustomerPage> {
        let (items, total) =
            self.list_rows(q, "c.doc, c.version", |r| row_to_customer(&r.get::<_, String>(0)?, r.get(1)?)).await?;
        Ok(CustomerPage { items, total })
    }

    async fn list_customer_summaries(&self, q: &ListQuery) -> StoreResult<SummaryPage> {
        let sort = q.sort;
        let cols = "c.id, c.created_at, c.name_key, coalesce(c.summary, c.doc), c.summary IS NULL";
        let (rows, total) = self
            .list_rows(q, cols, move |r| {
                let id: String = r.get(0)?;
                let value = match sort {
                    SortField::CreatedAt => Value::from(r.get::<_, i64>(1)?),
                    SortField::Name => Value::from(r.get::<_, String>(2)?),
                };
                let text: String = r.get(3)?;
                let json = if r.get(4)? {
                    // A row from before the summary column: render it from the document.
                    serde_json::to_string(&row_to_customer(&text, 0)?.summary()).map_err(internal)?
                } else {
                    text
                };
                Ok((json, SortKey { value, id }))
            })
            .await?;
        let last = rows.last().map(|(_, k)| k.clone());
        Ok(SummaryPage { items: rows.into_iter().map(|(json, _)| json).collect(), last, total })
    }

    async fn write_customer(&self, w: CustomerWrite) -> StoreResult<String> {
        self.write(move |conn| apply_write(conn, &w)).await
    }

    async fn stage_history(&self, customer_id: &str) -> StoreResult<Vec<StageChange>> {
        let id = customer_id.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT from_stage, to_stage, at FROM stage_changes WHERE customer_id = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map([&id], |r| {
                Ok((r.get::<_, Option<String>>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (from, to, at) = row?;
                out.push(StageChange {
                    customer_id: id.clone(),
                    from: from.as_deref().and_then(crate::domain::LifecycleStage::parse),
                    to: crate::domain::LifecycleStage::parse(&to).ok_or_else(|| internal("bad stage"))?,
                    at: from_micros(at),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn get_idempotency(&self, scope: &str, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
        let (scope, key) = (scope.to_string(), key.to_string());
        let cutoff = micros(Utc::now() - Duration::hours(IDEMPOTENCY_TTL_HOURS));
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT request_hash, status, body, location, created_at FROM idempotency
                 WHERE scope = ?1 AND key = ?2 AND created_at >= ?3",
            )?
            .query_row(params![scope, key, cutoff], |r| {
                Ok(IdempotencyRecord {
                    scope: scope.clone(),
                    key: key.clone(),
                    request_hash: r.get(0)?,
                    status: r.get(1)?,
                    body: r.get(2)?,
                    location: r.get(3)?,
                    created_at: from_micros(r.get(4)?),
                })
            })
            .optional()
            .map_err(Into::into)
        })
        .await
    }

    async fn outbox_events(&self, after_id: Option<&str>, limit: u32) -> StoreResult<Vec<OutboxEvent>> {
        let after = after_id.map(str::to_string);
        self.read(move |conn| {
            let after_seq: i64 = match &after {
                Some(id) => conn
                    .query_row("SELECT seq FROM outbox WHERE id = ?1", [id], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0),
                None => 0,
            };
            let mut stmt = conn.prepare_cached(
                "SELECT id, event_type, timestamp, payload FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after_seq, limit], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, event_type, ts, payload) = row?;
                out.push(OutboxEvent {
                    id,
                    event_type,
                    timestamp: from_micros(ts),
                    payload: serde_json::from_str(&payload).map_err(internal)?,
                });
            }
            Ok(out)
        })
        .await
    }
}

/// The deepest offset a list page reads on the calling thread (see `list_rows`).
const INLINE_MAX_OFFSET: u64 = 1_000;

impl SqliteStore {
    /// One page of `q` as `cols` mapped by `row`, and the exact total; keeps a frequent search
    /// term's count from then on.
    async fn list_rows<T, F>(&self, q: &ListQuery, cols: &'static str, row: F) -> StoreResult<(Vec<T>, u64)>
    where
        T: Send + 'static,
        F: Fn(&rusqlite::Row) -> StoreResult<T> + Send + 'static,
    {
        let mut q = q.clone();
        q.search = q.search.as_deref().map(str::to_lowercase).filter(|s| !s.is_empty());
        let hot = q.search.as_deref().and_then(|t| self.hot_count(t));
        let term = q.search.clone();
        // A page read straight off an index (no search term; a cursor or a shallow offset) costs
        // about what the hop to the blocking pool costs: it runs here when a connection is free.
        // Searches and deep offsets can take milliseconds and keep to the pool.
        let bounded = q.search.is_none()
            && match q.start {
                Start::After(_) => true,
                Start::Offset(n) => n <= INLINE_MAX_OFFSET,
            };
        let read = move |conn: &Connection| list(conn, &q, hot, cols, &row);
        let (items, total, counted) = if bounded { self.read_point(read).await? } else { self.read(read).await? };
        if let (Some(term), Some(n)) = (term, counted) {
            if n >= super::search::HOT_THRESHOLD {
                self.make_hot(&term);
            }
        }
        Ok((items, total))
    }
}

/// The scan predicate: a substring of the lower-cased name, e-mail or external id.
const SCAN_MATCH: &str =
    "(instr(c.name_key, ?) > 0 OR instr(coalesce(c.email, ''), ?) > 0 OR instr(coalesce(c.ext_key, ''), ?) > 0)";

/// Exact number of customers matching `term` (lower-cased).
pub(super) fn count_matches(conn: &Connection, term: &str) -> StoreResult<u64> {
    if uses_fts(term) {
        Ok(conn
            .prepare_cached("SELECT count(*) FROM customers_fts WHERE customers_fts MATCH ?1")?
            .query_row([fts_phrase(term)], |r| r.get(0))?)
    } else {
        let sql = format!("SELECT count(*) FROM customers c WHERE {SCAN_MATCH}");
        Ok(conn.prepare_cached(&sql)?.query_row(params![term, term, term], |r| r.get(0))?)
    }
}

/// How a search page is found.
#[derive(Clone, Copy, PartialEq)]
enum Plan {
    /// No search term.
    All,
    /// Walk the covering sort index newest first and test each entry (common terms; the walk is
    /// bounded, see `WALK_LIMIT`).
    Walk,
    /// Ask the trigram index for exactly the matching rows (rare terms, or a walk that ran out).
    Trigram,
    /// Terms too short for the trigram index: test every row.
    Scan,
}

/// A walk for a common term looks at no more index entries than this before handing over to
/// the trigram index, so a term whose matches are all old (or a run of non-matching new rows)
/// cannot turn a page into a walk over the whole table.
const WALK_LIMIT: u32 = 20_000;

/// One page, its total, and the total again when it had to be counted (None when `known_total`
/// was given).
fn list<T>(
    conn: &Connection,
    q: &ListQuery,
    known_total: Option<u64>,
    cols: &str,
    row: &dyn Fn(&rusqlite::Row) -> StoreResult<T>,
) -> StoreResult<(Vec<T>, u64, Option<u64>)> {
    let all: u64 = conn.prepare_cached("SELECT value FROM counters WHERE name = 'customers'")?.query_row([], |r| r.get(0))?;
    let mut counted = None;
    let (total, plan) = match q.search.as_deref() {
        None => (all, Plan::All),
        Some(term) => {
            let total = match known_total {
                Some(n) => n,
                None => {
                    let n = count_matches(conn, term)?;
                    counted = Some(n);
                    n
                }
            };
            let plan = if !uses_fts(term) {
                Plan::Scan
            } else if total.saturating_mul(200) >= all {
                Plan::Walk
            } else {
                Plan::Trigram
            };
            (total, plan)
        }
    };
    let mut items = page(conn, q, plan, cols, row)?;
    if plan == Plan::Walk && (items.len() as u32) < q.limit {
        // The bounded walk may have stopped short of the page: the trigram index is exact.
        items = page(conn, q, Plan::Trigram, cols, row)?;
    }
    Ok((items, total, counted))
}

fn page<T>(
    conn: &Connection,
    q: &ListQuery,
    plan: Plan,
    cols: &str,
    row: &dyn Fn(&rusqlite::Row) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let (col, dir, cmp) = match (q.sort, q.order) {
        (SortField::CreatedAt, Order::Desc) => ("created_at", "DESC", "<"),
        (SortField::CreatedAt, Order::Asc) => ("created_at", "ASC", ">"),
        (SortField::Name, Order::Desc) => ("name_key", "DESC", "<"),
        (SortField::Name, Order::Asc) => ("name_key", "ASC", ">"),
    };
    let order = format!("ORDER BY c.{col} {dir}, c.id {dir}");
    let mut args: Vec<Box<dyn ToSql>> = Vec::new();
    let (keyset, offset) = match &q.start {
        Start::Offset(n) => (None, *n),
        Start::After(SortKey { value, id }) => {
            match q.sort {
                SortField::CreatedAt => args.push(Box::new(value.as_i64().ok_or_else(|| internal("bad cursor"))?)),
                SortField::Name => args.push(Box::new(value.as_str().unwrap_or_default().to_string())),
            }
            args.push(Box::new(id.clone()));
            (Some(format!("(c.{col}, c.id) {cmp} (?, ?)")), 0)
        }
    };
    let term = q.search.clone().unwrap_or_default();
    let sql = match plan {
        Plan::All if offset > 0 => format!(
            // Skip the offset on the covering sort index, then read only the page's rows.
            "SELECT {cols} FROM customers c WHERE c.seq IN
               (SELECT seq FROM customers c {} {order} LIMIT ? OFFSET ?)
             {order}",
            keyset.map(|k| format!("WHERE {k}")).unwrap_or_default()
        ),
        Plan::All => format!(
            "SELECT {cols} FROM customers c {} {order} LIMIT ? OFFSET ?",
            keyset.map(|k| format!("WHERE {k}")).unwrap_or_default()
        ),
        Plan::Walk => {
            // The window and the test both run on the covering index; only the page's rows
            // are read from the table.
            for _ in 0..3 {
                args.push(Box::new(term.clone()));
            }
            format!(
                "SELECT {cols} FROM customers c WHERE c.seq IN
                   (SELECT seq FROM
                      (SELECT seq, name_key, email, ext_key FROM customers c {} {order} LIMIT {WALK_LIMIT}) c
                    WHERE {SCAN_MATCH} LIMIT ? OFFSET ?)
                 {order}",
                keyset.map(|k| format!("WHERE {k}")).unwrap_or_default()
            )
        }
        Plan::Trigram | Plan::Scan => {
            let matcher = if plan == Plan::Trigram {
                args.push(Box::new(fts_phrase(&term)));
                "c.seq IN (SELECT rowid FROM customers_fts WHERE customers_fts MATCH ?)".to_string()
            } else {
                for _ in 0..3 {
                    args.push(Box::new(term.clone()));
                }
                SCAN_MATCH.to_string()
            };
            let filters = [keyset, Some(matcher)].into_iter().flatten().collect::<Vec<_>>().join(" AND ");
            format!("SELECT {cols} FROM customers c WHERE {filters} {order} LIMIT ? OFFSET ?")
        }
    };
    // Placeholders appear as the arguments were pushed: keyset, matcher, limit, offset.
    args.push(Box::new(q.limit as i64));
    args.push(Box::new(offset.min(i64::MAX as u64) as i64));
    let mut stmt = conn.prepare_cached(&sql)?;
    let arg_refs: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref()).collect();
    let mut rows = stmt.query(arg_refs.as_slice())?;
    let mut items = Vec::with_capacity(q.limit as usize);
    while let Some(r) = rows.next()? {
        items.push(row(r)?);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CustomerFields;
    use crate::store::{CustomerStore, Health};

    async fn create(store: &SqliteStore, name: &str, at: DateTime<Utc>) {
        let fields = CustomerFields { name: Some(name.into()), ..Default::default() };
        let c = fields.into_new_customer(crate::ids::new_id("cstm"), at);
        store.write_customer(crate::api::customers::new_customer_write(c, at)).await.unwrap();
    }

    /// A database written before the summary column existed gets the column at open, and its
    /// rows (summary NULL) list exactly as rows written now.
    #[tokio::test]
    async fn rows_from_before_the_summary_column_list_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let t = Utc::now();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            for i in 0..5 {
                create(&store, &format!("Old Customer {i}"), t - Duration::minutes(10 - i)).await;
            }
            store.close().await;
        }
        let conn = Connection::open(dir.path().join("customer360.db")).unwrap();
        conn.execute_batch("ALTER TABLE customers DROP COLUMN summary").unwrap();
        drop(conn);

        let store = SqliteStore::open(dir.path()).unwrap();
        create(&store, "New Customer", t).await;
        let q = ListQuery {
            search: None,
            sort: SortField::CreatedAt,
            order: Order::Desc,
            limit: 10,
            start: Start::Offset(0),
        };
        let got = store.list_customer_summaries(&q).await.unwrap();
        let want = SummaryPage::render(&store.list_customers(&q).await.unwrap(), q.sort).unwrap();
        assert_eq!(got, want);
        assert_eq!(got.items.len(), 6);
        let nulls: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM customers WHERE summary IS NULL", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(nulls, 5, "old rows keep NULL and are rendered from their document");
        store.close().await;
    }
}
