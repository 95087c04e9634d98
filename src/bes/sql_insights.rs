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
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let mut tx = pool.begin().await.map_err(&err)?;
    let kept: i64 = sqlx::query(
        "SELECT COUNT(*) FROM nondeterministic_outputs WHERE instance = $1 AND action_digest = $2",
    )
    .bind(&first.instance)
    .bind(&first.action_digest)
    .fetch_one(&mut *tx)
    .await
    .and_then(|row| row.try_get(0))
    .map_err(&err)?;
    if kept >= MAX_ROWS_PER_ACTION {
        return Ok(());
    }
    for r in rows {
        sqlx::query(
            "INSERT INTO nondeterministic_outputs (instance, action_digest, output_path, \
             before_value, after_value, target, mnemonic, before_invocation, after_invocation, \
             seen_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
        )
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
    tx.commit().await.map_err(&err)
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
