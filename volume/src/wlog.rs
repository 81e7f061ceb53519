//! The local write log: every acknowledged write that is not yet durable in
//! the object store is also appended to a file in the cache directory, so
//! that a daemon that dies (kill -9, OOM, a crash of spritedisk itself) and
//! is restarted — e.g. to recover a ublk device the kernel kept open — finds
//! the writes it had acknowledged and replays them. Without it, a filesystem
//! still mounted on the device would see blocks it wrote vanish.
//!
//! Appends are plain writes into the page cache, never fsynced: the log
//! survives the daemon, not the machine, which is all the durability contract
//! asks (unflushed writes may be lost in a machine crash). Because a machine
//! crash can persist some log pages and not others, replay stops at the first
//! record that does not check out, or at a missing file, so what it replays is
//! always a prefix of the write history.
//!
//! One file per segment: `wlog/<gen:020>.log` holds the writes that went
//! into segment `seq` (recorded in its header); it is deleted once that
//! segment is applied to the map. Files are numbered by a generation counter
//! rather than the segment number, because a replay re-logs its writes under
//! segment numbers that may repeat.
//!
//! Written by hand: it is a few dozen lines of framing over `pwrite`.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

const DIR: &str = "wlog";
const FILE_MAGIC: &[u8; 8] = b"SPRTWLG1";
const RECORD_MAGIC: u32 = 0x5350_574c; // "SPWL"
const RECORD_HEADER_BYTES: usize = 32;
/// Bound on one record's data when reading a log back (the engine's request bound).
const RECORD_DATA_MAX_BYTES: u64 = crate::REQUEST_BYTES_MAX;

/// One logged change, in blocks; `data` None for an unmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoggedWrite {
    pub lba: u64,
    pub blocks: u64,
    pub data: Option<Bytes>,
}

/// What earlier daemons logged, per segment: (segment seq, its writes in order).
pub(crate) type Replay = Vec<(u64, Vec<LoggedWrite>)>;

#[derive(Debug)]
pub(crate) struct WriteLog {
    dir: PathBuf,
    file: Option<File>,
    gen: u64,
    /// Open files: (gen, segment seq), oldest first.
    files: Vec<(u64, u64)>,
}

fn file_name(gen: u64) -> String {
    format!("{gen:020}.log")
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("write log {what} {}: {e}", path.display())
}

/// Deletes the write log in `cache_dir`: its writes belong to a history
/// another writer has moved past (never flushed, so they may be dropped).
pub(crate) fn discard(cache_dir: &Path) {
    let _ = fs::remove_dir_all(cache_dir.join(DIR));
}

impl WriteLog {
    /// Reads what earlier daemons left in `cache_dir` (a prefix of their
    /// writes, by segment), and opens a new log whose first file feeds
    /// segment `next_seq`. The caller replays the returned writes through
    /// the normal write path (which logs them again), then calls
    /// [`WriteLog::forget_before`] with the returned generation.
    pub fn open(cache_dir: &Path, next_seq: u64) -> Result<(WriteLog, Replay, u64), String> {
        let dir = cache_dir.join(DIR);
        fs::create_dir_all(&dir).map_err(|e| io_err("mkdir", &dir, e))?;
        let mut gens: Vec<u64> = fs::read_dir(&dir)
            .map_err(|e| io_err("list", &dir, e))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
            .collect();
        gens.sort_unstable();
        let mut old = vec![];
        let mut expected = gens.first().copied();
        for &g in &gens {
            // A missing generation means a file lost in a machine crash: stop.
            if Some(g) != expected {
                tracing::warn!(gen = g, "write log has a gap; ignoring what follows it");
                break;
            }
            expected = Some(g + 1);
            let (seq, writes, complete) = read_file(&dir.join(file_name(g)));
            if let Some(seq) = seq {
                old.push((seq, writes));
            }
            if !complete {
                break;
            }
        }
        let first_new = gens.last().map_or(1, |g| g + 1);
        let mut log = WriteLog {
            dir,
            file: None,
            gen: first_new - 1,
            files: vec![],
        };
        log.rotate(next_seq)?;
        Ok((log, old, first_new))
    }

