//! `GET /api/insights`: KPIs, engagement distribution and trend, all from daily rollups.
use super::{json_response, method_not_allowed, Req, Resp};
use crate::domain::Metric;
use crate::error::{ApiError, FieldError, Result};
use crate::App;
use chrono::{Datelike, Duration, NaiveDate};
use http::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;

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
    Ok(json_response(StatusCode::OK, &insights(from, to, group_by, &rows)))
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// Which trend row holds `day` (days, ISO weeks or months since the first bucket).
fn bucket_index(group_by: GroupBy, first: NaiveDate, day: NaiveDate) -> usize {
    let n = match group_by {
        GroupBy::Day => (day - first).num_days(),
        GroupBy::Week => (group_by.bucket_start(day) - first).num_days() / 7,
        GroupBy::Month => (day.year() as i64 * 12 + day.month0() as i64) - (first.year() as i64 * 12 + first.month0() as i64),
    };
    n.max(0) as usize
}

#[derive(Serialize)]
struct Period {
    from: String,
    to: String,
    #[serde(rename = "groupBy")]
    group_by: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Kpis {
    total_leads: i64,
    conversion_rate: f64,
    avg_sales_cycle_days: Option<f64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bucket {
    score_range: &'static str,
    count: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TrendRow {
    date: String,
    new_leads: i64,
    opportunities: i64,
    closed_won: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Insights {
    period: Period,
    kpis: Kpis,
    engagement_distribution: [Bucket; 4],
    trend: Vec<TrendRow>,
}

/// The response from rollup rows (day, metric, value) of [from, to].
pub fn compute(from: NaiveDate, to: NaiveDate, group_by: GroupBy, rows: &[(NaiveDate, Metric, i64)]) -> Value {
    serde_json::to_value(insights(from, to, group_by, rows)).unwrap_or(Value::Null)
}

pub fn insights(from: NaiveDate, to: NaiveDate, group_by: GroupBy, rows: &[(NaiveDate, Metric, i64)]) -> Insights {
    const M: usize = Metric::ALL.len();
    let first = group_by.bucket_start(from);
    let mut starts = Vec::new();
    let mut start = first;
    while start <= to {
        starts.push(start);
        start = group_by.next_start(start);
    }
    let mut totals = [0i64; M];
    let mut per_bucket = vec![[0i64; M]; starts.len()];
    for (day, metric, value) in rows {
        if *day < from || *day > to {
            continue;
        }
        let m = *metric as usize;
        totals[m] += value;
        if let Some(b) = per_bucket.get_mut(bucket_index(group_by, first, *day)) {
            b[m] += value;
        }
    }
    let t = |m: Metric| totals[m as usize].max(0);
    let leads = t(Metric::NewLeads);
    let converted = t(Metric::Converted);
    let conversion_rate = if leads == 0 { 0.0 } else { round(converted as f64 / leads as f64, 3) };
    let avg_sales_cycle_days =
        (converted > 0).then(|| round(t(Metric::CycleSeconds) as f64 / converted as f64 / 86_400.0, 1));
    let trend = starts
        .iter()
        .zip(&per_bucket)
        .map(|(start, b)| TrendRow {
            date: (*start).max(from).to_string(),
            new_leads: b[Metric::NewLeads as usize],
            opportunities: b[Metric::Opportunities as usize],
            closed_won: b[Metric::ClosedWon as usize],
        })
        .collect();
    Insights {
        period: Period { from: from.to_string(), to: to.to_string(), group_by: group_by.as_str() },
        kpis: Kpis { total_leads: leads, conversion_rate, avg_sales_cycle_days },
        engagement_distribution: [
            Bucket { score_range: "0-25", count: t(Metric::Bucket0To25) },
            Bucket { score_range: "26-50", count: t(Metric::Bucket26To50) },
            Bucket { score_range: "51-75", count: t(Metric::Bucket51To75) },
            Bucket { score_range: "76-100", count: t(Metric::Bucket76To100) },
        ],
        trend,
    }
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
