//! Fingerprints and misses in the build-event database (see
//! `crate::insights::misses`).

use sqlx::{AnyPool, Row};

use crate::error::Result;
use crate::insights::misses::{Fingerprint, Miss};
use crate::sql::db_err;

pub(super) async fn fingerprint(pool: &AnyPool, identity: &str) -> Result<Option<Fingerprint>> {
    let err = db_err("reading an action fingerprint");
    let row = sqlx::query(
        "SELECT action_digest, command_digest, input_root, invocation, seen_at \
         FROM action_fingerprints WHERE identity = $1",
    )
    .bind(identity)
    .fetch_optional(pool)
    .await
    .map_err(&err)?;
    row.map(|r| {
        Ok(Fingerprint {
            identity: identity.to_string(),
            action: r.try_get(0)?,
            command: r.try_get(1)?,
            input_root: r.try_get(2)?,
            invocation: r.try_get(3)?,
            seen_at: r.try_get(4)?,
        })
    })
    .transpose()
    .map_err(|e: sqlx::Error| err(e))
}

pub(super) async fn record(pool: &AnyPool, f: &Fingerprint, miss: &Miss) -> Result<()> {
    let err = db_err("recording a missed action");
    let causes = serde_json::to_string(&miss.causes)
        .map_err(|e| crate::error::Error::internal_from("encoding causes", e))?;
    let mut tx = pool.begin().await.map_err(&err)?;
    sqlx::query(
        "INSERT INTO action_fingerprints (identity, action_digest, command_digest, input_root, \
         invocation, seen_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (identity) DO UPDATE \
         SET action_digest = excluded.action_digest, command_digest = excluded.command_digest, \
         input_root = excluded.input_root, invocation = excluded.invocation, \
         seen_at = excluded.seen_at",
    )
    .bind(&f.identity)
    .bind(&f.action)
    .bind(&f.command)
    .bind(&f.input_root)
    .bind(&f.invocation)
    .bind(f.seen_at)
    .execute(&mut *tx)
    .await
    .map_err(&err)?;
    sqlx::query(
        "INSERT INTO action_misses (invocation, instance, action_digest, target, mnemonic, \
         previous_digest, previous_invocation, causes, seen_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
    )
    .bind(&miss.invocation)
    .bind(&miss.instance)
    .bind(&miss.action_digest)
    .bind(&miss.target)
    .bind(&miss.mnemonic)
    .bind(&miss.previous_digest)
    .bind(&miss.previous_invocation)
    .bind(&causes)
    .bind(miss.seen_at)
    .execute(&mut *tx)
    .await
    .map_err(&err)?;
    tx.commit().await.map_err(err)
}

pub(super) async fn list(pool: &AnyPool, invocation: &str, limit: i64) -> Result<Vec<Miss>> {
    let err = db_err("reading missed actions");
    let rows = sqlx::query(
        "SELECT invocation, instance, action_digest, target, mnemonic, previous_digest, \
         previous_invocation, causes, seen_at FROM action_misses WHERE invocation = $1 \
         ORDER BY target, mnemonic, action_digest LIMIT $2",
    )
    .bind(invocation)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(&err)?;
    rows.iter()
        .map(|r| {
            let causes: String = r.try_get(7).map_err(&err)?;
            Ok(Miss {
                invocation: r.try_get(0).map_err(&err)?,
                instance: r.try_get(1).map_err(&err)?,
                action_digest: r.try_get(2).map_err(&err)?,
                target: r.try_get(3).map_err(&err)?,
                mnemonic: r.try_get(4).map_err(&err)?,
                previous_digest: r.try_get(5).map_err(&err)?,
                previous_invocation: r.try_get(6).map_err(&err)?,
                causes: serde_json::from_str(&causes).unwrap_or_default(),
                seen_at: r.try_get(8).map_err(&err)?,
            })
        })
        .collect()
}

/// Deletes fingerprints and misses seen before `before_ms`, at most
/// `limit` of each; how many went.
pub(super) async fn purge(pool: &AnyPool, before_ms: i64, limit: i64) -> Result<u64> {
    let err = db_err("deleting old misses and fingerprints");
    let mut gone = 0;
    for sql in [
        "DELETE FROM action_misses WHERE seen_at IN \
         (SELECT seen_at FROM action_misses WHERE seen_at < $1 LIMIT $2)",
        "DELETE FROM action_fingerprints WHERE identity IN \
         (SELECT identity FROM action_fingerprints WHERE seen_at < $1 LIMIT $2)",
    ] {
        let done = sqlx::query(sql)
            .bind(before_ms)
            .bind(limit)
            .execute(pool)
            .await
            .map_err(&err)?;
        gone += done.rows_affected();
    }
    Ok(gone)
}
