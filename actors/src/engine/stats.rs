//! Statistics: which users were active on which day (recorded as they connect), and the counts
//! an operator asks for (`GET /api/v1/stats`).

use super::*;
use crate::store::{day_of, Stats};

/// Most days one statistics request covers.
pub const MAX_STATS_DAYS: u32 = 90;
/// Users waiting to be recorded active; beyond, new ones are dropped (and logged).
const ACTIVE_QUEUE: usize = 65_536;
/// Users recorded in one store write.
const ACTIVE_BATCH: usize = 500;

impl Engine {
    /// Records `user` active today (the first time this node sees them today). Never waits and
    /// never fails the caller: the write happens on a task, a failed one is logged and tried
    /// again at the user's next connection.
    pub fn note_active(&self, user: &Arc<str>) {
        let day = day_of(crate::clock::now_ms());
        {
            let mut a = self.core.activity.lock().unwrap_or_else(|p| p.into_inner());
            if a.day != day {
                a.day = day;
                a.seen.clear();
            }
            if a.seen.contains(user) {
                return;
            }
            if a.queue.len() >= ACTIVE_QUEUE {
                tracing::warn!(%user, "too many users waiting to be recorded active; dropped");
                return;
            }
            a.seen.insert(user.clone());
            a.queue.push((day, user.clone()));
            if a.draining {
                return;
            }
            a.draining = true;
        }
        let core = self.core.clone();
        let drain = async move {
            loop {
                let (day, users) = {
                    let mut a = core.activity.lock().unwrap_or_else(|p| p.into_inner());
                    let Some(&(day, _)) = a.queue.first() else {
                        a.draining = false;
                        return;
                    };
                    let n = a.queue.iter().take(ACTIVE_BATCH).take_while(|(d, _)| *d == day).count();
                    let users: Vec<Arc<str>> = a.queue.drain(..n).map(|(_, u)| u).collect();
                    (day, users)
                };
                let ids: Vec<String> = users.iter().map(|u| u.to_string()).collect();
                if let Err(e) = core.store.record_active(day, &ids).await {
                    tracing::warn!(error = %e, users = ids.len(), "could not record active users");
                    let mut a = core.activity.lock().unwrap_or_else(|p| p.into_inner());
                    for u in &users {
                        a.seen.remove(u);
                    }
                }
            }
        };
        super::spawn_on_main(drain);
    }

    /// The counts of the last `days` days (today included, UTC), 1 to [`MAX_STATS_DAYS`].
    pub async fn stats(&self, days: u32) -> Result<Stats> {
        if !(1..=MAX_STATS_DAYS).contains(&days) {
            return Err(Error::invalid(format!("days must be 1 to {MAX_STATS_DAYS}")));
        }
        let today = day_of(crate::clock::now_ms());
        Ok(self.core.store.stats(today.saturating_sub(days - 1), today).await?)
    }
}
