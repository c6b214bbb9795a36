//! Surviving I/O errors (disk full, `EFBIG`, `EIO`): the shared database [`Handle`] and the
//! writer's [`Recovery`].
//!
//! After an I/O error redb refuses every later transaction of that `Database`
//! (`StorageError::PreviousIo`) and its in-memory state may need a repair, which it only does
//! when the file is opened. So the store drops the `Database` and opens the file again: every
//! acknowledged commit was fsynced and is there, and redb repairs the allocator on open if it
//! needs to (giving back the pages the failed transaction had taken).
//!
//! The writer thread owns recovery. When a batch fails and the database refuses a new write
//! transaction, it takes the handle away ([`Handle::db`] answers `Unavailable`, so reads and new
//! writes fail at once, and `ping` fails), then tries to open the file again after 200 ms,
//! doubling the wait up to 5 s. An attempt first checks that the file has room to grow
//! ([`room_to_grow`]): a re-open itself needs no new space, so without that check a full disk
//! would be re-opened only for the next write to fail again. A re-opened database is published at
//! once (reads and writes go through again), but the store counts as healthy (`ping`, `/readyz`)
//! only after a probation of one second without a failure, so that a disk that passed the check
//! but is still short of space does not make the node flap between ready and not. The waits keep
//! growing while failures keep coming (they start again from 200 ms only for a failure a minute
//! after the one before), so such flapping slows down to one attempt per 5 s.
//!
//! Logging is bounded: the store going down is logged at `error`, then at most one `warn` per
//! 10 s while it stays down (with the counts of refused operations, failures and failed re-opens
//! since the last line) and one `info` line when it is healthy again. Going down again less than
//! 10 s after the last line is only counted, and reported in the next line.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use confab_actors::error::StoreError;
use confab_actors::metrics::Metrics;
use confab_actors::store::StoreResult;
use redb::Database;

use super::tables::unavailable;

/// The first wait before re-opening the database after an I/O error.
const RETRY_MIN: Duration = Duration::from_millis(200);
/// The longest wait between two re-open attempts.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// A failure this long after the previous one starts the waits again from [`RETRY_MIN`].
const CALM: Duration = Duration::from_secs(60);
/// How long a re-opened database must work before the store counts as healthy again.
const PROBATION: Duration = Duration::from_secs(1);
/// At most one `error` or `warn` line per this period while the store is failing.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What every operation answers while the database is closed for recovery.
pub(super) const DOWN: &str = "the store is re-opening its database after an I/O error";

/// Opens (or creates) the database at `path` and creates every table that does not exist, so
/// read transactions can always open them. The commit this takes also shows that the file can
/// be written.
pub(super) fn open_database(path: &Path) -> StoreResult<Database> {
    let db =
        Database::create(path).map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    let txn = db.begin_write().map_err(unavailable)?;
    super::create_tables(&txn)?;
    txn.commit().map_err(unavailable)?;
    Ok(db)
}

/// The database the writer and the readers share, and whether the store is healthy.
pub(super) struct Handle {
    path: PathBuf,
    /// `None` while the writer re-opens the database. Readers clone the `Arc` for one read; the
    /// file is released (and can be opened again) once the last of them is done.
    db: RwLock<Option<Arc<Database>>>,
    /// False while the database is closed and during the probation after a re-open: `ping`
    /// fails.
    healthy: AtomicBool,
    /// A read failed with `Unavailable`: the writer has been asked to check the database.
    check_asked: AtomicBool,
    /// Operations answered `Unavailable` by [`Handle::db`] since the writer last logged them.
    refused: AtomicU64,
}

impl Handle {
    pub(super) fn new(path: PathBuf, db: Database, metrics: &Metrics) -> Handle {
        metrics.store_embedded_healthy.store(1, Relaxed);
        Handle {
            path,
            db: RwLock::new(Some(Arc::new(db))),
            healthy: AtomicBool::new(true),
            check_asked: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        }
    }

