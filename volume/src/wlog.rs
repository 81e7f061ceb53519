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
//! rather than the segment number: a replay gives each file it finds the
//! number of the segment that replays it (in place: see
//! [`WriteLog::rehome`]), so segment numbers need not grow with generations.
//!
//! Written by hand: it is a few dozen lines of framing over `pwrite`.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::blockcrc::{Checked, CRC_BLOCK_BYTES};

const DIR: &str = "wlog";
/// Version 2 (docs/design/0012): a data record carries its blocks'
/// crc32cs, which the segment and the read cache reuse. Files of version 1
/// (a record's crc32c over its data), left by an older daemon, are read too.
/// Version 3 (docs/design/0014): version 2's records, and a file left for
/// the next one ends with an end record. Without it a file is complete
/// only as far as a later file may depend on it: a power cut can keep a
/// file cut back to an earlier length (the file system's writeback stored
/// it, size and all, at a record boundary) while the next file survives;
/// read on, the log would skip the lost records (not a prefix). Files of
/// version 2 (no end records; complete when they end at a record
/// boundary) and 1 are read too.
/// Version 4 (docs/design/0015): version 3 in files that are recycled.
/// The header adds the file's own generation and a random salt, and every
/// record (its end record too) carries the salt: bytes a file held in an
/// earlier life, past its new records, never read as its own.
const FILE_MAGIC: &[u8; 8] = b"SPRTWLG4";
const FILE_MAGIC_V3: &[u8; 8] = b"SPRTWLG3";
const FILE_MAGIC_V2: &[u8; 8] = b"SPRTWLG2";
const FILE_MAGIC_V1: &[u8; 8] = b"SPRTWLG1";
/// `has_data` of an end record (0: an unmap, 1: data).
const RECORD_END: u32 = 2;
/// The magic and the segment number (versions 1 to 3).
const FILE_HEADER_BYTES_V3: u64 = 16;
/// The magic, the segment number, the generation and the salt.
const FILE_HEADER_BYTES: u64 = 32;
const RECORD_MAGIC: u32 = 0x5350_574c; // "SPWL"
/// Versions 1 to 3: magic, kind, lba, blocks, length, crc32c.
const RECORD_HEADER_BYTES_V3: usize = 32;
/// Version 4: magic, kind, lba, blocks, length, salt, crc32c.
const RECORD_HEADER_BYTES: usize = 40;
/// Bound on one record's data when reading a log back (the engine's request bound).
const RECORD_DATA_MAX_BYTES: u64 = crate::REQUEST_BYTES_MAX;
/// Applied files kept for reuse in local mode (docs/design/0015); more
/// are deleted. Two: one being taken while the next retires.
const SPARE_FILES_MAX: usize = 2;

/// One logged change, in blocks; `data` None for an unmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoggedWrite {
    pub lba: u64,
    pub blocks: u64,
    pub data: Option<Bytes>,
    /// Each block's crc32c (verified against `data`); empty for an unmap
    /// and for a version-1 file.
    pub crcs: Vec<u32>,
}

/// A file an earlier daemon left: the writes of its segment `seq`.
#[derive(Debug)]
pub(crate) struct LeftFile {
    pub gen: u64,
    pub seq: u64,
    pub writes: Vec<LoggedWrite>,
    /// Bytes up to the end of the last valid record.
    valid_len: u64,
    /// False: a torn or corrupt record ends it, or (version 3) it has no
    /// end record: nothing after it is read.
    complete: bool,
    /// Its format version (1 to 4).
    version: u8,
    /// It ends with an end record (versions 3 and 4).
    ended: bool,
    /// Its records' salt (version 4).
    salt: u64,
}

#[derive(Debug)]
pub(crate) struct WriteLog {
    dir: PathBuf,
    /// The current file; None before the first rotate, and once frozen.
    file: Option<Arc<File>>,
    gen: u64,
    /// Open files, oldest first.
    files: Vec<LogFile>,
    /// Records (and file headers) appended, all files together; what a
    /// sync round covers is a count of them (docs/design/0014).
    appends: u64,
    /// Appends known durable: every file holding one is `fdatasync`ed.
    synced: u64,
    /// Name changes (files created, spares named or taken), and how many
    /// of them the directory's last sync covers.
    created: u64,
    dir_synced: u64,
    /// A sync round is running ([`WriteLog::begin_sync`]).
    sync_in_flight: bool,
    /// No longer appended to: an append, a creation or a sync failed
    /// (local mode keeps the files, which hold flushed writes).
    frozen: bool,
    /// Applied files are kept as spares and reused (local mode,
    /// docs/design/0015); else deleted.
    recycle: bool,
    /// The current file's salt.
    salt: u64,
    /// Spare files, oldest first.
    spares: std::collections::VecDeque<Spare>,
}

/// An applied file kept for reuse: `GEN.spare`.
#[derive(Debug)]
struct Spare {
    gen: u64,
    /// The name change count (`created`) its rename is: it is taken only
    /// once a directory sync covers it (`dir_synced`), so its old name
    /// cannot come back, holding the new file's bytes, after a power cut
    /// (docs/design/0015, 3).
    named_at: u64,
}

#[derive(Debug)]
struct LogFile {
    gen: u64,
    seq: u64,
    /// For syncs: None for a file synced when it was taken in (rehomed).
    handle: Option<Arc<File>>,
    /// The log's append count at this file's last append.
    last_append: u64,
    /// Written by this daemon (version 4): it may become a spare. A file
    /// taken in from an earlier daemon may be of an older version, whose
    /// header names no generation (docs/design/0015, 2, would not hold;
    /// found by the review of 0015).
    recyclable: bool,
}

/// What one sync round makes durable: run off the state lock
/// ([`SyncPlan::run`]), then reported back ([`WriteLog::end_sync`]).
#[derive(Debug)]
pub(crate) struct SyncPlan {
    /// The append count it covers.
    upto: u64,
    files: Vec<(PathBuf, Arc<File>)>,
    /// The directory, if a file was created since its last sync, and the
    /// creation count that sync covers.
    dir: Option<(PathBuf, u64)>,
}

