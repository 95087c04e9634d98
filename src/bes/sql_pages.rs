//! The queries behind the web pages: the filtered invocation list (from
//! the columns stored beside each summary) and test history and statistics
//! (from `test_runs`). SQL shared by SQLite and PostgreSQL.

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use super::store::{InvocationFilter, InvocationRow, TestRun, TestStats, TrendDay};
use super::summary::TestStatus;
use crate::error::Result;
use crate::sql::db_err;

/// Most rows one list query returns.
const MAX_LIST: i64 = 1000;

/// `filter`'s conditions on the invocations table as a WHERE clause (or
/// nothing), with the values to bind: texts first, then numbers, as the
/// placeholders are numbered.
struct Conditions {
    sql: String,
    texts: Vec<String>,
    numbers: Vec<i64>,
}

impl Conditions {
    fn of(filter: &InvocationFilter) -> Conditions {
        let mut conditions = Vec::new();
        let mut texts: Vec<String> = Vec::new();
        let mut numbers: Vec<i64> = Vec::new();
        for (column, value) in [
            ("status", &filter.status),
            ("user_name", &filter.user),
            ("host", &filter.host),
            ("command", &filter.command),
            ("repository", &filter.repository),
            ("branch", &filter.branch),
        ] {
            if let Some(v) = value {
                texts.push(v.clone());
                conditions.push(format!("{column} = ${}", texts.len()));
            }
        }
        if let Some((name, value)) = &filter.metadata {
            texts.push(name.clone());
            texts.push(value.clone());
            conditions.push(format!(
                "invocation_id IN (SELECT invocation_id FROM invocation_metadata \
                 WHERE name = ${} AND value = ${})",
                texts.len() - 1,
                texts.len()
            ));
        }
        if let Some(p) = &filter.pattern {
            // A substring, with LIKE's wildcards in the text taken literally.
            let escaped = p
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            texts.push(format!("%{escaped}%"));
            conditions.push(format!("patterns LIKE ${} ESCAPE '\\'", texts.len()));
        }
        for (op, value) in [(">=", filter.since_ms), ("<", filter.until_ms)] {
            if let Some(v) = value {
                numbers.push(v);
                conditions.push(format!("started_at {op} ${}", texts.len() + numbers.len()));
            }
        }
        let sql = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        Conditions {
            sql,
            texts,
            numbers,
        }
    }

    /// Runs `sql` with the values bound.
    async fn fetch(&self, pool: &AnyPool, sql: String, what: &str) -> Result<Vec<AnyRow>> {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for t in &self.texts {
            q = q.bind(t.as_str());
        }
        for n in &self.numbers {
            q = q.bind(*n);
        }
        q.fetch_all(pool).await.map_err(db_err(what))
    }
}

/// `SELECT {columns} FROM invocations` with `filter`'s conditions, newest
/// first, every client value bound.
pub(super) async fn select_invocations(
    pool: &AnyPool,
    columns: &str,
    filter: &InvocationFilter,
) -> Result<Vec<AnyRow>> {
    let conditions = Conditions::of(filter);
    let limit = if filter.limit <= 0 {
        50
    } else {
        filter.limit.min(MAX_LIST)
    };
    let offset = filter.offset.clamp(0, 1_000_000);
    let sql = format!(
        "SELECT {columns} FROM invocations {} \
         ORDER BY started_at DESC, updated_at DESC LIMIT {limit} OFFSET {offset}",
        conditions.sql
    );
    conditions.fetch(pool, sql, "listing invocations").await
}

/// Days in a trend, at most.
const MAX_DAYS: i64 = 366;

