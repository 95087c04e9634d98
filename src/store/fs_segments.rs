//! Small blobs of the fs store in append-only segment files.
//!
//! A file per 4 KiB blob costs the kernel a create, a rename and directory
//! updates (~40 µs of kernel CPU each on the machines we measure), far more
//! than hashing it. So a CAS keeps blobs up to [`SMALL_MAX`] as records
//! appended to `{root}/segments/{n}.seg`: the syncer appends every small
//! put of a round with one write and makes them durable with one
//! `fdatasync`, and the in-memory index points at the record.
//!
//! A segment file starts with [`FILE_MAGIC`]; each record is a 52-byte
//! header (magic, digest function, size, hash, CRC-32 of header and data)
//! followed by the blob. Only the newest segment is ever appended to, so
//! only its tail can be torn by a crash: at start its records' checksums
//! are verified and anything after the last whole record is cut off.
//! Records of older segments are checked when read; an older segment
//! damaged on disk is indexed up to the damage and never cut.
//!
//! Eviction removes blobs from the index; the segments they were in are
//! then compacted as a whole (the head is sealed first): what is still
//! indexed there and either leased or more recently used than what the
//! pass evicted is copied forward into the current segment (keeping its
//! last access), the rest is evicted with it, and the segment file is
//! deleted. A crash between
//! the copy and the deletion leaves two copies; the start finds the older
//! one and compacts its segment again.
//!
//! Files are numbered in the order they were started (`{n}.seg`, a u64
//! that never repeats); the index names a segment by a small slot instead
//! (20 bits of a record), reused once its segment is deleted.
//!
//! One process owns a directory with segments (an exclusive `flock` on
//! `segments/lock`): pods sharing a directory must turn segments off.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::fs_index::{Loc, MAX_SEGMENT_SLOT};
use crate::digest::{Digest, DigestFunction};

/// Blobs up to this size go into segments; larger ones get files.
pub(crate) const SMALL_MAX: u64 = 256 << 10;
/// Segments are rolled once they pass this many bytes, unless the store's
/// limit asks for smaller ones (see [`segment_len_for`]).
const DEFAULT_SEGMENT_LEN: u64 = 64 << 20;
const FILE_MAGIC: &[u8; 8] = b"KILNSEG1";
/// How long opening waits for another holder of the directory's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const RECORD_MAGIC: &[u8; 4] = b"KSR1";
/// Bytes of a record before its blob.
pub(crate) const RECORD_HEADER: u64 = 52;

/// How long a segment grows before the next is started: compaction works
/// a segment at a time, so a bounded store needs segments well below its
/// limit (a sixteenth), or one rewrite would move a large part of it.
pub(crate) fn segment_len_for(max_size: Option<u64>) -> u64 {
    match max_size {
        Some(max) => (max / 16).clamp(64 << 10, DEFAULT_SEGMENT_LEN),
        None => DEFAULT_SEGMENT_LEN,
    }
}

/// A record found by the scan at start.
#[derive(Debug)]
pub(crate) struct Found {
    pub digest: Digest,
    pub loc: Loc,
    /// The segment's modification time: its records' last access.
    pub last_ms: i64,
}

/// The segment being appended to (touched only under its mutex).
#[derive(Debug)]
struct Head {
    slot: u32,
    number: u64,
    file: Arc<File>,
    len: u64,
    /// A failed append could not be cut back: start a new segment.
    broken: bool,
}

/// One open segment.
#[derive(Debug)]
struct Open {
    number: u64,
    file: Arc<File>,
}

/// The segment files of one store.
#[derive(Debug)]
pub(crate) struct Segments {
    dir: PathBuf,
    roll_at: u64,
    /// Every segment by slot, open for reads (a compaction that deletes
    /// one leaves readers holding it whole).
    files: Mutex<HashMap<u32, Open>>,
    head: Mutex<Head>,
    /// The head's slot, for eviction (which never picks from it).
    current: AtomicU32,
    _lock: nix::fcntl::Flock<File>,
}

