//! Daily rollups that make insights cheap on every store: each customer write carries the
//! counter deltas it causes, and the store applies them in the same write.
use super::{Customer, LifecycleStage};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// What a rollup row counts. Event metrics are keyed by the day the event happened; cohort
/// metrics by the day the customer was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Customers created that day.
    NewLeads,
    /// Entries into stage Opportunity that day.
    Opportunities,
    /// Entries into stage Customer that day.
    ClosedWon,
    /// Cohort: customers created that day that have ever reached stage Customer.
    Converted,
    /// Cohort: sum over those of (first time in Customer - createdAt), in seconds.
    CycleSeconds,
    /// Cohort: customers created that day by current engagement score bucket.
    Bucket0To25,
    Bucket26To50,
    Bucket51To75,
    Bucket76To100,
}

impl Metric {
    pub const ALL: [Metric; 9] = [
        Metric::NewLeads,
        Metric::Opportunities,
        Metric::ClosedWon,
        Metric::Converted,
        Metric::CycleSeconds,
        Metric::Bucket0To25,
        Metric::Bucket26To50,
        Metric::Bucket51To75,
        Metric::Bucket76To100,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::NewLeads => "new_leads",
            Metric::Opportunities => "opportunities",
            Metric::ClosedWon => "closed_won",
            Metric::Converted => "converted",
            Metric::CycleSeconds => "cycle_seconds",
            Metric::Bucket0To25 => "bucket_0_25",
            Metric::Bucket26To50 => "bucket_26_50",
            Metric::Bucket51To75 => "bucket_51_75",
            Metric::Bucket76To100 => "bucket_76_100",
        }
    }

    pub fn parse(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.as_str() == s)
    }

    pub fn bucket(score: u8) -> Metric {
        match score {
            0..=25 => Metric::Bucket0To25,
            26..=50 => Metric::Bucket26To50,
            51..=75 => Metric::Bucket51To75,
            _ => Metric::Bucket76To100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollupDelta {
    pub day: NaiveDate,
    pub metric: Metric,
    pub delta: i64,
}

fn d(day: DateTime<Utc>, metric: Metric, delta: i64) -> RollupDelta {
    RollupDelta { day: day.date_naive(), metric, delta }
}

/// The deltas caused by writing `new` over `old` (None for a create). Stage entries happen
/// at `at`. Returns the deltas and `new` with `converted_at` set when it first converts.
pub fn rollup_deltas(old: Option<&Customer>, new: &mut Customer, at: DateTime<Utc>) -> Vec<RollupDelta> {
    let mut out = Vec::new();
    let created = new.created_at;
    match old {
        None => {
            out.push(d(created, Metric::NewLeads, 1));
            out.push(d(created, Metric::bucket(new.engagement_score), 1));
        }
        Some(old) => {
            let (a, b) = (Metric::bucket(old.engagement_score), Metric::bucket(new.engagement_score));
            if a != b {
                out.push(d(created, a, -1));
                out.push(d(created, b, 1));
            }
        }
    }
    let entered = match old {
        None => Some(new.lifecycle_stage),
        Some(o) if o.lifecycle_stage != new.lifecycle_stage => Some(new.lifecycle_stage),
        _ => None,
    };
    match entered {
        Some(LifecycleStage::Opportunity) => out.push(d(at, Metric::Opportunities, 1)),
        Some(LifecycleStage::Customer) => {
            out.push(d(at, Metric::ClosedWon, 1));
            let first = old.map_or(true, |o| o.converted_at.is_none());
            if first {
                new.converted_at = Some(at);
                out.push(d(created, Metric::Converted, 1));
                out.push(d(created, Metric::CycleSeconds, (at - created).num_seconds().max(0)));
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CustomerFields;
    use chrono::TimeZone;

    #[test]
    fn conversion_is_counted_once_in_the_creation_cohort() {
        let t0 = Utc.with_ymd_and_hms(2024, 2, 28, 10, 0, 0).unwrap();
        let mut c = CustomerFields { name: Some("A".into()), engagement_score: Some(30), ..Default::default() }
            .into_new_customer("cstm_a".into(), t0);
        let created = rollup_deltas(None, &mut c, t0);
        assert_eq!(created, vec![d(t0, Metric::NewLeads, 1), d(t0, Metric::Bucket26To50, 1)]);

        let t1 = Utc.with_ymd_and_hms(2024, 2, 29, 10, 0, 0).unwrap();
        let mut won = c.clone();
        won.lifecycle_stage = LifecycleStage::Customer;
        let deltas = rollup_deltas(Some(&c), &mut won, t1);
        assert_eq!(
            deltas,
            vec![d(t1, Metric::ClosedWon, 1), d(t0, Metric::Converted, 1), d(t0, Metric::CycleSeconds, 86_400)]
        );
        assert_eq!(won.converted_at, Some(t1));

        // Churn then back to Customer: a second closedWon, but no second conversion.
        let mut churned = won.clone();
        churned.lifecycle_stage = LifecycleStage::Churn;
        assert!(rollup_deltas(Some(&won), &mut churned, t1).is_empty());
        let mut back = churned.clone();
        back.lifecycle_stage = LifecycleStage::Customer;
        assert_eq!(rollup_deltas(Some(&churned), &mut back, t1), vec![d(t1, Metric::ClosedWon, 1)]);
    }
}
