//! Measurement (not a test) for issue 12, section 2: fetch+ack latency behind a big backlog, and
//! the cost of purging a big results table. Prints a markdown section. Run via
//! `scripts/bench-pg --backlog` (a throwaway cluster) or
//!   VTASKS_PG_DSN=... cargo run --release -p vtasks-pg --example backlog -- [ready_rows] [result_rows]
//!
//! 1. Loads `ready_rows` ready tasks (server-side INSERT … SELECT, then VACUUM ANALYZE, as
//!    autovacuum would), then times 300 rounds of fetch(100) + ack with results from one client,
//!    p50/p99/max per round. The same rounds on an empty queue are the baseline.
//! 2. Churn: 30 bursts of 20,000 enqueued and drained (fetch 200 + ack), then the heap and index
//!    sizes of vtasks_task against its live rows, and the fetch latency again.
//! 3. Loads `result_rows` expired results, then calls maintain() until they are gone: ms per call
//!    (10,000 rows each) and total; and the ack latency while the table holds them.

use std::time::{Duration, Instant};

use vtasks_pg::{Config, EnqueueOpts, PgQueue};

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

fn rounds(q: &PgQueue, queue: &str, n: usize) -> (f64, f64, f64) {
    let qs = vec![queue.to_string()];
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let got = q.fetch(&qs, "bench", 100, Some(60_000), None).unwrap().unwrap();
        let pairs: Vec<_> = got.iter().map(|d| (d.id.clone(), d.token.clone())).collect();
        let results: Vec<_> = got.iter().map(|d| (d.id.clone(), b"null".to_vec(), 86_400_000)).collect();
        q.ack_with_results(queue, &pairs, &results).unwrap();
        t.push(t0.elapsed());
    }
    let max = t.iter().max().unwrap().as_secs_f64() * 1000.0;
    (pct(&mut t, 0.5), pct(&mut t, 0.99), max)
}

