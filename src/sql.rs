//! The SQL seam shared by everything kiln keeps in a database (build events,
//! the execution scheduler): one way to connect (SQLite file by default,
//! PostgreSQL for many pods), one migration runner, one error mapping.
//!
//! Migrations of every component share the `kiln_migrations` table, so their
//! version numbers are globally unique: build events use 1-999, the
//! scheduler 1001-1999.

use std::path::Path;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use crate::error::{Error, Result};

/// Deletes at most `limit` rows of `table` whose `time` column is before
/// `before_ms`, choosing them by `key` (bounded batches keep retention's
/// transactions short); how many went. Names are the caller's constants.
pub(crate) async fn delete_older(
    pool: &sqlx::AnyPool,
    table: &'static str,
    key: &'static str,
    time: &'static str,
    before_ms: i64,
    limit: i64,
) -> Result<u64> {
    let sql = format!(
        "DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {time} < $1 LIMIT $2)"
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(before_ms)
        .bind(limit)
        .execute(pool)
        .await
        .map_err(db_err(table))?;
    Ok(done.rows_affected())
}

/// Maps a database error: connection trouble is UNAVAILABLE (clients retry),
/// anything else INTERNAL, both naming what kiln was doing.
pub fn db_err(context: &str) -> impl Fn(sqlx::Error) -> Error + '_ {
    move |e| match &e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            Error::Unavailable(format!("{context}: database unavailable: {e}"))
        }
        _ => Error::internal_from(context.to_string(), e),
    }
}

/// A database URL without its password, for error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Resolves a configured database: the URL from `env` when set (so a
/// password stays out of the config file), with a relative SQLite path put
/// under `data_dir`. `field` names the setting in error messages.
pub fn database_url(
    database: &str,
    env: Option<&str>,
    field: &str,
    data_dir: &Path,
) -> Result<String> {
    let url = match env {
        Some(var) => std::env::var(var).map_err(|_| {
            Error::InvalidArgument(format!("{field}: environment variable {var} is not set"))
        })?,
        None => database.to_string(),
    };
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.trim_start_matches("//");
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let file = if Path::new(path).is_absolute() {
            Path::new(path).to_path_buf()
        } else {
            data_dir.join(path)
        };
        let query = if query.is_empty() {
            "mode=rwc".to_string()
        } else {
            query.to_string()
        };
        return Ok(format!("sqlite://{}?{query}", file.display()));
    }
    Ok(url)
}

/// Connects to `url` (`sqlite://PATH?mode=rwc` or `postgres://...`) and applies
/// the pending `migrations` (version, SQL text) in order. `what` names the
/// database in errors.
pub async fn connect(url: &str, what: &str, migrations: &[(i64, &'static str)]) -> Result<AnyPool> {
    sqlx::any::install_default_drivers();
    let sqlite = url.starts_with("sqlite:");
    let pool = AnyPoolOptions::new()
        .max_connections(if sqlite { 4 } else { 16 })
        .acquire_timeout(Duration::from_secs(10))
        // A local file cannot drop a connection; a ping before every query
        // would double the cost of each. (PostgreSQL keeps the check.)
        .test_before_acquire(!sqlite)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    // WAL lets readers run beside the writer; FULL makes a
                    // commit durable before kiln acknowledges anything.
                    for pragma in [
                        "PRAGMA journal_mode=WAL",
                        "PRAGMA synchronous=FULL",
                        "PRAGMA busy_timeout=10000",
                        // 1 MiB of page cache per connection (SQLite's
                        // default is 2 MiB): the OS page cache holds the
                        // rest, and kiln's memory stays within its budget.
                        "PRAGMA cache_size=-1024",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(|e| Error::Unavailable(format!("{what} database {}: {e}", redact(url))))?;
    migrate(&pool, what, migrations).await?;
    Ok(pool)
}

/// The PostgreSQL advisory lock every kiln pod takes while migrating, so
/// pods that start together (a Deployment's replicas on first install)
/// migrate one after another instead of racing on CREATE TABLE.
const MIGRATION_LOCK: i64 = 0x006b_696c_6e6d_6967; // "kilnmig"

/// Applies the pending migrations on one connection, under a lock: on
/// PostgreSQL an advisory lock held for the whole run, on SQLite a write
/// transaction (`BEGIN IMMEDIATE`) per migration, which also excludes other
/// processes. Each migration is re-checked once the lock is held.
/// The statements of a migration file, split at each `;` outside a `--`
/// comment (a `;` in a comment does not end a statement); statements that
/// are only comments are dropped.
fn statements(sql: &'static str) -> Vec<&'static str> {
    let mut out = Vec::new();
    let (mut start, mut comment) = (0, false);
    let bytes = sql.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'-' if !comment && bytes.get(i + 1) == Some(&b'-') => comment = true,
            b'\n' => comment = false,
            b';' if !comment => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&sql[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|s| {
            !s.is_empty()
                && !s
                    .lines()
                    .all(|l| l.trim_start().starts_with("--") || l.trim().is_empty())
        })
        .collect()
}

async fn migrate(pool: &AnyPool, what: &str, migrations: &[(i64, &'static str)]) -> Result<()> {
    let context = format!("migrating the {what} schema");
    let err = db_err(&context);
    let mut conn = pool.acquire().await.map_err(&err)?;
    // Never returned to the pool: a session that held the lock (even after
    // an error) is closed, which releases whatever it still holds.
    conn.close_on_drop();
    let postgres = conn.backend_name().eq_ignore_ascii_case("postgresql");
    if postgres {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .map_err(&err)?;
    }
    let result = apply(&mut conn, postgres, migrations).await.map_err(&err);
    if postgres && result.is_ok() {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .map_err(&err)?;
    }
    result
}

async fn apply(
    conn: &mut sqlx::AnyConnection,
    postgres: bool,
    migrations: &[(i64, &'static str)],
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("CREATE TABLE IF NOT EXISTS kiln_migrations (version BIGINT PRIMARY KEY)")
        .execute(&mut *conn)
        .await?;
    for (version, sql) in migrations {
        sqlx::query(if postgres { "BEGIN" } else { "BEGIN IMMEDIATE" })
            .execute(&mut *conn)
            .await?;
        let outcome = async {
            let done = sqlx::query("SELECT version FROM kiln_migrations WHERE version = $1")
                .bind(*version)
                .fetch_optional(&mut *conn)
                .await?;
            if done.is_some() {
                return Ok(());
            }
            for statement in statements(sql) {
                sqlx::query(statement).execute(&mut *conn).await?;
            }
            sqlx::query("INSERT INTO kiln_migrations (version) VALUES ($1)")
                .bind(*version)
                .execute(&mut *conn)
                .await
                .map(|_| ())
        }
        .await;
        let end = if outcome.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        sqlx::query(end).execute(&mut *conn).await?;
        outcome?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_semicolon_in_a_comment_does_not_end_a_statement() {
        let sql = "-- a table; see below\nCREATE TABLE t (x INT);\n\n-- an index; too\nCREATE INDEX i ON t (x);\n-- the end;\n";
        assert_eq!(
            super::statements(sql),
            [
                "-- a table; see below\nCREATE TABLE t (x INT)",
                "-- an index; too\nCREATE INDEX i ON t (x)"
            ]
        );
    }
}
