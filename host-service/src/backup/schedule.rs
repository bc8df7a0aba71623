//! When scheduled backups are due, and the host's loop that starts them.
//!
//! A schedule has slots (daily at HH:MM UTC, or every N hours from the epoch). The loop wakes
//! at the next slot and starts a `scheduled` run. At start-up, if the newest slot that has
//! passed is later than both the newest run and the time the schedule was saved, the host was
//! off when it came: one `missed` run starts (once, however many slots were missed).
//! Slots are computed from a given `now`, so the tests drive time by passing it.

use chrono::{DateTime, Duration, TimeZone, Timelike, Utc};
use taos_proto::backup::{BackupReason, BackupSchedule, DrillReason};

use super::{BackupError, Backups};

pub const MAX_EVERY_HOURS: u32 = 168;
/// The loop re-reads the settings at least this often, so a changed schedule applies soon.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

pub fn validate(schedule: &BackupSchedule) -> Result<(), BackupError> {
    match *schedule {
        BackupSchedule::Off => Ok(()),
        BackupSchedule::Daily { hour, minute } if hour < 24 && minute < 60 => Ok(()),
        BackupSchedule::Daily { .. } => Err(BackupError::BadInput(
            "schedule: daily needs hour 0–23 and minute 0–59 (UTC)".into(),
        )),
        BackupSchedule::EveryHours { hours } if (1..=MAX_EVERY_HOURS).contains(&hours) => Ok(()),
        BackupSchedule::EveryHours { .. } => Err(BackupError::BadInput(format!(
            "schedule: every_hours needs hours 1–{MAX_EVERY_HOURS}"
        ))),
    }
}

/// The newest slot at or before `now`; `None` when the schedule is off.
pub fn last_slot(schedule: &BackupSchedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match *schedule {
        BackupSchedule::Off => None,
        BackupSchedule::Daily { hour, minute } => {
            let today = now
                .with_hour(u32::from(hour))?
                .with_minute(u32::from(minute))?
                .with_second(0)?
                .with_nanosecond(0)?;
            Some(if today <= now {
                today
            } else {
                today - Duration::days(1)
            })
        }
        BackupSchedule::EveryHours { hours } => {
            let period = i64::from(hours) * 3600;
            let secs = now.timestamp();
            Utc.timestamp_opt(secs - secs.rem_euclid(period), 0)
                .single()
        }
    }
}

/// The first slot after `now`.
pub fn next_slot(schedule: &BackupSchedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let last = last_slot(schedule, now)?;
    Some(match *schedule {
        BackupSchedule::Off => return None,
        BackupSchedule::Daily { .. } => last + Duration::days(1),
        BackupSchedule::EveryHours { hours } => last + Duration::hours(i64::from(hours)),
    })
}

/// Whether a slot passed unrun: the newest slot by `now` is after the newest run and after the
/// schedule was saved (a slot before that belonged to no schedule).
pub fn missed(
    schedule: &BackupSchedule,
    now: DateTime<Utc>,
    saved_at: DateTime<Utc>,
    last_run: Option<DateTime<Utc>>,
) -> bool {
    let Some(slot) = last_slot(schedule, now) else {
        return false;
    };
    slot > saved_at && last_run.is_none_or(|run| slot > run)
}

impl Backups {
    /// At start-up (after `recover`): one `missed` run if a slot passed while the host was off.
    pub async fn run_missed(&self) -> Result<(), BackupError> {
        let Some(stored) = self.stored().await? else {
            return Ok(());
        };
        let last_run: Option<i64> = sqlx::query_scalar("SELECT MAX(created_at) FROM backup_runs")
            .fetch_one(&self.0.db)
            .await?;
        let now = Utc::now();
        if missed(
            &stored.schedule,
            now,
            crate::db::from_ms(stored.updated_at),
            last_run.map(crate::db::from_ms),
        ) {
            let run = self.start_for(BackupReason::Missed).await?;
            tracing::warn!(run = %run.id, "a scheduled backup was missed while the host was off; running it now");
        }
        Ok(())
    }

    /// Starts a `scheduled` restore drill when `drill_every_days` have passed (checked on
    /// every turn of the loop, so at least once a minute and once at start-up: a drill that
    /// fell due while the host was off runs when it starts).
    async fn drill_if_due(&self, now: DateTime<Utc>) {
        match self.drill_due(now).await {
            Ok(false) => {}
            Ok(true) => match self.start_drill(DrillReason::Scheduled).await {
                Ok(drill) => tracing::info!(drill = %drill.id, "scheduled restore drill started"),
                // A backup is running: the drill waits for the next turn.
                Err(BackupError::Conflict(why)) => tracing::debug!(%why, "scheduled drill waits"),
                Err(e) => tracing::error!(error = %e, "cannot start the scheduled restore drill"),
            },
            Err(e) => tracing::error!(error = %e, "cannot tell whether a restore drill is due"),
        }
    }

