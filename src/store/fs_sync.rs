//! Group durability for the fs store: puts that finish at about the same
//! time are made durable together, in rounds, instead of paying two fsyncs
//! each.
//!
//! A streamed put writes its temp file without syncing it and hands it to
//! the store's syncer thread; a small put hands over its bytes, and the
//! thread writes the temp file itself (no blocking-pool task per blob). The
//! thread takes every put waiting and, for the whole round:
//!
//! 1. writes the temp files of the puts that brought bytes;
//! 2. makes their data durable with one `syncfs` of the store's file system
//!    (so no file is renamed into place before its bytes are on disk: after
//!    a crash a blob file is whole or absent, never a name over zeros);
//! 3. renames each into place;
//! 4. makes the renames durable with a second `syncfs`;
//!
//! and only then acknowledges them. While one round runs, the next one's
//! puts queue up, so under load a round covers many blobs (a batch call's
//! blobs, and those of concurrent calls), and an idle store still commits a
//! single put at once: there is no timer to wait for.
//!
//! `syncfs` flushes everything dirty on that file system, not only kiln's
//! files: the store belongs on a disk of its own when other programs write
//! heavily beside it. Where `syncfs` is missing (not Linux), each round
//! syncs its files and their directories one by one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::fs_index::Index;
use crate::digest::Digest;
use crate::error::{Error, Result};

/// Most puts one round commits; more wait for the next.
const MAX_ROUND: usize = 4096;

/// One put waiting for durability.
struct Job {
    temp: PathBuf,
    dest: PathBuf,
    digest: Digest,
    len: u64,
    /// The bytes to write to `temp` first, for puts that have them whole.
    data: Option<Bytes>,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// The handle puts send their finished temp files to.
#[derive(Debug)]
pub(crate) struct Syncer {
    tx: mpsc::Sender<Job>,
}

impl Syncer {
    /// Starts the syncer thread of the store at `root`; it ends when the
    /// store (the last sender) is dropped.
    pub(crate) fn start(root: &Path, index: Arc<Index>) -> Result<Self> {
        let dir = std::fs::File::open(root)
            .map_err(|e| Error::io(format!("opening {}", root.display()), e))?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("kiln-fs-sync".into())
            .spawn(move || run(dir, index, rx))
            .map_err(|e| Error::io("starting the fs store's syncer", e))?;
        Ok(Syncer { tx })
    }

    /// Moves the finished, unsynced file `temp` of `len` bytes to `dest`
    /// durably and indexes it as `digest`; returns once a crash can no
    /// longer lose it. `temp` must be on the store's file system.
    pub(crate) async fn commit(
        &self,
        temp: PathBuf,
        dest: PathBuf,
        digest: Digest,
        len: u64,
    ) -> std::io::Result<()> {
        self.send(temp, dest, digest, len, None).await
    }

    /// Writes `data` to the temp file `temp`, then commits it as
    /// [`Syncer::commit`] does.
    pub(crate) async fn commit_bytes(
        &self,
        temp: PathBuf,
        dest: PathBuf,
        digest: Digest,
        data: Bytes,
    ) -> std::io::Result<()> {
        let len = data.len() as u64;
        self.send(temp, dest, digest, len, Some(data)).await
    }

    async fn send(
        &self,
        temp: PathBuf,
        dest: PathBuf,
        digest: Digest,
        len: u64,
        data: Option<Bytes>,
    ) -> std::io::Result<()> {
        let (done, wait) = oneshot::channel();
        let job = Job {
            temp,
            dest,
            digest,
            len,
            data,
            done,
        };
        if self.tx.send(job).is_err() {
            return Err(std::io::Error::other("the fs store's syncer has stopped"));
        }
        wait.await
            .unwrap_or_else(|_| Err(std::io::Error::other("the fs store's syncer has stopped")))
    }
}

fn run(dir: std::fs::File, index: Arc<Index>, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_ROUND {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        round(&dir, &index, jobs);
    }
}

/// Commits one round of puts (see the module docs for the order).
fn round(dir: &std::fs::File, index: &Index, jobs: Vec<Job>) {
    let mut written = Vec::with_capacity(jobs.len());
    for mut job in jobs {
        match job.data.take().map(|data| write_temp(&job.temp, &data)) {
            Some(Err(e)) => {
                let _ = std::fs::remove_file(&job.temp);
                let _ = job.done.send(Err(e));
            }
            _ => written.push(job),
        }
    }
    let jobs = written;
    if jobs.is_empty() {
        return;
    }
    if let Err(e) = sync_data(dir, &jobs) {
        for job in jobs {
            let _ = job.done.send(Err(clone_err(&e)));
        }
        return;
    }
    let mut renamed = Vec::with_capacity(jobs.len());
    for job in jobs {
        // An eviction deleting the same digest's old file finishes first,
        // so that deletion cannot hit the new one.
        index.wait_not_evicting(&job.digest);
        match rename(&job.temp, &job.dest) {
            Ok(()) => renamed.push(job),
            Err(e) => {
                let _ = job.done.send(Err(e));
            }
        }
    }
    if renamed.is_empty() {
        return;
    }
    let synced = sync_renames(dir, &renamed);
    for job in renamed {
        let result = match &synced {
            Ok(()) => {
                index.insert(job.digest, job.len);
                Ok(())
            }
            Err(e) => Err(clone_err(e)),
        };
        let _ = job.done.send(result);
    }
}

fn write_temp(temp: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::File::create(temp)?.write_all(data)
}

fn clone_err(e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), e.to_string())
}

/// Renames a finished file into place, creating its shard directory when a
/// first blob lands there.
fn rename(temp: &Path, dest: &Path) -> std::io::Result<()> {
    match std::fs::rename(temp, dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dest.parent().expect("blob paths have a parent");
            std::fs::create_dir_all(parent)?;
            std::fs::rename(temp, dest)
        }
        other => other,
    }
}

#[cfg(target_os = "linux")]
fn sync_data(dir: &std::fs::File, _jobs: &[Job]) -> std::io::Result<()> {
    nix::unistd::syncfs(dir).map_err(std::io::Error::from)
}

#[cfg(target_os = "linux")]
fn sync_renames(dir: &std::fs::File, _jobs: &[Job]) -> std::io::Result<()> {
    nix::unistd::syncfs(dir).map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn sync_data(_dir: &std::fs::File, jobs: &[Job]) -> std::io::Result<()> {
    for job in jobs {
        std::fs::File::open(&job.temp)?.sync_all()?;
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn sync_renames(_dir: &std::fs::File, jobs: &[Job]) -> std::io::Result<()> {
    let dirs: std::collections::BTreeSet<&Path> =
        jobs.iter().filter_map(|j| j.dest.parent()).collect();
    for d in dirs {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}
