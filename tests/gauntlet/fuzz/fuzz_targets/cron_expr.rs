//! VT.SCHEDULE SET ... CRON "<expr>": the module parses untrusted cron text and iterates its next
//! ticks inside a command or a timer. A panic there aborts the server; a hang stalls it. This
//! target feeds arbitrary strings through the same crate and version (parse + next ticks, also the
//! 5-field form the module accepts as "second 0").
#![no_main]
use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use std::str::FromStr;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if s.len() > 256 {
        return;
    }
    let five = s.split_whitespace().count() == 5;
    let expr = if five { format!("0 {s}") } else { s.to_string() };
    if let Ok(sched) = cron::Schedule::from_str(&expr) {
        let start = Utc.with_ymd_and_hms(2026, 11, 25, 9, 0, 0).unwrap();
        for t in sched.after(&start).take(3) {
            assert!(t > start);
        }
        let _ = sched.upcoming(Utc).next();
    }
});
