//! `GET /api/insights`: KPIs, engagement distribution and trend, all from daily rollups.
use super::{json_response, method_not_allowed, Req, Resp};
use crate::domain::Metric;
use crate::error::{ApiError, FieldError, Result};
use crate::App;
use chrono::{Datelike, Duration, NaiveDate};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Day,
    Week,
    Month,
}

impl GroupBy {
    fn as_str(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::Week => "week",
            GroupBy::Month => "month",
        }
    }

    /// The first day of the bucket holding `d` (ISO weeks start on Monday).
    fn bucket_start(self, d: NaiveDate) -> NaiveDate {
        match self {
            GroupBy::Day => d,
            GroupBy::Week => d - Duration::days(d.weekday().num_days_from_monday() as i64),
            GroupBy::Month => d.with_day(1).unwrap_or(d),
        }
    }

    fn next_start(self, start: NaiveDate) -> NaiveDate {
        match self {
            GroupBy::Day => start + Duration::days(1),
            GroupBy::Week => start + Duration::days(7),
            GroupBy::Month => {
                let (y, m) = if start.month() == 12 { (start.year() + 1, 1) } else { (start.year(), start.month() + 1) };
                NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(start)
            }
        }
    }
}

pub const MAX_RANGE_DAYS: i64 = 731;

pub async fn handle(app: &App, req: &Req) -> Result<Resp> {
    if req.method != Method::GET {
        return Err(method_not_allowed("GET"));
    }
    req.require(&["insights.read"])?;
    let today = app.clock.now().date_naive();
    let mut from = None;
    let mut to = None;
    let mut group_by = GroupBy::Day;
    let mut errors = Vec::new();
    for (k, v) in req.query_pairs()? {
        match k.as_str() {
            "from" | "to" => match NaiveDate::parse_from_str(&v, "%Y-%m-%d") {
                Ok(d) if v.len() == 10 => {
                    if k == "from" {
                        from = Some(d)
                    } else {
                        to = Some(d)
                    }
                }
                _ => errors.push(FieldError::new(&k, "Expected a date YYYY-MM-DD", "Esperada uma data AAAA-MM-DD")),
            },
            "groupBy" => match v.as_str() {
                "day" => group_by = GroupBy::Day,
                "week" => group_by = GroupBy::Week,
                "month" => group_by = GroupBy::Month,
                _ => errors.push(FieldError::new("groupBy", "Expected day, week or month", "Esperado day, week ou month")),
            },
            _ => {}
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let (from, to) = match (from, to) {
        (Some(f), Some(t)) => (f, t),
        (Some(f), None) => (f, (f + Duration::days(29)).min(today.max(f))),
        (None, Some(t)) => (t - Duration::days(29), t),
        (None, None) => (today - Duration::days(29), today),
    };
    if from > to {
        return Err(ApiError::field("from", "Must not be after 'to'", "Não pode ser posterior a 'to'"));
    }
    if (to - from).num_days() + 1 > MAX_RANGE_DAYS {
        return Err(ApiError::field("to", "The range may span at most 2 years", "O intervalo pode ter no máximo 2 anos"));
    }
    let rows = app.store.rollups(from, to).await?;
    Ok(json_response(StatusCode::OK, &compute(from, to, group_by, &rows)))
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// The response body from rollup rows (day, metric, value) of [from, to].
pub fn compute(from: NaiveDate, to: NaiveDate, group_by: GroupBy, rows: &[(NaiveDate, Metric, i64)]) -> Value {
    let mut totals: HashMap<Metric, i64> = HashMap::new();
    let mut per_bucket: HashMap<(NaiveDate, Metric), i64> = HashMap::new();
    for (day, metric, value) in rows {
        if *day < from || *day > to {
            continue;
        }
        *totals.entry(*metric).or_default() += value;
        *per_bucket.entry((group_by.bucket_start(*day), *metric)).or_default() += value;
    }
    let t = |m: Metric| totals.get(&m).copied().unwrap_or(0).max(0);
    let leads = t(Metric::NewLeads);
    let converted = t(Metric::Converted);
    let conversion = if leads == 0 { 0.0 } else { round(converted as f64 / leads as f64, 3) };
    let cycle = if converted == 0 {
        Value::Null
    } else {
        json!(round(t(Metric::CycleSeconds) as f64 / converted as f64 / 86_400.0, 1))
    };
    let mut trend = Vec::new();
    let mut start = group_by.bucket_start(from);
    while start <= to {
        let b = |m: Metric| per_bucket.get(&(start, m)).copied().unwrap_or(0);
        trend.push(json!({
            "date": start.max(from).to_string(),
            "newLeads": b(Metric::NewLeads),
            "opportunities": b(Metric::Opportunities),
            "closedWon": b(Metric::ClosedWon),
        }));
        start = group_by.next_start(start);
    }
    json!({
        "period": { "from": from.to_string(), "to": to.to_string(), "groupBy": group_by.as_str() },
        "kpis": { "totalLeads": leads, "conversionRate": conversion, "avgSalesCycleDays": cycle },
        "engagementDistribution": [
            { "scoreRange": "0-25", "count": t(Metric::Bucket0To25) },
            { "scoreRange": "26-50", "count": t(Metric::Bucket26To50) },
            { "scoreRange": "51-75", "count": t(Metric::Bucket51To75) },
            { "scoreRange": "76-100", "count": t(Metric::Bucket76To100) },
        ],
        "trend": trend,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn weeks_start_on_monday_and_empty_buckets_are_listed() {
        let rows = vec![(d("2024-02-29"), Metric::NewLeads, 2), (d("2024-03-04"), Metric::NewLeads, 1)];
        let v = compute(d("2024-02-28"), d("2024-03-12"), GroupBy::Week, &rows);
        let dates: Vec<_> = v["trend"].as_array().unwrap().iter().map(|r| r["date"].as_str().unwrap().to_string()).collect();
        assert_eq!(dates, ["2024-02-28", "2024-03-04", "2024-03-11"]);
        assert_eq!(v["trend"][0]["newLeads"], 2);
        assert_eq!(v["trend"][1]["newLeads"], 1);
        assert_eq!(v["trend"][2]["newLeads"], 0);
        assert_eq!(v["kpis"]["conversionRate"], 0.0);
        assert_eq!(v["kpis"]["avgSalesCycleDays"], Value::Null);
    }

    #[test]
    fn months_cross_year_boundaries() {
        let v = compute(d("2023-12-15"), d("2024-01-10"), GroupBy::Month, &[]);
        assert_eq!(v["trend"].as_array().unwrap().len(), 2);
        assert_eq!(v["trend"][1]["date"], "2024-01-01");
    }
}