impl SyncPlan {
    /// `fdatasync`s each file, then the directory (blocking).
    pub fn run(&self) -> Result<(), String> {
        for (path, f) in &self.files {
            #[cfg(feature = "test-support")]
            crate::testing::syncing_file(path, f);
            f.sync_data().map_err(|e| io_err("fdatasync", path, e))?;
        }
        if let Some((dir, _)) = &self.dir {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

/// The end record a file gets when the next one starts (version 4: it
/// carries the file's salt, so a stale one from the file's earlier life
/// never ends it).
fn end_record(salt: u64) -> [u8; RECORD_HEADER_BYTES] {
    record_header(RECORD_END, 0, 0, 0, salt, &[])
}

/// A version-3 end record.
fn end_record_v3() -> [u8; RECORD_HEADER_BYTES_V3] {
    let mut h = [0u8; RECORD_HEADER_BYTES_V3];
    h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&RECORD_END.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A version-4 record header; its crc32c covers it and `list` (the
/// blocks' checksums).
fn record_header(
    kind: u32,
    lba: u64,
    blocks: u64,
    len: u32,
    salt: u64,
    list: &[u8],
) -> [u8; RECORD_HEADER_BYTES] {
    let mut h = [0u8; RECORD_HEADER_BYTES];
    h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&lba.to_le_bytes());
    h[16..24].copy_from_slice(&blocks.to_le_bytes());
    h[24..28].copy_from_slice(&len.to_le_bytes());
    h[28..36].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h[..36]), list);
    h[36..40].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A version-4 file header.
fn file_header(seq: u64, gen: u64, salt: u64) -> [u8; FILE_HEADER_BYTES as usize] {
    let mut h = [0u8; FILE_HEADER_BYTES as usize];
    h[0..8].copy_from_slice(FILE_MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&gen.to_le_bytes());
    h[24..32].copy_from_slice(&salt.to_le_bytes());
    h
}

/// Whether a version-4 file header names generation `gen`: a file's
/// header from an earlier life names another (docs/design/0015, 2).
fn names_generation(header: &[u8], gen: u64) -> bool {
    header.get(16..24) == Some(&gen.to_le_bytes()[..])
}

fn file_name(gen: u64) -> String {
    format!("{gen:020}.log")
}

fn spare_name(gen: u64) -> String {
    format!("{gen:020}.spare")
}

/// The generations of the files in `dir` named `GEN.{ext}`, in order.
fn gens_in(dir: &Path, ext: &str) -> Result<Vec<u64>, String> {
    let mut gens: Vec<u64> = fs::read_dir(dir)
        .map_err(|e| io_err("list", dir, e))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(ext)?
                .strip_suffix('.')?
                .parse()
                .ok()
        })
        .collect();
    gens.sort_unstable();
    Ok(gens)
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("write log {what} {}: {e}", path.display())
}

/// Makes the names in `dir` durable (file creations and deletions).
fn sync_dir(dir: &Path) -> Result<(), String> {
    #[cfg(feature = "test-support")]
    crate::testing::syncing_dir(dir);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("sync", dir, e))
}

/// Deletes the write log in `cache_dir`: its writes belong to a history
/// another writer has moved past (or one nothing proves it continues).
/// Atomically: renamed aside and the rename synced first, so a kill or a
/// power cut in the middle never leaves some of its files to replay. An
/// error (it could not be set aside) fails the attach: a log half deleted
/// may no longer be a prefix.
pub(crate) fn discard(cache_dir: &Path) -> Result<(), String> {
    let dir = cache_dir.join(DIR);
    if !dir.exists() {
        return Ok(());
    }
    let aside = cache_dir.join(format!("{DIR}.discarded"));
    match fs::remove_dir_all(&aside) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(io_err("delete", &aside, e)),
        _ => {}
    }
    fs::rename(&dir, &aside).map_err(|e| io_err("set aside", &dir, e))?;
    sync_dir(cache_dir)?;
    if let Err(e) = fs::remove_dir_all(&aside) {
        // Set aside, it is never read: the next discard or open deletes it.
        tracing::warn!(path = %aside.display(), error = %e, "could not delete a discarded write log");
    }
    Ok(())
}

/// Whether the write log in `cache_dir` holds any record. Read, not
/// judged by length: a recycled file is long before it holds a record of
/// its own (docs/design/0015).
/// A file it cannot read counts as holding records (the caller refuses to
/// drop it).
pub(crate) fn has_records(cache_dir: &Path) -> bool {
    let dir = cache_dir.join(DIR);
    let Ok(gens) = gens_in(&dir, "log") else {
        return dir.exists();
    };
    gens.into_iter()
        .any(|g| match fs::read(dir.join(file_name(g))) {
            Ok(raw) => parse_file(&raw, g).is_some_and(|r| !r.writes.is_empty()),
            Err(e) => e.kind() != ErrorKind::NotFound,
        })
}

impl WriteLog {
    /// Opens the log in `cache_dir` and returns what earlier daemons left
    /// there: a prefix of their writes, by segment, oldest first. Files
    /// past a gap or a damaged record are deleted: they can never be
    /// replayed, and must not become replayable once the files before them
    /// are retired. No file is current until [`WriteLog::rotate`].
    ///
    /// `recycle`: applied files are kept and reused (local mode,
    /// docs/design/0015); without it, spares left by a local-mode daemon
    /// are deleted.
    pub fn open(cache_dir: &Path, recycle: bool) -> Result<(WriteLog, Vec<LeftFile>), String> {
        let dir = cache_dir.join(DIR);
        // What an interrupted `discard` set aside.
        let _ = fs::remove_dir_all(cache_dir.join(format!("{DIR}.discarded")));
        fs::create_dir_all(&dir).map_err(|e| io_err("mkdir", &dir, e))?;
        let gens = gens_in(&dir, "log")?;
        let mut left = vec![];
        let mut expected = gens.first().copied();
        let mut unreadable = 0;
        for &g in &gens {
            // A missing generation means a file lost in a machine crash: stop.
            let readable = Some(g) == expected && left.last().is_none_or(|f: &LeftFile| f.complete);
            if !readable {
                unreadable += 1;
                let _ = fs::remove_file(dir.join(file_name(g)));
                continue;
            }
            expected = Some(g + 1);
            match read_file(&dir.join(file_name(g)), g) {
                Some(r) => left.push(LeftFile {
                    gen: g,
                    seq: r.seq,
                    writes: r.writes,
                    valid_len: r.valid_len,
                    complete: r.complete,
                    version: r.version,
                    ended: r.ended,
                    salt: r.salt,
                }),
                None => {
                    // No valid header: nothing of it, nor after it.
                    let _ = fs::remove_file(dir.join(file_name(g)));
                    expected = None;
                }
            }
        }
        let deleted = gens.len() > left.len();
        if unreadable > 0 {
            tracing::warn!(
                files = unreadable,
                "write log has a gap or a damaged record; deleted what follows it"
            );
        }
        if deleted {
            // Gone for good before anything is replayed: after a machine
            // crash a deleted file must not come back behind a file the
            // replay has since made whole (its damaged tail cut).
            sync_dir(&dir)?;
        }
        // The journal's own directory entry, made durable once per attach
        // (a power cut must not take the directory, with every synced file
        // in it).
        if gens.is_empty() {
            sync_dir(cache_dir)?;
        }
        // The next file follows the last one kept: numbering after a
        // deleted one would leave a gap, which the next open takes for a
        // file lost in a machine crash (and drops what follows it). With
        // no file left, it follows the spares: a generation is never used
        // twice, so a reused file's old header never passes for its new
        // one (docs/design/0015, 4).
        let spare_gens = gens_in(&dir, "spare")?;
        let gen = left
            .last()
            .map(|f| f.gen)
            .or(gens.last().copied())
            .or(spare_gens.last().copied())
            .unwrap_or(0);
        // Spares always come before the files kept (only applied files
        // become spares, oldest first); one that does not is deleted. So is
        // one whose header names another generation than its own: it was
        // taken, written and renamed back by a power cut, and its header
        // may name a generation this log hands out again, which would let
        // that life's records pass for the new one's (found by the review
        // of 0015).
        let own_header = |g: u64| {
            let mut h = [0u8; FILE_HEADER_BYTES as usize];
            File::open(dir.join(spare_name(g)))
                .and_then(|mut f| f.read_exact(&mut h))
                .is_ok_and(|()| &h[..8] == FILE_MAGIC && names_generation(&h, g))
        };
        let kept_spares: Vec<u64> = spare_gens
            .iter()
            .copied()
            .filter(|&g| recycle && g < gens.first().map_or(gen + 1, |&f| f) && own_header(g))
            .rev()
            .take(SPARE_FILES_MAX)
            .collect();
        for &g in spare_gens.iter().filter(|g| !kept_spares.contains(g)) {
            let _ = fs::remove_file(dir.join(spare_name(g)));
        }
        let log = WriteLog {
            dir,
            file: None,
            gen,
            files: vec![],
            appends: 0,
            synced: 0,
            // The spares' names are made durable by the first round's
            // directory sync before any of them is taken (a kill -9 keeps
            // names the disk may not have).
            created: !kept_spares.is_empty() as u64,
            dir_synced: 0,
            sync_in_flight: false,
            frozen: false,
            recycle,
            salt: 0,
            spares: kept_spares
                .into_iter()
                .rev()
                .map(|gen| Spare { gen, named_at: 1 })
                .collect(),
        };
        Ok((log, left))
    }

