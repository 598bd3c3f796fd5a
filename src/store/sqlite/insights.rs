//! Daily rollups on SQLite: one row per (day, metric), summed on write.
use super::SqliteStore;
use crate::domain::{Metric, RollupDelta};
use crate::store::{InsightStore, StoreResult};
use chrono::NaiveDate;
use rusqlite::{params, Connection};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rollups (
  day TEXT NOT NULL,
  metric TEXT NOT NULL,
  value INTEGER NOT NULL,
  PRIMARY KEY (day, metric)
) WITHOUT ROWID;
";

pub(super) fn apply_rollups(conn: &Connection, deltas: &[RollupDelta]) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO rollups (day, metric, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (day, metric) DO UPDATE SET value = value + excluded.value",
    )?;
    for d in deltas {
        stmt.execute(params![d.day.to_string(), d.metric.as_str(), d.delta])?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl InsightStore for SqliteStore {
    async fn rollups(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<(NaiveDate, Metric, i64)>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT day, metric, value FROM rollups WHERE day >= ?1 AND day <= ?2 ORDER BY day, metric",
            )?;
            let rows = stmt.query_map(params![from.to_string(), to.to_string()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (day, metric, value) = row?;
                if let (Ok(day), Some(metric)) = (day.parse::<NaiveDate>(), Metric::parse(&metric)) {
                    out.push((day, metric, value));
                }
            }
            Ok(out)
        })
        .await
    }
}
