//! Group commit for the job store's writes on SQLite, as the build-event
//! store has (`bes/sql_writer.rs`): the steps of many actions that arrive
//! together (queueing, leasing, renewing, finishing, re-queueing) are
//! written by one task in one transaction, so a busy server pays one WAL
//! fsync for all of them instead of one each, and the steps never contend
//! for SQLite's one writer lock. Each step returns once that transaction is
//! durable. A step that fails alone (not the group's commit) is retried on
//! its own, so it cannot fail the others. PostgreSQL writes through its
//! pool: it syncs concurrent commits together itself.

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::sql::db_err;

/// Steps one transaction takes at most; more wait for the next.
const MAX_GROUP: usize = 256;

/// A value bound to a statement.
#[derive(Debug, Clone)]
pub(super) enum Value {
    I(i64),
    S(String),
    OptS(Option<String>),
    B(Vec<u8>),
    OptB(Option<Vec<u8>>),
}

/// One SQL statement with its values, and what the caller calls the step
/// (for errors).
#[derive(Debug, Clone)]
pub(super) struct Statement {
    pub sql: String,
    pub values: Vec<Value>,
    pub context: &'static str,
    /// Whether it returns a row (RETURNING) rather than a count.
    pub returning: bool,
}

impl Statement {
    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, AnyArguments> {
        self.values.iter().fold(
            sqlx::query(AssertSqlSafe(self.sql.as_str())),
            |q, v| match v {
                Value::I(i) => q.bind(*i),
                Value::S(s) => q.bind(s.as_str()),
                Value::OptS(s) => q.bind(s.as_deref()),
                Value::B(b) => q.bind(b.as_slice()),
                Value::OptB(b) => q.bind(b.as_deref()),
            },
        )
    }

    /// Runs on `pool` directly: rows changed, and the row it returns if any.
    pub async fn run_on(&self, pool: &AnyPool) -> Result<(u64, Option<AnyRow>)> {
        let mut conn = pool.acquire().await.map_err(db_err(self.context))?;
        self.run(&mut conn).await
    }

    async fn run(&self, conn: &mut sqlx::AnyConnection) -> Result<(u64, Option<AnyRow>)> {
        let err = db_err(self.context);
        if self.returning {
            let row = self.query().fetch_optional(conn).await.map_err(err)?;
            Ok((u64::from(row.is_some()), row))
        } else {
            let done = self.query().execute(conn).await.map_err(err)?;
            Ok((done.rows_affected(), None))
        }
    }
}

type Outcome = Result<(u64, Option<AnyRow>)>;

struct Step {
    statement: Statement,
    done: oneshot::Sender<Outcome>,
}

/// The handle steps are sent through; the task ends with the last handle.
#[derive(Debug, Clone)]
pub(super) struct GroupWriter {
    steps: mpsc::Sender<Step>,
    /// Transactions committed, for tests to see the grouping.
    #[cfg(test)]
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl GroupWriter {
    /// Starts the writing task on `pool`.
    pub fn start(pool: AnyPool) -> Self {
        let (steps, rx) = mpsc::channel(1024);
        let commits = std::sync::Arc::default();
        tokio::spawn(write_groups(pool, rx, std::sync::Arc::clone(&commits)));
        GroupWriter {
            steps,
            #[cfg(test)]
            commits,
        }
    }

    /// Transactions committed so far.
    #[cfg(test)]
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `statement` in the next group; returns once it is durable.
    pub async fn run(&self, statement: Statement) -> Outcome {
        let (done, wait) = oneshot::channel();
        let context = statement.context;
        self.steps
            .send(Step { statement, done })
            .await
            .map_err(|_| {
                Error::Unavailable(format!("{context}: the job store's writer stopped"))
            })?;
        wait.await
            .map_err(|_| Error::Unavailable(format!("{context}: the job store's writer stopped")))?
    }
}

async fn write_groups(
    pool: AnyPool,
    mut steps: mpsc::Receiver<Step>,
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    while let Some(first) = steps.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match steps.try_recv() {
                Ok(step) => group.push(step),
                Err(_) => break,
            }
        }
        let written = write_group(&pool, &group).await;
        commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match written {
            Ok(outcomes) => {
                for (step, outcome) in group.into_iter().zip(outcomes) {
                    let _ = step.done.send(Ok(outcome));
                }
            }
            Err(e) if group.len() == 1 => {
                let _ = group.pop().expect("one step").done.send(Err(e));
            }
            Err(_) => {
                for step in group {
                    let result = write_group(&pool, std::slice::from_ref(&step))
                        .await
                        .map(|mut o| o.pop().expect("one outcome"));
                    let _ = step.done.send(result);
                }
            }
        }
    }
}

/// Runs `group` in one transaction; every step's outcome once committed.
/// A step alone is its own transaction (autocommit): explicit BEGIN and
/// COMMIT would be two more round trips to SQLite's thread for nothing.
async fn write_group(pool: &AnyPool, group: &[Step]) -> Result<Vec<(u64, Option<AnyRow>)>> {
    if let [step] = group {
        return Ok(vec![step.statement.run_on(pool).await?]);
    }
    let err = db_err("writing the job store");
    let mut tx = pool.begin().await.map_err(&err)?;
    let mut outcomes = Vec::with_capacity(group.len());
    for step in group {
        outcomes.push(step.statement.run(&mut tx).await?);
    }
    tx.commit().await.map_err(&err)?;
    Ok(outcomes)
}