/// The invocations matching `filter` and their tests, summed per UTC day,
/// newest first.
pub(super) async fn trends(pool: &AnyPool, filter: &InvocationFilter) -> Result<Vec<TrendDay>> {
    let conditions = Conditions::of(filter);
    let days = conditions
        .fetch(
            pool,
            format!(
                "SELECT started_at / 86400000 AS day, COUNT(*), \
                 CAST(SUM(CASE WHEN status = 'FAILED' THEN 1 ELSE 0 END) AS BIGINT), \
                 CAST(SUM(cache_hits) AS BIGINT), CAST(SUM(actions_executed) AS BIGINT), \
                 CAST(SUM(CASE WHEN duration_ms >= 0 THEN duration_ms ELSE 0 END) AS BIGINT), \
                 CAST(SUM(CASE WHEN duration_ms >= 0 THEN 1 ELSE 0 END) AS BIGINT), \
                 MAX(duration_ms) FROM invocations {} \
                 GROUP BY started_at / 86400000 ORDER BY day DESC LIMIT {MAX_DAYS}",
                conditions.sql
            ),
            "summing invocations per day",
        )
        .await?;
    let tests = conditions
        .fetch(
            pool,
            format!(
                "SELECT started_at / 86400000 AS day, COUNT(*), \
                 CAST(SUM(CASE WHEN {} THEN 1 ELSE 0 END) AS BIGINT), \
                 COUNT(DISTINCT CASE WHEN flaky <> 0 THEN label END) FROM test_runs \
                 WHERE invocation_id IN (SELECT invocation_id FROM invocations {}) \
                 GROUP BY started_at / 86400000",
                TestStatus::failure_sql("status"),
                conditions.sql
            ),
            "summing test runs per day",
        )
        .await?;
    let cards = conditions
        .fetch(
            pool,
            format!(
                "SELECT updated_at / 86400000 AS day, CAST(SUM(hits) AS BIGINT), \
                 CAST(SUM(lookups) AS BIGINT) FROM invocation_scorecards \
                 WHERE invocation IN (SELECT invocation_id FROM invocations {}) \
                 GROUP BY updated_at / 86400000",
                conditions.sql
            ),
            "summing scorecards per day",
        )
        .await?;
    let err = db_err("summing invocations per day");
    let mut kiln = HashMap::new();
    for r in &cards {
        let day: i64 = r.try_get(0).map_err(&err)?;
        let sums: (i64, i64) = (r.try_get(1).map_err(&err)?, r.try_get(2).map_err(&err)?);
        kiln.insert(day, sums);
    }
    let mut by_day = std::collections::HashMap::new();
    for r in &tests {
        let day: i64 = r.try_get(0).map_err(&err)?;
        let counts: (i64, i64, i64) = (
            r.try_get(1).map_err(&err)?,
            r.try_get(2).map_err(&err)?,
            r.try_get(3).map_err(&err)?,
        );
        by_day.insert(day, counts);
    }
    days.iter()
        .map(|r| {
            let day: i64 = r.try_get(0).map_err(&err)?;
            let timed: i64 = r.try_get(6).map_err(&err)?;
            let total: i64 = r.try_get(5).map_err(&err)?;
            let (tests, test_failures, flaky_tests) = by_day.get(&day).copied().unwrap_or_default();
            let (kiln_hits, kiln_lookups) = kiln.get(&day).copied().unwrap_or_default();
            Ok(TrendDay {
                day_ms: day * 86_400_000,
                invocations: r.try_get(1).map_err(&err)?,
                failed: r.try_get(2).map_err(&err)?,
                cache_hits: r.try_get(3).map_err(&err)?,
                actions: r.try_get(4).map_err(&err)?,
                mean_duration_ms: if timed > 0 { total / timed } else { 0 },
                max_duration_ms: r.try_get::<i64, _>(7).map_err(&err)?.max(0),
                kiln_hits,
                kiln_lookups,
                tests,
                test_failures,
                flaky_tests,
            })
        })
        .collect()
}

pub(super) async fn invocation_rows(
    pool: &AnyPool,
    filter: &InvocationFilter,
) -> Result<Vec<InvocationRow>> {
    let rows = select_invocations(
        pool,
        "invocation_id, status, user_name, host, command, patterns, exit_code_name, started_at, \
         duration_ms, cache_hits, actions_executed, target_count, failed_count, repository, branch",
        filter,
    )
    .await?;
    let read = |r: &AnyRow| -> std::result::Result<InvocationRow, sqlx::Error> {
        let duration: i64 = r.try_get(8)?;
        Ok(InvocationRow {
            invocation_id: r.try_get(0)?,
            status: super::summary::Status::from_name(&r.try_get::<String, _>(1)?),
            user: r.try_get(2)?,
            host: r.try_get(3)?,
            command: r.try_get(4)?,
            patterns: r.try_get(5)?,
            exit_code_name: r.try_get(6)?,
            started_at: r.try_get(7)?,
            duration_ms: (duration >= 0).then_some(duration),
            cache_hits: r.try_get(9)?,
            actions_executed: r.try_get(10)?,
            targets: r.try_get(11)?,
            failed: r.try_get(12)?,
            repository: r.try_get(13)?,
            branch: r.try_get(14)?,
        })
    };
    rows.iter()
        .map(|r| read(r).map_err(db_err("listing invocations")))
        .collect()
}