    /// Starts the file for segment `seq`.
    pub fn rotate(&mut self, seq: u64) -> Result<(), String> {
        self.gen += 1;
        let path = self.dir.join(file_name(self.gen));
        let mut f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err("create", &path, e))?;
        let mut header = FILE_MAGIC.to_vec();
        header.extend_from_slice(&seq.to_le_bytes());
        f.write_all(&header)
            .map_err(|e| io_err("write", &path, e))?;
        self.file = Some(f);
        self.files.push((self.gen, seq));
        Ok(())
    }

    /// Appends one change to the current file.
    pub fn append(&mut self, lba: u64, blocks: u64, data: Option<&[u8]>) -> Result<(), String> {
        let path = self.dir.join(file_name(self.gen));
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| "write log is closed".to_string())?;
        let d = data.unwrap_or(&[]);
        let mut h = [0u8; RECORD_HEADER_BYTES];
        h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&(data.is_some() as u32).to_le_bytes());
        h[8..16].copy_from_slice(&lba.to_le_bytes());
        h[16..24].copy_from_slice(&blocks.to_le_bytes());
        h[24..28].copy_from_slice(&(d.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&h[..28]), d);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        write_all_vectored(f, &[IoSlice::new(&h), IoSlice::new(d)])
            .map_err(|e| io_err("append", &path, e))
    }

    /// Deletes the files of segments up to `seq`, now durable in the store.
    pub fn retire(&mut self, seq: u64) {
        while let Some(&(gen, s)) = self.files.first() {
            if s > seq || gen == self.gen {
                break;
            }
            let _ = fs::remove_file(self.dir.join(file_name(gen)));
            self.files.remove(0);
        }
    }

    /// Deletes files older than generation `gen` (left by an earlier daemon, now replayed).
    pub fn forget_before(&mut self, gen: u64) {
        for e in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let g: Option<u64> = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".log")?.parse().ok());
            if g.is_some_and(|g| g < gen) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Gives up on the log after a failed append (e.g. a full cache disk):
    /// deletes every file, so a later replay cannot skip the lost record and
    /// replay what followed it. Unflushed writes are then as safe as without
    /// a log: lost if the daemon dies before its next FLUSH.
    pub fn abandon(&mut self) {
        self.file = None;
        self.files.clear();
        self.forget_before(u64::MAX);
    }
}

fn write_all_vectored(f: &mut File, bufs: &[IoSlice<'_>]) -> std::io::Result<()> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let n = f.write_vectored(bufs)?;
    if n == total {
        return Ok(());
    }
    // Short write: finish it piecewise.
    let mut skip = n;
    for b in bufs {
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        f.write_all(&b[skip..])?;
        skip = 0;
    }
    Ok(())
}

/// Reads one log file: its segment seq, its valid records, and whether it
/// ended cleanly (false: a torn or corrupt record; replay must stop there).
fn read_file(path: &Path) -> (Option<u64>, Vec<LoggedWrite>, bool) {
    let mut raw = vec![];
    match File::open(path).and_then(|mut f| f.read_to_end(&mut raw)) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return (None, vec![], false),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable write log");
            return (None, vec![], false);
        }
    }
    if raw.len() < 16 || &raw[..8] != FILE_MAGIC {
        return (None, vec![], false);
    }
    let seq = u64::from_le_bytes(raw[8..16].try_into().unwrap());
    let mut out = vec![];
    let mut at = 16;
    while at < raw.len() {
        let Some(h) = raw.get(at..at + RECORD_HEADER_BYTES) else {
            return (Some(seq), out, false);
        };
        let le32 = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        let le64 = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap());
        let (magic, has_data, lba, blocks, len, crc) = (
            le32(0),
            le32(4),
            le64(8),
            le64(16),
            le32(24) as u64,
            le32(28),
        );
        if magic != RECORD_MAGIC || len > RECORD_DATA_MAX_BYTES || has_data > 1 {
            return (Some(seq), out, false);
        }
        let Some(d) = raw.get(at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + len as usize)
        else {
            return (Some(seq), out, false);
        };
        if crc32c::crc32c_append(crc32c::crc32c(&h[..28]), d) != crc || blocks == 0 {
            return (Some(seq), out, false);
        }
        out.push(LoggedWrite {
            lba,
            blocks,
            data: (has_data == 1).then(|| Bytes::copy_from_slice(d)),
        });
        at += RECORD_HEADER_BYTES + len as usize;
    }
    (Some(seq), out, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_a_prefix_and_stops_at_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, old, _) = WriteLog::open(dir.path(), 1).unwrap();
        assert!(old.is_empty());
        log.append(0, 1, Some(&[1u8; 4096])).unwrap();
        log.append(5, 2, None).unwrap();
        log.rotate(2).unwrap();
        log.append(9, 1, Some(&[2u8; 4096])).unwrap();
        log.rotate(3).unwrap();
        log.append(10, 1, Some(&[3u8; 4096])).unwrap();
        drop(log);

        let (log2, old, first_new) = WriteLog::open(dir.path(), 7).unwrap();
        let seqs: Vec<_> = old.iter().map(|(s, w)| (*s, w.len())).collect();
        assert_eq!(seqs, [(1, 2), (2, 1), (3, 1)]);
        assert_eq!(
            old[0].1[1],
            LoggedWrite {
                lba: 5,
                blocks: 2,
                data: None
            }
        );
        assert_eq!(first_new, 4);
        drop(log2);

        // Damage the middle file: replay must stop there, not skip to the third.
        let p = dir.path().join(DIR).join(file_name(2));
        let mut raw = fs::read(&p).unwrap();
        let n = raw.len();
        raw[n - 5] ^= 1;
        fs::write(&p, raw).unwrap();
        let (_log3, old, _) = WriteLog::open(dir.path(), 9).unwrap();
        let seqs: Vec<_> = old.iter().map(|(s, w)| (*s, w.len())).collect();
        assert_eq!(seqs, [(1, 2), (2, 0)]);
    }

    #[test]
    fn retire_deletes_applied_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, _) = WriteLog::open(dir.path(), 1).unwrap();
        log.rotate(2).unwrap();
        log.rotate(3).unwrap();
        log.retire(2);
        let left = fs::read_dir(dir.path().join(DIR)).unwrap().count();
        assert_eq!(left, 1);
    }
}
