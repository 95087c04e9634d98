//! [`JobStore`] on SQL (SQLite by default, PostgreSQL for many pods), through
//! the seam in [`crate::sql`]. Every racing step is one conditional UPDATE
//! (`... WHERE stage = 2 AND bot IS NULL`), so two pods never both win.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::job::{Job, JobFilter, Offers, Platform, Stage};
use super::news::{JobNews, PgNews};
use super::sql_group::{GroupWriter, Statement, Value};
use super::store::JobStore;
use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};
use crate::sql::db_err;

/// Schema versions (the scheduler's range is 1001-1999).
const MIGRATIONS: &[(i64, &str)] = &[
    (1001, include_str!("../../migrations/1001_scheduler.sql")),
    (
        1002,
        include_str!("../../migrations/1002_scheduler_purge_index.sql"),
    ),
    (
        1003,
        include_str!("../../migrations/1003_scheduler_invocations.sql"),
    ),
    (
        1004,
        include_str!("../../migrations/1004_scheduler_writers.sql"),
    ),
    (
        1005,
        include_str!("../../migrations/1005_scheduler_bot_stage_index.sql"),
    ),
];

/// A bot's leases: both found through the (bot, stage) index, never by
/// reading the bot's finished jobs.
const RENEW: &str =
    "UPDATE exec_jobs SET lease_expires = $1 WHERE bot = $2 AND stage = 3 AND lease_expires < $3";
const HELD: &str = "SELECT id FROM exec_jobs WHERE bot = $1 AND stage = 3";

/// Every column, in the order [`job_from_row`] reads them.
const COLUMNS: &str = "id, instance, action_function, action_hash, action_size, action, platform, \
    priority, do_not_cache, merge_key, stage, bot, lease_expires, attempts, cancelled, queued_at, \
    ready_at, started_at, completed_at, response, trace, version, invocation_id, target, mnemonic";

/// Claims retried when another pod takes the chosen job first.
const CLAIM_RACES: usize = 8;

/// How long the list of queued platforms is reused before it is read again
/// (jobs queued by this pod update it at once; other pods' new platforms are
/// seen within this).
const PLATFORMS_TTL: std::time::Duration = std::time::Duration::from_millis(200);

/// When read, the count of queued-job news then, and the platforms.
type QueuedPlatforms = (Instant, u64, Vec<String>);

/// Jobs in a SQL database.
#[derive(Debug)]
pub struct SqlJobStore {
    pool: AnyPool,
    /// Per instance: when read, the news count then, and the distinct
    /// platforms of queued jobs.
    platforms: Mutex<HashMap<String, QueuedPlatforms>>,
    /// On PostgreSQL: announcing changes to other pods, hearing theirs.
    news: Option<PgNews>,
    /// On SQLite: the group commit every write step goes through.
    group: Option<GroupWriter>,
}

