//! RDB / AOF-rewrite loading: `Queue::apply_record` is what `rdb_load` and `VT._LOAD` run on every
//! stored record. Input = records framed as [u16 LE length][bytes] (a 0 length ends them) followed
//! by an operation script. Properties:
//! * loading arbitrary bytes never panics (a panic inside rdb_load fails the whole load);
//! * whatever loaded is self-consistent: `record_count()` equals the records `rdb_save` writes
//!   (else the RDB it writes is corrupt: the loader reads the next key's bytes as records);
//! * save -> load round-trips exactly, before and after a random sequence of queue operations
//!   (fetch/ack/fail/rescue/extend/promote/uniques/schedule fires) on the loaded state.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use vtasks::queue::Queue;

/// GAUNTLET_FUZZ_SKIP_KNOWN=1: drop inputs that hit the findings already reported in
/// tests/gauntlet/FINDINGS.md (colliding index keys / absurd header seq on load), so a run keeps
/// exploring for new ones. Off by default: the gauntlet reports them until they are fixed.
fn skip_known() -> bool {
    static S: OnceLock<bool> = OnceLock::new();
    *S.get_or_init(|| std::env::var("GAUNTLET_FUZZ_SKIP_KNOWN").map(|v| v == "1").unwrap_or(false))
}

fn check_roundtrip(q: &Queue, when: &str) {
    let recs = q.records();
    assert_eq!(
        recs.len(),
        q.record_count(),
        "{when}: record_count() != records written (rdb_save would write a corrupt count)"
    );
    let mut q2 = Queue::default();
    for r in &recs {
        q2.apply_record(r).unwrap_or_else(|e| panic!("{when}: a record we wrote does not load: {e}"));
    }
    assert!(q2.records() == recs, "{when}: save/load round trip differs");
}

const OPS: [&str; 11] = [
    "promote", "fetch", "ack", "fail", "rescue_expired", "rescue_worker", "extend", "purge_uniques",
    "fire_schedules", "retry_dead", "advance_clock",
];

fuzz_target!(|data: &[u8]| {
    let mut q = Queue::default();
    let mut i = 0usize;
    let mut n = 0;
    while i + 2 <= data.len() && n < 64 {
        let len = u16::from_le_bytes([data[i], data[i + 1]]) as usize;
        i += 2;
        if len == 0 {
            break;
        }
        let end = (i + len).min(data.len());
        // rdb_load applies the header record first and only once: keep that shape
        if data.get(i) != Some(&b'H') || n == 0 {
            let _ = q.apply_record(&data[i..end]);
        }
        i = end;
        n += 1;
    }
    if skip_known() {
        let mut seqs: Vec<u64> = q.tasks.values().map(|t| t.seq).collect();
        seqs.sort_unstable();
        let dup_seq = seqs.windows(2).any(|w| w[0] == w[1]);
        if dup_seq || q.records().len() != q.record_count() || q.next_seq > 1 << 62 {
            return;
        }
    }
    check_roundtrip(&q, "after load");
    let ops = &data[i.min(data.len())..];
    let mut now: i64 = 1_764_000_000_000;
    let mut tok: u64 = 0x1000;
    let mut held: Vec<(Vec<u8>, u64)> = Vec::new();
    for (k, &op) in ops.iter().take(64).enumerate() {
        match op % 11 {
            0 => {
                q.promote(now);
            }
            1 => {
                let mut next = || {
                    tok += 1;
                    tok
                };
                let got = q.fetch(now, b"w", (op as usize / 11) % 5 + 1, now + 1000, &mut next);
                held.extend(got.into_iter().map(|f| (f.id, f.token)));
            }
            2 => {
                if let Some((id, t)) = held.pop() {
                    q.ack(now, &id, Some(t));
                }
            }
            3 => {
                if let Some((id, t)) = held.pop() {
                    let retry = if op & 0x80 != 0 { Some(0) } else { None };
                    q.fail(now, 4, &id, Some(t), b"fuzz", retry);
                }
            }
            4 => {
                q.rescue_expired(now, 4);
            }
            5 => {
                q.rescue_worker(b"w", now, 4);
            }
            6 => {
                q.extend(b"w", now.saturating_add(500));
            }
            7 => {
                q.purge_uniques(now);
            }
            8 => {
                for name in q.due_schedules(now) {
                    tok += 1;
                    q.fire_schedule(&name, format!("s{tok}").into_bytes(), now, 3);
                }
            }
            9 => {
                q.retry_dead(None);
            }
            _ => {
                now = now.saturating_add(op as i64 * 50);
            }
        }
        let _ = q.next_due();
        let _ = q.mem_usage();
        let _ = q.sizes();
        check_roundtrip(&q, &format!("after op #{k} ({} = op {op})", OPS[(op % 11) as usize]));
    }
});
