//! [`EventStore`] on SQL through sqlx's runtime-selected driver: SQLite (a
//! file in the data dir, the embedded default) or PostgreSQL (shared by many
//! pods). One schema and one set of queries serve both; migrations live in
//! `migrations/` and are applied at start-up.

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use super::store::{
    EventFilter, EventStore, InvocationFilter, NewEvent, StoredEvent, StreamInfo, StreamKey,
};
use super::summary::Invocation;
use crate::error::{Error, Result};
use crate::sql::db_err;
use crate::time::now_ms;

/// Schema versions, applied in order, each once.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_build_events.sql")),
    (
        2,
        include_str!("../../migrations/0002_build_events_retention.sql"),
    ),
];

/// Rows per multi-row INSERT: far below either database's parameter limit.
const INSERT_CHUNK: usize = 100;
/// Events one group transaction takes at most; more wait for the next.
const MAX_GROUP_EVENTS: usize = 20_000;

/// Build events in a SQL database.
///
/// Commits are group commits: one writer task takes every commit waiting,
/// from all streams, and stores them in one transaction; each stream's
/// commit returns (and its events are acknowledged) when that transaction
/// is durable. Streams never contend for the database's writer lock (SQLite
/// has one), and a busy server pays one fsync for many streams' batches.
#[derive(Debug, Clone)]
pub struct SqlEventStore {
    pool: AnyPool,
    writer: mpsc::Sender<Job>,
}

/// One stream's commit, waiting for the writer.
#[derive(Debug)]
struct Job {
    key: StreamKey,
    events: Vec<NewEvent>,
    finished: bool,
    summary: Option<Summary>,
    done: oneshot::Sender<Result<()>>,
}

/// An invocation summary, encoded, with the columns indexed beside it.
#[derive(Debug)]
struct Summary {
    invocation_id: String,
    status: String,
    user: String,
    started_at: i64,
    json: String,
}

impl SqlEventStore {
    /// Connects to `url` (`sqlite://PATH?mode=rwc` or `postgres://...`) and
    /// applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = crate::sql::connect(url, "build events", MIGRATIONS).await?;
        let (writer, jobs) = mpsc::channel(1024);
        let placeholders = if url.starts_with("sqlite:") {
            Placeholders::Anonymous
        } else {
            Placeholders::Numbered
        };
        tokio::spawn(write_groups(pool.clone(), placeholders, jobs));
        Ok(SqlEventStore { pool, writer })
    }
}

/// How the multi-row INSERT spells its parameters. SQLite's `$N` costs a
/// scan of every named parameter per bind (quadratic in a statement of 800
/// parameters: measured, 28% of the server's CPU under build events), its
/// anonymous `?` none; PostgreSQL knows only `$N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholders {
    Anonymous,
    Numbered,
}

/// `(p1, ..., p8), (p9, ...)`: the VALUES of `rows` rows of eight columns.
fn values_clause(rows: usize, placeholders: Placeholders) -> String {
    let mut out = String::with_capacity(rows * 40);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..8 {
            if c > 0 {
                out.push_str(", ");
            }
            match placeholders {
                Placeholders::Anonymous => out.push('?'),
                Placeholders::Numbered => {
                    use std::fmt::Write;
                    let _ = write!(out, "${}", r * 8 + c + 1);
                }
            }
        }
        out.push(')');
    }
    out
}