    /// Deletes a file an earlier daemon left (nothing in it is to replay).
    pub fn delete(&self, gen: u64) {
        let _ = fs::remove_file(self.dir.join(file_name(gen)));
    }

    /// Makes a file an earlier daemon left the log of segment `seq` of this
    /// daemon, in place (its header's number; a damaged tail, or with
    /// `empty` every record, is cut off: by an end record in version 3,
    /// by truncation before): its writes are replayed as
    /// exactly that segment, and the file is retired once it is applied,
    /// like one this daemon wrote. Written in place rather than logged
    /// again, so an interrupted replay never leaves two copies of a write
    /// (D6 of the 5bc5be0 review). Synced: after a machine crash a file
    /// must not go back to a number the history has passed while the one
    /// after it keeps its new number (the files kept would not be a
    /// prefix).
    pub fn rehome(&mut self, file: &LeftFile, seq: u64, empty: bool) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let path = self.dir.join(file_name(file.gen));
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW) // docs/design/0017
            .open(&path)
            .map_err(|e| io_err("open", &path, e))?;
        let sync = |f: &File| {
            #[cfg(feature = "test-support")]
            crate::testing::syncing_file(&path, f);
            f.sync_data().map_err(|e| io_err("sync", &path, e))
        };
        let end = match (empty, file.version) {
            (true, 4) => FILE_HEADER_BYTES,
            (true, _) => FILE_HEADER_BYTES_V3,
            (false, _) => file.valid_len,
        };
        // 1. What is not replayed goes, durably, before the file takes its
        // new number (torn by a power cut between the two, it must never
        // read as the new segment with records it was to lose).
        match file.version {
            // An end record where its records are to end (after every
            // record kept, or right after the header): whatever follows
            // it is never read. Not a truncation: a power cut could keep a
            // shorter length without the record (found by the third
            // review of 0014), and an emptied file that lost its end record
            // would end the log before the files after it.
            4 if empty || !file.ended => {
                f.write_all_at(&end_record(file.salt), end)
                    .map_err(|e| io_err("write", &path, e))?;
                sync(&f)?;
            }
            3 if empty || !file.ended => {
                f.write_all_at(&end_record_v3(), end)
                    .map_err(|e| io_err("write", &path, e))?;
                sync(&f)?;
            }
            3 | 4 => {}
            // Versions 1 and 2 as before: complete where they end.
            _ if empty || !file.complete => {
                f.set_len(end).map_err(|e| io_err("truncate", &path, e))?;
                sync(&f)?;
            }
            _ => {}
        }
        // 2. Its new number (the same place in every version).
        f.write_all_at(&seq.to_le_bytes(), FILE_MAGIC.len() as u64)
            .map_err(|e| io_err("write", &path, e))?;
        sync(&f)
    }

    /// Takes a rehomed file into this daemon's log (before its current file).
    pub fn adopt(&mut self, gen: u64, seq: u64) {
        debug_assert!(self.file.is_none() && self.files.last().is_none_or(|f| f.gen < gen));
        self.files.push(LogFile {
            gen,
            seq,
            handle: None,
            last_append: 0,
            recyclable: false,
        });
    }

    /// Starts the file for segment `seq` (nothing once frozen): a spare
    /// whose name is durable, renamed and rewritten from its start, or a
    /// new file.
    pub fn rotate(&mut self, seq: u64) -> Result<(), String> {
        if self.frozen {
            return Ok(());
        }
        if let Some(cur) = self.file.take() {
            // The current file ends here: its end record.
            let path = self.dir.join(file_name(self.gen));
            let rec = end_record(self.salt);
            #[cfg(feature = "test-support")]
            crate::testing::writing(&path, &cur, rec.len());
            let mut w: &File = &cur;
            w.write_all(&rec).map_err(|e| io_err("append", &path, e))?;
            #[cfg(feature = "test-support")]
            crate::testing::appended(&path, &cur);
            self.appends += 1;
            if let Some(last) = self.files.last_mut() {
                last.last_append = self.appends;
            }
        }
        self.gen += 1;
        self.salt = rand::random();
        let path = self.dir.join(file_name(self.gen));
        let f = match self.take_spare(&path)? {
            Some(f) => f,
            None => OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_err("create", &path, e))?,
        };
        let header = file_header(seq, self.gen, self.salt);
        #[cfg(feature = "test-support")]
        crate::testing::writing(&path, &f, header.len());
        (&f).write_all(&header)
            .map_err(|e| io_err("write", &path, e))?;
        #[cfg(feature = "test-support")]
        crate::testing::appended(&path, &f);
        let f = Arc::new(f);
        self.file = Some(f.clone());
        // The header is an append: a file left without one after a power
        // cut would end the log there, before later files' records.
        self.appends += 1;
        self.created += 1;
        self.files.push(LogFile {
            gen: self.gen,
            seq,
            handle: Some(f),
            last_append: self.appends,
            recyclable: true,
        });
        Ok(())
    }

    /// The oldest spare whose name a directory sync covers, renamed `path`
    /// and opened at its start (not truncated: the file keeps its length,
    /// and an `fdatasync` after an overwrite has no size to record).
    fn take_spare(&mut self, path: &Path) -> Result<Option<File>, String> {
        let Some(spare) = self
            .spares
            .front()
            .filter(|s| s.named_at <= self.dir_synced)
        else {
            return Ok(None);
        };
        let from = self.dir.join(spare_name(spare.gen));
        self.spares.pop_front();
        fs::rename(&from, path).map_err(|e| io_err("reuse", &from, e))?;
        #[cfg(feature = "test-support")]
        crate::testing::renamed(&from, path);
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW) // docs/design/0017
            .open(path)
            .map(Some)
            .map_err(|e| io_err("open", path, e))
    }

    /// Appends one change to the current file: a header, then for data the
    /// crc32c of each block (computed by the writer) and the data. The
    /// header's crc32c covers it and the block checksums; the data is not
    /// read again here.
    pub fn append(&mut self, lba: u64, blocks: u64, data: Option<&Checked>) -> Result<(), String> {
        if self.frozen {
            // Nothing more is logged (and FLUSHes know not to trust it).
            return Ok(());
        }
        let path = self.dir.join(file_name(self.gen));
        let mut f: &File = self
            .file
            .as_deref()
            .ok_or_else(|| "write log is closed".to_string())?;
        let (d, crcs): (&[u8], &[u32]) = data.map_or((&[], &[]), |c| (&c.bytes, &c.crcs));
        debug_assert!(data.is_none() || crcs.len() as u64 == blocks);
        let mut list = Vec::with_capacity(crcs.len() * 4);
        for c in crcs {
            list.extend_from_slice(&c.to_le_bytes());
        }
        let kind = data.is_some() as u32;
        let h = record_header(kind, lba, blocks, d.len() as u32, self.salt, &list);
        #[cfg(feature = "test-support")]
        crate::testing::writing(&path, f, h.len() + list.len() + d.len());
        spritedisk_store::write_all_parts(&mut f, &[&h, &list, d])
            .map_err(|e| io_err("append", &path, e))?;
        #[cfg(feature = "test-support")]
        crate::testing::appended(&path, f);
        self.appends += 1;
        if let Some(cur) = self.files.last_mut() {
            cur.last_append = self.appends;
        }
        Ok(())
    }

    /// The count of appends so far: a FLUSH in local mode waits until
    /// [`WriteLog::synced`] reaches what it was when the FLUSH began.
    pub fn appends(&self) -> u64 {
        self.appends
    }

    pub fn synced(&self) -> u64 {
        self.synced
    }

    /// Whether its syncs can be trusted to hold what it was given.
    pub fn trusted(&self) -> bool {
        !self.frozen
    }

    /// Starts a sync round of everything appended so far, unless one is
    /// running (the caller waits for it instead).
    pub fn begin_sync(&mut self) -> Option<SyncPlan> {
        if self.sync_in_flight {
            return None;
        }
        self.sync_in_flight = true;
        let synced = self.synced;
        Some(SyncPlan {
            upto: self.appends,
            files: self
                .files
                .iter()
                .filter(|f| f.last_append > synced)
                .filter_map(|f| Some((self.dir.join(file_name(f.gen)), f.handle.clone()?)))
                .collect(),
            dir: (self.created > self.dir_synced).then(|| (self.dir.clone(), self.created)),
        })
    }

    /// Ends a round that never ran (its engine stopped first).
    pub fn cancel_sync(&mut self) {
        self.sync_in_flight = false;
    }

    /// Ends the round `plan` began: on success its appends are durable; a
    /// failed sync freezes the log (after a failed `fdatasync` the page
    /// cache may have dropped records, so nothing since the last good
    /// round is known durable).
    pub fn end_sync(&mut self, plan: &SyncPlan, res: Result<(), String>) {
        self.sync_in_flight = false;
        match res {
            Ok(()) => {
                self.synced = self.synced.max(plan.upto);
                if let Some((_, created)) = plan.dir {
                    self.dir_synced = self.dir_synced.max(created);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "write log sync failed: FLUSHes wait for the object store from now on");
                self.freeze();
            }
        }
    }

    /// Stops appending, keeping the files: they hold a prefix of the
    /// writes (flushed ones, in local mode), retired as their segments are
    /// applied, and replayed after a crash like any others.
    pub fn freeze(&mut self) {
        self.frozen = true;
        self.file = None;
    }

    /// Deletes the files of segments up to `seq`, now durable in the store.
    pub fn retire(&mut self, seq: u64) {
        while let Some(&LogFile {
            gen,
            seq: s,
            recyclable,
            ..
        }) = self.files.first()
        {
            // The current file takes writes still (a frozen log has none).
            if s > seq || (gen == self.gen && !self.frozen) {
                break;
            }
            // One that cannot be deleted stays, and so do the ones after
            // it: deleting those would leave a gap before it.
            let path = self.dir.join(file_name(gen));
            let kept = self.recycle && recyclable && self.spares.len() < SPARE_FILES_MAX;
            let res = match kept {
                // Its rename is a name change the next round's directory
                // sync covers; it is reused only after that.
                true => fs::rename(&path, self.dir.join(spare_name(gen))),
                false => fs::remove_file(&path),
            };
            match res {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    tracing::warn!(gen, error = %e, "cannot retire a write log file; retrying later");
                    break;
                }
                Err(_) => {}
                Ok(()) if kept => {
                    #[cfg(feature = "test-support")]
                    crate::testing::renamed(&path, &self.dir.join(spare_name(gen)));
                    self.created += 1;
                    self.spares.push_back(Spare {
                        gen,
                        named_at: self.created,
                    });
                }
                Ok(()) => {}
            }
            self.files.remove(0);
        }
    }
}

