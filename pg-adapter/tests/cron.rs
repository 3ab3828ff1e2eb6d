//! Cron expressions read as crontab reads them (the rule lives in `vtasks-protocol`, shared with the
//! module): a schedule stored through the adapter gets its next tick on the right weekday.
mod common;

use common::*;

/// Weekday of a unix-ms instant in UTC, crontab numbering (0 = Sunday, 1 = Monday, ...).
fn weekday(ms: i64) -> i64 {
    (ms.div_euclid(86_400_000) + 4).rem_euclid(7) // 1970-01-01 was a Thursday (4)
}

fn next_run(q: &vtasks_pg::PgQueue, name: &str) -> i64 {
    q.schedule_list("cron").unwrap().into_iter().find(|s| s.name == name).unwrap().next_run_ms
}

#[test]
fn five_field_day_of_week_follows_crontab_and_macros_work() {
    let db = TestDb::new();
    let q = db.queue(cfg());
    for (name, expr) in
        [("monday", "0 9 * * 1"), ("sunday0", "0 9 * * 0"), ("sunday7", "0 9 * * 7"), ("fri", "0 9 * * FRI")]
    {
        q.schedule_set("cron", name, b"p".to_vec(), Some(expr), None, 0).unwrap();
    }
    q.schedule_set("cron", "weekly", b"p".to_vec(), Some("@weekly"), None, 0).unwrap();
    q.schedule_set("cron", "hourly", b"p".to_vec(), Some("@hourly"), None, 0).unwrap();
    let m = next_run(&q, "monday");
    assert_eq!(weekday(m), 1, "0 9 * * 1 must fire on a Monday (next run {m})");
    assert_eq!(m.rem_euclid(86_400_000), 9 * 3_600_000);
    assert_eq!(weekday(next_run(&q, "sunday0")), 0);
    assert_eq!(weekday(next_run(&q, "sunday7")), 0);
    assert_eq!(weekday(next_run(&q, "fri")), 5);
    let w = next_run(&q, "weekly");
    assert_eq!((weekday(w), w.rem_euclid(86_400_000)), (0, 0), "@weekly = Sunday midnight");
    assert_eq!(next_run(&q, "hourly").rem_euclid(3_600_000), 0);
    let bad = q.schedule_set("cron", "bad", b"p".to_vec(), Some("0 9 * * 8"), None, 0);
    assert!(matches!(bad, Err(vtasks_pg::Error::Invalid(ref m)) if m.contains("out of range")), "{bad:?}");
}
