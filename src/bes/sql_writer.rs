//! The build-event store's group-commit writer: one task per store takes
//! every stream's waiting commit and stores them in one transaction, so
//! streams never contend for the database's writer lock (SQLite has one)
//! and a busy server pays one fsync for many streams' batches. Each
//! stream's commit returns (and its events are acknowledged) when that
//! transaction is durable.

use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

use super::store::{InvocationRow, NewEvent, StreamKey, TestRun};
use super::summary::Invocation;
use crate::error::{Error, Result};
use crate::sql::db_err;
use crate::time::now_ms;

/// Creates a stream row unless it exists (binds: build id, invocation id,
/// component, created at).
pub(super) const INSERT_STREAM: &str = "INSERT INTO bes_streams \
    (build_id, invocation_id, component, created_at, last_sequence, finished) \
    VALUES ($1, $2, $3, $4, 0, 0) ON CONFLICT DO NOTHING";

/// Rows per multi-row INSERT: far below either database's parameter limit.
const INSERT_CHUNK: usize = 100;
/// Events one group transaction takes at most; more wait for the next.
const MAX_GROUP_EVENTS: usize = 20_000;

/// The handle commits are sent through; the writer task ends when the last
/// handle is dropped.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
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
    row: InvocationRow,
    json: String,
    /// Its tests, once the invocation is finished (history rows).
    tests: Option<Vec<TestRun>>,
    /// Its `--build_metadata` pairs, for the filters.
    metadata: Vec<(String, String)>,
}

impl Summary {
    fn of(i: &Invocation) -> Result<Summary> {
        let failed_tests = i.tests.iter().filter(|t| t.status.is_failure()).count();
        let failed_targets = i.targets.iter().filter(|t| t.outcome.is_failure()).count();
        let row = InvocationRow {
            invocation_id: i.invocation_id.clone(),
            status: i.status,
            user: i.user.clone(),
            host: i.host.clone(),
            repository: i.repository.clone(),
            branch: i.branch.clone(),
            command: i.command.clone(),
            patterns: i.patterns.join(" "),
            exit_code_name: i.exit_code_name.clone(),
            started_at: i.started_at,
            duration_ms: i.duration_ms,
            cache_hits: i.cache_hits,
            actions_executed: i.actions_executed,
            targets: i.targets.len() as i64,
            failed: (failed_tests + failed_targets) as i64,
        };
        let tests = i.is_finished().then(|| {
            i.tests
                .iter()
                .map(|t| TestRun {
                    label: t.label.clone(),
                    invocation_id: i.invocation_id.clone(),
                    status: t.status,
                    flaky: t.flaky,
                    attempts: i64::from(t.attempts),
                    duration_ms: t.duration_ms,
                    cached: t.cached,
                    fingerprint: i
                        .targets
                        .iter()
                        .find(|x| x.label == t.label)
                        .map(|x| x.fingerprint.clone())
                        .unwrap_or_default(),
                    started_at: i.started_at,
                })
                .collect()
        });
        Ok(Summary {
            row,
            json: serde_json::to_string(i)
                .map_err(|e| Error::internal_from("encoding a summary", e))?,
            tests,
            metadata: if i.metadata_changed {
                i.metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            } else {
                Vec::new()
            },
        })
    }
}

impl Writer {
    /// Starts the writer task on `pool`, its statements spelt with
    /// `placeholders`.
    pub(super) fn start(pool: AnyPool, placeholders: Placeholders) -> Self {
        let (jobs, rx) = mpsc::channel(1024);
        tokio::spawn(write_groups(pool, placeholders, rx));
        Writer { jobs }
    }

    /// Queues one stream's commit (see `EventStore::commit`) and waits until
    /// the group holding it is durable.
    pub(super) async fn commit(
        &self,
        key: &StreamKey,
        events: &[NewEvent],
        finished: bool,
        invocation: Option<&Invocation>,
    ) -> Result<()> {
        // The summary is encoded here, on the stream's own task; the writer
        // only runs the statements.
        let summary = invocation
            .filter(|i| !i.invocation_id.is_empty())
            .map(Summary::of)
            .transpose()?;
        let (done, wait) = oneshot::channel();
        let job = Job {
            key: key.clone(),
            events: events.to_vec(),
            finished,
            summary,
            done,
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| Error::Unavailable("the build-event writer has stopped".into()))?;
        wait.await.unwrap_or_else(|_| {
            Err(Error::Unavailable(
                "the build-event writer has stopped".into(),
            ))
        })
    }
}

/// How the multi-row INSERT spells its parameters. SQLite's `$N` costs a
/// scan of every named parameter per bind (quadratic in a statement of 800
/// parameters: measured, 28% of the server's CPU under build events), its
/// anonymous `?` none; PostgreSQL knows only `$N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placeholders {
    Anonymous,
    Numbered,
}

impl Placeholders {
    /// The spelling for a SQLite database when `sqlite`, else PostgreSQL's.
    pub(super) fn of(sqlite: bool) -> Self {
        if sqlite {
            Placeholders::Anonymous
        } else {
            Placeholders::Numbered
        }
    }
}

/// `(p1, ..., p8), (p9, ...)`: the VALUES of `rows` rows of eight columns.
fn values_clause(rows: usize, placeholders: Placeholders) -> String {
    values_of(rows, 8, placeholders)
}