impl SqlJobStore {
    /// Connects to `url` and applies pending migrations.
    #[cfg(test)]
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, true).await
    }

    /// Connects to `url`; with `notifications` on PostgreSQL, pods tell
    /// each other of job changes (LISTEN/NOTIFY).
    pub async fn connect_with(url: &str, notifications: bool) -> Result<Self> {
        let pool = crate::sql::connect(url, "scheduler", MIGRATIONS).await?;
        let postgres = url.starts_with("postgres:") || url.starts_with("postgresql:");
        Ok(SqlJobStore {
            news: (notifications && postgres).then(|| PgNews::start(url, pool.clone())),
            group: (!postgres).then(|| GroupWriter::start(pool.clone())),
            pool,
            platforms: Mutex::new(HashMap::new()),
        })
    }

    /// Runs a write step: in the next group commit on SQLite, through the
    /// pool on PostgreSQL. Returns the rows changed and the row returned.
    async fn write(&self, statement: Statement) -> Result<(u64, Option<AnyRow>)> {
        match &self.group {
            Some(group) => group.run(statement).await,
            None => statement.run_on(&self.pool).await,
        }
    }

    /// A write step that returns the job it changed (RETURNING), if any.
    async fn write_job(&self, statement: Statement) -> Result<Option<Job>> {
        let statement = Statement {
            returning: true,
            ..statement
        };
        let (_, row) = self.write(statement).await?;
        self.announced(row.as_ref().map(job_from_row).transpose())
    }

    fn announce(&self, job: &Job) {
        if let Some(news) = &self.news {
            news.announce(job);
        }
    }

    fn announced(&self, job: Result<Option<Job>>) -> Result<Option<Job>> {
        if let Ok(Some(job)) = &job {
            self.announce(job);
        }
        job
    }

    async fn select(&self, clause: &str, context: &str, binds: Vec<Bind>) -> Result<Vec<Job>> {
        let sql = format!("SELECT {COLUMNS} FROM exec_jobs {clause}");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for b in binds {
            q = match b {
                Bind::I(v) => q.bind(v),
                Bind::S(v) => q.bind(v),
            };
        }
        let rows = q.fetch_all(&self.pool).await.map_err(db_err(context))?;
        rows.iter().map(job_from_row).collect()
    }

    fn note_platform(&self, instance: &str, platform: String) {
        let mut cached = self.platforms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, list)) = cached.get_mut(instance)
            && !list.contains(&platform)
        {
            list.push(platform);
        }
    }

    /// The distinct platforms of `instance`'s queued jobs (cached briefly).
    async fn queued_platforms(&self, instance: &str) -> Result<Vec<String>> {
        // Work another pod queued, heard of, may be on a new platform.
        let heard = self.news.as_ref().map_or(0, PgNews::queued_heard);
        if let Some((at, seen, list)) = self
            .platforms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(instance)
            && at.elapsed() < PLATFORMS_TTL
            && *seen == heard
        {
            return Ok(list.clone());
        }
        let list: Vec<String> = sqlx::query(
            "SELECT DISTINCT platform FROM exec_jobs WHERE stage = 2 AND instance = $1",
        )
        .bind(instance.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("taking a job"))?
        .iter()
        .filter_map(|r| r.try_get::<String, _>(0).ok())
        .collect();
        self.platforms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(instance.to_string(), (Instant::now(), heard, list.clone()));
        Ok(list)
    }

    async fn one(&self, id: &str) -> Result<Option<Job>> {
        Ok(self
            .select("WHERE id = $1", "reading a job", vec![Bind::S(id.into())])
            .await?
            .pop())
    }
}

enum Bind {
    I(i64),
    S(String),
}

/// `$first, $first+1, ...`: `n` numbered placeholders for an IN list.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn job_from_row(row: &AnyRow) -> Result<Job> {
    let read = || -> std::result::Result<Job, sqlx::Error> {
        let function: String = row.try_get(2)?;
        let hash: String = row.try_get(3)?;
        let size: i64 = row.try_get(4)?;
        let platform: String = row.try_get(6)?;
        let function = DigestFunction::from_name(&function).unwrap_or(DigestFunction::Sha256);
        Ok(Job {
            id: row.try_get(0)?,
            instance: row.try_get(1)?,
            action_digest: Digest::parse(function, &hash, size)
                .map_err(|e| sqlx::Error::Decode(e.to_string().into()))?,
            action: Bytes::from(row.try_get::<Vec<u8>, _>(5)?),
            platform: Platform::decode(&platform)
                .map_err(|e| sqlx::Error::Decode(e.to_string().into()))?,
            priority: row.try_get::<i64, _>(7)? as i32,
            do_not_cache: row.try_get::<i64, _>(8)? != 0,
            merge_key: row.try_get(9)?,
            stage: Stage::from_i64(row.try_get(10)?)
                .map_err(|e| sqlx::Error::Decode(e.to_string().into()))?,
            bot: row.try_get(11)?,
            lease_expires: row.try_get(12)?,
            attempts: row.try_get::<i64, _>(13)? as u32,
            cancelled: row.try_get::<i64, _>(14)? != 0,
            queued_at: row.try_get(15)?,
            ready_at: row.try_get(16)?,
            started_at: row.try_get(17)?,
            completed_at: row.try_get(18)?,
            response: row.try_get::<Option<Vec<u8>>, _>(19)?.map(Bytes::from),
            trace: row.try_get(20)?,
            version: row.try_get(21)?,
            invocation_id: row.try_get(22)?,
            target: row.try_get(23)?,
            mnemonic: row.try_get(24)?,
        })
    };
    read().map_err(|e| Error::internal_from("reading a job row", e))
}

