//! How `kiln worker` keeps actions in their own directory and away from
//! what the worker owns (its input cache, its token).
//!
//! - A worker running as root runs each slot's actions as a uid of its own
//!   from `--action-uids` (or all as `--action-user`). The input cache, the
//!   hard-linked inputs and the token file stay root's: an action can read
//!   its inputs but can neither change them (they are 0444/0555 and not its
//!   own, so it cannot chmod them) nor reach the cache directory (0700) or a
//!   0600 token file; and concurrent actions, having different uids, cannot
//!   signal, trace or write each other. The sandbox (see [`super::sandbox`])
//!   hides all of it besides.
//! - A worker that is not root cannot switch users: actions run as the
//!   worker's user, inputs are copied out of the cache (never hard-linked)
//!   and every cached file is re-hashed as it is copied, so one action
//!   tampering with the cache cannot change what the next one reads. Such an
//!   action can still read the token file: run the worker as root, or give
//!   it a `--runner` sandbox that hides the file.
//! - Every path an action names is resolved without leaving the input root:
//!   parents of outputs are created one component at a time, symlinks only
//!   followed while they stay inside the root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Who actions run as, when not the worker itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionUser {
    /// The user id actions get.
    pub uid: u32,
    /// The group id actions get.
    pub gid: u32,
}

/// The worker's own user id.
fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Resolves `--action-user`: `self` (run as the worker), a user name, or
/// `UID` or `UID:GID`. Default: `nobody` when the worker is root, `self` otherwise.
pub fn action_user(arg: Option<&str>) -> Result<Option<ActionUser>> {
    let root = own_uid() == 0;
    let spec = match arg {
        Some(s) => s,
        None if root => "nobody",
        None => return Ok(None),
    };
    if spec == "self" {
        return Ok(None);
    }
    let user = if let Some((u, g)) = spec.split_once(':') {
        match (u.parse(), g.parse()) {
            (Ok(uid), Ok(gid)) => ActionUser { uid, gid },
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "--action-user {spec:?}: expected UID:GID"
                )));
            }
        }
    } else if let Ok(uid) = spec.parse::<u32>() {
        ActionUser { uid, gid: uid }
    } else {
        let found = nix::unistd::User::from_name(spec)
            .map_err(|e| Error::InvalidArgument(format!("--action-user {spec:?}: {e}")))?
            .ok_or_else(|| {
                Error::InvalidArgument(format!("--action-user {spec:?}: no such user"))
            })?;
        ActionUser {
            uid: found.uid.as_raw(),
            gid: found.gid.as_raw(),
        }
    };
    if user.uid == own_uid() {
        return Ok(None);
    }
    if !root {
        return Err(Error::InvalidArgument(format!(
            "--action-user {spec:?} needs the worker to run as root (or use --action-user self)"
        )));
    }
    if user.uid == 0 {
        return Err(Error::InvalidArgument(
            "--action-user must not be root".into(),
        ));
    }
    Ok(Some(user))
}

/// Who each of `slots` slots runs actions as: everyone as `--action-user`
/// when given; else, for a root worker, one uid (and equal gid) per slot
/// from the pool `uids` (`FIRST-LAST`); else the worker itself.
pub fn action_users(
    user: Option<&str>,
    uids: &str,
    slots: usize,
) -> Result<Vec<Option<ActionUser>>> {
    if user.is_some() || own_uid() != 0 {
        return Ok(vec![action_user(user)?; slots]);
    }
    let bad = || {
        Error::InvalidArgument(format!(
            "--action-uids {uids:?}: expected FIRST-LAST, two uids above 0"
        ))
    };
    let (first, last) = uids.split_once('-').ok_or_else(bad)?;
    let (first, last): (u32, u32) = (
        first.trim().parse().map_err(|_| bad())?,
        last.trim().parse().map_err(|_| bad())?,
    );
    if first == 0 || last < first {
        return Err(bad());
    }
    let size = (last - first) as usize + 1;
    if size < slots {
        return Err(Error::InvalidArgument(format!(
            "--action-uids {uids:?} has {size} uids for {slots} slots (--concurrency): each slot needs its own"
        )));
    }
    Ok((0..slots)
        .map(|n| {
            let id = first + n as u32;
            Some(ActionUser { uid: id, gid: id })
        })
        .collect())
}

