//! Why did this action miss: every action whose result is written fresh
//! (nothing was cached under its digest) is compared with the last action
//! of the same identity across builds — instance, target, mnemonic and
//! output paths — and what differs is recorded as the miss's causes, on
//! the invocation that wrote the result.
//!
//! The configuration id Bazel sends is left out of the identity on
//! purpose: a `--copt` or an `--action_env` changes it, and those are
//! exactly the changes a miss should be explained by; the output paths
//! already tell configurations with different output directories apart.

use prost::Message;
use serde::{Deserialize, Serialize};

use super::Writer;
use super::diff;
pub use super::diff::Cause;
use crate::bes::store::EventStore;
use crate::digest::{Digest, DigestFunction};
use crate::error::Result;
use crate::proto::reapi::{Action, Command};
use crate::store::{BlobStore, get_parsed_blob};

/// Largest Action or Command read for a comparison.
const MAX_MESSAGE: u64 = 1 << 20;

/// What is kept of the last action of an identity: digests only, a few
/// hundred bytes; the messages themselves are read back from the CAS when
/// a later action differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// SHA-256 of the identity, hex.
    pub identity: String,
    /// The Action, `hash/size`.
    pub action: String,
    /// Its Command (to compare argv and environment with a later one).
    pub command: String,
    /// Its input root (to compare input trees with a later one).
    pub input_root: String,
    /// The invocation that wrote its result (may be empty).
    pub invocation: String,
    /// When (ms since the epoch).
    pub seen_at: i64,
}

/// A missed action and why, as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Miss {
    /// The invocation that missed (wrote the new result), or empty.
    pub invocation: String,
    /// The instance the action ran in.
    pub instance: String,
    /// `hash/size`.
    pub action_digest: String,
    /// The target Bazel named (RequestMetadata), or empty.
    pub target: String,
    /// The action's kind Bazel named, or empty.
    pub mnemonic: String,
    /// The earlier action of the same identity; empty for a new action.
    pub previous_digest: String,
    /// Who wrote the earlier action's result, if known.
    pub previous_invocation: String,
    /// What differs, at most `diff::MAX_CAUSES`.
    pub causes: Vec<Cause>,
    /// When it was recorded (ms since the epoch).
    pub seen_at: i64,
}

/// The parts of a written action the comparison needs, read from the CAS.
struct Version {
    action: Action,
    command: Command,
    command_digest: Digest,
    input_root: Digest,
}

async fn message<M: Message + Default>(cas: &dyn BlobStore, d: &Digest) -> Option<M> {
    let bytes = get_parsed_blob(cas, d, MAX_MESSAGE).await.ok()?;
    M::decode(bytes).ok()
}

/// The Action under `digest` and its Command, if both are stored (Bazel
/// uploads them with every result it writes; other clients may not).
async fn version(cas: &dyn BlobStore, digest: &Digest) -> Option<Version> {
    let action: Action = message(cas, digest).await?;
    let command_digest =
        Digest::from_proto(digest.function, action.command_digest.as_ref(), "command").ok()?;
    let input_root =
        Digest::from_proto(digest.function, action.input_root_digest.as_ref(), "input").ok()?;
    let command = message(cas, &command_digest).await?;
    Some(Version {
        action,
        command,
        command_digest,
        input_root,
    })
}

/// The identity's hash: instance, target, mnemonic and the sorted output
/// paths, each length-prefixed so no two identities run together.
fn identity(instance: &str, writer: &Writer, command: &Command) -> String {
    let mut outputs: Vec<&String> = command
        .output_paths
        .iter()
        .chain(&command.output_files)
        .chain(&command.output_directories)
        .collect();
    outputs.sort();
    outputs.dedup();
    let mut h = DigestFunction::Sha256.hasher();
    for part in [instance, &writer.target, &writer.mnemonic]
        .into_iter()
        .chain(outputs.iter().map(|s| s.as_str()))
    {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finish().hash_hex()
}

fn parse(function: DigestFunction, s: &str) -> Option<Digest> {
    let (hash, size) = s.split_once('/')?;
    Digest::parse(function, hash, size.parse().ok()?).ok()
}

/// Compares the action `digest`, whose result `writer` just wrote fresh,
/// with the last of its identity, and records the fingerprint and the
/// miss. Does nothing when the CAS lacks the Action or its Command.
pub(crate) async fn analyse(
    store: &dyn EventStore,
    cas: &dyn BlobStore,
    instance: &str,
    digest: Digest,
    writer: &Writer,
) -> Result<Option<Miss>> {
    let Some(now) = version(cas, &digest).await else {
        return Ok(None);
    };
    let identity = identity(instance, writer, &now.command);
    let previous = store.fingerprint(&identity).await?;
    let action_digest = digest.to_string();
    let (previous_digest, previous_invocation, causes) = match &previous {
        None => (
            String::new(),
            String::new(),
            vec![Cause::new("new", "", "new action".into())],
        ),
        Some(p) if p.action == action_digest => (
            p.action.clone(),
            p.invocation.clone(),
            vec![Cause::new(
                "evicted",
                "",
                "same action as before: its result was no longer cached".into(),
            )],
        ),
        Some(p) => (
            p.action.clone(),
            p.invocation.clone(),
            causes(cas, p, &now, digest.function).await?,
        ),
    };
    let seen_at = crate::time::now_ms();
    let fingerprint = Fingerprint {
        identity,
        action: action_digest.clone(),
        command: now.command_digest.to_string(),
        input_root: now.input_root.to_string(),
        invocation: writer.invocation.clone(),
        seen_at,
    };
    let miss = Miss {
        invocation: writer.invocation.clone(),
        instance: instance.to_string(),
        action_digest,
        target: writer.target.clone(),
        mnemonic: writer.mnemonic.clone(),
        previous_digest,
        previous_invocation,
        causes: diff::bounded(causes),
        seen_at,
    };
    store.record_miss(&fingerprint, &miss).await?;
    Ok(Some(miss))
}

/// What differs between the earlier action `p` and `now`.
async fn causes(
    cas: &dyn BlobStore,
    p: &Fingerprint,
    now: &Version,
    function: DigestFunction,
) -> Result<Vec<Cause>> {
    let mut causes = Vec::new();
    let earlier = match parse(function, &p.action) {
        Some(d) => version(cas, &d).await,
        None => None,
    };
    match &earlier {
        Some(before) => {
            if before.command_digest != now.command_digest {
                causes.extend(diff::argv(
                    &before.command.arguments,
                    &now.command.arguments,
                ));
                causes.extend(diff::env(&before.command, &now.command));
            }
            let platform = |v: &Version| v.action.platform.clone().or(v.command.platform.clone());
            causes.extend(diff::platform(
                platform(before).as_ref(),
                platform(now).as_ref(),
            ));
            causes.extend(diff::fields(
                (&before.action, &before.command),
                (&now.action, &now.command),
            ));
        }
        None if p.command != now.command_digest.to_string() => causes.push(Cause::new(
            "command",
            "",
            "command changed (the earlier command is no longer stored to compare)".into(),
        )),
        None => {}
    }
    if let Some(root) = parse(function, &p.input_root)
        && root != now.input_root
    {
        causes.extend(super::inputs::compare(cas, root, now.input_root).await?);
    }
    if causes.is_empty() {
        causes.push(Cause::new(
            "unknown",
            "",
            "the action differs in a field kiln does not compare".into(),
        ));
    }
    Ok(causes)
}