fn main() {
    let dsn = std::env::var("VTASKS_PG_DSN").expect("VTASKS_PG_DSN");
    let mut args = std::env::args().skip(1);
    let ready: i64 = args.next().map(|a| a.parse().unwrap()).unwrap_or(1_000_000);
    let results: i64 = args.next().map(|a| a.parse().unwrap()).unwrap_or(5_000_000);
    let q = PgQueue::new(&dsn, Config { pool_size: 4, notify: false, ..Config::default() }).unwrap();
    q.migrate().unwrap();
    let mut admin = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
    admin.batch_execute("TRUNCATE vtasks_task, vtasks_result, vtasks_stats_delta, vtasks_stats").unwrap();
    let size = |admin: &mut postgres::Client, rel: &str| -> f64 {
        let b: i64 = admin.query_one(&format!("SELECT pg_total_relation_size('{rel}')"), &[]).unwrap().get(0);
        b as f64 / 1048576.0
    };
    let version: String = admin.query_one("SHOW server_version", &[]).unwrap().get(0);
    println!("PostgreSQL {version}, one client, fetch(100) + ack with results per round; ms.\n");
    println!("| scenario | p50 | p99 | max |\n| --- | ---: | ---: | ---: |");

    // Baseline: a small queue.
    q.enqueue("small", vec![b"x".to_vec(); 1000], EnqueueOpts::default()).unwrap();
    q.enqueue("small", vec![b"x".to_vec(); 1000], EnqueueOpts::default()).unwrap();
    let (a, b, c) = rounds(&q, "small", 20);
    println!("| 2,000 ready rows | {a:.2} | {b:.2} | {c:.2} |");

    // 1. Backlog of `ready` rows in one queue.
    let t0 = Instant::now();
    admin
        .batch_execute(&format!(
            "INSERT INTO vtasks_task (queue, id, state, payload) \
             SELECT 'big', 'b' || lpad(i::text, 9, '0'), 'r', '\\x7878787878'::bytea \
             FROM generate_series(1, {ready}) i"
        ))
        .unwrap();
    admin.batch_execute("VACUUM ANALYZE vtasks_task").unwrap();
    let load = t0.elapsed().as_secs_f64();
    let (a, b, c) = rounds(&q, "big", 300);
    println!("| {ready} ready rows (loaded in {load:.0} s) | {a:.2} | {b:.2} | {c:.2} |");

    // 2. Churn: bursts through an otherwise idle queue, next to the backlog.
    let t0 = Instant::now();
    for _ in 0..30 {
        for _ in 0..20 {
            q.enqueue("churn", vec![b"x".to_vec(); 1000], EnqueueOpts::default()).unwrap();
        }
        let qs = vec!["churn".to_string()];
        loop {
            let got = q.fetch(&qs, "bench", 200, Some(60_000), None).unwrap().unwrap();
            if got.is_empty() {
                break;
            }
            let pairs: Vec<_> = got.iter().map(|d| (d.id.clone(), d.token.clone())).collect();
            q.ack("churn", &pairs).unwrap();
        }
        q.maintain().unwrap();
    }
    let churn = t0.elapsed().as_secs_f64();
    q.enqueue("churn", vec![b"x".to_vec(); 1000], EnqueueOpts::default()).unwrap();
    let (a, b, c) = rounds(&q, "churn", 10);
    println!("| after 600,000 tasks of churn ({churn:.0} s) next to the backlog | {a:.2} | {b:.2} | {c:.2} |");
    let live: i64 = admin.query_one("SELECT count(*) FROM vtasks_task", &[]).unwrap().get(0);
    let (heap, total) = {
        let h: i64 = admin.query_one("SELECT pg_relation_size('vtasks_task')", &[]).unwrap().get(0);
        (h as f64 / 1048576.0, size(&mut admin, "vtasks_task"))
    };
    let dead: i64 = admin
        .query_one("SELECT coalesce(n_dead_tup, 0) FROM pg_stat_user_tables WHERE relname = 'vtasks_task'", &[])
        .unwrap()
        .get(0);
    let autovac: i64 = admin
        .query_one("SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'vtasks_task'", &[])
        .unwrap()
        .get(0);
    admin.batch_execute("VACUUM vtasks_task").unwrap();
    q.enqueue("churn", vec![b"x".to_vec(); 1000], EnqueueOpts::default()).unwrap();
    let (a, b, c) = rounds(&q, "churn", 10);
    println!("| the same after a VACUUM of vtasks_task | {a:.2} | {b:.2} | {c:.2} |");
    println!(
        "\nvtasks_task after the churn (before that VACUUM): {live} live rows, {dead} dead, heap {heap:.0} MB, \
         heap + indexes {total:.0} MB, {autovac} autovacuum runs so far.\n"
    );

    // 3. Results: `results` expired rows, purged by maintain().
    admin.batch_execute("TRUNCATE vtasks_task").unwrap();
    q.enqueue("small", vec![b"x".to_vec(); 1000], EnqueueOpts::default()).unwrap();
    let (a, b, c) = rounds(&q, "small", 10);
    println!("| scenario | p50 | p99 | max |\n| --- | ---: | ---: | ---: |");
    println!("| ack with results, results table small (baseline) | {a:.2} | {b:.2} | {c:.2} |");
    let t0 = Instant::now();
    admin
        .batch_execute(&format!(
            "INSERT INTO vtasks_result (id, data, expires_at) \
             SELECT 'r' || lpad(i::text, 10, '0'), '\\x6e756c6c'::bytea, now() - interval '1 hour' \
             FROM generate_series(1, {results}) i"
        ))
        .unwrap();
    admin.batch_execute("VACUUM ANALYZE vtasks_result").unwrap();
    let load = t0.elapsed().as_secs_f64();
    let mb = size(&mut admin, "vtasks_result");
    q.enqueue("small", vec![b"x".to_vec(); 1000], EnqueueOpts::default()).unwrap();
    let (a, b, c) = rounds(&q, "small", 10);
    println!("| ack with results next to {results} result rows ({mb:.0} MB, loaded in {load:.0} s) | {a:.2} | {b:.2} | {c:.2} |");
    let mut calls = Vec::new();
    let t0 = Instant::now();
    loop {
        let t = Instant::now();
        let m = q.maintain().unwrap();
        let purged = m.iter().find(|(k, _)| *k == "results_purged").map(|(_, v)| *v).unwrap_or(0);
        calls.push(t.elapsed());
        if purged == 0 {
            break;
        }
    }
    let total_s = t0.elapsed().as_secs_f64();
    let n = calls.len();
    let (p50, p99) = (pct(&mut calls, 0.5), pct(&mut calls, 0.99));
    println!(
        "\nPurging {results} expired results: {n} maintain() calls of up to 10,000 rows, {total_s:.0} s in all \
         ({:.0} rows/s), {p50:.0} ms per call (p50), {p99:.0} ms (p99); table {:.0} MB after (space is reused, not returned).",
        results as f64 / total_s,
        size(&mut admin, "vtasks_result")
    );
}