/// Refuses a token file that the action user could read; warns when the
/// actions run as the worker's own user (they can read anything it can).
pub fn check_token_file(path: &Path, user: Option<ActionUser>) -> Result<()> {
    let meta =
        std::fs::metadata(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    match user {
        Some(_) if meta.mode() & 0o077 != 0 => Err(Error::InvalidArgument(format!(
            "--token-file {} is readable by other users (mode {:o}); actions could read it: chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        ))),
        Some(_) => Ok(()),
        None => {
            tracing::warn!(
                path = %path.display(),
                "actions run as the worker's own user and can read --token-file; run the worker as root (actions then run as --action-user) or through a --runner sandbox that hides it"
            );
            Ok(())
        }
    }
}

/// Makes the worker's directories right for `user`: the work and run
/// directories traversable (not listable) by others, the cache private;
/// refuses a work dir under a directory the action user cannot traverse.
pub fn prepare_dirs(
    work_dir: &Path,
    runs: &Path,
    cache: &Path,
    user: Option<ActionUser>,
) -> Result<()> {
    let set = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("setting the mode of {}", p.display()), e))
    };
    set(cache, 0o700)?;
    if user.is_none() {
        return Ok(());
    }
    set(work_dir, 0o711)?;
    set(runs, 0o711)?;
    let absolute = std::fs::canonicalize(work_dir)
        .map_err(|e| Error::io(format!("resolving {}", work_dir.display()), e))?;
    for dir in absolute.ancestors().skip(1) {
        let meta = std::fs::metadata(dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        if meta.mode() & 0o001 == 0 {
            return Err(Error::InvalidArgument(format!(
                "--work-dir {}: the action user cannot reach it ({} has mode {:o}); choose another --work-dir",
                work_dir.display(),
                dir.display(),
                meta.mode() & 0o777
            )));
        }
    }
    Ok(())
}

/// Gives a directory the action creates things in to the action user.
pub fn hand_over(dir: &Path, user: Option<ActionUser>) -> Result<()> {
    if let Some(u) = user {
        std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid))
            .map_err(|e| Error::io(format!("handing {} to the action user", dir.display()), e))?;
    }
    Ok(())
}

/// Creates `root/rel` and its parents as directories one component at a
/// time, following a symlink only where it stays inside `root` (which must
/// be canonical), and hands what it creates to the action user.
pub fn mkdirs_within(root: &Path, rel: &Path, user: Option<ActionUser>) -> Result<PathBuf> {
    let mut at = root.to_path_buf();
    for part in rel.components() {
        let Component::Normal(name) = part else {
            return Err(Error::InvalidArgument(format!(
                "{} is not a plain relative path",
                rel.display()
            )));
        };
        let next = at.join(name);
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                let real = std::fs::canonicalize(&next)
                    .map_err(|e| Error::io(format!("resolving {}", next.display()), e))?;
                if !real.starts_with(root) || !real.is_dir() {
                    return Err(Error::InvalidArgument(format!(
                        "{} is a symlink leading outside the input root (or not to a directory)",
                        next.display()
                    )));
                }
                at = real;
            }
            Ok(m) if m.is_dir() => at = next,
            Ok(_) => {
                return Err(Error::InvalidArgument(format!(
                    "{} exists and is not a directory",
                    next.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&next)
                    .map_err(|e| Error::io(format!("creating {}", next.display()), e))?;
                hand_over(&next, user)?;
                at = next;
            }
            Err(e) => return Err(Error::io(format!("reading {}", next.display()), e)),
        }
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_leave_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap().join("root");
        std::fs::create_dir(&root).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        std::fs::create_dir(root.join("inside")).unwrap();
        std::os::unix::fs::symlink("inside", root.join("alias")).unwrap();

        assert!(mkdirs_within(&root, Path::new("escape/x"), None).is_err());
        assert!(!outside.join("x").exists(), "nothing created outside");
        let made = mkdirs_within(&root, Path::new("alias/a/b"), None).unwrap();
        assert_eq!(made, root.join("inside/a/b"));
        assert!(mkdirs_within(&root, Path::new("../x"), None).is_err());
    }
}
