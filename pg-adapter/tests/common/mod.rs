//! Test support: a real Postgres (VTASKS_PG_DSN, or a throwaway cluster from scripts/pg-server
//! shared by every test of this process) and a fresh database per test.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use vtasks_pg::{Config, PgQueue};

pub struct Cluster {
    pub dsn: String,
    dir: Option<PathBuf>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = Command::new(script()).arg("stop").arg(dir).status();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-server")
}

static CLUSTER: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());

fn cluster() -> Arc<Cluster> {
    let mut g = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = g.upgrade() {
        return c;
    }
    let c = Arc::new(match std::env::var("VTASKS_PG_DSN") {
        Ok(dsn) if !dsn.is_empty() => Cluster { dsn, dir: None },
        _ => {
            let dir = std::env::temp_dir().join(format!("vtasks-pg-test-{}-{}", std::process::id(), uniq()));
            let out = Command::new(script()).arg("start").arg(&dir).output().expect("run scripts/pg-server");
            assert!(out.status.success(), "pg-server start failed: {}", String::from_utf8_lossy(&out.stderr));
            let dsn = String::from_utf8(out.stdout).unwrap().trim().to_string();
            Cluster { dsn, dir: Some(dir) }
        }
    });
    *g = Arc::downgrade(&c);
    c
}

pub fn uniq() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{:x}{:x}{}", t, std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A fresh database with the schema applied; dropped at the end of the test.
pub struct TestDb {
    pub dsn: String,
    pub name: String,
    admin: String,
    _cluster: Arc<Cluster>,
}

fn with_db(dsn: &str, db: &str) -> String {
    // DSNs here are URLs: postgres://user@host:port/db
    let base = dsn.rsplit_once('/').map(|(b, _)| b).unwrap_or(dsn);
    format!("{base}/{db}")
}

impl TestDb {
    pub fn new() -> Self {
        let db = Self::bare();
        db.queue(Config::default()).migrate().expect("migrate");
        db
    }

    /// A fresh, empty database (no schema).
    pub fn bare() -> Self {
        let cluster = cluster();
        let name = format!("vt_{}", uniq());
        let mut c = postgres::Client::connect(&cluster.dsn, postgres::NoTls).expect("connect admin");
        c.batch_execute(&format!("CREATE DATABASE {name}")).expect("create database");
        let dsn = with_db(&cluster.dsn, &name);
        TestDb { dsn, name, admin: cluster.dsn.clone(), _cluster: cluster }
    }

    pub fn queue(&self, cfg: Config) -> PgQueue {
        PgQueue::new(&self.dsn, cfg).expect("PgQueue::new")
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.dsn, postgres::NoTls).expect("connect")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

pub fn cfg() -> Config {
    Config::default()
}

pub fn payloads(n: usize, tag: &str) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{tag}-{i}").into_bytes()).collect()
}
