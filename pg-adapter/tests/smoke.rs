mod common;
use common::*;
use vtasks_pg::EnqueueOpts;

#[test]
fn smoke() {
    let db = TestDb::new();
    let q = db.queue(cfg());
    q.migrate().unwrap();
    let ids = q.enqueue("q", payloads(3, "a"), EnqueueOpts::default()).unwrap();
    assert_eq!(ids.len(), 3);
    let got = q.fetch(&["q".into()], "w1", 2, None, None).unwrap().unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].payload, b"a-0");
    assert_eq!(got[0].attempt, 1);
    let n = q.ack("q", &[(got[0].id.clone(), got[0].token.clone()), (got[1].id.clone(), "stale".into())]).unwrap();
    assert_eq!(n, 1);
    let r = q.fail("q", &got[1].id, &got[1].token, "boom", Some(0)).unwrap();
    assert_eq!(r.as_deref(), Some("retry"));
    let info = q.info("q").unwrap();
    println!("{info:?}");
    println!("{:?}", q.peek("q", "ready", 0, 10).unwrap());
    println!("{:?}", q.maintain().unwrap());
    println!("{:?}", q.queues().unwrap());
    println!("{:?}", q.get("q", &got[1].id).unwrap());
}
