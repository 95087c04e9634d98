//! Fingerprints and misses in the build-event database (see
//! `crate::insights::misses`): read and written a batch at a time, so a
//! burst of fresh results costs a few statements, not a few per result.

use std::collections::HashMap;

use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::sql_miss_chunk::{decode, encode};
use super::sql_writer::{Placeholders, values_of};
use crate::error::Result;
use crate::insights::misses::{FingerprintRound, Miss, Recorded};
use crate::sql::db_err;

/// Rows per statement: far below either database's parameter limit.
const CHUNK: usize = 100;

/// Stores a round's `fingerprints` (one row) and `misses` in one
/// transaction.
pub(super) async fn record(
    pool: &AnyPool,
    placeholders: Placeholders,
    round: Option<&FingerprintRound>,
    misses: &[Recorded],
) -> Result<()> {
    let err = db_err("recording missed actions");
    let mut tx = pool.begin().await.map_err(&err)?;
    if let Some(round) = round {
        sqlx::query(
            "INSERT INTO action_fingerprint_rounds (round, pod, fingerprints, seen_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&round.round)
        .bind(&round.pod)
        .bind(round.encode()?)
        .bind(round.seen_at)
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
    }
    // One chunk row per invocation.
    let mut by_invocation: HashMap<&str, Vec<&Recorded>, foldhash::fast::RandomState> =
        HashMap::default();
    for m in misses {
        by_invocation
            .entry(&m.writer.invocation)
            .or_default()
            .push(m);
    }
    let chunks: Vec<(&str, String, i64)> = by_invocation
        .into_iter()
        .map(|(invocation, list)| {
            let seen = list.iter().map(|m| m.seen_at).max().unwrap_or(0);
            Ok((invocation, encode(list.into_iter())?, seen))
        })
        .collect::<Result<_>>()?;
    for chunk in chunks.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO action_miss_chunks (invocation, chunk, misses, seen_at) VALUES {}",
            values_of(chunk.len(), 4, placeholders)
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

/// The ids and times of rounds stored since `since_ms` by pods other
/// than `pod`, newest first, at most `limit`.
pub(super) async fn round_ids(
    pool: &AnyPool,
    since_ms: i64,
    pod: &str,
    limit: i64,
) -> Result<Vec<(String, i64)>> {
    let err = db_err("reading action fingerprints");
    let rows = sqlx::query(
        "SELECT round, seen_at FROM action_fingerprint_rounds WHERE seen_at >= $1 AND pod <> $2 \
         ORDER BY seen_at DESC LIMIT $3",
    )
    .bind(since_ms)
    .bind(pod)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(&err)?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(err)
}

/// The rounds named (a row that does not decode is left out).
pub(super) async fn rounds(
    pool: &AnyPool,
    placeholders: Placeholders,
    ids: &[String],
) -> Result<Vec<FingerprintRound>> {
    let err = db_err("reading action fingerprints");
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT round, pod, fingerprints, seen_at FROM action_fingerprint_rounds WHERE round IN {}",
            values_of(1, chunk.len(), placeholders)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(id);
        }
        for r in q.fetch_all(pool).await.map_err(&err)? {
            let json: String = r.try_get(2).map_err(&err)?;
            if let Some(round) = FingerprintRound::decode(
                r.try_get(0).map_err(&err)?,
                r.try_get(1).map_err(&err)?,
                r.try_get(3).map_err(&err)?,
                &json,
            ) {
                out.push(round);
            }
        }
    }
    Ok(out)
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
        if let Some(misses) = decode(invocation, &json) {
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
    let json = encode(misses.iter())?;
    sqlx::query("UPDATE action_miss_chunks SET misses = $1 WHERE invocation = $2 AND chunk = $3")
        .bind(json)
        .bind(invocation)
        .bind(chunk)
        .execute(pool)
        .await
        .map_err(&err)?;
    Ok(())
}

/// Deletes fingerprint rounds and misses seen before `before_ms`, at most
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
            "action_fingerprint_rounds",
            "round",
            "seen_at",
            before_ms,
            limit,
        )
        .await?)
}