#[async_trait]
impl JobStore for SqlJobStore {
    async fn insert(&self, job: Job) -> Result<(Job, bool)> {
        // The merge target may finish between a failed insert and the
        // lookup; then the insert is simply tried again.
        for _ in 0..CLAIM_RACES {
            let sql = format!(
                "INSERT INTO exec_jobs ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                 $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25) \
                 ON CONFLICT DO NOTHING"
            );
            let d = &job.action_digest;
            let values = vec![
                Value::S(job.id.clone()),
                Value::S(job.instance.clone()),
                Value::S(d.function.name().to_string()),
                Value::S(d.hash_hex()),
                Value::I(d.size as i64),
                Value::B(job.action.to_vec()),
                Value::S(job.platform.encode()),
                Value::I(job.priority as i64),
                Value::I(job.do_not_cache as i64),
                Value::OptS(job.merge_key.clone()),
                Value::I(job.stage as i64),
                Value::OptS(job.bot.clone()),
                Value::I(job.lease_expires),
                Value::I(job.attempts as i64),
                Value::I(job.cancelled as i64),
                Value::I(job.queued_at),
                Value::I(job.ready_at),
                Value::I(job.started_at),
                Value::I(job.completed_at),
                Value::OptB(job.response.as_ref().map(|r| r.to_vec())),
                Value::S(job.trace.clone()),
                Value::I(job.version),
                Value::S(job.invocation_id.clone()),
                Value::S(job.target.clone()),
                Value::S(job.mnemonic.clone()),
            ];
            let (inserted, _) = self
                .write(Statement {
                    sql,
                    values,
                    context: "queueing a job",
                    returning: false,
                })
                .await?;
            if inserted == 1 {
                self.note_platform(&job.instance, job.platform.encode());
                self.announce(&job);
                return Ok((job, false));
            }
            let Some(key) = &job.merge_key else {
                return Err(Error::internal(format!("job id {} already taken", job.id)));
            };
            let existing = self
                .select(
                    "WHERE merge_key = $1",
                    "queueing a job",
                    vec![Bind::S(key.clone())],
                )
                .await?;
            if let Some(existing) = existing.into_iter().next() {
                return Ok((existing, true));
            }
        }
        Err(Error::Unavailable(
            "queueing a job: kept racing with identical actions; retry".into(),
        ))
    }

    async fn get(&self, id: &str) -> Result<Option<Job>> {
        self.one(id).await
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let mut clauses = Vec::new();
        let mut binds = Vec::new();
        let mut add = |clause: &str, bind: Bind| {
            binds.push(bind);
            clauses.push(clause.replace('?', &format!("${}", binds.len())));
        };
        if let Some(i) = &filter.instance {
            add("instance = ?", Bind::S(i.clone()));
        }
        if let Some(s) = filter.stage {
            add("stage = ?", Bind::I(s as i64));
        }
        if let Some(h) = &filter.action_hash {
            add("action_hash = ?", Bind::S(h.clone()));
        }
        if let Some(i) = &filter.invocation_id {
            add("invocation_id = ?", Bind::S(i.clone()));
        }
        if let Some(t) = filter.queued_after {
            add("queued_at >= ?", Bind::I(t));
        }
        if let Some(t) = filter.queued_before {
            add("queued_at < ?", Bind::I(t));
        }
        let mut clause = String::new();
        if !clauses.is_empty() {
            clause = format!("WHERE {}", clauses.join(" AND "));
        }
        clause.push_str(&format!(
            " ORDER BY queued_at DESC, id DESC LIMIT {} OFFSET {}",
            filter.limit, filter.offset
        ));
        self.select(&clause, "listing jobs", binds).await
    }

