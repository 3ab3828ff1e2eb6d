//! Which shipped migrations an install still needs, and the SQL that records them (PROTOCOL.md,
//! "Schema migrations"). One rule for every path that migrates: `PgQueue::migrate`,
//! `AsyncPgQueue::migrate` and the Django migrations (through the native extension).
//!
//! `vtasks_schema` has one row per applied migration with the SHA-256 of the file as applied. A
//! shipped file whose checksum no longer matches its row is refused: shipped migrations are never
//! edited; a change comes as a new file. Rows without a checksum were written before checksums
//! existed (versions 1 and 2, whose files are idempotent): those files are applied again once and
//! then recorded, which also brings an install that ran an earlier edit of 0002 to the shipped one.

use sha2::{Digest, Sha256};

use crate::{Error, Result, MIGRATIONS};

/// Run first, in the migrating transaction: serialises concurrent migrators (transaction-scoped
/// advisory lock, so it works behind PgBouncer) and brings `vtasks_schema` to its current shape.
pub fn prelude_sql() -> String {
    format!(
        "SELECT pg_advisory_xact_lock({}); \
         CREATE TABLE IF NOT EXISTS vtasks_schema (version int PRIMARY KEY, name text NOT NULL, \
         applied_at timestamptz NOT NULL DEFAULT now()); \
         ALTER TABLE vtasks_schema ADD COLUMN IF NOT EXISTS checksum text",
        crate::MIGRATE_LOCK
    )
}

/// Rows `(version, checksum)` of the applied migrations (read after `prelude_sql`).
pub const APPLIED_SQL: &str = "SELECT version, checksum FROM vtasks_schema ORDER BY version";

/// One migration to apply: run `sql`, then `record` (in the same transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
    pub record: String,
}

/// Hex SHA-256 of a migration file as shipped.
pub fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// File name of a migration, as in `pg-adapter/migrations/`.
pub fn file_name(version: i32, name: &str) -> String {
    format!("{version:04}_{name}.sql")
}

/// The steps that bring an install with `applied` rows to version `upto` (None: the newest), in
/// version order; an error when an applied file was edited since (nothing is applied then).
/// Applied versions this build does not ship (a newer release migrated the database) are left
/// alone.
pub fn plan(applied: &[(i32, Option<String>)], upto: Option<i32>) -> Result<Vec<Step>> {
    let recorded: std::collections::HashMap<i32, Option<&str>> =
        applied.iter().map(|(v, c)| (*v, c.as_deref())).collect();
    let mut steps = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        let sum = checksum(sql);
        match recorded.get(version) {
            Some(Some(had)) if *had == sum => continue,
            Some(Some(had)) => {
                return Err(Error::Invalid(format!(
                    "migration {} was changed after this database applied it (applied sha256 {had}, \
                     shipped {sum}); a shipped migration must never be edited: restore the file as \
                     released and put the change in a new migration (PROTOCOL.md, \"Schema migrations\")",
                    file_name(*version, name)
                )))
            }
            // Applied before checksums were recorded (idempotent versions 1-2): apply again.
            Some(None) | None => {}
        }
        if upto.is_some_and(|u| *version > u) {
            continue;
        }
        steps.push(Step {
            version: *version,
            name,
            sql,
            // name and checksum are [a-z0-9_] only: safe as literals, and no percent sign, so
            // DB-API drivers can run it unchanged.
            record: format!(
                "INSERT INTO vtasks_schema (version, name, checksum) VALUES ({version}, '{name}', '{sum}') \
                 ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, checksum = EXCLUDED.checksum"
            ),
        });
    }
    Ok(steps)
}

/// Parses the rows of `APPLIED_SQL` from a simple-query response.
pub(crate) fn applied_from_simple(rows: Vec<tokio_postgres::SimpleQueryMessage>) -> Vec<(i32, Option<String>)> {
    rows.into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                let v = r.get(0)?.parse::<i32>().ok()?;
                Some((v, r.get(1).map(str::to_string)))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_applies_missing_and_unchecked_in_order_and_refuses_edits() {
        let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert_eq!(plan(&[], None).unwrap().iter().map(|s| s.version).collect::<Vec<_>>(), all);
        assert_eq!(plan(&[], Some(1)).unwrap().len(), 1);
        let done: Vec<(i32, Option<String>)> = MIGRATIONS.iter().map(|(v, _, s)| (*v, Some(checksum(s)))).collect();
        assert!(plan(&done, None).unwrap().is_empty());
        // A pre-checksum install at 1-2: both again (idempotent), then the rest.
        assert_eq!(plan(&[(1, None), (2, None)], None).unwrap().len(), MIGRATIONS.len());
        let mut edited = done.clone();
        edited[1].1 = Some("0".repeat(64));
        let e = plan(&edited, None).unwrap_err().to_string();
        assert!(e.contains("0002_enqueue_ack_functions.sql was changed") && e.contains("new migration"), "{e}");
        // Unknown (newer) versions are left alone.
        let mut newer = done;
        newer.push((9999, Some("x".into())));
        assert!(plan(&newer, None).unwrap().is_empty());
    }

    #[test]
    fn migration_list_matches_the_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|(v, n, _)| file_name(*v, n)).collect();
        assert_eq!(files, listed, "every file in pg-adapter/migrations/ is listed in MIGRATIONS, in order");
        for (i, (v, n, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v as usize, i + 1, "versions are 1, 2, 3, ...");
            assert_eq!(*sql, std::fs::read_to_string(dir.join(file_name(*v, n))).unwrap());
            assert!(!sql.contains('%'), "no percent sign (DB-API drivers)");
        }
    }
}
