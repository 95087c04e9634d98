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
//! (a round of a few puts syncs its own files and directories instead, so
//! that it does not wait for unrelated dirty pages: see [`Durability`])
//!
//! and only then acknowledges them. Small blobs of a store with segments
//! (`fs_segments`) skip all of that: the round appends them to the current
//! segment with one write and one `fdatasync`.
//!
//! Each round acknowledges its puts only once they are durable. While one round runs, the next one's
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

use super::fs_index::{Index, Place};
use super::fs_segments::Segments;
use crate::digest::Digest;
use crate::error::{Error, Result};

/// Most puts one round commits; more wait for the next.
const MAX_ROUND: usize = 4096;

/// One put waiting for durability, going `to` a file or a segment.
struct Pending<T> {
    digest: Digest,
    len: u64,
    to: T,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// A put as sent: its bytes go to a file or to the current segment.
type Job = Pending<Target>;
/// A put whose blob becomes a file of its own.
type FileJob = Pending<FileTarget>;
/// A small put: its bytes become a record.
type SmallPut = Pending<Bytes>;

enum Target {
    File(FileTarget),
    Segment(Bytes),
}

/// A temp file renamed to `dest`; `data` (pieces, written in order) is
/// written to it first, for puts that have their bytes in memory.
struct FileTarget {
    temp: PathBuf,
    dest: PathBuf,
    data: Option<Vec<Bytes>>,
}

/// The handle puts send their finished temp files to.
#[derive(Debug)]
pub(crate) struct Syncer {
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    /// Starts the syncer thread of the store at `root`; it ends when the
    /// store (the last sender) is dropped.
    pub(crate) fn start(
        root: &Path,
        index: Arc<Index>,
        segments: Option<Arc<Segments>>,
    ) -> Result<Self> {
        let dir = std::fs::File::open(root)
            .map_err(|e| Error::io(format!("opening {}", root.display()), e))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("kiln-fs-sync".into())
            .spawn(move || run(dir, index, segments, rx))
            .map_err(|e| Error::io("starting the fs store's syncer", e))?;
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
        })
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
        let to = Target::File(FileTarget {
            temp,
            dest,
            data: None,
        });
        self.send(digest, len, to).await
    }

    /// Writes `data`, its pieces in order, to the temp file `temp`, then
    /// commits it as [`Syncer::commit`] does.
    pub(crate) async fn commit_bytes(
        &self,
        temp: PathBuf,
        dest: PathBuf,
        digest: Digest,
        data: Vec<Bytes>,
    ) -> std::io::Result<()> {
        let len = data.iter().map(|d| d.len() as u64).sum();
        let to = Target::File(FileTarget {
            temp,
            dest,
            data: Some(data),
        });
        self.send(digest, len, to).await
    }

    /// Appends a small blob to the store's current segment in the next
    /// round; returns once it is durable and indexed.
    pub(crate) async fn append(&self, digest: Digest, data: Bytes) -> std::io::Result<()> {
        let len = data.len() as u64;
        self.send(digest, len, Target::Segment(data)).await
    }

    async fn send(&self, digest: Digest, len: u64, to: Target) -> std::io::Result<()> {
        let (done, wait) = oneshot::channel();
        let job = Job {
            digest,
            len,
            to,
            done,
        };
        if self.tx.as_ref().is_none_or(|tx| tx.send(job).is_err()) {
            return Err(std::io::Error::other("the fs store's syncer has stopped"));
        }
        wait.await
            .unwrap_or_else(|_| Err(std::io::Error::other("the fs store's syncer has stopped")))
    }
}

/// The store is going away: the thread finishes the rounds already sent
/// and ends, and dropping waits for it, so the segments it holds (and
/// their directory lock) are released when the store is.
impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    dir: std::fs::File,
    index: Arc<Index>,
    segments: Option<Arc<Segments>>,
    rx: mpsc::Receiver<Job>,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_ROUND {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut files = Vec::new();
        let mut small = Vec::new();
        for job in jobs {
            let Pending {
                digest,
                len,
                to,
                done,
            } = job;
            match to {
                Target::File(to) => files.push(Pending {
                    digest,
                    len,
                    to,
                    done,
                }),
                Target::Segment(to) => small.push(Pending {
                    digest,
                    len,
                    to,
                    done,
                }),
            }
        }
        if !small.is_empty() {
            append_round(segments.as_deref(), &index, small);
        }
        if !files.is_empty() {
            round(&dir, &index, files);
        }
    }
}