/// What [`read_file`] found in one log file.
struct FileRead {
    seq: u64,
    writes: Vec<LoggedWrite>,
    /// Bytes up to the end of the last valid record (its end record included).
    valid_len: u64,
    /// Whether a file after it may be read: it ends with its end record
    /// (versions 3 and 4), or at a record boundary (versions 1 and 2).
    complete: bool,
    version: u8,
    ended: bool,
    salt: u64,
}

/// Reads log file `gen`: its segment seq, its valid records, the length
/// they end at, and whether a later file may be read after it. None: no
/// valid header (in version 4, one that names another generation: the
/// file's header from an earlier life, docs/design/0015).
fn read_file(path: &Path, gen: u64) -> Option<FileRead> {
    let mut raw = vec![];
    match File::open(path).and_then(|mut f| f.read_to_end(&mut raw)) {
        Ok(_) => parse_file(&raw, gen),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable write log");
            None
        }
    }
}

/// [`read_file`] on the file's bytes.
fn parse_file(raw: &[u8], gen: u64) -> Option<FileRead> {
    let le64 = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let (version, header_len) = match raw.get(..8)? {
        m if m == FILE_MAGIC => (4, FILE_HEADER_BYTES),
        m if m == FILE_MAGIC_V3 => (3, FILE_HEADER_BYTES_V3),
        m if m == FILE_MAGIC_V2 => (2, FILE_HEADER_BYTES_V3),
        m if m == FILE_MAGIC_V1 => (1, FILE_HEADER_BYTES_V3),
        _ => return None,
    };
    let header = raw.get(..header_len as usize)?;
    let seq = le64(header, 8);
    let salt = match version {
        4 if !names_generation(header, gen) => return None,
        4 => le64(header, 24),
        _ => 0,
    };
    let hlen = match version {
        4 => RECORD_HEADER_BYTES,
        _ => RECORD_HEADER_BYTES_V3,
    };
    let mut out = FileRead {
        seq,
        writes: vec![],
        valid_len: header_len,
        complete: false,
        version,
        ended: false,
        salt,
    };
    let mut at = header_len as usize;
    while at < raw.len() {
        let Some(h) = raw.get(at..at + hlen) else {
            return Some(out);
        };
        let le32 = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let (magic, has_data, lba, blocks, len) =
            (le32(0), le32(4), le64(h, 8), le64(h, 16), le32(24) as u64);
        // Version 4: the salt, then the checksum.
        let (salted, crc) = match version {
            4 => (le64(h, 28) == salt, le32(36)),
            _ => (true, le32(28)),
        };
        let ended = match version {
            4 => h == end_record(salt),
            3 => h == end_record_v3(),
            _ => false,
        };
        if ended {
            out.valid_len = (at + hlen) as u64;
            out.complete = true;
            out.ended = true;
            return Some(out);
        }
        let valid =
            salted && magic == RECORD_MAGIC && len <= RECORD_DATA_MAX_BYTES && has_data <= 1;
        let record = match (valid && blocks > 0, version) {
            (false, _) => None,
            (true, 1) => read_record_v1(&raw[at..], h, len as usize, crc),
            (true, _) => read_record(&raw[at..], h, has_data == 1, blocks, len as usize, crc),
        };
        let Some((data, crcs, end)) = record else {
            return Some(out);
        };
        out.writes.push(LoggedWrite {
            lba,
            blocks,
            data: (has_data == 1).then(|| Bytes::copy_from_slice(data)),
            crcs,
        });
        at += end;
        out.valid_len = at as u64;
    }
    // At a record boundary: complete for versions 1 and 2; a later
    // version's file without its end record was the last one written (or
    // was cut back by a power cut), and nothing after it is read.
    out.complete = version < 3;
    Some(out)
}

