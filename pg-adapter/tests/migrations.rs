//! Upgrades (PROTOCOL.md, "Schema migrations"): an install made by an older release reaches the
//! current schema through `migrate()` with its queued tasks kept; an edited applied migration is
//! refused with an error that names the file.
mod common;

use common::*;
use vtasks_pg::{migrate, EnqueueOpts, MIGRATIONS};

fn versions(db: &TestDb) -> Vec<(i32, Option<String>)> {
    db.client()
        .query("SELECT version, checksum FROM vtasks_schema ORDER BY version", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn shipped() -> Vec<(i32, Option<String>)> {
    MIGRATIONS.iter().map(|(v, _, s)| (*v, Some(migrate::checksum(s)))).collect()
}

#[test]
fn install_at_schema_1_upgrades_with_its_queued_tasks() {
    let db = TestDb::bare();
    // What release 1 left behind: 0001 as its migrate() ran it (no checksum column), and tasks
    // queued with its SQL (vtasks_enqueue only exists from 0002 on).
    let mut c = db.client();
    c.batch_execute(MIGRATIONS[0].2).unwrap();
    c.batch_execute(
        "INSERT INTO vtasks_task (queue, id, state, payload) \
         SELECT 'old', 'old-' || i, 'r', convert_to('p' || i, 'UTF8') FROM generate_series(1, 50) i; \
         INSERT INTO vtasks_stats_delta (queue, enqueued) VALUES ('old', 50)",
    )
    .unwrap();
    let rows = c.query("SELECT version FROM vtasks_schema", &[]).unwrap();
    assert_eq!(rows.len(), 1);

    let q = db.queue(cfg());
    q.migrate().unwrap();
    assert_eq!(versions(&db), shipped(), "every migration applied once, checksums recorded");
    q.migrate().unwrap(); // a second run changes nothing
    assert_eq!(versions(&db), shipped());

    // The old tasks are served, in order, by the current functions; new ones queue behind them.
    q.enqueue("old", payloads(1, "new"), EnqueueOpts::default()).unwrap();
    let got = q.fetch(&["old".to_string()], "w", 100, None, None).unwrap().unwrap();
    assert_eq!(got.len(), 51);
    assert_eq!(got[0].payload, b"p1");
    assert_eq!(got[49].payload, b"p50");
    assert_eq!(got[50].payload, b"new-0");
    let pairs: Vec<_> = got.iter().map(|d| (d.id.clone(), d.token.clone())).collect();
    assert_eq!(q.ack("old", &pairs).unwrap(), 51);
    let info: std::collections::HashMap<_, _> = q.info("old").unwrap().into_iter().collect();
    assert_eq!((info["enqueued_total"], info["acked_total"], info["ready"]), (51, 51, 0));
}

#[test]
fn install_at_schema_2_without_checksums_gets_the_shipped_functions() {
    let db = TestDb::bare();
    let mut c = db.client();
    c.batch_execute(MIGRATIONS[0].2).unwrap();
    c.batch_execute(MIGRATIONS[1].2).unwrap();
    // The ack of 0002 as first released (edited later): a marker stands for the old body.
    c.batch_execute(
        "CREATE OR REPLACE FUNCTION vtasks_ack(p_queue text, p_ids text[], p_tokens text[]) \
         RETURNS bigint LANGUAGE sql AS $$ SELECT -1::bigint $$",
    )
    .unwrap();
    let q = db.queue(cfg());
    q.migrate().unwrap();
    assert_eq!(versions(&db), shipped());
    q.enqueue("a", payloads(2, "x"), EnqueueOpts::default()).unwrap();
    let got = q.fetch(&["a".to_string()], "w", 2, None, None).unwrap().unwrap();
    let pairs: Vec<_> = got.iter().map(|d| (d.id.clone(), d.token.clone())).collect();
    assert_eq!(q.ack("a", &pairs).unwrap(), 2, "the shipped ack replaced the old one");
}

#[test]
fn edited_applied_migration_is_refused() {
    let db = TestDb::new();
    // The database applied a different 0002 than the one this build ships.
    db.client().batch_execute("UPDATE vtasks_schema SET checksum = repeat('0', 64) WHERE version = 2").unwrap();
    let q = db.queue(cfg());
    let e = q.migrate().unwrap_err().to_string();
    assert!(e.contains("0002_enqueue_ack_functions.sql was changed after this database applied it"), "{e}");
    assert!(e.contains("new migration"), "says what to do: {e}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let aq = vtasks_pg::AsyncPgQueue::new(&db.dsn, cfg()).unwrap();
    let e = rt.block_on(aq.migrate()).unwrap_err().to_string();
    assert!(e.contains("0002_enqueue_ack_functions.sql was changed"), "{e}");
}