/// Appends a round's small blobs to the current segment (a digest sent
/// twice in one round is stored once) and indexes them.
fn append_round(segments: Option<&Segments>, index: &Index, jobs: Vec<SmallPut>) {
    let Some(segments) = segments else {
        for job in jobs {
            let _ = job
                .done
                .send(Err(std::io::Error::other("this fs store has no segments")));
        }
        return;
    };
    let mut seen = std::collections::HashSet::with_capacity(jobs.len());
    let items: Vec<(Digest, &[u8])> = jobs
        .iter()
        .filter(|j| seen.insert(j.digest))
        .map(|j| (j.digest, j.to.as_ref()))
        .collect();
    match segments.append(&items) {
        Ok(locs) => {
            let now = crate::time::now_ms();
            for ((digest, data), loc) in items.iter().zip(locs) {
                index.insert_at(*digest, data.len() as u64, now, Place::Segment(loc));
            }
            for job in jobs {
                let _ = job.done.send(Ok(()));
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.done.send(Err(clone_err(&e)));
            }
        }
    }
}

/// Rounds of at most this many puts sync their files one by one; larger
/// ones sync the whole file system.
const FILES_MAX: usize = 4;

/// How a round makes its files and renames durable, chosen per round:
/// measured here, a lone put's own `fdatasync` (exec's action-cache
/// writes) does not wait for a large upload's dirty pages, while 100 files
/// cost 100 cache flushes one by one (10x slower than one `syncfs` round).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// `fdatasync` each file, then `fsync` each directory a rename touched.
    /// On ext4 and XFS the first sync of a round commits the journal for
    /// all of them, so the rest are cheap; unrelated writes on the same
    /// file system (a large upload's spool) are not waited for.
    Files,
    /// One `syncfs` for the data and one for the renames: the fewest
    /// system calls, but it also waits for every other dirty page on the
    /// file system.
    Filesystem,
}

/// Commits one round of puts (see the module docs for the order).
fn round(dir: &std::fs::File, index: &Index, jobs: Vec<FileJob>) {
    let durability = if jobs.len() <= FILES_MAX {
        Durability::Files
    } else {
        Durability::Filesystem
    };
    // Write (for puts that brought bytes) and make each file durable; a
    // job that fails here fails alone.
    let mut ready = Vec::with_capacity(jobs.len());
    for mut job in jobs {
        let synced = match job.to.data.take() {
            Some(data) => write_temp(&job.to.temp, &data, durability == Durability::Files),
            None if durability == Durability::Files => {
                std::fs::File::open(&job.to.temp).and_then(|f| f.sync_data())
            }
            None => Ok(()),
        };
        match synced {
            Ok(()) => ready.push(job),
            Err(e) => {
                let _ = std::fs::remove_file(&job.to.temp);
                let _ = job.done.send(Err(e));
            }
        }
    }
    if ready.is_empty() {
        return;
    }
    if durability == Durability::Filesystem
        && let Err(e) = syncfs(dir)
    {
        for job in ready {
            let _ = job.done.send(Err(clone_err(&e)));
        }
        return;
    }
    let mut renamed = Vec::with_capacity(ready.len());
    for job in ready {
        // An eviction deleting the same digest's old file finishes first,
        // so that deletion cannot hit the new one.
        index.wait_not_evicting(&job.digest);
        match rename(&job.to.temp, &job.to.dest) {
            Ok(()) => renamed.push(job),
            Err(e) => {
                let _ = job.done.send(Err(e));
            }
        }
    }
    if renamed.is_empty() {
        return;
    }
    let synced = match durability {
        Durability::Filesystem => syncfs(dir),
        Durability::Files => sync_dirs(&renamed),
    };
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

fn write_temp(temp: &Path, data: &[Bytes], sync: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(temp)?;
    for piece in data {
        f.write_all(piece)?;
    }
    if sync {
        f.sync_data()?;
    }
    Ok(())
}

/// Makes the renames of a round durable: each directory they touched, once.
fn sync_dirs(jobs: &[FileJob]) -> std::io::Result<()> {
    let dirs: std::collections::BTreeSet<&Path> =
        jobs.iter().filter_map(|j| j.to.dest.parent()).collect();
    for d in dirs {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
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
fn syncfs(dir: &std::fs::File) -> std::io::Result<()> {
    nix::unistd::syncfs(dir).map_err(std::io::Error::from)
}

/// Without `syncfs`, everything dirty is flushed (what `sync(2)` does).
#[cfg(not(target_os = "linux"))]
fn syncfs(_dir: &std::fs::File) -> std::io::Result<()> {
    nix::unistd::sync();
    Ok(())
}
