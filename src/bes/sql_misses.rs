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
        let list = values_of(chunk.len(), 1, Placeholders::Numbered);
        let sql = format!(
            "SELECT identity, action_digest, invocation, seen_at FROM action_fingerprints \
             WHERE identity IN ({})",
            list.replace(['(', ')'], "")
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
    for chunk in misses.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO action_misses (invocation, instance, action_digest, target, mnemonic, \
             previous_digest, previous_invocation, causes, seen_at) VALUES {} ON CONFLICT DO NOTHING",
            values_of(chunk.len(), 9, Placeholders::Numbered)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for m in chunk {
            let causes = serde_json::to_string(&m.causes)
                .map_err(|e| crate::error::Error::internal_from("encoding causes", e))?;
            q = q
                .bind(&m.invocation)
                .bind(&m.instance)
                .bind(&m.action_digest)
                .bind(&m.target)
                .bind(&m.mnemonic)
                .bind(&m.previous_digest)
                .bind(&m.previous_invocation)
                .bind(causes)
                .bind(m.seen_at);
        }
        q.execute(&mut *tx).await.map_err(&err)?;
    }
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
    use crate::sql::delete_older;
    Ok(delete_older(
        pool,
        "action_misses",
        "seen_at",
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