    /// The current database, or `Unavailable` (counted for the log) while it is being re-opened.
    pub(super) fn db(&self) -> StoreResult<Arc<Database>> {
        let db = self.db.read().unwrap_or_else(|p| p.into_inner()).clone();
        db.ok_or_else(|| {
            self.refused.fetch_add(1, Relaxed);
            StoreError::Unavailable(DOWN.into())
        })
    }

    pub(super) fn healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// True for the first caller since the writer last ran a batch: that caller queues a batch
    /// that makes the writer check the database (reads cannot tell an I/O error from a corrupt
    /// record, and only a write transaction shows whether redb has failed).
    pub(super) fn ask_check(&self) -> bool {
        !self.check_asked.swap(true, Relaxed)
    }

    fn set(&self, db: Option<Arc<Database>>) {
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = db;
    }
}

/// Bytes [`room_to_grow`] writes: room for a few hundred pages.
const PROBE_BYTES: usize = 1 << 20;

/// Whether the database file has room to grow, checked before a re-open. Re-opening needs no new
/// space (it writes the repair and an empty commit into the file as it is), so without this check
/// a full disk would let the store re-open, fail at the first write that needs a new page, and
/// start again, every few seconds. Writes [`PROBE_BYTES`] into a scratch file beside the database,
/// at the database's current length (sparse before that: it takes only `PROBE_BYTES` of disk, but
/// meets a file size limit where the database's next pages would), syncs it and removes it.
/// `Err` only for "no space" (`ENOSPC`, `EDQUOT`, `EFBIG`): other errors are left to the re-open
/// to find out.
fn room_to_grow(db_path: &Path) -> std::io::Result<()> {
    use std::io::{ErrorKind, Seek, SeekFrom, Write};
    let probe = db_path.with_extension("redb-space-probe");
    let written = (|| {
        let len = std::fs::metadata(db_path)?.len();
        let mut f = std::fs::File::create(&probe)?;
        f.seek(SeekFrom::Start(len))?;
        f.write_all(&vec![0; PROBE_BYTES])?;
        f.sync_data()
    })();
    let _ = std::fs::remove_file(&probe);
    match written {
        Err(e) if matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge) => {
            Err(e)
        }
        _ => Ok(()),
    }
}

/// Whether redb still accepts a write transaction. After an I/O error it refuses one at once
/// (`PreviousIo`); only the writer thread calls this, so it never waits for another writer.
pub(super) fn usable(db: &Database) -> bool {
    // redb asserts (panics) on some calls after a failed commit: a panic means "not usable".
    catch_unwind(AssertUnwindSafe(|| match db.begin_write() {
        Ok(txn) => txn.abort().is_ok(),
        Err(_) => false,
    }))
    .unwrap_or(false)
}

/// Drops a database handle. redb's `Drop` may write (a clean-shutdown mark) and can panic on a
/// database whose storage failed; that must not end the writer thread.
fn release(db: Arc<Database>) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(db)));
}

enum Mode {
    Healthy,
    /// Re-opened at `since`; healthy if nothing fails until `since + PROBATION`.
    Probation {
        since: Instant,
    },
    /// Closed; the next re-open attempt is at `retry_at`.
    Down {
        retry_at: Instant,
    },
}

/// The writer's recovery state: see the module documentation.
pub(super) struct Recovery {
    mode: Mode,
    /// The wait before the next re-open attempt.
    backoff: Duration,
    last_failure: Option<Instant>,
    log: OutageLog,
}

impl Recovery {
    pub(super) fn new() -> Recovery {
        Recovery { mode: Mode::Healthy, backoff: RETRY_MIN, last_failure: None, log: OutageLog::default() }
    }

    /// When the writer must act even without jobs (a re-open attempt, the end of the probation);
    /// `None` while healthy.
    pub(super) fn wake_at(&self) -> Option<Instant> {
        match self.mode {
            Mode::Healthy => None,
            Mode::Probation { since } => Some(since + PROBATION),
            Mode::Down { retry_at } => Some(retry_at),
        }
    }

