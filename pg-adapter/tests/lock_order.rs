//! The hot paths run concurrently against a real Postgres never deadlock (PROTOCOL.md, "Lock
//! order"): acks with results, fetches, lease extension (the worker's heartbeat), failures,
//! rescues, maintenance (lease rescue, result/unique purge, stats folding) and operator deletes,
//! all on the same rows at once. Any error fails the test; a 40P01 names itself.
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use common::*;
use vtasks_pg::{Config, Delivery, EnqueueOpts};

const Q: &str = "burst";
const ROUNDS: usize = 12;
const PER_ROUND: usize = 600;

fn record(errors: &Mutex<Vec<String>>, what: &str, r: Result<impl Sized, vtasks_pg::Error>) {
    if let Err(e) = r {
        errors.lock().unwrap().push(format!("{what}: {e}"));
    }
}

/// Ids whose sort order is the reverse of their enqueue (and so fetch and deadline) order: a
/// statement that locks rows in scan order then differs from one that locks them by id.
fn ids(round: usize) -> Vec<Option<String>> {
    (0..PER_ROUND).map(|i| Some(format!("r{round:03}-{:05}", 99_999 - i))).collect()
}

fn pairs(ds: &[Delivery]) -> Vec<(String, String)> {
    ds.iter().map(|d| (d.id.clone(), d.token.clone())).collect()
}