fn segment_name(n: u64) -> String {
    format!("{n:016}.seg")
}

/// The lowest slot no open segment holds.
fn free_slot(files: &HashMap<u32, Open>) -> std::io::Result<u32> {
    (1..=MAX_SEGMENT_SLOT)
        .find(|s| !files.contains_key(s))
        .ok_or_else(|| std::io::Error::other("the store has as many segments as it can index"))
}

fn io_err(text: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, text)
}

impl Segments {
    /// Opens (creating) `{root}/segments`, takes its lock and scans every
    /// segment (cutting a torn tail off the newest, which stays the head
    /// while it has room).
    pub(crate) fn open(root: &Path, roll_at: u64) -> std::io::Result<(Segments, Vec<Found>)> {
        let dir = root.join("segments");
        std::fs::create_dir_all(&dir)?;
        let lock = lock(&dir)?;
        let mut numbers: Vec<u64> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        numbers.sort_unstable();
        let mut files = HashMap::new();
        let mut found = Vec::new();
        let newest = numbers.last().copied();
        let mut head = None;
        for &n in &numbers {
            let path = dir.join(segment_name(n));
            let slot = free_slot(&files)?;
            match scan(&path, slot, Some(n) == newest)? {
                Some((file, records, end)) => {
                    let file = Arc::new(file);
                    files.insert(
                        slot,
                        Open {
                            number: n,
                            file: file.clone(),
                        },
                    );
                    found.extend(records);
                    head = Some(Head {
                        slot,
                        number: n,
                        file,
                        len: end,
                        broken: false,
                    });
                }
                None => {
                    tracing::warn!(path = %path.display(), "removing a segment cut short before its first record");
                    std::fs::remove_file(&path)?;
                }
            }
        }
        let head = match head {
            Some(h) if h.len < roll_at => h,
            _ => {
                let number = newest.unwrap_or(0) + 1;
                let slot = free_slot(&files)?;
                let file = Arc::new(create(&dir, number)?);
                let open = Open {
                    number,
                    file: file.clone(),
                };
                files.insert(slot, open);
                Head {
                    slot,
                    number,
                    file,
                    len: FILE_MAGIC.len() as u64,
                    broken: false,
                }
            }
        };
        let segments = Segments {
            dir,
            roll_at,
            current: AtomicU32::new(head.slot),
            files: Mutex::new(files),
            head: Mutex::new(head),
            _lock: lock,
        };
        Ok((segments, found))
    }

    /// The segment being appended to.
    pub(crate) fn current(&self) -> u32 {
        self.current.load(Ordering::SeqCst)
    }