    /// The operations of a batch were refused because the database is closed.
    pub(super) fn refused(&mut self, ops: usize) {
        self.log.refused += ops as u64;
    }

    /// Called after every batch, which may be the check a failed read asked for.
    pub(super) fn batch_done(&self, handle: &Handle) {
        handle.check_asked.store(false, Relaxed);
    }

    /// A batch failed with `error` and the database refuses new transactions: close it.
    pub(super) fn failed(&mut self, handle: &Handle, db: &mut Option<Arc<Database>>, error: &str, metrics: &Metrics) {
        let now = Instant::now();
        let wait = self.wait_after_failure(now);
        self.log.refused += handle.refused.swap(0, Relaxed);
        handle.healthy.store(false, Relaxed);
        handle.set(None);
        if let Some(old) = db.take() {
            release(old);
        }
        metrics.store_embedded_healthy.store(0, Relaxed);
        if matches!(self.mode, Mode::Healthy) {
            metrics.store_embedded_outages.fetch_add(1, Relaxed);
            self.log.went_down(now, error);
        } else {
            self.log.failed_again(now, error);
        }
        self.mode = Mode::Down { retry_at: now + wait };
    }

    /// The wait before the first re-open attempt after a failure at `now`.
    fn wait_after_failure(&mut self, now: Instant) -> Duration {
        if self.last_failure.is_none_or(|t| now.duration_since(t) >= CALM) {
            self.backoff = RETRY_MIN;
        }
        self.last_failure = Some(now);
        self.next_wait()
    }

    /// The current wait; the next one is twice as long, up to [`RETRY_MAX`].
    fn next_wait(&mut self) -> Duration {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
        wait
    }

    /// The time given by [`Recovery::wake_at`] has come: try to re-open, or end the probation.
    pub(super) fn on_time(&mut self, handle: &Handle, db: &mut Option<Arc<Database>>, metrics: &Metrics) {
        let now = Instant::now();
        self.log.refused += handle.refused.swap(0, Relaxed);
        match self.mode {
            Mode::Healthy => {}
            Mode::Probation { .. } => {
                self.mode = Mode::Healthy;
                handle.healthy.store(true, Relaxed);
                metrics.store_embedded_healthy.store(1, Relaxed);
                self.log.recovered(now);
            }
            Mode::Down { .. } => {
                // A reader may still hold the old database (redb then says it is already open):
                // that is one more failed attempt.
                let opened = room_to_grow(&handle.path)
                    .map_err(|e| StoreError::Unavailable(format!("no room for the database to grow: {e}")))
                    .and_then(|()| {
                        catch_unwind(AssertUnwindSafe(|| open_database(&handle.path)))
                            .unwrap_or_else(|_| Err(StoreError::Unavailable("opening the database panicked".into())))
                    });
                match opened {
                    Ok(new) => {
                        let new = Arc::new(new);
                        handle.set(Some(new.clone()));
                        *db = Some(new);
                        metrics.store_embedded_reopens.fetch_add(1, Relaxed);
                        self.mode = Mode::Probation { since: now };
                    }
                    Err(e) => {
                        self.log.attempt_failed(now, &e.to_string());
                        self.mode = Mode::Down { retry_at: now + self.next_wait() };
                    }
                }
            }
        }
    }
}

/// What was not logged since the last line, for the next one.
#[derive(Default)]
struct OutageLog {
    /// When the store went down (last left `Healthy`).
    since: Option<Instant>,
    last_line: Option<Instant>,
    /// Times the store went down (or failed again on probation) without a line.
    failures: u64,
    /// Re-open attempts that failed since the last line.
    attempts: u64,
    /// Operations answered `Unavailable` without running since the last line.
    refused: u64,
    last_error: String,
}

impl OutageLog {
    fn may_log(&self, now: Instant) -> bool {
        self.last_line.is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
    }

    fn logged(&mut self, now: Instant) {
        self.last_line = Some(now);
        (self.failures, self.attempts, self.refused) = (0, 0, 0);
    }

