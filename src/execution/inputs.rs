//! What Execute checks before queueing: the Action, its Command and its whole
//! input tree are in the CAS. Anything missing is FAILED_PRECONDITION with one
//! `MISSING` violation per blob, which is what makes Bazel upload them and
//! retry, instead of a worker failing later.

use prost::Message;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::proto::reapi::{Action, Command, Directory};
use crate::store::get_parsed_blob;

/// The decoded Action and Command of an action whose inputs are all present.
#[derive(Debug)]
pub struct Checked {
    /// The Action.
    pub action: Action,
    /// Its Command.
    pub command: Command,
}

async fn read<M: Message + Default>(instance: &Instance, digest: Digest, what: &str) -> Result<M> {
    let max = instance.settings.max_parsed_blob;
    let bytes = match get_parsed_blob(instance.cas.as_ref(), &digest, max).await {
        Err(Error::NotFound(_)) => return Err(Error::MissingBlobs(vec![digest])),
        other => other?,
    };
    M::decode(bytes)
        .map_err(|e| Error::InvalidArgument(format!("{what} {digest} does not decode: {e}")))
}

/// Reads the action and checks that everything it needs is stored.
pub async fn check(instance: &Instance, action_digest: Digest) -> Result<Checked> {
    let function = action_digest.function;
    let action: Action = read(instance, action_digest, "action").await?;
    let command_digest = Digest::from_proto(function, action.command_digest.as_ref(), "command")?;
    let root = Digest::from_proto(function, action.input_root_digest.as_ref(), "input root")?;
    let mut missing = Vec::new();
    let command = match read::<Command>(instance, command_digest, "command").await {
        Ok(c) => {
            super::validate::check_command(&c)?;
            Some(c)
        }
        Err(Error::MissingBlobs(m)) => {
            missing.extend(m);
            None
        }
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    match crate::tree::walk(instance.cas.as_ref(), root, instance.settings.walk).await {
        Ok(walk) => {
            missing.extend(walk.missing);
            for bytes in walk.directories {
                let dir = Directory::decode(bytes)?;
                super::validate::check_directory(&dir)?;
                for f in &dir.files {
                    files.push(Digest::from_proto(
                        function,
                        f.digest.as_ref(),
                        "input file",
                    )?);
                }
            }
        }
        Err(Error::NotFound(_)) => missing.push(root),
        Err(e) => return Err(e),
    }
    files.sort();
    files.dedup();
    files.retain(|d| !d.is_empty_blob());
    missing.extend(instance.cas.find_missing(&files).await?);
    match command {
        Some(command) if missing.is_empty() => Ok(Checked { action, command }),
        _ => {
            missing.sort();
            missing.dedup();
            Err(Error::MissingBlobs(missing))
        }
    }
}