/// A record (version 2 or later) at the start of `rec` whose header is
/// `h`: its data, its blocks' checksums and its length, if the header's
/// checksum (its last 4 bytes, over the rest and the list) holds and every
/// block matches its own.
fn read_record<'a>(
    rec: &'a [u8],
    h: &[u8],
    has_data: bool,
    blocks: u64,
    len: usize,
    crc: u32,
) -> Option<(&'a [u8], Vec<u32>, usize)> {
    let hlen = h.len();
    let nlist = if has_data {
        // The data is whole blocks, and the list has one checksum per block.
        if len as u64 != blocks.checked_mul(CRC_BLOCK_BYTES as u64)? {
            return None;
        }
        blocks as usize * 4
    } else {
        if len != 0 {
            return None;
        }
        0
    };
    let list = rec.get(hlen..hlen + nlist)?;
    if crc32c::crc32c_append(crc32c::crc32c(&h[..hlen - 4]), list) != crc {
        return None;
    }
    let start = hlen + nlist;
    let data = rec.get(start..start + len)?;
    let crcs: Vec<u32> = list
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let intact = data
        .chunks(CRC_BLOCK_BYTES)
        .zip(&crcs)
        .all(|(b, &c)| crc32c::crc32c(b) == c);
    intact.then_some((data, crcs, start + len))
}

