//! Fingerprints and misses in the build-event database (see
//! `crate::insights::misses`): read and written a batch at a time, so a
//! burst of fresh results costs a few statements, not a few per result.

use std::collections::HashMap;

use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::sql_writer::{Placeholders, values_of};
use crate::error::Result;
use crate::insights::misses::{Fingerprint, Miss};
use crate::sql::db_err;

/// Rows per statement: far below either database's parameter limit.
const CHUNK: usize = 100;

pub(super) async fn fingerprints(
    pool: &AnyPool,
    identities: &[String],
) -> Result<HashMap<String, Fingerprint>> {
    let err = db_err("reading action fingerprints");
    let mut out = HashMap::new();
    for chunk in identities.chunks(CHUNK) {
        // One "row" of as many values as identities: `($1, $2, ...)`.
        let sql = format!(
            "SELECT identity, action_digest, invocation, seen_at FROM action_fingerprints \
             WHERE identity IN {}",
            values_of(1, chunk.len(), Placeholders::Numbered)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(id);
        }
        for r in q.fetch_all(pool).await.map_err(&err)? {
            let f = Fingerprint {
                identity: r.try_get(0).map_err(&err)?,
                action: r.try_get(1).map_err(&err)?,
                invocation: r.try_get(2).map_err(&err)?,
                seen_at: r.try_get(3).map_err(&err)?,
            };
            out.insert(f.identity.clone(), f);
        }
    }
    Ok(out)
}

/// Stores `fingerprints` (each its identity's last action) and `misses`
/// in one transaction.
pub(super) async fn record(
    pool: &AnyPool,
    fingerprints: &[Fingerprint],
    misses: &[Miss],
) -> Result<()> {
    let err = db_err("recording missed actions");
    let mut tx = pool.begin().await.map_err(&err)?;
    for chunk in fingerprints.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO action_fingerprints (identity, action_digest, invocation, seen_at) \
             VALUES {} ON CONFLICT (identity) DO UPDATE SET action_digest = excluded.action_digest, \
             invocation = excluded.invocation, seen_at = excluded.seen_at",
            values_of(chunk.len(), 4, Placeholders::Numbered)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for f in chunk {
            q = q
                .bind(&f.identity)
                .bind(&f.action)
                .bind(&f.invocation)
                .bind(f.seen_at);
        }
        q.execute(&mut *tx).await.map_err(&err)?;
    }
    // One chunk row per invocation.
    let mut by_invocation: HashMap<&str, Vec<&Miss>> = HashMap::new();
    for m in misses {
        by_invocation.entry(&m.invocation).or_default().push(m);
    }
    let chunks: Vec<(&str, String, i64)> = by_invocation
        .into_iter()
        .map(|(invocation, list)| {
            let seen = list.iter().map(|m| m.seen_at).max().unwrap_or(0);
            let json = serde_json::to_string(&list)
                .map_err(|e| crate::error::Error::internal_from("encoding misses", e))?;
            Ok((invocation, json, seen))
        })
        .collect::<Result<_>>()?;
    for chunk in chunks.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO action_miss_chunks (invocation, chunk, misses, seen_at) VALUES {}",
            values_of(chunk.len(), 4, Placeholders::Numbered)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (invocation, json, seen) in chunk {
            q = q
                .bind(*invocation)
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(json.as_str())
                .bind(*seen);
        }
        q.execute(&mut *tx).await.map_err(&err)?;
    }
    tx.commit().await.map_err(err)
}

/// The misses of `invocation` by chunk, as stored (a chunk that does not
/// decode is left out).
pub(super) async fn chunks(pool: &AnyPool, invocation: &str) -> Result<Vec<(String, Vec<Miss>)>> {
    let err = db_err("reading missed actions");
    let rows = sqlx::query("SELECT chunk, misses FROM action_miss_chunks WHERE invocation = $1")
        .bind(invocation)
        .fetch_all(pool)
        .await
        .map_err(&err)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let chunk: String = r.try_get(0).map_err(&err)?;
        let json: String = r.try_get(1).map_err(&err)?;
        if let Ok(misses) = serde_json::from_str::<Vec<Miss>>(&json) {
            out.push((chunk, misses));
        }
    }
    Ok(out)
}

/// Stores `misses` in place of a chunk's (their causes filled in).
pub(super) async fn replace(
    pool: &AnyPool,
    invocation: &str,
    chunk: &str,
    misses: &[Miss],
) -> Result<()> {
    let err = db_err("storing compared misses");
    let json = serde_json::to_string(misses)
        .map_err(|e| crate::error::Error::internal_from("encoding misses", e))?;
    sqlx::query("UPDATE action_miss_chunks SET misses = $1 WHERE invocation = $2 AND chunk = $3")
        .bind(json)
        .bind(invocation)
        .bind(chunk)
        .execute(pool)
        .await
        .map_err(&err)?;
    Ok(())
}

/// Deletes fingerprints and misses seen before `before_ms`, at most
/// `limit` of each; how many went.
pub(super) async fn purge(pool: &AnyPool, before_ms: i64, limit: i64) -> Result<u64> {
    use crate::sql::delete_older;
    Ok(delete_older(
        pool,
        "action_miss_chunks",
        "chunk",
        "seen_at",
        before_ms,
        limit,
    )
    .await?
        + delete_older(
            pool,
            "action_fingerprints",
            "identity",
            "seen_at",
            before_ms,
            limit,
        )
        .await?)
}
