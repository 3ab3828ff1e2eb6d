//! VT.SCHEDULE SET ... CRON "<expr>" and the schedule timer: the module parses untrusted cron text
//! (`vtasks::queue::parse_cron`) and computes next ticks (`cron_next`) inside a command or a timer.
//! A panic there fails the command; a hang stalls the server. Input: 8 bytes of "after" time then
//! the expression.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vtasks::queue::{cron_next, parse_cron, NEVER};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let after = i64::from_le_bytes(data[..8].try_into().unwrap());
    let Ok(s) = std::str::from_utf8(&data[8..]) else { return };
    if s.len() > 256 {
        return; // the command rejects longer expressions
    }
    if let Ok(sched) = parse_cron(s) {
        for base in [after, 1_764_000_000_000, 0, -1, i64::MAX / 4] {
            let t = cron_next(&sched, base);
            assert!(t == NEVER || t > base, "cron_next({base}) went backwards: {t}");
        }
    }
});
