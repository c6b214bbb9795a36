//! Statistics for operators (scope `stats`): users, groups, and per day the messages stored and
//! the users active.

use actix_web::web;
use serde::{Deserialize, Serialize};

use confab_actors::engine::MAX_STATS_DAYS;

use super::schema::operation_errors;
use super::{ok, resources, scope, ApiResult, Signed};
use crate::http::AppState;

resources! {
    Stats:
    "/stats" => get stats;
}

operation_errors! {
    StatsErrors: InvalidRequest("days out of 1 to 90, an unknown parameter"), Unavailable;
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// How many days, today (UTC) included: 1 to 90 (default 7).
    #[serde(default)]
    #[param(minimum = 1, maximum = 90)]
    days: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StatsRes {
    /// Users with a record (created or imported through this API).
    users: u64,
    /// Groups not dismissed.
    groups: u64,
    /// Users connected to this node now (across a cluster: ask each node, or use presence webhooks).
    online_here: u64,
    /// One entry per day, oldest first.
    days: Vec<DayRes>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DayRes {
    /// The day (UTC), `YYYY-MM-DD`.
    date: String,
    /// Messages stored that day, users' and system messages (not the notices of group changes).
    messages: u64,
    /// Users who connected over WebSocket that day, to any node.
    active_users: u64,
}

/// Counts for operators: users, live groups and, per day, messages stored and active users. The
/// daily counts are kept as things happen (no scan of the messages); users and groups are counted
/// when asked.
#[utoipa::path(get, path = "/stats",
    params(StatsQuery),
    responses((status = 200, description = "The counts", body = StatsRes), StatsErrors))]
async fn stats(s: Signed<scope::Stats, StatsQuery>, state: web::Data<AppState>) -> ApiResult {
    let days = s.query.days.unwrap_or(7).min(MAX_STATS_DAYS + 1);
    let st = state.engine.stats(days).await?;
    let online_here = state.engine.registry().users().len() as u64;
    let days = st
        .days
        .into_iter()
        .map(|d| DayRes { date: date_of(d.day), messages: d.messages, active_users: d.active_users })
        .collect();
    ok(&StatsRes { users: st.users, groups: st.groups, online_here, days })
}

/// `YYYY-MM-DD` of a day since the Unix epoch (the proleptic Gregorian calendar, UTC).
fn date_of(day: u32) -> String {
    // Days from 0000-03-01, in 400-year eras of 146097 days (H. Hinnant's civil_from_days).
    let z = i64::from(day) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_of_days() {
        assert_eq!(super::date_of(0), "1970-01-01");
        assert_eq!(super::date_of(59), "1970-03-01");
        assert_eq!(super::date_of(11_016), "2000-02-29");
        assert_eq!(super::date_of(20_794), "2026-12-07");
    }
}