    // Each returns whether it printed a line.

    fn went_down(&mut self, now: Instant, error: &str) -> bool {
        self.since = Some(now);
        self.last_error = error.to_owned();
        if !self.may_log(now) {
            self.failures += 1;
            return false;
        }
        tracing::error!(
            error,
            failures_not_logged = self.failures,
            "the store failed to write: it answers `unavailable` until it has re-opened its database"
        );
        self.logged(now);
        true
    }

    fn failed_again(&mut self, now: Instant, error: &str) -> bool {
        self.failures += 1;
        self.last_error = error.to_owned();
        self.still_down(now)
    }

    fn attempt_failed(&mut self, now: Instant, error: &str) -> bool {
        self.attempts += 1;
        self.last_error = error.to_owned();
        self.still_down(now)
    }

    fn still_down(&mut self, now: Instant) -> bool {
        if !self.may_log(now) {
            return false;
        }
        tracing::warn!(
            error = %self.last_error,
            down_for = ?self.since.map(|s| now.duration_since(s)).unwrap_or_default(),
            failed_reopens = self.attempts,
            failures = self.failures,
            refused_operations = self.refused,
            "the store is still unavailable"
        );
        self.logged(now);
        true
    }

    fn recovered(&mut self, now: Instant) {
        tracing::info!(
            down_for = ?self.since.map(|s| now.duration_since(s)).unwrap_or_default(),
            failed_reopens = self.attempts,
            failures = self.failures,
            refused_operations = self.refused,
            "the store is writable again"
        );
        // Not `logged`: a recovery does not hold back the next error line.
        (self.failures, self.attempts, self.refused) = (0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minute of a full disk under load (a batch refused every 5 ms, a re-open attempt every 5 s,
    /// a re-open that fails again now and then), then a recovery, then a new failure soon after:
    /// one line per `LOG_EVERY` at most, besides the recovery, and nothing suppressed is lost.
    #[test]
    fn an_outage_logs_a_line_per_period_at_most() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut log = OutageLog::default();
        assert!(log.went_down(at(0), "File too large"), "the first failure is logged");
        let mut lines = vec![0];
        for ms in (5..=55_000).step_by(5) {
            log.refused += 1;
            let printed = if ms % 5_000 == 0 {
                log.attempt_failed(at(ms), "no room")
            } else if ms % 7_001 == 0 {
                log.failed_again(at(ms), "File too large")
            } else {
                false
            };
            if printed {
                lines.push(ms);
            }
        }
        assert_eq!(lines, vec![0, 10_000, 20_000, 30_000, 40_000, 50_000]);
        assert!(log.refused > 0 && log.attempts > 0, "what was not logged is counted for the next line");
        log.recovered(at(56_000));
        assert_eq!((log.refused, log.attempts, log.failures), (0, 0, 0), "the recovery line reports it");
        assert!(!log.went_down(at(57_000), "EIO"), "less than LOG_EVERY after the last line: counted");
        assert_eq!(log.failures, 1);
        assert!(log.attempt_failed(at(60_000), "no room"), "the next period's line");
        assert!(log.went_down(at(90_000), "EIO"));
    }

    /// 200 ms doubling to 5 s; failures that keep coming (even after a recovery) keep the long
    /// wait; one a minute after the last starts again from 200 ms.
    #[test]
    fn the_wait_doubles_to_five_seconds_and_starts_again_after_a_calm_minute() {
        let t0 = Instant::now();
        let mut r = Recovery::new();
        let ms = |d: Duration| d.as_millis() as u64;
        let mut waits = vec![ms(r.wait_after_failure(t0))];
        for _ in 0..6 {
            waits.push(ms(r.next_wait()));
        }
        assert_eq!(waits, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(ms(r.wait_after_failure(t0 + Duration::from_secs(30))), 5000, "flapping stays slow");
        assert_eq!(ms(r.wait_after_failure(t0 + Duration::from_secs(91))), 200, "a calm minute resets it");
    }
}
