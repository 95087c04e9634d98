//! The insights' rows in the build-event database (see `crate::insights`).

use sqlx::{AnyPool, Row};

use crate::error::Result;
use crate::insights::NondeterministicOutput;
use crate::sql::db_err;

/// Rows kept per action at most: an action flagged this often is flagged
/// well enough, and a client rewriting one action's result with ever new
/// outputs cannot grow the table without bound.
const MAX_ROWS_PER_ACTION: i64 = 64;

pub(super) async fn record(pool: &AnyPool, rows: &[NondeterministicOutput]) -> Result<()> {
    let err = db_err("recording a nondeterministic action");
    if rows.is_empty() {
        return Ok(());
    }
    // Each statement writes from its start (the cap is checked inside the
    // INSERT): a transaction that read first could not be upgraded to a
    // write on SQLite once another writer had committed meanwhile.
    let mut tx = pool.begin().await.map_err(&err)?;
    for r in rows {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO nondeterministic_outputs (instance, action_digest, output_path, \
             before_value, after_value, target, mnemonic, before_invocation, after_invocation, \
             seen_at) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
             WHERE (SELECT COUNT(*) FROM nondeterministic_outputs \
             WHERE instance = $1 AND action_digest = $2) < {MAX_ROWS_PER_ACTION} \
             ON CONFLICT DO NOTHING"
        )))
        .bind(&r.instance)
        .bind(&r.action_digest)
        .bind(&r.output_path)
        .bind(&r.before)
        .bind(&r.after)
        .bind(&r.target)
        .bind(&r.mnemonic)
        .bind(&r.before_invocation)
        .bind(&r.after_invocation)
        .bind(r.seen_at)
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
    }
    tx.commit().await.map_err(err)
}

/// The columns a listing reads, in [`NondeterministicOutput`]'s order.
macro_rules! columns {
    () => {
        "SELECT instance, action_digest, output_path, before_value, after_value, target, \
         mnemonic, before_invocation, after_invocation, seen_at FROM nondeterministic_outputs"
    };
}

pub(super) async fn list(
    pool: &AnyPool,
    invocation: Option<&str>,
    since_ms: i64,
    limit: i64,
) -> Result<Vec<NondeterministicOutput>> {
    let err = db_err("reading nondeterministic actions");
    let rows = match invocation {
        Some(id) => {
            sqlx::query(concat!(
                columns!(),
                " WHERE seen_at >= $1 AND (after_invocation = $2 OR before_invocation = $2) \
                 ORDER BY seen_at DESC, target, output_path LIMIT $3"
            ))
            .bind(since_ms)
            .bind(id)
            .bind(limit)
            .fetch_all(pool)
            .await
        }
        None => {
            sqlx::query(concat!(
                columns!(),
                " WHERE seen_at >= $1 ORDER BY seen_at DESC, target, output_path LIMIT $2"
            ))
            .bind(since_ms)
            .bind(limit)
            .fetch_all(pool)
            .await
        }
    }
    .map_err(&err)?;
    rows.iter()
        .map(|row| {
            Ok(NondeterministicOutput {
                instance: row.try_get(0)?,
                action_digest: row.try_get(1)?,
                output_path: row.try_get(2)?,
                before: row.try_get(3)?,
                after: row.try_get(4)?,
                target: row.try_get(5)?,
                mnemonic: row.try_get(6)?,
                before_invocation: row.try_get(7)?,
                after_invocation: row.try_get(8)?,
                seen_at: row.try_get(9)?,
            })
        })
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(err)
}

/// Deletes rows seen before `before_ms`, at most `limit`; how many went.
pub(super) async fn purge(pool: &AnyPool, before_ms: i64, limit: i64) -> Result<u64> {
    let table = "nondeterministic_outputs";
    crate::sql::delete_older(pool, table, "seen_at", "seen_at", before_ms, limit).await
}

#[cfg(test)]
mod tests {
    use crate::bes::store::EventStore;
    use crate::insights::NondeterministicOutput;
    use crate::insights::Writer;
    use crate::insights::misses::{Fingerprint, FingerprintRound, MissKind, Recorded};

    /// Regression: the nondeterminism record read (its per-action count)
    /// before it wrote, so on SQLite another writer committing in between
    /// made its transaction fail at once (a stale read cannot be upgraded
    /// to a write), and the record was lost; seen in CI once the miss
    /// recorder and the scorecards wrote beside it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_survive_other_writers_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/e.db?mode=rwc", dir.path().display());
        let store =
            std::sync::Arc::new(crate::bes::sql::SqlEventStore::connect(&url).await.unwrap());
        let mut tasks = Vec::new();
        for i in 0..40u8 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                let row = NondeterministicOutput {
                    action_digest: format!("a{i}/1"),
                    output_path: "out".into(),
                    before: "x/1".into(),
                    after: "y/1".into(),
                    seen_at: 1,
                    ..Default::default()
                };
                s.record_nondeterminism(&[row]).await
            }));
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                let round = FingerprintRound {
                    round: format!("pod/{i}"),
                    pod: "pod".into(),
                    seen_at: 1,
                    fingerprints: vec![Fingerprint {
                        identity: [i; 16],
                        action: crate::digest::DigestFunction::Sha256.digest_of(&[i]),
                        invocation: "inv".into(),
                        seen_at: 1,
                    }],
                };
                let m = Recorded {
                    instance: String::new(),
                    action: crate::digest::DigestFunction::Sha256.digest_of(&[i, i]),
                    writer: Writer {
                        invocation: "inv".into(),
                        ..Default::default()
                    },
                    kind: MissKind::New,
                    previous: None,
                    seen_at: 1,
                };
                s.record_misses(Some(&round), &[m]).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(store.nondeterminism(None, 0, 1000).await.unwrap().len(), 40);
    }
}
