//! Appending to an upload's spool file around the page cache (O_DIRECT).
//!
//! A buffered write copies every byte into a fresh page-cache page, and on
//! a virtual machine a fresh page is the costliest part of the copy (the
//! host backs it on first touch): it was a quarter of the disk default's
//! ByteStream write profile. Written directly, the bytes go from one
//! reused, aligned buffer to the device, and the sync that makes the blob
//! durable has no dirty pages left to flush. Where the file system refuses
//! O_DIRECT (tmpfs, some network file systems) the writer stays buffered.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The block size direct writes keep their offsets, lengths and buffer
/// address aligned to: 4 KiB covers every common logical block size.
const ALIGN: usize = 4096;
/// How much is gathered before one direct write.
const BUFFER: usize = 1 << 20;

pub(super) struct Appender {
    file: File,
    /// `BUFFER` bytes at an `ALIGN`ed address within `storage`.
    storage: Vec<u8>,
    start: usize,
    filled: usize,
    /// Where the buffer's first byte goes in the file.
    pos: u64,
    /// The length the file had when appending began.
    origin: u64,
    direct: bool,
}

impl Appender {
    /// Appends to `file` from `offset` (the length it holds): the partial
    /// block before `offset` is read back so direct writes start aligned.
    pub(super) fn new(file: File, offset: u64) -> io::Result<Self> {
        let mut storage = vec![0u8; BUFFER + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN);
        let pos = offset - offset % ALIGN as u64;
        let filled = (offset - pos) as usize;
        file.read_exact_at(&mut storage[start..start + filled], pos)?;
        let direct = set_direct(&file, true).is_ok();
        Ok(Appender {
            file,
            storage,
            start,
            filled,
            pos,
            origin: offset,
            direct,
        })
    }

    /// Appends `data`; returns how long the file is now (what it holds, not
    /// what waits in the buffer).
    pub(super) fn append(&mut self, mut data: &[u8]) -> io::Result<u64> {
        if !self.direct {
            self.file.write_all_at(data, self.pos)?;
            self.pos += data.len() as u64;
            return Ok(self.pos);
        }
        while !data.is_empty() {
            let n = data.len().min(BUFFER - self.filled);
            let at = self.start + self.filled;
            self.storage[at..at + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == BUFFER {
                self.write_aligned(BUFFER)?;
            }
        }
        Ok(self.pos.max(self.origin))
    }

    /// Writes what the buffer holds; returns the file's length.
    pub(super) fn finish(mut self) -> io::Result<u64> {
        if self.direct {
            let aligned = self.filled - self.filled % ALIGN;
            self.write_aligned(aligned)?;
            if self.filled > 0 {
                // The tail is shorter than a block: written through the
                // page cache (a direct write would pad it).
                set_direct(&self.file, false)?;
                self.write_buffered()?;
            }
        }
        Ok(self.pos)
    }

    /// Writes the buffer's first `len` bytes (a multiple of `ALIGN`) and
    /// keeps the rest at its front.
    fn write_aligned(&mut self, len: usize) -> io::Result<()> {
        let buf = &self.storage[self.start..self.start + len];
        match self.file.write_all_at(buf, self.pos) {
            Ok(()) => {}
            // Refused after all (a file system that takes the flag but not
            // the write): the rest goes through the page cache.
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                set_direct(&self.file, false)?;
                self.direct = false;
                self.file.write_all_at(buf, self.pos)?;
            }
            Err(e) => return Err(e),
        }
        self.pos += len as u64;
        let rest = self.filled - len;
        self.storage
            .copy_within(self.start + len..self.start + self.filled, self.start);
        self.filled = rest;
        if !self.direct {
            self.write_buffered()?;
        }
        Ok(())
    }

    /// Writes what the buffer holds through the page cache and empties it.
    fn write_buffered(&mut self) -> io::Result<()> {
        let held = &self.storage[self.start..self.start + self.filled];
        self.file.write_all_at(held, self.pos)?;
        self.pos += self.filled as u64;
        self.filled = 0;
        Ok(())
    }
}

fn set_direct(file: &File, on: bool) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(file, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_DIRECT
    } else {
        flags - OFlag::O_DIRECT
    };
    fcntl(file, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends `pieces` to a file that already holds `prefix` bytes and
    /// checks the file byte for byte, and the lengths reported on the way.
    fn append_and_check(dir: &std::path::Path, prefix: usize, pieces: &[usize]) -> bool {
        let path = dir.join(format!("spool-{prefix}-{}", pieces.len()));
        let bytes: Vec<u8> = (0..prefix + pieces.iter().sum::<usize>())
            .map(|i| (i * 7 + i / 4099) as u8)
            .collect();
        std::fs::write(&path, &bytes[..prefix]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut appender = Appender::new(file, prefix as u64).unwrap();
        let direct = appender.direct;
        let mut at = prefix;
        for &n in pieces {
            let held = appender.append(&bytes[at..at + n]).unwrap() as usize;
            at += n;
            assert!(held >= prefix && held <= at, "held {held}, sent {at}");
            assert!(std::fs::metadata(&path).unwrap().len() as usize >= held);
        }
        assert_eq!(appender.finish().unwrap() as usize, bytes.len());
        assert!(std::fs::read(&path).unwrap() == bytes, "content differs");
        direct
    }

    #[test]
    fn appends_land_byte_for_byte_from_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(usize, &[usize])] = &[
            (0, &[]),
            (0, &[1]),
            (0, &[BUFFER]),
            (0, &[BUFFER, BUFFER, 10]),
            (5000, &[3 * BUFFER + 123]),
            (ALIGN, &[ALIGN, 1, BUFFER - 1]),
            (BUFFER + 17, &[65_536; 40]),
            (77, &[1, 2, 3, 4095, 4097]),
        ];
        let mut direct = false;
        for (prefix, pieces) in cases {
            direct |= append_and_check(dir.path(), *prefix, pieces);
        }
        // A disk's file system takes direct writes: the aligned path is
        // the one exercised (tmpfs, which may not, has its own test).
        let fs = nix::sys::statfs::statfs(dir.path())
            .unwrap()
            .filesystem_type();
        if fs != nix::sys::statfs::TMPFS_MAGIC {
            assert!(direct, "no case wrote directly");
        }
    }

    #[test]
    fn a_file_system_without_direct_writes_gets_buffered_ones() {
        // tmpfs takes O_DIRECT on new kernels and refuses it on old ones:
        // either way the bytes must land.
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        append_and_check(dir.path(), 4097, &[BUFFER + 3, 5]);
    }
}
