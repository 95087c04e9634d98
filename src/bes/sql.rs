//! [`EventStore`] on SQL through sqlx's runtime-selected driver: SQLite (a
//! file in the data dir, the embedded default) or PostgreSQL (shared by many
//! pods). One schema and one set of queries serve both; migrations live in
//! `migrations/` and are applied at start-up.

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use super::sql_writer::{INSERT_STREAM, Placeholders, Writer};
use super::store::{
    EventFilter, EventStore, InvocationFilter, InvocationRow, NewEvent, StoredEvent, StreamInfo,
    StreamKey, TestRun, TestStats,
};
use super::summary::Invocation;
use crate::error::{Error, Result};
use crate::insights::NondeterministicOutput;
use crate::insights::misses::{FingerprintRound, Miss};
use crate::sql::db_err;
use crate::time::now_ms;

/// Schema versions, applied in order, each once.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_build_events.sql")),
    (
        2,
        include_str!("../../migrations/0002_build_events_retention.sql"),
    ),
    (
        3,
        include_str!("../../migrations/0003_build_events_pages.sql"),
    ),
    (
        4,
        include_str!("../../migrations/0004_build_events_kind_order.sql"),
    ),
    (
        5,
        include_str!("../../migrations/0005_insights_nondeterminism.sql"),
    ),
    (6, include_str!("../../migrations/0006_insights_misses.sql")),
    (
        7,
        include_str!("../../migrations/0007_insights_scorecards.sql"),
    ),
    (
        8,
        include_str!("../../migrations/0008_build_events_sources.sql"),
    ),
    (
        9,
        include_str!("../../migrations/0009_build_events_one_invocation_index.sql"),
    ),
    (
        10,
        include_str!("../../migrations/0010_insights_fingerprint_rounds.sql"),
    ),
];

/// Build events in a SQL database.
///
/// Commits are group commits across streams, through the writer in
/// `sql_writer`; reads and purges go to the pool directly.
#[derive(Debug, Clone)]
pub struct SqlEventStore {
    pool: AnyPool,
    writer: Writer,
    /// How multi-row statements spell their parameters here.
    placeholders: Placeholders,
}

impl SqlEventStore {
    /// Connects to `url` (`sqlite://PATH?mode=rwc` or `postgres://...`) and
    /// applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = crate::sql::connect(url, "build events", MIGRATIONS).await?;
        let placeholders = Placeholders::of(url.starts_with("sqlite:"));
        let writer = Writer::start(pool.clone(), placeholders);
        Ok(SqlEventStore {
            pool,
            writer,
            placeholders,
        })
    }
}

fn stream_info(row: &AnyRow) -> std::result::Result<StreamInfo, sqlx::Error> {
    Ok(StreamInfo {
        key: StreamKey {
            build_id: row.try_get(0)?,
            invocation_id: row.try_get(1)?,
            component: row.try_get::<i64, _>(2)? as i32,
        },
        last_sequence: row.try_get(3)?,
        finished: row.try_get::<i64, _>(4)? != 0,
    })
}

fn parse_summary(json: &str) -> Result<Invocation> {
    serde_json::from_str(json).map_err(|e| Error::internal_from("corrupt invocation summary", e))
}

