//! `kiln invocations`: lists and shows invocations through a running kiln's
//! build-event JSON API (`/api/v1/invocations`), with query values
//! URL-encoded (a user name may hold `&` or spaces).

use crate::error::{Error, Result};

/// The `kiln invocations` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum InvocationsCommand {
    /// The newest invocations, one line each.
    List {
        /// kiln's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only this status (IN_PROGRESS, SUCCEEDED, FAILED, DISCONNECTED).
        #[arg(long)]
        status: Option<String>,
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// Only this source repository (REPO_URL).
        #[arg(long)]
        repository: Option<String>,
        /// Only this branch (BRANCH_NAME or GIT_BRANCH).
        #[arg(long)]
        branch: Option<String>,
        /// Only invocations given `--build_metadata NAME=VALUE`.
        #[arg(long, value_name = "NAME=VALUE")]
        metadata: Option<String>,
    },
    /// One invocation's whole summary, as JSON.
    Show {
        /// The invocation id Bazel printed.
        id: String,
        /// kiln's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// The actions an invocation missed in the cache, and why: one line
    /// per action, its causes indented below (`--json` for the API's
    /// answer as it is).
    Misses {
        /// The invocation id Bazel printed.
        id: String,
        /// kiln's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Print the JSON API's answer instead.
        #[arg(long)]
        json: bool,
    },
}

/// `server` with `segments` appended to its path, each encoded.
fn endpoint(server: &str, segments: &[&str]) -> Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(server)
        .map_err(|e| Error::InvalidArgument(format!("--server {server:?}: {e}")))?;
    url.path_segments_mut()
        .map_err(|_| Error::InvalidArgument(format!("--server {server:?} is not a base URL")))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// The URL a command fetches, every query value and path segment encoded.
fn url_of(cmd: &InvocationsCommand) -> Result<reqwest::Url> {
    match cmd {
        InvocationsCommand::List {
            server,
            limit,
            status,
            user,
            repository,
            branch,
            metadata,
        } => {
            let mut url = endpoint(server, &["api", "v1", "invocations"])?;
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("limit", &limit.to_string());
                for (name, value) in [
                    ("status", status),
                    ("user", user),
                    ("repository", repository),
                    ("branch", branch),
                    ("metadata", metadata),
                ] {
                    if let Some(v) = value {
                        query.append_pair(name, v);
                    }
                }
            }
            Ok(url)
        }
        InvocationsCommand::Show { id, server } => {
            endpoint(server, &["api", "v1", "invocations", id])
        }
        InvocationsCommand::Misses { id, server, .. } => {
            endpoint(server, &["api", "v1", "invocations", id, "misses"])
        }
    }
}

/// Runs one command; returns what to print.
pub async fn run(cmd: &InvocationsCommand) -> Result<String> {
    let url = url_of(cmd)?;
    let unavailable = |e: reqwest::Error| Error::Unavailable(format!("GET {url}: {e}"));
    let response = reqwest::get(url.clone()).await.map_err(unavailable)?;
    let status = response.status();
    let text = response.text().await.map_err(unavailable)?;
    let body: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
        Error::Unavailable(format!(
            "GET {url}: kiln answered something other than JSON"
        ))
    })?;
    if !status.is_success() {
        return Err(Error::FailedPrecondition(format!(
            "{status}: {}",
            body["error"].as_str().unwrap_or("unknown error")
        )));
    }
    match cmd {
        InvocationsCommand::Show { .. } | InvocationsCommand::Misses { json: true, .. } => {
            return serde_json::to_string_pretty(&body)
                .map_err(|e| Error::internal_from("formatting JSON", e));
        }
        InvocationsCommand::Misses { .. } => return Ok(misses_text(&body)),
        InvocationsCommand::List { .. } => {}
    }
    let mut out = format!(
        "{:<38} {:<13} {:<8} {:>5} {:>10}  user\n",
        "invocation", "status", "command", "exit", "duration"
    );
    for inv in body["invocations"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<38} {:<13} {:<8} {:>5} {:>10}  {}\n",
            inv["invocation_id"].as_str().unwrap_or(""),
            inv["status"].as_str().unwrap_or(""),
            inv["command"].as_str().unwrap_or(""),
            inv["exit_code"]
                .as_i64()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            inv["duration_ms"]
                .as_i64()
                .map(|d| format!("{:.1}s", d as f64 / 1000.0))
                .unwrap_or_default(),
            inv["user"].as_str().unwrap_or(""),
        ));
    }
    Ok(out)
}

/// `kiln invocations misses` as text: `target (mnemonic)`, then each
/// cause on a line of its own.
fn misses_text(body: &serde_json::Value) -> String {
    let rows = body["misses"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut out = format!("{} missed actions\n", rows.len());
    for m in rows {
        let str_of = |k: &str| m[k].as_str().unwrap_or("").to_string();
        out.push_str(&format!("{} ({})\n", str_of("target"), str_of("mnemonic")));
        for c in m["causes"].as_array().into_iter().flatten() {
            out.push_str(&format!("    {}\n", c["text"].as_str().unwrap_or("")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_and_ids_are_encoded() {
        let list = InvocationsCommand::List {
            server: "http://kiln:8080/".into(),
            limit: 5,
            status: Some("FAILED".into()),
            user: Some("a&b c".into()),
            repository: None,
            branch: Some("main".into()),
            metadata: Some("TEAM=a b".into()),
        };
        assert_eq!(
            url_of(&list).unwrap().as_str(),
            "http://kiln:8080/api/v1/invocations?limit=5&status=FAILED&user=a%26b+c&branch=main&metadata=TEAM%3Da+b"
        );
        let show = InvocationsCommand::Show {
            id: "../x?y".into(),
            server: "http://kiln:8080".into(),
        };
        assert_eq!(
            url_of(&show).unwrap().as_str(),
            "http://kiln:8080/api/v1/invocations/..%2Fx%3Fy"
        );
    }
}
