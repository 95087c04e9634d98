//! Why an action missed, worked out when someone asks (the invocation
//! page, the JSON API, `kiln invocations misses`) rather than for every
//! fresh result: the write path only records that an identity's action
//! changed (`misses`), and most invocations' misses are never looked at.
//! The first read of a miss reads both Actions and Commands back from its
//! instance's CAS, compares them (`diff`, `inputs`) and stores the causes
//! in place, so later reads only list them. A read compares at most
//! [`COMPARED_PER_READ`] misses; the rest say so and are compared by the
//! next read.

use prost::Message;

use super::diff::{self, Cause};
use super::misses::{Miss, named_function, parse_digest};
use crate::bes::store::EventStore;
use crate::digest::{Digest, DigestFunction};
use crate::error::Result;
use crate::instance::Instances;
use crate::proto::reapi::{Action, Command};
use crate::store::{BlobStore, get_parsed_blob};

/// Largest Action or Command read for a comparison.
const MAX_MESSAGE: u64 = 1 << 20;

/// Misses one read compares at most (each reads four messages and walks
/// the input trees down to where they differ).
const COMPARED_PER_READ: usize = 256;

/// The kind of cause a miss has until it is compared.
const PENDING: &str = "pending";

/// The misses of `invocation` with their causes, at most `limit`, by
/// target; misses not yet compared are compared now (at most
/// [`COMPARED_PER_READ`]) and their causes stored.
pub async fn explained(
    events: &dyn EventStore,
    instances: &Instances,
    invocation: &str,
    limit: i64,
) -> Result<Vec<Miss>> {
    let mut chunks = events.miss_chunks(invocation).await?;
    let mut budget = COMPARED_PER_READ;
    for (chunk, misses) in &mut chunks {
        let mut compared = false;
        for m in misses.iter_mut().filter(|m| m.causes.is_empty()) {
            if budget == 0 {
                break;
            }
            budget -= 1;
            m.causes = diff::bounded(causes_of(instances, m).await?);
            compared = true;
        }
        if compared
            && let Err(e) = events
                .replace_miss_chunk(invocation, chunk, misses.as_slice())
                .await
        {
            // Shown all the same; compared again by the next read.
            tracing::warn!(error = %e, invocation, "could not store compared misses");
        }
    }
    // Said, not stored: the next read compares them.
    let mut all: Vec<Miss> = chunks.into_iter().flat_map(|(_, m)| m).collect();
    for m in all.iter_mut().filter(|m| m.causes.is_empty()) {
        m.causes = vec![Cause::new(
            PENDING,
            "",
            "not compared yet (too many at once): read again".into(),
        )];
    }
    Ok(super::misses::listed(all, limit))
}

/// What differs between a miss's action and the earlier one of its
/// identity, as far as its instance's CAS still holds both.
async fn causes_of(instances: &Instances, m: &Miss) -> Result<Vec<Cause>> {
    let function = named_function(&m.digest_function).unwrap_or(DigestFunction::Sha256);
    let (Some(before), Some(after)) = (
        parse_digest(function, &m.previous_digest),
        parse_digest(function, &m.action_digest),
    ) else {
        return Ok(vec![unknown("the action's digest could not be read back")]);
    };
    let Ok(instance) = instances.get(&m.instance) else {
        return Ok(vec![unknown("the action's instance is no longer served")]);
    };
    compare(instance.cas.as_ref(), before, after).await
}

fn unknown(why: &str) -> Cause {
    Cause::new("unknown", "", why.into())
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

/// What differs between the earlier action `before` and `after`, as far
/// as the CAS still holds both.
async fn compare(cas: &dyn BlobStore, before: Digest, after: Digest) -> Result<Vec<Cause>> {
    let Some(now) = version(cas, &after).await else {
        return Ok(vec![unknown(
            "the action's Action or Command is not stored to compare (the client did not upload it)",
        )]);
    };
    let Some(earlier) = version(cas, &before).await else {
        return Ok(vec![unknown(
            "the earlier action is no longer stored to compare",
        )]);
    };
    let mut causes = Vec::new();
    if earlier.command_digest != now.command_digest {
        causes.extend(diff::argv(
            &earlier.command.arguments,
            &now.command.arguments,
        ));
        causes.extend(diff::env(&earlier.command, &now.command));
    }
    let platform = |v: &Version| v.action.platform.clone().or(v.command.platform.clone());
    causes.extend(diff::platform(
        platform(&earlier).as_ref(),
        platform(&now).as_ref(),
    ));
    causes.extend(diff::fields(
        (&earlier.action, &earlier.command),
        (&now.action, &now.command),
    ));
    if earlier.input_root != now.input_root {
        causes.extend(super::inputs::compare(cas, earlier.input_root, now.input_root).await?);
    }
    if causes.is_empty() {
        causes.push(unknown(
            "the action differs in a field kiln does not compare",
        ));
    }
    Ok(causes)
}