#[async_trait]
impl EventStore for SqlEventStore {
    async fn purge(&self, before_ms: i64, limit: i64) -> Result<u64> {
        let err = db_err("deleting old build events");
        // Invocations last updated before the cutoff, a bounded batch at a
        // time, each with its events and streams in one transaction.
        let ids: Vec<String> = sqlx::query(
            "SELECT invocation_id FROM invocations WHERE updated_at < $1 ORDER BY updated_at LIMIT $2",
        )
        .bind(before_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(&err)?
        .iter()
        .map(|row| row.try_get::<String, _>(0))
        .collect::<std::result::Result<_, _>>()
        .map_err(&err)?;
        for id in &ids {
            let mut tx = self.pool.begin().await.map_err(&err)?;
            for sql in [
                "DELETE FROM bes_events WHERE invocation_id = $1",
                "DELETE FROM bes_streams WHERE invocation_id = $1",
                "DELETE FROM test_runs WHERE invocation_id = $1",
                "DELETE FROM invocation_metadata WHERE invocation_id = $1",
                "DELETE FROM invocations WHERE invocation_id = $1",
            ] {
                sqlx::query(sql)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
            }
            tx.commit().await.map_err(&err)?;
        }
        // Streams with no invocation summary (build-level lifecycle events
        // carry an empty invocation id), by their age.
        let orphans: Vec<(String, String, i64)> = sqlx::query(
            "SELECT build_id, invocation_id, component FROM bes_streams WHERE created_at < $1 \
             AND invocation_id NOT IN (SELECT invocation_id FROM invocations) LIMIT $2",
        )
        .bind(before_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(&err)?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(&err)?;
        for (build, invocation, component) in &orphans {
            let mut tx = self.pool.begin().await.map_err(&err)?;
            for sql in [
                "DELETE FROM bes_events WHERE build_id = $1 AND invocation_id = $2 AND component = $3",
                "DELETE FROM bes_streams WHERE build_id = $1 AND invocation_id = $2 AND component = $3",
            ] {
                sqlx::query(sql)
                    .bind(build)
                    .bind(invocation)
                    .bind(component)
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
            }
            tx.commit().await.map_err(&err)?;
        }
        let insights = super::sql_insights::purge(&self.pool, before_ms, limit).await?
            + super::sql_misses::purge(&self.pool, before_ms, limit).await?
            + super::sql_scorecards::purge(&self.pool, before_ms, limit).await?;
        Ok((ids.len() + orphans.len()) as u64 + insights)
    }

    async fn create_stream(&self, key: &StreamKey) -> Result<()> {
        let done = sqlx::query(INSERT_STREAM)
            .bind(&key.build_id)
            .bind(&key.invocation_id)
            .bind(i64::from(key.component))
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(db_err("creating a stream"))?;
        if done.rows_affected() == 0 {
            return Err(Error::AlreadyExists(format!(
                "stream {} already exists",
                key.display()
            )));
        }
        Ok(())
    }

    async fn stream(&self, key: &StreamKey) -> Result<Option<StreamInfo>> {
        let row = sqlx::query(
            "SELECT build_id, invocation_id, component, last_sequence, finished FROM bes_streams \
             WHERE build_id = $1 AND invocation_id = $2 AND component = $3",
        )
        .bind(&key.build_id)
        .bind(&key.invocation_id)
        .bind(i64::from(key.component))
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("reading a stream"))?;
        row.as_ref()
            .map(stream_info)
            .transpose()
            .map_err(db_err("reading a stream"))
    }

    async fn commit(
        &self,
        key: &StreamKey,
        events: &[NewEvent],
        finished: bool,
        invocation: Option<&Invocation>,
    ) -> Result<()> {
        self.writer.commit(key, events, finished, invocation).await
    }

    async fn invocation(&self, invocation_id: &str) -> Result<Option<Invocation>> {
        let row = sqlx::query("SELECT summary FROM invocations WHERE invocation_id = $1")
            .bind(invocation_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("reading an invocation"))?;
        match row {
            None => Ok(None),
            Some(r) => parse_summary(
                &r.try_get::<String, _>(0)
                    .map_err(db_err("reading an invocation"))?,
            )
            .map(Some),
        }
    }

    async fn invocations(&self, filter: &InvocationFilter) -> Result<Vec<Invocation>> {
        let rows = super::sql_pages::select_invocations(&self.pool, "summary", filter).await?;
        rows.iter()
            .map(|r| {
                parse_summary(
                    &r.try_get::<String, _>(0)
                        .map_err(db_err("listing invocations"))?,
                )
            })
            .collect()
    }

    async fn invocation_rows(&self, filter: &InvocationFilter) -> Result<Vec<InvocationRow>> {
        super::sql_pages::invocation_rows(&self.pool, filter).await
    }

    async fn test_history(&self, label: &str, limit: i64) -> Result<Vec<TestRun>> {
        super::sql_pages::test_history(&self.pool, label, limit).await
    }

    async fn test_stats(&self, since_ms: i64, limit: i64) -> Result<Vec<TestStats>> {
        super::sql_pages::test_stats(&self.pool, since_ms, limit).await
    }

    async fn trends(&self, filter: &InvocationFilter) -> Result<Vec<super::store::TrendDay>> {
        super::sql_pages::trends(&self.pool, filter).await
    }

    async fn streams(&self, pattern: &regex::Regex) -> Result<Vec<StreamInfo>> {
        let rows = sqlx::query(
            "SELECT build_id, invocation_id, component, last_sequence, finished FROM bes_streams \
             ORDER BY created_at DESC LIMIT 100000",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("listing streams"))?;
        let mut out = Vec::new();
        for row in &rows {
            let info = stream_info(row).map_err(db_err("listing streams"))?;
            if pattern.is_match(&info.key.display()) {
                out.push(info);
            }
        }
        Ok(out)
    }

    async fn events(&self, invocation_id: &str, filter: &EventFilter) -> Result<Vec<StoredEvent>> {
        let mut sql = String::from(
            "SELECT build_id, invocation_id, component, sequence, kind, label, event_time, payload FROM bes_events \
             WHERE invocation_id = $1 AND sequence > $2 AND sequence >= $3",
        );
        let mut n = 3;
        if filter.to > 0 {
            n += 1;
            sql.push_str(&format!(" AND sequence <= ${n}"));
        }
        let kinds_start = n + 1;
        if !filter.kinds.is_empty() {
            let list: Vec<String> = (0..filter.kinds.len())
                .map(|i| format!("${}", kinds_start + i))
                .collect();
            sql.push_str(&format!(" AND kind IN ({})", list.join(", ")));
        }
        let limit = if filter.limit <= 0 {
            1000
        } else {
            filter.limit.min(100_000)
        };
        let fetch = if filter.label.is_some() {
            100_000
        } else {
            limit
        };
        let order = if filter.newest_first {
            "component DESC, build_id DESC, sequence DESC"
        } else {
            "component, build_id, sequence"
        };
        sql.push_str(&format!(" ORDER BY {order} LIMIT {fetch}"));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(invocation_id)
            .bind(filter.after)
            .bind(filter.from);
        if filter.to > 0 {
            q = q.bind(filter.to);
        }
        for k in &filter.kinds {
            q = q.bind(k.as_str());
        }
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("reading events"))?;
        let mut out = Vec::new();
        for r in &rows {
            let read = || -> std::result::Result<StoredEvent, sqlx::Error> {
                Ok(StoredEvent {
                    stream: StreamKey {
                        build_id: r.try_get(0)?,
                        invocation_id: r.try_get(1)?,
                        component: r.try_get::<i64, _>(2)? as i32,
                    },
                    sequence: r.try_get(3)?,
                    kind: r.try_get(4)?,
                    label: r.try_get(5)?,
                    event_time_ms: r.try_get(6)?,
                    payload: Bytes::from(r.try_get::<Vec<u8>, _>(7)?),
                })
            };
            let event = read().map_err(db_err("reading events"))?;
            if filter
                .label
                .as_ref()
                .is_none_or(|re| re.is_match(&event.label))
            {
                out.push(event);
                if out.len() as i64 >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn record_nondeterminism(&self, rows: &[NondeterministicOutput]) -> Result<()> {
        super::sql_insights::record(&self.pool, rows).await
    }

    async fn nondeterminism(
        &self,
        invocation: Option<&str>,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<NondeterministicOutput>> {
        super::sql_insights::list(&self.pool, invocation, since_ms, limit).await
    }

    async fn fingerprint_round_ids(
        &self,
        since_ms: i64,
        pod: &str,
        limit: i64,
    ) -> Result<Vec<(String, i64)>> {
        super::sql_misses::round_ids(&self.pool, since_ms, pod, limit).await
    }

    async fn fingerprint_rounds(&self, ids: &[String]) -> Result<Vec<FingerprintRound>> {
        super::sql_misses::rounds(&self.pool, self.placeholders, ids).await
    }

    async fn record_misses(
        &self,
        round: Option<&FingerprintRound>,
        misses: &[crate::insights::misses::Recorded],
    ) -> Result<()> {
        super::sql_misses::record(&self.pool, self.placeholders, round, misses).await
    }

    async fn miss_chunks(&self, invocation: &str) -> Result<Vec<(String, Vec<Miss>)>> {
        super::sql_misses::chunks(&self.pool, invocation).await
    }

    async fn replace_miss_chunk(
        &self,
        invocation: &str,
        chunk: &str,
        misses: &[Miss],
    ) -> Result<()> {
        super::sql_misses::replace(&self.pool, invocation, chunk, misses).await
    }

    async fn record_scorecards(&self, rows: &[crate::insights::scorecard::Row]) -> Result<()> {
        super::sql_scorecards::record(&self.pool, rows).await
    }

    async fn scorecard(
        &self,
        invocation: &str,
    ) -> Result<Option<crate::insights::scorecard::Scorecard>> {
        super::sql_scorecards::read(&self.pool, invocation).await
    }
}