    async fn claim(
        &self,
        instance: &str,
        bot: &str,
        offers: &Offers,
        now: i64,
        lease_expires: i64,
    ) -> Result<Option<Job>> {
        let err = db_err("taking a job");
        // Few distinct platforms wait at once: match them here, then one
        // conditional UPDATE takes the most urgent job among the matching
        // ones (0 rows when another pod took it first: try again).
        let platforms: Vec<String> = self
            .queued_platforms(instance)
            .await?
            .into_iter()
            .filter(|p| Platform::decode(p).is_ok_and(|p| p.satisfied_by(offers)))
            .collect();
        if platforms.is_empty() {
            return Ok(None);
        }
        let sql = format!(
            "UPDATE exec_jobs SET stage = 3, bot = $1, lease_expires = $2, started_at = $3, \
             attempts = attempts + 1, version = version + 1 \
             WHERE stage = 2 AND id = (SELECT id FROM exec_jobs WHERE stage = 2 AND instance = $4 \
             AND platform IN ({}) ORDER BY priority, ready_at LIMIT 1) RETURNING {COLUMNS}",
            placeholders(5, platforms.len())
        );
        let left_sql = format!(
            "SELECT 1 FROM exec_jobs WHERE stage = 2 AND instance = $1 AND platform IN ({}) LIMIT 1",
            placeholders(2, platforms.len())
        );
        for _ in 0..CLAIM_RACES {
            let mut values = vec![
                Value::S(bot.to_string()),
                Value::I(lease_expires),
                Value::I(now),
                Value::S(instance.to_string()),
            ];
            values.extend(platforms.iter().map(|p| Value::S(p.clone())));
            let claimed = self
                .write_job(Statement {
                    sql: sql.clone(),
                    values,
                    context: "taking a job",
                    returning: false,
                })
                .await?;
            if claimed.is_some() {
                return Ok(claimed);
            }
            // Nothing matched, or a race: is anything matching still queued?
            let left = sqlx::query(AssertSqlSafe(left_sql.clone())).bind(instance.to_string());
            let left = platforms.iter().fold(left, |q, p| q.bind(p.clone()));
            if left
                .fetch_optional(&self.pool)
                .await
                .map_err(&err)?
                .is_none()
            {
                return Ok(None);
            }
        }
        Ok(None)
    }

    async fn renew(&self, bot: &str, renew_before: i64, lease_expires: i64) -> Result<()> {
        self.write(Statement {
            sql: RENEW.to_string(),
            values: vec![
                Value::I(lease_expires),
                Value::S(bot.to_string()),
                Value::I(renew_before),
            ],
            context: "renewing leases",
            returning: false,
        })
        .await?;
        Ok(())
    }