fn test_run(r: &AnyRow) -> std::result::Result<TestRun, sqlx::Error> {
    Ok(TestRun {
        label: r.try_get(0)?,
        invocation_id: r.try_get(1)?,
        status: TestStatus::from_name(&r.try_get::<String, _>(2)?),
        flaky: r.try_get::<i64, _>(3)? != 0,
        attempts: r.try_get(4)?,
        duration_ms: r.try_get(5)?,
        cached: r.try_get::<i64, _>(6)? != 0,
        fingerprint: r.try_get(7)?,
        started_at: r.try_get(8)?,
    })
}

pub(super) async fn test_history(pool: &AnyPool, label: &str, limit: i64) -> Result<Vec<TestRun>> {
    let limit = limit.clamp(1, MAX_LIST);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT label, invocation_id, status, flaky, attempts, duration_ms, cached, fingerprint, \
         started_at FROM test_runs WHERE label = $1 ORDER BY started_at DESC LIMIT {limit}"
    )))
    .bind(label)
    .fetch_all(pool)
    .await
    .map_err(db_err("reading a test's history"))?;
    rows.iter()
        .map(|r| test_run(r).map_err(db_err("reading a test's history")))
        .collect()
}

/// A run that passed (first time or after retries).
const PASSED: &str = "status IN ('PASSED', 'FLAKY')";

pub(super) async fn test_stats(
    pool: &AnyPool,
    since_ms: i64,
    limit: i64,
) -> Result<Vec<TestStats>> {
    let err = db_err("summing test runs");
    let limit = limit.clamp(1, MAX_LIST);
    // Failures by the one rule pages and stored counts use: a run that did
    // not run (NO_STATUS) is not one.
    let failed = TestStatus::failure_sql("status");
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT label, COUNT(*), CAST(SUM(CASE WHEN {failed} THEN 1 ELSE 0 END) AS BIGINT), \
         CAST(SUM(flaky) AS BIGINT), CAST(SUM(duration_ms) AS BIGINT), MAX(duration_ms) FROM test_runs WHERE started_at >= $1 \
         GROUP BY label ORDER BY COUNT(*) DESC, label LIMIT {limit}"
    )))
    .bind(since_ms)
    .fetch_all(pool)
    .await
    .map_err(&err)?;
    // Fingerprints under which one test both passed and failed.
    let mixed = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT label, COUNT(*) FROM (SELECT label, fingerprint FROM test_runs \
         WHERE started_at >= $1 AND fingerprint <> '' GROUP BY label, fingerprint \
         HAVING SUM(CASE WHEN {PASSED} THEN 1 ELSE 0 END) > 0 \
         AND SUM(CASE WHEN {failed} THEN 1 ELSE 0 END) > 0) mixed GROUP BY label"
    )))
    .bind(since_ms)
    .fetch_all(pool)
    .await
    .map_err(&err)?;
    let mut mixed_by: HashMap<String, i64> = HashMap::new();
    for r in &mixed {
        mixed_by.insert(r.try_get(0).map_err(&err)?, r.try_get(1).map_err(&err)?);
    }
    let read = |r: &AnyRow| -> std::result::Result<TestStats, sqlx::Error> {
        let label: String = r.try_get(0)?;
        let runs: i64 = r.try_get(1)?;
        // PostgreSQL's SUM of a BIGINT is NUMERIC: every SUM is cast back.
        let total: i64 = r.try_get(4)?;
        Ok(TestStats {
            mixed_inputs: mixed_by.get(&label).copied().unwrap_or(0),
            label,
            runs,
            failures: r.try_get(2)?,
            flaky_runs: r.try_get(3)?,
            mean_ms: if runs > 0 { total / runs } else { 0 },
            max_ms: r.try_get(5)?,
        })
    };
    rows.iter().map(|r| read(r).map_err(&err)).collect()
}