    /// The host's schedule loop: sleeps to the next slot (re-reading the settings every
    /// minute) and starts a `scheduled` run there. Runs until the host stops.
    pub async fn schedule_loop(self) {
        let mut due: Option<DateTime<Utc>> = None;
        loop {
            let schedule = match self.stored().await {
                Ok(Some(stored)) => stored.schedule,
                Ok(None) => BackupSchedule::Off,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the backup schedule");
                    BackupSchedule::Off
                }
            };
            let now = Utc::now();
            match (due, next_slot(&schedule, now)) {
                (Some(slot), _) if slot <= now => {
                    due = None;
                    match self.start_for(BackupReason::Scheduled).await {
                        Ok(run) => tracing::info!(run = %run.id, "scheduled backup started"),
                        // A backup asked for by hand is running: it is this slot's backup.
                        Err(BackupError::AlreadyRunning(id)) => {
                            tracing::info!(run = %id, "a backup is already running at the scheduled time")
                        }
                        // Recorded nowhere else: the log and a notification say it.
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start the scheduled backup");
                            self.announce_failure("", &e.to_string(), e.advice()).await;
                        }
                    }
                    continue;
                }
                (_, next) => due = next,
            }
            self.drill_if_due(now).await;
            let wait = due
                .and_then(|slot| (slot - now).to_std().ok())
                .map_or(RECHECK, |until| until.min(RECHECK));
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn slots_of_a_daily_schedule() {
        let daily = BackupSchedule::Daily {
            hour: 3,
            minute: 30,
        };
        assert_eq!(
            last_slot(&daily, at("2026-12-06T10:00:00Z")),
            Some(at("2026-12-06T03:30:00Z"))
        );
        assert_eq!(
            last_slot(&daily, at("2026-12-06T03:00:00Z")),
            Some(at("2026-12-05T03:30:00Z"))
        );
        assert_eq!(
            next_slot(&daily, at("2026-12-06T10:00:00Z")),
            Some(at("2026-12-07T03:30:00Z"))
        );
        assert_eq!(
            last_slot(&BackupSchedule::Off, at("2026-12-06T10:00:00Z")),
            None
        );
    }

    #[test]
    fn slots_of_every_n_hours() {
        let six = BackupSchedule::EveryHours { hours: 6 };
        assert_eq!(
            last_slot(&six, at("2026-12-06T10:59:00Z")),
            Some(at("2026-12-06T06:00:00Z"))
        );
        assert_eq!(
            next_slot(&six, at("2026-12-06T10:59:00Z")),
            Some(at("2026-12-06T12:00:00Z"))
        );
    }

    #[test]
    fn a_slot_is_missed_only_after_the_schedule_and_the_last_run() {
        let daily = BackupSchedule::Daily { hour: 3, minute: 0 };
        let now = at("2026-12-06T10:00:00Z");
        // Saved two days ago, never run: missed.
        assert!(missed(&daily, now, at("2026-12-04T12:00:00Z"), None));
        // Run at today's slot: not missed.
        assert!(!missed(
            &daily,
            now,
            at("2026-12-04T12:00:00Z"),
            Some(at("2026-12-06T03:00:01Z"))
        ));
        // Ran yesterday, today's slot passed: missed.
        assert!(missed(
            &daily,
            now,
            at("2026-12-04T12:00:00Z"),
            Some(at("2026-12-05T03:00:01Z"))
        ));
        // Saved after today's slot: nothing missed yet.
        assert!(!missed(&daily, now, at("2026-12-06T09:00:00Z"), None));
        assert!(!missed(
            &BackupSchedule::Off,
            now,
            at("2026-01-01T00:00:00Z"),
            None
        ));
        validate(&BackupSchedule::Daily {
            hour: 24,
            minute: 0,
        })
        .unwrap_err();
        validate(&BackupSchedule::EveryHours { hours: 0 }).unwrap_err();
        validate(&BackupSchedule::EveryHours { hours: 169 }).unwrap_err();
        validate(&BackupSchedule::EveryHours { hours: 6 }).unwrap();
    }
}
