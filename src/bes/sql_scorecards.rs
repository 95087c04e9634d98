//! Cache scorecards in the build-event database (see
//! `crate::insights::scorecard`).

use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::sql_writer::{Placeholders, values_of};
use crate::error::{Error, Result};
use crate::insights::scorecard::{Row as Card, Scorecard};
use crate::sql::db_err;

/// Rows per statement.
const CHUNK: usize = 100;

pub(super) async fn record(pool: &AnyPool, rows: &[Card]) -> Result<()> {
    let err = db_err("storing cache scorecards");
    let now = crate::time::now_ms();
    let mut tx = pool.begin().await.map_err(&err)?;
    for chunk in rows.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO invocation_scorecards (invocation, card, scorecard, hits, lookups, \
             updated_at) VALUES {} ON CONFLICT (invocation, card) DO UPDATE SET \
             scorecard = excluded.scorecard, hits = excluded.hits, lookups = excluded.lookups, \
             updated_at = excluded.updated_at",
            values_of(chunk.len(), 6, Placeholders::Numbered)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (invocation, card, scorecard) in chunk {
            let json = serde_json::to_string(scorecard)
                .map_err(|e| Error::internal_from("encoding a scorecard", e))?;
            let t = &scorecard.totals;
            let (hits, lookups) = (t.hits as i64, (t.hits + t.misses) as i64);
            q = q
                .bind(invocation)
                .bind(card)
                .bind(json)
                .bind(hits)
                .bind(lookups)
                .bind(now);
        }
        q.execute(&mut *tx).await.map_err(&err)?;
    }
    tx.commit().await.map_err(err)
}

/// The sum of every pod's card of `invocation`, or None if none counted it.
pub(super) async fn read(pool: &AnyPool, invocation: &str) -> Result<Option<Scorecard>> {
    let err = db_err("reading cache scorecards");
    let rows = sqlx::query("SELECT scorecard FROM invocation_scorecards WHERE invocation = $1")
        .bind(invocation)
        .fetch_all(pool)
        .await
        .map_err(&err)?;
    let mut sum: Option<Scorecard> = None;
    for r in rows {
        let json: String = r.try_get(0).map_err(&err)?;
        if let Ok(card) = serde_json::from_str::<Scorecard>(&json) {
            sum.get_or_insert_with(Scorecard::default).add(&card);
        }
    }
    Ok(sum)
}

/// Deletes cards last updated before `before_ms`, at most `limit`.
pub(super) async fn purge(pool: &AnyPool, before_ms: i64, limit: i64) -> Result<u64> {
    let table = "invocation_scorecards";
    crate::sql::delete_older(pool, table, "updated_at", "updated_at", before_ms, limit).await
}