/// The writer task: runs until every handle to the store is gone.
async fn write_groups(pool: AnyPool, placeholders: Placeholders, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut events = first.events.len();
        let mut group = vec![first];
        while events < MAX_GROUP_EVENTS {
            match jobs.try_recv() {
                Ok(job) => {
                    events += job.events.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        match write_group(&pool, placeholders, &group).await {
            Ok(()) => {
                for job in group {
                    let _ = job.done.send(Ok(()));
                }
            }
            Err(e) if group.len() == 1 => {
                let _ = group.pop().expect("one job").done.send(Err(e));
            }
            Err(_) => {
                // One stream's failure must not fail the others: each
                // commits on its own.
                for job in group {
                    let result = write_group(&pool, placeholders, std::slice::from_ref(&job)).await;
                    let _ = job.done.send(result);
                }
            }
        }
    }
}

/// Stores `group` in one transaction; of several summaries of one
/// invocation only the newest is written.
async fn write_group(pool: &AnyPool, placeholders: Placeholders, group: &[Job]) -> Result<()> {
    let err = db_err("storing build events");
    let mut tx = pool.begin().await.map_err(&err)?;
    for (i, job) in group.iter().enumerate() {
        let newer_summary = group[i + 1..].iter().any(|later| {
            matches!((&later.summary, &job.summary), (Some(a), Some(b)) if a.invocation_id == b.invocation_id)
        });
        let summary = if newer_summary {
            None
        } else {
            job.summary.as_ref()
        };
        write_job(&mut tx, placeholders, job, summary).await?;
    }
    tx.commit().await.map_err(&err)
}

/// One stream's part of a group: creates the stream if needed, stores the
/// events (skipping sequence numbers already stored), advances the stream
/// and stores the summary.
async fn write_job(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    placeholders: Placeholders,
    job: &Job,
    summary: Option<&Summary>,
) -> Result<()> {
    let err = db_err("storing build events");
    let (key, events, finished) = (&job.key, &job.events, job.finished);
    sqlx::query(
        "INSERT INTO bes_streams (build_id, invocation_id, component, created_at, last_sequence, finished) \
         VALUES ($1, $2, $3, $4, 0, 0) ON CONFLICT DO NOTHING",
    )
    .bind(&key.build_id)
    .bind(&key.invocation_id)
    .bind(i64::from(key.component))
    .bind(now_ms())
    .execute(&mut **tx)
    .await
    .map_err(&err)?;
    for chunk in events.chunks(INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO bes_events (build_id, invocation_id, component, sequence, kind, label, event_time, payload) \
             VALUES {} ON CONFLICT DO NOTHING",
            values_clause(chunk.len(), placeholders)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for e in chunk {
            q = q
                .bind(&key.build_id)
                .bind(&key.invocation_id)
                .bind(i64::from(key.component))
                .bind(e.sequence)
                .bind(&e.kind)
                .bind(&e.label)
                .bind(e.event_time_ms)
                .bind(e.payload.to_vec());
        }
        q.execute(&mut **tx).await.map_err(&err)?;
    }
    let last = events.iter().map(|e| e.sequence).max().unwrap_or(0);
    sqlx::query(
        "UPDATE bes_streams SET last_sequence = CASE WHEN last_sequence < $1 THEN $1 ELSE last_sequence END, \
         finished = CASE WHEN $2 = 1 THEN 1 ELSE finished END \
         WHERE build_id = $3 AND invocation_id = $4 AND component = $5",
    )
    .bind(last)
    .bind(i64::from(finished))
    .bind(&key.build_id)
    .bind(&key.invocation_id)
    .bind(i64::from(key.component))
    .execute(&mut **tx)
    .await
    .map_err(&err)?;
    if let Some(summary) = summary {
        sqlx::query(
            "INSERT INTO invocations (invocation_id, status, user_name, started_at, updated_at, summary) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (invocation_id) DO UPDATE SET \
             status = excluded.status, user_name = excluded.user_name, started_at = excluded.started_at, \
             updated_at = excluded.updated_at, summary = excluded.summary",
        )
        .bind(&summary.invocation_id)
        .bind(&summary.status)
        .bind(&summary.user)
        .bind(summary.started_at)
        .bind(now_ms())
        .bind(&summary.json)
        .execute(&mut **tx)
        .await
        .map_err(&err)?;
    }
    Ok(())
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
        Ok((ids.len() + orphans.len()) as u64)
    }

    async fn create_stream(&self, key: &StreamKey) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO bes_streams (build_id, invocation_id, component, created_at, last_sequence, finished) \
             VALUES ($1, $2, $3, $4, 0, 0) ON CONFLICT DO NOTHING",
        )
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
        // The summary is encoded here, on the stream's own task; the writer
        // only runs the statements.
        let summary = match invocation.filter(|i| !i.invocation_id.is_empty()) {
            Some(i) => Some(Summary {
                invocation_id: i.invocation_id.clone(),
                status: i.status.as_str().to_string(),
                user: i.user.clone(),
                started_at: i.started_at,
                json: serde_json::to_string(i)
                    .map_err(|e| Error::internal_from("encoding a summary", e))?,
            }),
            None => None,
        };
        let (done, wait) = oneshot::channel();
        let job = Job {
            key: key.clone(),
            events: events.to_vec(),
            finished,
            summary,
            done,
        };
        self.writer
            .send(job)
            .await
            .map_err(|_| Error::Unavailable("the build-event writer has stopped".into()))?;
        wait.await.unwrap_or_else(|_| {
            Err(Error::Unavailable(
                "the build-event writer has stopped".into(),
            ))
        })
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
        let mut conditions = Vec::new();
        let mut binds = Vec::new();
        if let Some(status) = &filter.status {
            binds.push(status.clone());
            conditions.push(format!("status = ${}", binds.len()));
        }
        if let Some(user) = &filter.user {
            binds.push(user.clone());
            conditions.push(format!("user_name = ${}", binds.len()));
        }
        let filter_sql = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let limit = if filter.limit <= 0 {
            50
        } else {
            filter.limit.min(10_000)
        };
        let sql = format!(
            "SELECT summary FROM invocations {filter_sql} ORDER BY started_at DESC, updated_at DESC LIMIT {limit}"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in &binds {
            q = q.bind(b.as_str());
        }
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("listing invocations"))?;
        rows.iter()
            .map(|r| {
                parse_summary(
                    &r.try_get::<String, _>(0)
                        .map_err(db_err("listing invocations"))?,
                )
            })
            .collect()
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
        sql.push_str(&format!(
            " ORDER BY component, build_id, sequence LIMIT {fetch}"
        ));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_clauses() {
        assert_eq!(
            values_clause(2, Placeholders::Anonymous),
            "(?, ?, ?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?, ?, ?)"
        );
        assert_eq!(
            values_clause(2, Placeholders::Numbered),
            "($1, $2, $3, $4, $5, $6, $7, $8), ($9, $10, $11, $12, $13, $14, $15, $16)"
        );
    }
}