    fn file(&self, segment: u32) -> Option<Arc<File>> {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&segment)
            .map(|o| o.file.clone())
    }

    /// Reads the blob at `loc`, checking its record: None when the segment
    /// is gone (compacted since the index was asked), an `InvalidData`
    /// error when the record is not `digest` or its checksum fails.
    pub(crate) fn read(&self, loc: Loc, digest: &Digest) -> std::io::Result<Option<Bytes>> {
        self.read_with(loc, digest, |file, buf, at| file.read_exact_at(buf, at))
    }

    /// [`Segments::read`] that never waits for the disk: a `WouldBlock`
    /// error when the record is not all in the page cache. Async callers
    /// read hot records in place with it and hand only the rest to a
    /// blocking thread (two thread hand-offs cost more than the read).
    pub(crate) fn read_cached(&self, loc: Loc, digest: &Digest) -> std::io::Result<Option<Bytes>> {
        self.read_with(loc, digest, read_nowait)
    }

    fn read_with(
        &self,
        loc: Loc,
        digest: &Digest,
        read: impl Fn(&File, &mut [u8], u64) -> std::io::Result<()>,
    ) -> std::io::Result<Option<Bytes>> {
        let Some(file) = self.file(loc.segment) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; (RECORD_HEADER + digest.size) as usize];
        read(&file, &mut buf, u64::from(loc.offset))?;
        let header = Header::parse(&buf[..RECORD_HEADER as usize]).ok_or_else(|| {
            io_err(format!(
                "segment {}: no record at {}",
                loc.segment, loc.offset
            ))
        })?;
        if header.digest != *digest {
            return Err(io_err(format!(
                "segment {} at {} holds {}, not {digest}",
                loc.segment, loc.offset, header.digest
            )));
        }
        if header.crc != checksum(&buf[..48], &buf[RECORD_HEADER as usize..]) {
            return Err(io_err(format!(
                "segment {} at {}: the checksum of {digest} does not match",
                loc.segment, loc.offset
            )));
        }
        let mut bytes = Bytes::from(buf);
        Ok(Some(bytes.split_off(RECORD_HEADER as usize)))
    }

    /// Appends `blobs` to the head with one write and makes them durable
    /// with one `fdatasync`; returns where each landed. On an error none
    /// of them is stored.
    pub(crate) fn append(&self, blobs: &[(Digest, &[u8])]) -> std::io::Result<Vec<Loc>> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        if head.broken || head.len >= self.roll_at {
            self.roll(&mut head)?;
        }
        let total: u64 = blobs
            .iter()
            .map(|(_, data)| RECORD_HEADER + data.len() as u64)
            .sum();
        let mut buf = Vec::with_capacity(total as usize);
        let mut locs = Vec::with_capacity(blobs.len());
        for (digest, data) in blobs {
            let offset = head.len + buf.len() as u64;
            locs.push(Loc {
                segment: head.slot,
                offset: u32::try_from(offset).map_err(|_| io_err("segment past 4 GiB".into()))?,
            });
            let header = Header::encode(digest, data);
            buf.extend_from_slice(&header);
            buf.extend_from_slice(data);
        }
        let start = head.len;
        let written = head
            .file
            .write_all_at(&buf, start)
            .and_then(|()| head.file.sync_data());
        if let Err(e) = written {
            // Cut the partial records off so the next append starts clean.
            if head.file.set_len(start).is_err() {
                head.broken = true;
            }
            return Err(e);
        }
        head.len += total;
        Ok(locs)
    }

    /// Starts a new head if `slot` is the head, so that it can be
    /// compacted.
    pub(crate) fn seal(&self, slot: u32) -> std::io::Result<()> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        if head.slot == slot {
            self.roll(&mut head)?;
        }
        Ok(())
    }

    /// Starts the next segment as the head; the old one stays readable.
    fn roll(&self, head: &mut Head) -> std::io::Result<()> {
        let number = head.number + 1;
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let slot = free_slot(&files)?;
        let file = Arc::new(create(&self.dir, number)?);
        let open = Open {
            number,
            file: file.clone(),
        };
        files.insert(slot, open);
        *head = Head {
            slot,
            number,
            file,
            len: FILE_MAGIC.len() as u64,
            broken: false,
        };
        self.current.store(slot, Ordering::SeqCst);
        Ok(())
    }

    /// Deletes a compacted segment (never the head); its slot is free
    /// again.
    pub(crate) fn remove(&self, segment: u32) -> std::io::Result<()> {
        if segment == self.current() {
            return Ok(());
        }
        let removed = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&segment);
        if let Some(open) = removed {
            std::fs::remove_file(self.dir.join(segment_name(open.number)))?;
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Takes the directory's lock, waiting a little for a holder that is
/// going away (a store of this process being dropped finishes its
/// eviction and sync threads first).
fn lock(dir: &Path) -> std::io::Result<nix::fcntl::Flock<File>> {
    use nix::fcntl::{Flock, FlockArg};
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut file = File::create(dir.join("lock"))?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, errno)) if std::time::Instant::now() >= deadline => {
                return Err(std::io::Error::other(format!(
                    "{} is in use by another kiln process ({errno}); a directory shared by \
                     several processes needs `segments: false`",
                    dir.display()
                )));
            }
            Err((back, _)) => {
                file = back;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// Fills `buf` from `at` only if the page cache holds all of it.
#[cfg(target_os = "linux")]
fn read_nowait(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    use rustix::io::{ReadWriteFlags, preadv2};
    let mut slices = [std::io::IoSliceMut::new(buf)];
    let len = slices[0].len();
    match preadv2(file, &mut slices, at, ReadWriteFlags::NOWAIT) {
        Ok(n) if n == len => Ok(()),
        // Part of it is cached: the rest would wait.
        Ok(_) => Err(std::io::ErrorKind::WouldBlock.into()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn read_nowait(_file: &File, _buf: &mut [u8], _at: u64) -> std::io::Result<()> {
    Err(std::io::ErrorKind::WouldBlock.into())
}

/// Creates segment `n` with its magic, durably (file and directory entry).
fn create(dir: &Path, n: u64) -> std::io::Result<File> {
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.join(segment_name(n)))?;
    file.write_all_at(FILE_MAGIC, 0)?;
    file.sync_data()?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

fn checksum(header: &[u8], data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(data);
    h.finalize()
}

/// A record's header.
struct Header {
    digest: Digest,
    crc: u32,
}

impl Header {
    fn encode(digest: &Digest, data: &[u8]) -> [u8; RECORD_HEADER as usize] {
        let mut h = [0u8; RECORD_HEADER as usize];
        h[..4].copy_from_slice(RECORD_MAGIC);
        h[4] = DigestFunction::ALL
            .iter()
            .position(|f| *f == digest.function)
            .unwrap_or(0) as u8;
        h[8..16].copy_from_slice(&digest.size.to_le_bytes());
        h[16..48].copy_from_slice(&digest.hash);
        let crc = checksum(&h[..48], data);
        h[48..52].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// None unless `h` is a well-formed header of a small blob.
    fn parse(h: &[u8]) -> Option<Header> {
        if h.len() < RECORD_HEADER as usize || &h[..4] != RECORD_MAGIC {
            return None;
        }
        let function = *DigestFunction::ALL.get(usize::from(h[4]))?;
        let size = u64::from_le_bytes(h[8..16].try_into().ok()?);
        if size > SMALL_MAX {
            return None;
        }
        Some(Header {
            digest: Digest {
                function,
                hash: h[16..48].try_into().ok()?,
                size,
            },
            crc: u32::from_le_bytes(h[48..52].try_into().ok()?),
        })
    }
}

/// Lists one segment's records (as in `slot`); `verify` checks every checksum (the
/// newest segment, whose tail a crash may have torn). Whatever follows
/// its last whole record is cut off; an older segment is only read up to
/// a damaged record. None for a file too short to hold
/// its magic (a crash while creating it); else the file, its records and
/// where the next one goes.
#[allow(clippy::type_complexity)]
fn scan(path: &Path, slot: u32, verify: bool) -> std::io::Result<Option<(File, Vec<Found>, u64)>> {
    use std::io::{BufReader, Read};
    let file = File::options().read(true).write(true).open(path)?;
    let meta = file.metadata()?;
    let len = meta.len();
    let mut magic = [0u8; 8];
    if len < FILE_MAGIC.len() as u64 {
        return Ok(None);
    }
    file.read_exact_at(&mut magic, 0)?;
    if &magic != FILE_MAGIC {
        return Err(io_err(format!("{} is not a kiln segment", path.display())));
    }
    let last_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64);
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    reader.seek_relative(FILE_MAGIC.len() as i64)?;
    let mut offset = FILE_MAGIC.len() as u64;
    let mut found = Vec::new();
    let mut header = [0u8; RECORD_HEADER as usize];
    let mut data = Vec::new();
    while offset < len {
        let whole = offset + RECORD_HEADER <= len
            && reader.read_exact(&mut header).is_ok()
            && match Header::parse(&header) {
                Some(h) if offset + RECORD_HEADER + h.digest.size <= len => {
                    let ok = if verify {
                        data.resize(h.digest.size as usize, 0);
                        reader.read_exact(&mut data).is_ok()
                            && checksum(&header[..48], &data) == h.crc
                    } else {
                        reader.seek_relative(h.digest.size as i64).is_ok()
                    };
                    if ok {
                        found.push(Found {
                            digest: h.digest,
                            loc: Loc {
                                segment: slot,
                                offset: offset as u32,
                            },
                            last_ms,
                        });
                        offset += RECORD_HEADER + h.digest.size;
                    }
                    ok
                }
                _ => false,
            };
        if !whole && !verify {
            // Not the newest: no crash tears it, the disk damaged it. Its
            // records up to here are kept and the file is left as it is
            // (whole records may follow the damage).
            tracing::error!(
                path = %path.display(),
                at = offset,
                "a sealed segment is damaged: the records after this offset are not indexed"
            );
            break;
        }
        if !whole {
            tracing::warn!(
                path = %path.display(),
                kept = offset,
                cut = len - offset,
                "cutting off a segment's torn tail"
            );
            file.set_len(offset)?;
            file.sync_all()?;
            break;
        }
    }
    drop(reader);
    Ok(Some((file, found, offset)))
}

#[cfg(test)]
impl Segments {
    fn path_of(&self, slot: u32) -> PathBuf {
        let files = self.files.lock().unwrap();
        self.dir.join(segment_name(files[&slot].number))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u32, len: usize) -> (Digest, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i as u32 ^ n) as u8).collect();
        (DigestFunction::Sha256.digest_of(&data), data)
    }

    #[test]
    fn records_read_back_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Vec<_> = (0..20).map(|n| blob(n, 100 + n as usize * 50)).collect();
        let locs = {
            let (segments, found) = Segments::open(dir.path(), 1 << 20).unwrap();
            assert!(found.is_empty());
            let items: Vec<(Digest, &[u8])> =
                blobs.iter().map(|(d, b)| (*d, b.as_slice())).collect();
            let locs = segments.append(&items[..7]).unwrap();
            let mut more = segments.append(&items[7..]).unwrap();
            let mut locs = locs;
            locs.append(&mut more);
            for ((d, b), loc) in blobs.iter().zip(&locs) {
                assert_eq!(segments.read(*loc, d).unwrap().unwrap(), b.as_slice());
            }
            locs
        };
        let (segments, found) = Segments::open(dir.path(), 1 << 20).unwrap();
        let got: Vec<(Digest, Loc)> = found.iter().map(|f| (f.digest, f.loc)).collect();
        let want: Vec<(Digest, Loc)> = blobs.iter().map(|(d, _)| *d).zip(locs).collect();
        assert_eq!(got, want);
        assert_eq!(
            segments.current(),
            want[0].1.segment,
            "the head has room: kept"
        );
        let (d, b) = blob(99, 10);
        let loc = segments.append(&[(d, &b)]).unwrap()[0];
        assert!(loc > want[19].1, "appended after the last record");
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (blob(1, 5000), blob(2, 5000));
        let path = {
            let (segments, _) = Segments::open(dir.path(), 1 << 20).unwrap();
            segments.append(&[(a.0, &a.1)]).unwrap();
            segments.append(&[(b.0, &b.1)]).unwrap();
            segments.path_of(segments.current())
        };
        let full = std::fs::metadata(&path).unwrap().len();
        // Torn in the middle of the second record's data.
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(full - 100)
            .unwrap();
        let (segments, found) = Segments::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(found.len(), 1, "the whole record stays, the torn one goes");
        assert_eq!(found[0].digest, a.0);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            8 + RECORD_HEADER + 5000,
            "cut at the last whole record"
        );
        assert_eq!(segments.read(found[0].loc, &a.0).unwrap().unwrap(), a.1);
    }

    /// Damage in a sealed (older) segment is not a torn tail: the records
    /// before it are indexed and the file is left whole.
    #[test]
    fn damage_in_an_older_segment_is_never_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Vec<_> = (0..4).map(|n| blob(n, 6000)).collect();
        let (path, locs) = {
            let (segments, _) = Segments::open(dir.path(), 10_000).unwrap();
            let items: Vec<(Digest, &[u8])> =
                blobs.iter().map(|(d, b)| (*d, b.as_slice())).collect();
            let locs = segments.append(&items[..2]).unwrap();
            segments.append(&items[2..]).unwrap();
            (segments.path_of(locs[0].segment), locs)
        };
        let len = std::fs::metadata(&path).unwrap().len();
        // The second record's magic, garbled.
        let f = File::options().write(true).open(&path).unwrap();
        f.write_all_at(b"XXXX", u64::from(locs[1].offset)).unwrap();
        let (_, found) = Segments::open(dir.path(), 10_000).unwrap();
        let digests: Vec<Digest> = found.iter().map(|f| f.digest).collect();
        assert!(digests.contains(&blobs[0].0), "before the damage: kept");
        assert!(
            !digests.contains(&blobs[1].0),
            "the damaged record: not indexed"
        );
        assert!(digests.contains(&blobs[3].0), "the newer segment: kept");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "not cut");
    }

    #[test]
    fn a_flipped_byte_in_the_newest_segment_is_found_at_start_and_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (blob(1, 3000), blob(2, 3000));
        let (path, locs) = {
            let (segments, _) = Segments::open(dir.path(), 1 << 20).unwrap();
            let locs = segments.append(&[(a.0, &a.1), (b.0, &b.1)]).unwrap();
            let path = segments.path_of(segments.current());
            // Flip a byte of b's data on disk: a read must refuse it.
            let f = File::options().read(true).write(true).open(&path).unwrap();
            let at = u64::from(locs[1].offset) + RECORD_HEADER + 10;
            let mut byte = [0u8];
            f.read_exact_at(&mut byte, at).unwrap();
            f.write_all_at(&[byte[0] ^ 0xff], at).unwrap();
            let err = segments.read(locs[1], &b.0).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
            assert_eq!(segments.read(locs[0], &a.0).unwrap().unwrap(), a.1);
            (path, locs)
        };
        let (_, found) = Segments::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].loc, locs[0]);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            u64::from(locs[1].offset)
        );
    }

    /// A record in the page cache is read in place; once the kernel has
    /// dropped its pages, the in-place read refuses to wait (the store
    /// then reads it on a blocking thread) and the blocking read still
    /// finds it.
    #[test]
    fn cached_reads_never_wait_for_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (segments, _) = Segments::open(dir.path(), 1 << 20).unwrap();
        let (d, b) = blob(3, 100_000);
        let loc = segments.append(&[(d, &b)]).unwrap()[0];
        assert_eq!(segments.read_cached(loc, &d).unwrap().unwrap(), b);
        let file = File::open(segments.path_of(loc.segment)).unwrap();
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        match segments.read_cached(loc, &d) {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
            // A file system that keeps the pages anyway.
            Ok(found) => assert_eq!(found.unwrap(), b),
        }
        assert_eq!(segments.read(loc, &d).unwrap().unwrap(), b);
    }

    #[test]
    fn a_second_process_cannot_open_the_same_segments() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Segments::open(dir.path(), 1 << 20).unwrap();
        let err = Segments::open(dir.path(), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("segments: false"), "{err}");
    }

    #[test]
    fn segments_roll_and_removed_ones_read_as_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (segments, _) = Segments::open(dir.path(), 10_000).unwrap();
        let blobs: Vec<_> = (0..10).map(|n| blob(n, 4000)).collect();
        let locs: Vec<Loc> = blobs
            .iter()
            .map(|(d, b)| segments.append(&[(*d, b)]).unwrap()[0])
            .collect();
        assert!(locs.last().unwrap().segment >= locs[0].segment + 3);
        segments.remove(locs[0].segment).unwrap();
        assert!(segments.read(locs[0], &blobs[0].0).unwrap().is_none());
        let last = locs.len() - 1;
        assert_eq!(
            segments.read(locs[last], &blobs[last].0).unwrap().unwrap(),
            blobs[last].1
        );
    }
}
