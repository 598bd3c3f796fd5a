//! Daily rollups on SQLite: one row per (day, metric), summed on write.
use super::SqliteStore;
use crate::domain::{Metric, RollupDelta};
use crate::store::{InsightStore, StoreResult};
use chrono::{Datelike, NaiveDate};
use rusqlite::{params, Connection};

/// Days as days since 0001-01-01 and metrics as their index in `Metric::ALL`: a year of rows
/// reads as integers, with no text to parse.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS daily_rollups (
  day INTEGER NOT NULL,
  metric INTEGER NOT NULL,
  value INTEGER NOT NULL,
  PRIMARY KEY (day, metric)
) WITHOUT ROWID;
";

fn day_number(d: NaiveDate) -> i64 {
    d.num_days_from_ce() as i64
}

fn metric_number(m: Metric) -> i64 {
    Metric::ALL.iter().position(|x| *x == m).unwrap_or(0) as i64
}

pub(super) fn apply_rollups(conn: &Connection, deltas: &[RollupDelta]) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO daily_rollups (day, metric, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (day, metric) DO UPDATE SET value = value + excluded.value",
    )?;
    for d in deltas {
        stmt.execute(params![day_number(d.day), metric_number(d.metric), d.delta])?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl InsightStore for SqliteStore {
    async fn rollups(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<(NaiveDate, Metric, i64)>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT day, metric, value FROM daily_rollups WHERE day >= ?1 AND day <= ?2 ORDER BY day, metric",
            )?;
            let rows = stmt.query_map(params![day_number(from), day_number(to)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })?;
            let mut out = Vec::with_capacity(((to - from).num_days().max(0) as usize + 1) * Metric::ALL.len());
            for row in rows {
                let (day, metric, value) = row?;
                let day = i32::try_from(day).ok().and_then(NaiveDate::from_num_days_from_ce_opt);
                if let (Some(day), Some(metric)) = (day, Metric::ALL.get(metric as usize)) {
                    out.push((day, *metric, value));
                }
            }
            Ok(out)
        })
        .await
    }
}
