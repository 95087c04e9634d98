//! FetchDirectory's unpacking: a tar (plain, gzip, xz or zstd) or zip
//! archive on local disk becomes Directory protos and file blobs in the CAS.
//! Runs on a blocking thread; the archive is untrusted, so:
//! - entries with absolute paths or `..`, symlinks whose target leaves the
//!   root (followed through the tree's other symlinks), hard links to
//!   anything but an earlier file, and device or fifo entries are refused;
//! - the entry count and the bytes unpacked (counted as they are
//!   decompressed, so a zip bomb stops at the cap) are bounded;
//! - no file is held whole in memory above [`IN_MEMORY_MAX`]: larger ones
//!   are hashed into a temp file the CAS adopts.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};
use crate::store::VerifiedFile;

use super::archive_tree::{Dir, Node, check_links, components, lookup, store_dir, take_dir};

/// Files up to this size are kept in memory on their way to the CAS.
const IN_MEMORY_MAX: u64 = 1 << 20;

/// Longest symlink target read from an archive.
const MAX_LINK_TARGET: u64 = 4096;

/// Longest entry path (bytes), as Linux's PATH_MAX.
const MAX_PATH: usize = 4096;

/// Deepest entry (path components): far past real archives, and low
/// enough that nothing proportional to depth is ever costly.
const MAX_DEPTH: usize = 256;

/// Largest GNU long-name or long-link record (the name and its NUL).
const MAX_LONG_NAME: u64 = MAX_PATH as u64 + 1;

/// Largest PAX extended-header record set of one entry, or global.
const MAX_PAX: u64 = 64 << 10;

/// Largest zstd window accepted (2^27 = 128 MiB, what `zstd --long`
/// writes): a frame asking for more is refused before its memory is taken.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Memory the xz decoder may use (xz -9 needs 65 MiB).
const XZ_MEMLIMIT: u64 = 128 << 20;

/// What one archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_entries: u64,
    pub(crate) max_bytes: u64,
    /// Largest Directory message stored (the instance's parsed-blob limit:
    /// no client could read a larger one back).
    pub(crate) max_directory: u64,
}

/// A file's content on its way to the CAS, already hashed.
pub(crate) enum Content {
    Bytes(Bytes),
    File(VerifiedFile),
}

/// Where unpacked content goes: each file blob and each Directory once.
pub(crate) type Sink<'a> = dyn FnMut(Digest, Content) -> Result<()> + 'a;

pub(super) fn refused(why: String) -> Error {
    Error::InvalidArgument(format!("archive refused: {why}"))
}

/// The archive formats, told apart by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Tar,
    Gzip,
    Xz,
    Zstd,
    Zip,
}

fn detect(path: &Path) -> Result<Format> {
    let mut head = [0u8; 512];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("opening the archive", e))?;
    let mut n = 0;
    while n < head.len() {
        let got = file
            .read(&mut head[n..])
            .map_err(|e| Error::io("reading the archive", e))?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let head = &head[..n];
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Format::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Format::Zstd
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Format::Zip
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Format::Tar
    } else {
        return Err(refused(
            "not a tar, tar.gz, tar.xz, tar.zst or zip archive".into(),
        ));
    })
}

/// Unpacks the archive at `path` into `sink`; returns the root Directory's
/// digest (of `subdirectory` inside the archive, when given).
pub(crate) fn unpack(
    path: &Path,
    function: DigestFunction,
    limits: Limits,
    spool_dir: &Path,
    subdirectory: Option<&str>,
    stop: &std::sync::atomic::AtomicBool,
    sink: &mut Sink<'_>,
) -> Result<Digest> {
    let mut unpacker = Unpacker {
        function,
        limits,
        spool_dir,
        stop,
        sink,
        entries: 0,
        bytes: 0,
        root: Dir::default(),
    };
    let file = || std::fs::File::open(path).map_err(|e| Error::io("opening the archive", e));
    // A decompressed stream is cut off a little past the cap: tar headers
    // and padding are not entry bytes, but cannot run on without bound.
    let stream_cap = limits
        .max_bytes
        .saturating_add(limits.max_entries.saturating_mul(1536))
        + (1 << 20);
    match detect(path)? {
        Format::Zip => unpacker.zip(file()?)?,
        Format::Tar => unpacker.tar(Capped::new(file()?, stream_cap))?,
        Format::Gzip => unpacker.tar(Capped::new(
            flate2::read::MultiGzDecoder::new(file()?),
            stream_cap,
        ))?,
        Format::Xz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(
                XZ_MEMLIMIT,
                liblzma::stream::CONCATENATED,
            )
            .map_err(|e| refused(format!("bad xz stream: {e}")))?;
            unpacker.tar(Capped::new(
                liblzma::read::XzDecoder::new_stream(file()?, stream),
                stream_cap,
            ))?
        }
        Format::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::new(file()?)
                .map_err(|e| refused(format!("bad zstd stream: {e}")))?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| refused(format!("bad zstd stream: {e}")))?;
            unpacker.tar(Capped::new(decoder, stream_cap))?
        }
    }
    let tree = match subdirectory {
        None => std::mem::take(&mut unpacker.root),
        Some(sub) => take_dir(&mut unpacker.root, &components(sub))
            .ok_or_else(|| Error::NotFound(format!("the archive has no directory {sub:?}")))?,
    };
    check_links(&tree)?;
    store_dir(tree, function, limits.max_directory, unpacker.sink)
}