#[test]
fn hot_paths_never_deadlock() {
    let db = TestDb::new();
    let q = Arc::new(db.queue(Config { pool_size: 16, dlq_cap: 50, max_attempts: 2, ..cfg() }));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let qs = vec![Q.to_string()];

    // Background: the heartbeat of worker "w" (extends every lease of "w" at once), the
    // maintenance loop (rescue of expired leases, purges, stats folding), an operator deleting
    // ready tasks by id, and store_result on ids the acks also write.
    let mut bg = Vec::new();
    for kind in 0..4 {
        let (q, errors, stop) = (q.clone(), errors.clone(), stop.clone());
        bg.push(thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match kind {
                    0 => record(&errors, "extend", q.extend(Q, "w", 60_000)),
                    1 => record(&errors, "maintain", q.maintain()),
                    2 => {
                        let victims: Vec<String> = (0..20)
                            .map(|i| format!("r{:03}-{:05}", n % ROUNDS, 99_999 - (n * 7 + i * 13) % PER_ROUND))
                            .collect();
                        record(&errors, "delete", q.delete(Q, victims));
                    }
                    _ => {
                        let rows: Vec<(String, Vec<u8>, i64)> = (0..50)
                            .rev()
                            .map(|i| (format!("r{:03}-{:05}", n % ROUNDS, 99_999 - i * 3), b"{}".to_vec(), 1))
                            .collect();
                        record(&errors, "store_results", q.store_results(&rows));
                    }
                }
            }
        }));
    }

    for round in 0..ROUNDS {
        q.enqueue(Q, payloads(PER_ROUND, "t"), EnqueueOpts { ids: Some(ids(round)), ..Default::default() }).unwrap();
        // Four fetchers of worker "w" ack what they got in two overlapping-in-time halves, with
        // results; a fifth takes tasks on a 1 ms lease (rescued by maintain) or fails them.
        let mut fg = Vec::new();
        for f in 0..5 {
            let (q, errors, acked, qs) = (q.clone(), errors.clone(), acked.clone(), qs.clone());
            fg.push(thread::spawn(move || loop {
                let lease = if f == 4 { Some(1) } else { None };
                let worker = if f == 4 { "short" } else { "w" };
                let got = match q.fetch(&qs, worker, 60, lease, None) {
                    Ok(Some(g)) => g,
                    Ok(None) => return,
                    Err(e) => {
                        record(&errors, "fetch", Err::<(), _>(e));
                        return;
                    }
                };
                if got.is_empty() {
                    return;
                }
                if f == 4 {
                    for d in got.iter().step_by(3) {
                        record(&errors, "fail", q.fail(Q, &d.id, &d.token, "boom", Some(0)));
                    }
                    continue;
                }
                let (a, b) = got.split_at(got.len() / 2);
                for half in [b, a] {
                    let results: Vec<_> = half.iter().rev().map(|d| (d.id.clone(), b"null".to_vec(), 1)).collect();
                    match q.ack_with_results(Q, &pairs(half), &results) {
                        Ok(n) => {
                            acked.fetch_add(n as usize, Ordering::Relaxed);
                        }
                        Err(e) => record(&errors, "ack", Err::<(), _>(e)),
                    }
                }
            }));
        }
        for t in fg {
            t.join().unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in bg {
        t.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    let deadlocks = errors.iter().filter(|e| e.contains("40P01")).count();
    assert_eq!(deadlocks, 0, "{deadlocks} deadlock(s); first errors: {:?}", &errors[..errors.len().min(5)]);
    assert!(errors.is_empty(), "errors: {:?}", &errors[..errors.len().min(5)]);
    assert!(acked.load(Ordering::Relaxed) > ROUNDS * PER_ROUND / 4, "the acks did run");
}

/// Rows go in in id order (the lock order), but FIFO stays the caller's order: for a batch, and for
/// dead entries brought back by retry_dead (in the order they died).
#[test]
fn batches_keep_the_callers_order() {
    let db = TestDb::new();
    let q = db.queue(Config { max_attempts: 1, ..cfg() });
    let qs = vec!["o".to_string()];
    let ids: Vec<Option<String>> = ["c", "a", "d", "b"].iter().map(|s| Some(s.to_string())).collect();
    q.enqueue("o", payloads(4, "p"), EnqueueOpts { ids: Some(ids), ..Default::default() }).unwrap();
    let got = q.fetch(&qs, "w", 10, None, None).unwrap().unwrap();
    assert_eq!(got.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["c", "a", "d", "b"]);
    for d in &got {
        assert_eq!(q.fail("o", &d.id, &d.token, "x", None).unwrap().as_deref(), Some("dead"));
    }
    assert_eq!(q.retry_dead("o", None).unwrap(), 4);
    let again = q.fetch(&qs, "w", 10, None, None).unwrap().unwrap();
    assert_eq!(again.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["c", "a", "d", "b"]);
}

/// A burst leaves the task table full of dead rows long before autovacuum's next look (once a
/// minute); maintain() vacuums it then, so the next burst's fetches do not walk them.
#[test]
fn maintain_vacuums_the_task_table_after_a_burst() {
    let db = TestDb::new();
    let mut admin = db.client();
    // autovacuum off for this table, so only maintain() can be the one that vacuums
    admin.batch_execute("ALTER TABLE vtasks_task SET (autovacuum_enabled = false)").unwrap();
    let q = db.queue(cfg());
    let qs = vec!["v".to_string()];
    for _ in 0..12 {
        q.enqueue("v", vec![b"x".to_vec(); 1000], EnqueueOpts::default()).unwrap();
    }
    loop {
        let got = q.fetch(&qs, "w", 1000, None, None).unwrap().unwrap();
        if got.is_empty() {
            break;
        }
        q.ack("v", &pairs(&got)).unwrap();
    }
    let dead = |c: &mut postgres::Client| -> i64 {
        c.query_one("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'vtasks_task'", &[]).unwrap().get(0)
    };
    // 24,000 dead rows (claim + ack of 12,000), reported once the backends flush their stats.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut vacuumed = false;
    while std::time::Instant::now() < deadline {
        let m: std::collections::HashMap<_, _> = q.maintain().unwrap().into_iter().collect();
        if m["tasks_vacuumed"] == 1 {
            vacuumed = true;
            break;
        }
        thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(vacuumed, "maintain() never vacuumed (n_dead_tup {})", dead(&mut admin));
    let vacuums: i64 = admin
        .query_one("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'vtasks_task'", &[])
        .unwrap()
        .get(0);
    assert!(vacuums >= 1);
    let m: std::collections::HashMap<_, _> = q.maintain().unwrap().into_iter().collect();
    assert_eq!(m["tasks_vacuumed"], 0, "not again while the table is clean");
}