/// `(?, ?), (?, ?)` (or numbered) for `rows` rows of `columns` values.
pub(super) fn values_of(rows: usize, columns: usize, placeholders: Placeholders) -> String {
    let mut out = String::with_capacity(rows * columns * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..columns {
            if c > 0 {
                out.push_str(", ");
            }
            match placeholders {
                Placeholders::Anonymous => out.push('?'),
                Placeholders::Numbered => {
                    use std::fmt::Write;
                    let _ = write!(out, "${}", r * columns + c + 1);
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
            matches!((&later.summary, &job.summary), (Some(a), Some(b)) if a.row.invocation_id == b.row.invocation_id)
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
    sqlx::query(INSERT_STREAM)
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
        write_summary(tx, summary).await?;
    }
    Ok(())
}

/// Stores an invocation's summary and list columns, and its test rows once
/// it is finished.
async fn write_summary(tx: &mut sqlx::Transaction<'_, sqlx::Any>, summary: &Summary) -> Result<()> {
    let err = db_err("storing an invocation summary");
    let r = &summary.row;
    sqlx::query(
        "INSERT INTO invocations (invocation_id, status, user_name, started_at, updated_at, summary, \
         host, command, patterns, exit_code_name, duration_ms, cache_hits, actions_executed, \
         target_count, failed_count, repository, branch) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
         ON CONFLICT (invocation_id) DO UPDATE SET \
         status = excluded.status, user_name = excluded.user_name, started_at = excluded.started_at, \
         updated_at = excluded.updated_at, summary = excluded.summary, host = excluded.host, \
         command = excluded.command, patterns = excluded.patterns, \
         exit_code_name = excluded.exit_code_name, duration_ms = excluded.duration_ms, \
         cache_hits = excluded.cache_hits, actions_executed = excluded.actions_executed, \
         target_count = excluded.target_count, failed_count = excluded.failed_count, \
         repository = excluded.repository, branch = excluded.branch",
    )
    .bind(&r.invocation_id)
    .bind(r.status.as_str())
    .bind(&r.user)
    .bind(r.started_at)
    .bind(now_ms())
    .bind(&summary.json)
    .bind(&r.host)
    .bind(&r.command)
    .bind(&r.patterns)
    .bind(&r.exit_code_name)
    .bind(r.duration_ms.unwrap_or(-1))
    .bind(r.cache_hits)
    .bind(r.actions_executed)
    .bind(r.targets)
    .bind(r.failed)
    .bind(&r.repository)
    .bind(&r.branch)
    .execute(&mut **tx)
    .await
    .map_err(&err)?;
    write_metadata(tx, &r.invocation_id, &summary.metadata).await?;
    let Some(tests) = &summary.tests else {
        return Ok(());
    };
    sqlx::query("DELETE FROM test_runs WHERE invocation_id = $1")
        .bind(&r.invocation_id)
        .execute(&mut **tx)
        .await
        .map_err(&err)?;
    for chunk in tests.chunks(INSERT_CHUNK) {
        // One test label twice in one invocation cannot happen (the
        // summary folds by label), but a conflict must not fail the commit.
        let sql = format!(
            "INSERT INTO test_runs (label, invocation_id, status, flaky, attempts, duration_ms, \
             cached, fingerprint, started_at) VALUES {} ON CONFLICT DO NOTHING",
            values_of(chunk.len(), 9, Placeholders::Numbered)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for t in chunk {
            q = q
                .bind(&t.label)
                .bind(&t.invocation_id)
                .bind(t.status.as_str())
                .bind(i64::from(t.flaky))
                .bind(t.attempts)
                .bind(t.duration_ms)
                .bind(i64::from(t.cached))
                .bind(&t.fingerprint)
                .bind(t.started_at);
        }
        q.execute(&mut **tx).await.map_err(&err)?;
    }
    Ok(())
}

/// Upserts an invocation's `--build_metadata` pairs (capped in the
/// summary; Bazel sends them once, early, so most writes have none new).
async fn write_metadata(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    invocation: &str,
    pairs: &[(String, String)],
) -> Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO invocation_metadata (invocation_id, name, value) VALUES {} \
         ON CONFLICT (invocation_id, name) DO UPDATE SET value = excluded.value",
        values_of(pairs.len(), 3, Placeholders::Numbered)
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (name, value) in pairs {
        q = q.bind(invocation).bind(name.as_str()).bind(value.as_str());
    }
    q.execute(&mut **tx)
        .await
        .map_err(db_err("storing an invocation's build metadata"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failed_count_follows_the_one_failure_rule() {
        use crate::bes::summary::{Target, Test};
        let mut i = Invocation::new("inv", "build");
        for status in ["NO_STATUS", "PASSED", "FLAKY", "FAILED", "TIMEOUT", ""] {
            i.tests.push(Test {
                label: format!("//t:{status}"),
                status: crate::bes::summary::TestStatus::from_name(status),
                ..Default::default()
            });
        }
        for outcome in ["SUCCESS", "FAILED", "ABORTED", ""] {
            i.targets.push(Target {
                label: format!("//x:{outcome}"),
                outcome: crate::bes::summary::Outcome::from_name(outcome),
                ..Default::default()
            });
        }
        // Tests that have not run (yet) are no failure: FAILED and TIMEOUT
        // tests, FAILED and ABORTED targets are, as the pages show them.
        assert_eq!(Summary::of(&i).unwrap().row.failed, 4);
    }

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