/// A reader that fails once more than `left` bytes came out of it.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Capped<R> {
    fn new(inner: R, cap: u64) -> Self {
        Capped { inner, left: cap }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::other(
                "the archive decompresses to more than remote_asset.max_unpacked_size allows",
            )
        })?;
        Ok(n)
    }
}

struct Unpacker<'a, 's> {
    function: DigestFunction,
    limits: Limits,
    spool_dir: &'a Path,
    /// Set when the request that asked for the unpack is gone.
    stop: &'a std::sync::atomic::AtomicBool,
    sink: &'a mut Sink<'s>,
    entries: u64,
    bytes: u64,
    root: Dir,
}

impl Unpacker<'_, '_> {
    fn check_stop(&self) -> Result<()> {
        if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Cancelled("the fetch was cancelled".into()));
        }
        Ok(())
    }

    fn count_entry(&mut self) -> Result<()> {
        self.check_stop()?;
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(refused(format!(
                "more than {} entries (remote_asset.max_archive_entries)",
                self.limits.max_entries
            )));
        }
        Ok(())
    }

    /// Checks an entry's path: relative, no `..`, at most [`MAX_PATH`]
    /// bytes and [`MAX_DEPTH`] deep; returns its components.
    fn path_of(&self, raw: &str) -> Result<Vec<String>> {
        if raw.len() > MAX_PATH {
            return Err(refused(format!(
                "an entry path of {} bytes, more than {MAX_PATH}",
                raw.len()
            )));
        }
        if raw.starts_with('/') || raw.contains('\\') || raw.contains('\0') {
            return Err(refused(format!(
                "entry {raw:?} has an absolute or non-portable path"
            )));
        }
        let parts = components(raw);
        if parts.len() > MAX_DEPTH {
            return Err(refused(format!(
                "an entry {} directories deep, more than {MAX_DEPTH}",
                parts.len()
            )));
        }
        if parts.iter().any(|c| c == "..") {
            return Err(refused(format!(
                "entry {raw:?} climbs out of the archive with .."
            )));
        }
        Ok(parts)
    }

    /// Reads one file's bytes (counted against the cap), hashes them and
    /// hands them to the sink; returns the digest.
    fn file(&mut self, reader: &mut dyn Read) -> Result<Digest> {
        // The size is not known before the entry is read: GITSHA1 is
        // refused for Remote Asset before anything is fetched.
        let mut hasher = self.function.hasher(0);
        let mut memory: Vec<u8> = Vec::new();
        let mut spool: Option<(PathBuf, std::fs::File)> = None;
        let mut buf = vec![0u8; 64 << 10];
        let result = (|| -> Result<()> {
            loop {
                let n = reader
                    .read(&mut buf)
                    .map_err(|e| refused(format!("unreadable entry: {e}")))?;
                if n == 0 {
                    return Ok(());
                }
                self.check_stop()?;
                self.bytes += n as u64;
                if self.bytes > self.limits.max_bytes {
                    return Err(refused(format!(
                        "it unpacks to more than {} bytes (remote_asset.max_unpacked_size)",
                        self.limits.max_bytes
                    )));
                }
                hasher.update(&buf[..n]);
                match &mut spool {
                    Some((_, file)) => file
                        .write_all(&buf[..n])
                        .map_err(|e| Error::io("writing an unpacked file", e))?,
                    None if (memory.len() + n) as u64 > IN_MEMORY_MAX => {
                        let path = self
                            .spool_dir
                            .join(uuid::Uuid::new_v4().simple().to_string());
                        let mut file = std::fs::File::create(&path)
                            .map_err(|e| Error::io("creating an unpack spool file", e))?;
                        let written = file
                            .write_all(&memory)
                            .and_then(|()| file.write_all(&buf[..n]));
                        spool = Some((path, file));
                        written.map_err(|e| Error::io("writing an unpacked file", e))?;
                        memory = Vec::new();
                    }
                    None => memory.extend_from_slice(&buf[..n]),
                }
            }
        })();
        if let Err(e) = result {
            if let Some((path, _)) = spool {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
        let digest = hasher.finish();
        let content = match spool {
            None => Content::Bytes(Bytes::from(memory)),
            Some((path, file)) => {
                drop(file);
                Content::File(VerifiedFile::hashed(path, digest))
            }
        };
        (self.sink)(digest, content)?;
        Ok(digest)
    }

    fn link_target(&self, name: &str, raw: &[u8]) -> Result<String> {
        let target = std::str::from_utf8(raw)
            .map_err(|_| refused(format!("symlink {name:?} has a target that is not UTF-8")))?;
        if target.is_empty() || target.starts_with('/') || target.contains('\0') {
            return Err(refused(format!(
                "symlink {name:?} points at {target:?}, outside the archive"
            )));
        }
        Ok(target.to_string())
    }

    /// Reads one metadata record (a long name, a PAX header) of at most
    /// `cap` bytes, counted against the unpack budget.
    fn record(&mut self, entry: &mut dyn Read, size: u64, cap: u64, what: &str) -> Result<Vec<u8>> {
        if size > cap {
            return Err(refused(format!(
                "a {what} of {size} bytes, more than {cap}"
            )));
        }
        self.bytes += size;
        if self.bytes > self.limits.max_bytes {
            return Err(refused(format!(
                "it unpacks to more than {} bytes (remote_asset.max_unpacked_size)",
                self.limits.max_bytes
            )));
        }
        let mut data = Vec::with_capacity(size as usize);
        entry
            .take(cap)
            .read_to_end(&mut data)
            .map_err(|e| refused(format!("unreadable {what}: {e}")))?;
        Ok(data)
    }

    /// Tar entries are read raw, so long names and PAX records are read
    /// here, each under a cap, instead of whole by the tar reader.
    fn tar(&mut self, reader: impl Read) -> Result<()> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|e| refused(format!("bad tar: {e}")))?
            .raw(true);
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Pax> = None;
        for entry in entries {
            let mut entry = entry.map_err(|e| refused(format!("bad tar: {e}")))?;
            let kind = entry.header().entry_type();
            let size = entry
                .header()
                .entry_size()
                .map_err(|e| refused(format!("bad tar header: {e}")))?;
            if kind.is_gnu_longname() || kind.is_gnu_longlink() {
                let mut name = self.record(&mut entry, size, MAX_LONG_NAME, "long name")?;
                while name.last() == Some(&0) {
                    name.pop();
                }
                let slot = if kind.is_gnu_longname() {
                    &mut long_name
                } else {
                    &mut long_link
                };
                if slot.replace(name).is_some() {
                    return Err(refused("two long names for one entry".into()));
                }
                continue;
            }
            if matches!(kind, tar::EntryType::XGlobalHeader) {
                self.record(&mut entry, size, MAX_PAX, "PAX global header")?;
                continue;
            }
            if matches!(kind, tar::EntryType::XHeader) {
                let data = self.record(&mut entry, size, MAX_PAX, "PAX header")?;
                if pax.replace(Pax::parse(&data)?).is_some() {
                    return Err(refused("two PAX headers for one entry".into()));
                }
                continue;
            }
            self.count_entry()?;
            let extended = pax.take().unwrap_or_default();
            if extended.size.is_some_and(|s| s != size) {
                return Err(refused(
                    "a PAX size record that overrides the header's (entries of 8 GiB and more) is not supported".into(),
                ));
            }
            let raw_path = long_name
                .take()
                .or(extended.path)
                .unwrap_or_else(|| entry.path_bytes().into_owned());
            let raw = String::from_utf8(raw_path)
                .map_err(|_| refused("an entry path that is not UTF-8".into()))?;
            let link = long_link
                .take()
                .or(extended.linkpath)
                .or_else(|| entry.link_name_bytes().map(|l| l.into_owned()));
            let path = self.path_of(&raw)?;
            let mode = entry.header().mode().unwrap_or(0o644);
            let node = match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let digest = self.file(&mut entry)?;
                    Node::File {
                        digest,
                        executable: mode & 0o111 != 0,
                    }
                }
                tar::EntryType::Directory => Node::Dir(Dir::default()),
                tar::EntryType::Symlink => {
                    let target =
                        link.ok_or_else(|| refused(format!("symlink {raw:?} has no target")))?;
                    Node::Symlink(self.link_target(&raw, &target)?)
                }
                tar::EntryType::Link => {
                    let target =
                        link.ok_or_else(|| refused(format!("hard link {raw:?} has no target")))?;
                    let target = String::from_utf8_lossy(&target).into_owned();
                    let target_path = self.path_of(&target)?;
                    match lookup(&self.root, &target_path) {
                        Some(Node::File { digest, executable }) => Node::File {
                            digest: *digest,
                            executable: *executable,
                        },
                        _ => {
                            return Err(refused(format!(
                                "hard link {raw:?} to {target:?}, which is not an earlier file of the archive"
                            )));
                        }
                    }
                }
                other => {
                    return Err(refused(format!(
                        "entry {raw:?} is a {other:?}, not a file, directory or link"
                    )));
                }
            };
            self.root.insert(path, node)?;
        }
        if long_name.is_some() || long_link.is_some() || pax.is_some() {
            return Err(refused(
                "a long name or PAX header describes no entry".into(),
            ));
        }
        Ok(())
    }

    fn zip(&mut self, file: std::fs::File) -> Result<()> {
        let mut archive =
            zip::ZipArchive::new(file).map_err(|e| refused(format!("bad zip: {e}")))?;
        if archive.len() as u64 > self.limits.max_entries {
            return Err(refused(format!(
                "{} entries, more than {} (remote_asset.max_archive_entries)",
                archive.len(),
                self.limits.max_entries
            )));
        }
        for i in 0..archive.len() {
            let mut entry = archive
                .by_index(i)
                .map_err(|e| refused(format!("bad zip entry: {e}")))?;
            self.count_entry()?;
            let raw = entry
                .name()
                .map_err(|e| refused(format!("bad zip entry name: {e}")))?
                .into_owned();
            let path = self.path_of(&raw)?;
            let mode = entry.unix_mode().unwrap_or(0o644);
            const S_IFMT: u32 = 0o170000;
            let node = if entry.is_dir() {
                Node::Dir(Dir::default())
            } else if mode & S_IFMT == 0o120000 {
                let mut target = Vec::new();
                (&mut entry)
                    .take(MAX_LINK_TARGET + 1)
                    .read_to_end(&mut target)
                    .map_err(|e| refused(format!("unreadable symlink {raw:?}: {e}")))?;
                if target.len() as u64 > MAX_LINK_TARGET {
                    return Err(refused(format!("symlink {raw:?} has an overlong target")));
                }
                Node::Symlink(self.link_target(&raw, &target)?)
            } else if mode & S_IFMT == 0 || mode & S_IFMT == 0o100000 {
                let digest = self.file(&mut entry)?;
                Node::File {
                    digest,
                    executable: mode & 0o111 != 0,
                }
            } else {
                return Err(refused(format!(
                    "entry {raw:?} is not a file, directory or symlink"
                )));
            };
            self.root.insert(path, node)?;
        }
        Ok(())
    }
}

/// What a PAX extended header says of the next entry (the records kiln
/// uses; others, such as times and owners, are ignored).
#[derive(Debug, Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
}

impl Pax {
    /// Parses `LEN KEY=VALUE\n` records.
    fn parse(mut data: &[u8]) -> Result<Pax> {
        let bad = || refused("a malformed PAX header".into());
        let mut pax = Pax::default();
        while !data.is_empty() {
            let space = data.iter().position(|b| *b == b' ').ok_or_else(bad)?;
            let len: usize = std::str::from_utf8(&data[..space])
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)?;
            if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
                return Err(bad());
            }
            let record = &data[space + 1..len - 1];
            let eq = record.iter().position(|b| *b == b'=').ok_or_else(bad)?;
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            match key {
                b"path" => pax.path = Some(value.to_vec()),
                b"linkpath" => pax.linkpath = Some(value.to_vec()),
                b"size" => {
                    pax.size = Some(
                        std::str::from_utf8(value)
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .ok_or_else(bad)?,
                    )
                }
                _ => {}
            }
            data = &data[len..];
        }
        Ok(pax)
    }
}