    async fn held(&self, bot: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(HELD)
            .bind(bot.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("listing a bot's leases"))?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(db_err("reading a lease id")))
            .collect()
    }

    async fn finish(
        &self,
        id: &str,
        holder: Option<&str>,
        response: Bytes,
        cancelled: bool,
        now: i64,
    ) -> Result<Option<Job>> {
        let sql = format!(
            "UPDATE exec_jobs SET stage = 4, response = $1, cancelled = $2, completed_at = $3, \
             merge_key = NULL, version = version + 1 \
             WHERE id = $4 AND stage < 4 {} RETURNING {COLUMNS}",
            if holder.is_some() { "AND bot = $5" } else { "" }
        );
        let mut values = vec![
            Value::B(response.to_vec()),
            Value::I(cancelled as i64),
            Value::I(now),
            Value::S(id.to_string()),
        ];
        values.extend(holder.map(|h| Value::S(h.to_string())));
        self.write_job(Statement {
            sql,
            values,
            context: "finishing a job",
            returning: false,
        })
        .await
    }

    async fn requeue(&self, id: &str, bot: &str, now: i64, refund: bool) -> Result<Option<Job>> {
        let refund = if refund {
            ", attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE exec_jobs SET stage = 2, bot = NULL, ready_at = $1, version = version + 1{refund} \
             WHERE id = $2 AND stage = 3 AND bot = $3 RETURNING {COLUMNS}"
        );
        self.write_job(Statement {
            sql,
            values: vec![
                Value::I(now),
                Value::S(id.to_string()),
                Value::S(bot.to_string()),
            ],
            context: "re-queueing a job",
            returning: false,
        })
        .await
    }

    async fn expired_leases(&self, now: i64) -> Result<Vec<Job>> {
        self.select(
            "WHERE stage = 3 AND lease_expires < $1",
            "finding expired leases",
            vec![Bind::I(now)],
        )
        .await
    }

    async fn stale_queued(&self, before: i64) -> Result<Vec<Job>> {
        self.select(
            "WHERE stage = 2 AND ready_at < $1",
            "finding stale jobs",
            vec![Bind::I(before)],
        )
        .await
    }

    async fn demand(&self) -> Result<Vec<crate::execution::job::Demand>> {
        let err = db_err("counting jobs per platform");
        let rows = sqlx::query(
            "SELECT platform, stage, COUNT(*), MIN(queued_at) FROM exec_jobs \
             WHERE stage IN (2, 3) GROUP BY platform, stage",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(&err)?;
        let mut by: std::collections::BTreeMap<String, crate::execution::job::Demand> =
            std::collections::BTreeMap::new();
        for row in rows {
            let platform: String = row.try_get(0).map_err(&err)?;
            let stage: i64 = row.try_get(1).map_err(&err)?;
            let count: i64 = row.try_get(2).map_err(&err)?;
            let oldest: i64 = row.try_get(3).map_err(&err)?;
            let d = by
                .entry(platform.clone())
                .or_insert(crate::execution::job::Demand {
                    platform,
                    queued: 0,
                    executing: 0,
                    oldest_queued_at: 0,
                });
            if stage == 2 {
                d.queued = count as u64;
                d.oldest_queued_at = oldest;
            } else {
                d.executing = count as u64;
            }
        }
        Ok(by.into_values().collect())
    }

    fn news(&self) -> Option<tokio::sync::broadcast::Receiver<JobNews>> {
        self.news.as_ref().map(PgNews::subscribe)
    }

    fn hearing(&self) -> bool {
        self.news.as_ref().is_some_and(PgNews::hearing)
    }

    async fn purge(&self, before: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM exec_jobs WHERE completed_at > 0 AND completed_at < $1 AND stage = 4",
        )
        .bind(before)
        .execute(&self.pool)
        .await
        .map_err(db_err("purging finished jobs"))?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: with an index on `bot` alone, each renewal and each
    /// look at a bot's leases read every job the bot had finished.
    #[tokio::test]
    async fn a_bots_leases_are_found_without_its_finished_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/jobs.db?mode=rwc", dir.path().display());
        let store = SqlJobStore::connect(&url).await.unwrap();
        for sql in [RENEW, HELD] {
            let rows = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .bind(1_i64)
                .bind("bot".to_string())
                .bind(1_i64)
                .fetch_all(&store.pool)
                .await
                .unwrap();
            let plan: Vec<String> = rows.iter().map(|r| r.try_get(3).unwrap()).collect();
            assert!(
                plan.iter()
                    .any(|p| p.contains("exec_jobs_bot_stage (bot=? AND stage=?)")),
                "{sql}: {plan:?}"
            );
        }
    }

    /// Steps that arrive together are written in one transaction; a step
    /// that fails does not fail the others of its group.
    #[tokio::test]
    async fn steps_that_arrive_together_commit_together_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/jobs.db?mode=rwc", dir.path().display());
        let store = SqlJobStore::connect(&url).await.unwrap();
        let group = store.group.clone().expect("SQLite writes in groups");
        let inserts = (0..20).map(|n| {
            store.insert(crate::execution::store::tests::job(
                &format!("j{n}"),
                None,
                &[],
                0,
            ))
        });
        for inserted in futures::future::join_all(inserts).await {
            assert!(!inserted.unwrap().1);
        }
        assert!(
            group.commits() <= 2,
            "20 inserts in {} commits",
            group.commits()
        );

        let bad = Statement {
            sql: "UPDATE no_such_table SET x = 1".into(),
            values: Vec::new(),
            context: "a bad step",
            returning: false,
        };
        let good = store.insert(crate::execution::store::tests::job("k", None, &[], 0));
        let (bad, good) = tokio::join!(group.run(bad), good);
        assert!(bad.is_err());
        assert!(good.is_ok(), "{good:?}");
        assert!(
            store.get("k").await.unwrap().is_some(),
            "the good step is stored"
        );
    }
}