/// A version-1 record: the header's crc32c runs on over the data.
fn read_record_v1<'a>(
    rec: &'a [u8],
    h: &[u8],
    len: usize,
    crc: u32,
) -> Option<(&'a [u8], Vec<u32>, usize)> {
    let data = rec.get(RECORD_HEADER_BYTES_V3..RECORD_HEADER_BYTES_V3 + len)?;
    (crc32c::crc32c_append(crc32c::crc32c(&h[..28]), data) == crc).then_some((
        data,
        vec![],
        RECORD_HEADER_BYTES_V3 + len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(v: u8) -> Checked {
        Checked::new(Bytes::from(vec![v; 4096]))
    }

    fn seqs(left: &[LeftFile]) -> Vec<(u64, usize)> {
        left.iter().map(|f| (f.seq, f.writes.len())).collect()
    }

    #[test]
    fn reads_back_a_prefix_and_deletes_what_follows_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, left) = WriteLog::open(dir.path(), false).unwrap();
        assert!(left.is_empty());
        log.rotate(1).unwrap();
        log.append(0, 1, Some(&checked(1))).unwrap();
        log.append(5, 2, None).unwrap();
        log.rotate(2).unwrap();
        log.append(9, 1, Some(&checked(2))).unwrap();
        log.append(11, 1, Some(&checked(4))).unwrap();
        log.rotate(3).unwrap();
        log.append(10, 1, Some(&checked(3))).unwrap();
        drop(log);

        let (_, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(seqs(&left), [(1, 2), (2, 2), (3, 1)]);
        assert_eq!(
            left[0].writes[1],
            LoggedWrite {
                lba: 5,
                blocks: 2,
                data: None,
                crcs: vec![],
            }
        );

        // Damage the middle file's last record (before its end record): its
        // first record is read, and the third file is deleted, never to be
        // replayed.
        let p = dir.path().join(DIR).join(file_name(2));
        let mut raw = fs::read(&p).unwrap();
        let n = raw.len();
        raw[n - RECORD_HEADER_BYTES - 5] ^= 1;
        fs::write(&p, raw).unwrap();
        let (_, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(seqs(&left), [(1, 2), (2, 1)]);
        assert!(!left[1].complete);
        assert!(!dir.path().join(DIR).join(file_name(3)).exists());
    }

    #[test]
    fn a_rehomed_file_reads_back_as_its_new_segment_without_its_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = WriteLog::open(dir.path(), false).unwrap();
        log.rotate(7).unwrap();
        log.append(0, 1, Some(&checked(1))).unwrap();
        log.append(1, 1, Some(&checked(2))).unwrap();
        drop(log);
        let p = dir.path().join(DIR).join(file_name(1));
        let mut raw = fs::read(&p).unwrap();
        raw.truncate(raw.len() - 100); // a torn last record
        fs::write(&p, raw).unwrap();
        let (mut log, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(seqs(&left), [(7, 1)]);
        log.rehome(&left[0], 42, false).unwrap();
        log.adopt(left[0].gen, 42);
        log.rotate(43).unwrap();
        log.append(2, 1, Some(&checked(3))).unwrap();
        drop(log);
        // The next daemon reads on past it: the cut tail is gone, and it
        // ends with its end record.
        let (_, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(seqs(&left), [(42, 1), (43, 1)]);
        assert!(left[0].complete && left[0].ended);
    }

    /// Found by the second review of D6's fix: the new file was numbered
    /// after the files `open` deleted (past damage), so once the damaged
    /// file was made whole by the replay, the next open saw a gap before
    /// the new file and dropped the writes logged there.
    #[test]
    fn a_log_reopened_after_damage_numbers_on_without_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = WriteLog::open(dir.path(), false).unwrap();
        for seq in 1..=3 {
            log.rotate(seq).unwrap();
            log.append(seq, 1, Some(&checked(seq as u8))).unwrap();
        }
        drop(log);
        // The second file's record is torn (and its end record gone): the
        // third is deleted.
        let p = dir.path().join(DIR).join(file_name(2));
        let raw = fs::read(&p).unwrap();
        fs::write(&p, &raw[..raw.len() - RECORD_HEADER_BYTES - 10]).unwrap();
        let (mut log, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(seqs(&left), [(1, 1), (2, 0)]);
        // The replay makes the second file whole; a new write is logged.
        for (i, f) in left.iter().enumerate() {
            log.rehome(f, 10 + i as u64, false).unwrap();
            log.adopt(f.gen, 10 + i as u64);
        }
        log.rotate(12).unwrap();
        log.append(7, 1, Some(&checked(7))).unwrap();
        drop(log);
        let (_, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(
            seqs(&left),
            [(10, 1), (11, 0), (12, 1)],
            "the write logged after the replay is read back"
        );
    }

    /// A file an older daemon left (version 1: one crc32c over a record's
    /// data) is replayed after an upgrade; its damage is still found.
    #[test]
    fn a_version_1_file_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(DIR)).unwrap();
        let mut raw = FILE_MAGIC_V1.to_vec();
        raw.extend_from_slice(&9u64.to_le_bytes());
        for (lba, v) in [(3u64, 5u8), (4, 6)] {
            let data = [v; 4096];
            let mut h = [0u8; RECORD_HEADER_BYTES_V3];
            h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
            h[4..8].copy_from_slice(&1u32.to_le_bytes());
            h[8..16].copy_from_slice(&lba.to_le_bytes());
            h[16..24].copy_from_slice(&1u64.to_le_bytes());
            h[24..28].copy_from_slice(&4096u32.to_le_bytes());
            let crc = crc32c::crc32c_append(crc32c::crc32c(&h[..28]), &data);
            h[28..32].copy_from_slice(&crc.to_le_bytes());
            raw.extend_from_slice(&h);
            raw.extend_from_slice(&data);
        }
        let p = dir.path().join(DIR).join(file_name(1));
        fs::write(&p, &raw).unwrap();
        let (_, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(seqs(&left), [(9, 2)]);
        assert_eq!(left[0].writes[1].data.as_deref(), Some(&[6u8; 4096][..]));
        assert!(left[0].writes[1].crcs.is_empty());
        let n = raw.len();
        raw[n - 1] ^= 1;
        fs::write(&p, &raw).unwrap();
        let (_, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(seqs(&left), [(9, 1)], "the damaged record is not replayed");
    }

    /// A version-2 record's data is checked block by block against the
    /// checksums it carries; they are handed on with it.
    #[test]
    fn a_record_with_one_bad_block_is_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = WriteLog::open(dir.path(), false).unwrap();
        log.rotate(1).unwrap();
        let data: Vec<u8> = (0..3 * 4096).map(|i| (i % 253) as u8).collect();
        let c = Checked::new(Bytes::from(data));
        log.append(0, 3, Some(&c)).unwrap();
        log.append(8, 3, Some(&c)).unwrap();
        drop(log);
        let (_, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(left[0].writes[1].crcs, c.crcs);
        let p = dir.path().join(DIR).join(file_name(1));
        let mut raw = fs::read(&p).unwrap();
        let n = raw.len();
        raw[n - 4096 - 7] ^= 0x40; // the second record's middle block
        fs::write(&p, &raw).unwrap();
        let (_, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(seqs(&left), [(1, 1)]);
        assert!(!left[0].complete);
    }

    /// A power cut can keep a file cut back to an earlier length, at a
    /// record boundary (its writeback stored it so), while the next file
    /// survives whole. Found by the seeded power cut of 0014: read on, the
    /// log skipped the lost records and replayed the later ones (not a
    /// prefix). A file without its end record ends the log.
    #[test]
    fn a_file_cut_back_to_a_record_boundary_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = WriteLog::open(dir.path(), false).unwrap();
        log.rotate(1).unwrap();
        log.append(0, 1, Some(&checked(1))).unwrap();
        let p = dir.path().join(DIR).join(file_name(1));
        let first_record_ends = fs::metadata(&p).unwrap().len();
        log.append(1, 1, Some(&checked(2))).unwrap();
        log.rotate(2).unwrap();
        log.append(2, 1, Some(&checked(3))).unwrap();
        drop(log);
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(first_record_ends).unwrap();
        let (_, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(
            seqs(&left),
            [(1, 1)],
            "the second file was read past the first one's lost record"
        );
        assert!(!dir.path().join(DIR).join(file_name(2)).exists());
    }

    /// A version-2 file an older daemon left (no end record) is complete
    /// at a record boundary, as before; made this daemon's, it stays
    /// version 2 (rewriting it could be torn by a power cut into a version-3
    /// file without its end record), and the files after it are read.
    #[test]
    fn a_version_2_file_is_read_back_and_rehomed_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(DIR)).unwrap();
        legacy_file(dir.path(), 1, FILE_MAGIC_V2, 5, &[(0, 1)], false);
        let (mut log, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(seqs(&left), [(5, 1)]);
        assert!(left[0].complete && left[0].version == 2 && !left[0].ended);
        log.rehome(&left[0], 9, false).unwrap();
        log.adopt(left[0].gen, 9);
        log.rotate(10).unwrap();
        log.append(1, 1, Some(&checked(2))).unwrap();
        drop(log);
        let (_, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(seqs(&left), [(9, 1), (10, 1)]);
        assert!(left[0].version == 2 && left[0].complete);
        assert_eq!(left[1].version, 4);
    }

    /// A version-3 file (an end record without a salt) is read, ends the
    /// log without its end record, and is cut by an end record of its own
    /// version when rehomed.
    #[test]
    fn a_version_3_file_is_read_back_and_rehomed() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(DIR)).unwrap();
        legacy_file(dir.path(), 1, FILE_MAGIC_V3, 5, &[(0, 1), (1, 2)], true);
        legacy_file(dir.path(), 2, FILE_MAGIC_V3, 6, &[(2, 3)], false);
        legacy_file(dir.path(), 3, FILE_MAGIC_V3, 7, &[(3, 4)], false);
        let (mut log, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(
            seqs(&left),
            [(5, 2), (6, 1)],
            "a file without its end record ends the log"
        );
        assert!(left[0].ended && left[0].version == 3 && !left[1].complete);
        assert!(!dir.path().join(DIR).join(file_name(3)).exists());
        log.rehome(&left[0], 9, false).unwrap();
        log.rehome(&left[1], 10, true).unwrap();
        drop(log);
        let (_, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(seqs(&left), [(9, 2), (10, 0)]);
        assert!(left[1].ended && left[1].complete);
    }

    /// A file as a daemon of `magic`'s version (1 to 3: 16-byte header,
    /// 32-byte records) wrote it: a data record of one 4 KiB block of `v`
    /// at each `(lba, v)`, and an end record if `ended` (version 3).
    fn legacy_file(
        cache: &Path,
        gen: u64,
        magic: &[u8; 8],
        seq: u64,
        writes: &[(u64, u8)],
        ended: bool,
    ) {
        let mut raw = magic.to_vec();
        raw.extend_from_slice(&seq.to_le_bytes());
        for &(lba, v) in writes {
            let data = [v; 4096];
            let list = crc32c::crc32c(&data).to_le_bytes();
            let mut h = [0u8; RECORD_HEADER_BYTES_V3];
            h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
            h[4..8].copy_from_slice(&1u32.to_le_bytes());
            h[8..16].copy_from_slice(&lba.to_le_bytes());
            h[16..24].copy_from_slice(&1u64.to_le_bytes());
            h[24..28].copy_from_slice(&4096u32.to_le_bytes());
            let crc = crc32c::crc32c_append(crc32c::crc32c(&h[..28]), &list);
            h[28..32].copy_from_slice(&crc.to_le_bytes());
            raw.extend_from_slice(&h);
            raw.extend_from_slice(&list);
            raw.extend_from_slice(&data);
        }
        if ended {
            raw.extend_from_slice(&end_record_v3());
        }
        fs::write(cache.join(DIR).join(file_name(gen)), &raw).unwrap();
    }

    /// Found by the third review of 0014: a file a barrier left empty
    /// between two files with records is kept by the replay and emptied;
    /// cut back to its header it lost its end record, and the next open
    /// ended the log there, deleting the files after it (flushed writes).
    #[test]
    fn an_emptied_file_keeps_the_files_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = WriteLog::open(dir.path(), false).unwrap();
        log.rotate(1).unwrap();
        log.append(0, 1, Some(&checked(1))).unwrap();
        log.rotate(2).unwrap();
        log.rotate(3).unwrap();
        log.append(1, 1, Some(&checked(2))).unwrap();
        drop(log);
        let (mut log, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(seqs(&left), [(1, 1), (2, 0), (3, 1)]);
        log.rehome(&left[0], 9, false).unwrap();
        log.rehome(&left[1], 9, true).unwrap();
        log.rehome(&left[2], 10, false).unwrap();
        drop(log);
        let (_, left) = WriteLog::open(dir.path(), false).unwrap();
        assert_eq!(
            seqs(&left),
            [(9, 1), (9, 0), (10, 1)],
            "the files after the emptied one were not read"
        );
        assert!(left[1].complete);
    }

    /// One sync round, as a local FLUSH runs it.
    fn sync(log: &mut WriteLog) {
        let plan = log.begin_sync().unwrap();
        let res = plan.run();
        log.end_sync(&plan, res);
    }

    fn path(cache: &Path, gen: u64) -> PathBuf {
        cache.join(DIR).join(file_name(gen))
    }

    /// A log in local mode whose files 1 and 2 are applied and spares:
    /// file 1 with `n` one-block records of 0xAA, file 2 empty; file 3
    /// current. Returns it with file 1's bytes as a spare.
    fn with_spares(cache: &Path, n: u64) -> (WriteLog, Vec<u8>) {
        let (mut log, _) = WriteLog::open(cache, true).unwrap();
        log.rotate(1).unwrap();
        for lba in 0..n {
            log.append(lba, 1, Some(&checked(0xAA))).unwrap();
        }
        log.rotate(2).unwrap();
        log.rotate(3).unwrap();
        log.retire(2);
        let spare = fs::read(cache.join(DIR).join(spare_name(1))).unwrap();
        sync(&mut log);
        (log, spare)
    }

    /// docs/design/0015, 1: a recycled file keeps its earlier life's bytes
    /// past its new records. Read back, it holds its new records only.
    #[test]
    fn a_recycled_file_never_reads_its_earlier_life() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, old) = with_spares(dir.path(), 4);
        log.rotate(4).unwrap();
        assert!(
            !dir.path().join(DIR).join(spare_name(1)).exists(),
            "file 4 is the spare"
        );
        assert_eq!(
            fs::metadata(path(dir.path(), 4)).unwrap().len(),
            old.len() as u64
        );
        log.append(7, 1, Some(&checked(1))).unwrap();
        drop(log);
        let (_, left) = WriteLog::open(dir.path(), true).unwrap();
        assert_eq!(
            seqs(&left),
            [(3, 0), (4, 1)],
            "read its earlier life's records"
        );
        assert_eq!(left[1].writes[0].lba, 7);
    }

    /// docs/design/0015, 1: a power cut keeps a recycled file's new
    /// records but one, and its end record, as they were in its earlier
    /// life (those pages were not written back), while the next file
    /// survives. The old record is not read, nor the old end record taken
    /// for its end: nothing after the lost record is read.
    #[test]
    fn a_recycled_file_cut_by_a_power_cut_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, old) = with_spares(dir.path(), 4);
        log.rotate(4).unwrap();
        for lba in 0..4 {
            log.append(10 + lba, 1, Some(&checked(0xBB))).unwrap();
        }
        log.rotate(5).unwrap();
        log.append(20, 1, Some(&checked(0xCC))).unwrap();
        drop(log);
        let p = path(dir.path(), 4);
        let mut raw = fs::read(&p).unwrap();
        let record = RECORD_HEADER_BYTES + 4 + 4096;
        let fourth = FILE_HEADER_BYTES as usize + 3 * record;
        let end = fourth + record + RECORD_HEADER_BYTES;
        raw[fourth..end].copy_from_slice(&old[fourth..end]);
        fs::write(&p, &raw).unwrap();
        let (_, left) = WriteLog::open(dir.path(), true).unwrap();
        assert_eq!(
            seqs(&left),
            [(3, 0), (4, 3)],
            "the earlier life's record or end record was read"
        );
        assert!(!path(dir.path(), 5).exists());
    }

    /// docs/design/0015, 1: the earlier life's end record sits where a new
    /// record, lost in a power cut, began. Taken for the file's end, it
    /// would let the next file be read past the lost record (not a prefix).
    #[test]
    fn a_stale_end_record_does_not_end_a_recycled_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, old) = with_spares(dir.path(), 3);
        log.rotate(4).unwrap();
        for lba in 0..4 {
            log.append(10 + lba, 1, Some(&checked(0xBB))).unwrap();
        }
        log.rotate(5).unwrap();
        log.append(20, 1, Some(&checked(0xCC))).unwrap();
        drop(log);
        let p = path(dir.path(), 4);
        let mut raw = fs::read(&p).unwrap();
        let record = RECORD_HEADER_BYTES + 4 + 4096;
        let fourth = FILE_HEADER_BYTES as usize + 3 * record;
        let end = fourth + RECORD_HEADER_BYTES;
        assert_eq!(
            old[fourth..fourth + 8],
            end_record(0)[..8],
            "file 1 ended there"
        );
        raw[fourth..end].copy_from_slice(&old[fourth..end]);
        fs::write(&p, &raw).unwrap();
        let (_, left) = WriteLog::open(dir.path(), true).unwrap();
        assert_eq!(
            seqs(&left),
            [(3, 0), (4, 3)],
            "the earlier life's end record ended the file"
        );
        assert!(!path(dir.path(), 5).exists());
    }

    /// docs/design/0015, 2: the new name durable, the new header not: the
    /// file's header names its earlier generation, and it is not read.
    #[test]
    fn a_recycled_file_with_its_old_header_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, old) = with_spares(dir.path(), 2);
        log.rotate(4).unwrap();
        drop(log);
        let p = path(dir.path(), 4);
        let mut raw = fs::read(&p).unwrap();
        raw[..FILE_HEADER_BYTES as usize].copy_from_slice(&old[..FILE_HEADER_BYTES as usize]);
        fs::write(&p, &raw).unwrap();
        let (_, left) = WriteLog::open(dir.path(), true).unwrap();
        assert_eq!(seqs(&left), [(3, 0)], "read as the applied segment 1");
    }

    /// docs/design/0015, 3: a spare is taken only once a directory sync
    /// covers its rename.
    #[test]
    fn a_spare_is_taken_only_once_its_name_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = WriteLog::open(dir.path(), true).unwrap();
        log.rotate(1).unwrap();
        log.append(0, 1, Some(&checked(1))).unwrap();
        log.rotate(2).unwrap();
        log.retire(1);
        let spare = dir.path().join(DIR).join(spare_name(1));
        assert!(spare.exists());
        log.rotate(3).unwrap();
        assert!(
            spare.exists(),
            "taken before a directory sync covered its name"
        );
        sync(&mut log);
        log.rotate(4).unwrap();
        assert!(!spare.exists());
        assert!(fs::metadata(path(dir.path(), 4)).unwrap().len() > FILE_HEADER_BYTES);
    }

    /// docs/design/0015, 4: with every file retired, the next file is
    /// numbered after the spares, never as one of them.
    #[test]
    fn numbering_follows_the_spares_when_no_file_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = with_spares(dir.path(), 1);
        log.rotate(4).unwrap();
        drop(log);
        for g in [3, 4] {
            fs::remove_file(path(dir.path(), g)).unwrap();
        }
        let (mut log, left) = WriteLog::open(dir.path(), true).unwrap();
        assert!(left.is_empty());
        log.rotate(9).unwrap();
        assert!(path(dir.path(), 3).exists(), "numbered from 0 again");
    }

    /// Found by the review of 0015: a file of an older version, replayed
    /// and applied, is deleted, never a spare (its header names no
    /// generation to check).
    #[test]
    fn a_file_of_an_older_version_is_never_recycled() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(DIR)).unwrap();
        legacy_file(dir.path(), 1, FILE_MAGIC_V3, 5, &[(0, 1)], true);
        let (mut log, left) = WriteLog::open(dir.path(), true).unwrap();
        log.rehome(&left[0], 9, false).unwrap();
        log.adopt(1, 9);
        log.rotate(10).unwrap();
        log.retire(9);
        assert!(!path(dir.path(), 1).exists());
        assert!(
            !dir.path().join(DIR).join(spare_name(1)).exists(),
            "a version-3 file became a spare"
        );
    }

    /// Found by the review of 0015: a spare taken and written, whose
    /// rename a power cut undid, holds a header naming the generation it
    /// was taken as, which the log may hand out again. It is deleted.
    #[test]
    fn a_spare_whose_header_names_another_generation_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = with_spares(dir.path(), 2);
        log.rotate(4).unwrap();
        log.append(0, 1, Some(&checked(7))).unwrap();
        drop(log);
        let spare1 = dir.path().join(DIR).join(spare_name(1));
        fs::rename(path(dir.path(), 4), &spare1).unwrap();
        let (_, left) = WriteLog::open(dir.path(), true).unwrap();
        assert_eq!(seqs(&left), [(3, 0)]);
        assert!(!spare1.exists(), "a spare holding a later life was kept");
        assert!(dir.path().join(DIR).join(spare_name(2)).exists());
    }

    /// docs/design/0015, 7: a recycled file is long before it holds a
    /// record of its own.
    #[test]
    fn has_records_reads_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = with_spares(dir.path(), 3);
        log.rotate(4).unwrap();
        assert!(!has_records(dir.path()), "a spare's old records counted");
        log.append(1, 1, Some(&checked(1))).unwrap();
        assert!(has_records(dir.path()));
    }

    /// Store mode deletes applied files, and the spares a local-mode
    /// daemon left.
    #[test]
    fn store_mode_keeps_no_spares() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = with_spares(dir.path(), 1);
        drop(log);
        assert!(dir.path().join(DIR).join(spare_name(1)).exists());
        let (mut log, _) = WriteLog::open(dir.path(), false).unwrap();
        assert!(!dir.path().join(DIR).join(spare_name(1)).exists());
        log.rotate(4).unwrap();
        log.rotate(5).unwrap();
        log.retire(4);
        let names = fs::read_dir(dir.path().join(DIR)).unwrap().count();
        assert_eq!(names, 2, "files 3 and 5 only");
    }

    #[test]
    fn retire_deletes_applied_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = WriteLog::open(dir.path(), false).unwrap();
        log.rotate(1).unwrap();
        log.rotate(2).unwrap();
        log.rotate(3).unwrap();
        log.retire(2);
        let left = fs::read_dir(dir.path().join(DIR)).unwrap().count();
        assert_eq!(left, 1);
    }
}
