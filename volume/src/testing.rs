//! Test support (feature `test-support`): a simulated power cut of the
//! local write journal.
//!
//! Every sync the journal makes is recorded here, from the file system's
//! own view at the time (a file's length just before its `fdatasync`, the
//! names in the directory just before its `fsync`). [`power_cut`] then
//! leaves the journal as the worst power loss would: each file cut back
//! to its length at its last sync (or emptied, if never synced), and every
//! file whose name no directory sync covered deleted. A sync the journal
//! forgets to make, or a FLUSH that returns before its sync, is a write
//! the cut takes away.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Default)]
struct Image {
    /// A file's length at its last sync.
    files: BTreeMap<PathBuf, u64>,
    /// A directory's names at its last sync.
    dirs: BTreeMap<PathBuf, BTreeSet<OsString>>,
    /// The lengths a file had after each append since its last sync: a
    /// disk may have kept any of them (the file system's writeback stored
    /// the file, and its size, as it was then).
    ends: BTreeMap<PathBuf, Vec<u64>>,
}

static IMAGE: Mutex<Option<Image>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut Image) -> T) -> T {
    f(IMAGE.lock().unwrap().get_or_insert_with(Image::default))
}

/// Called just before `file` (at `path`) is `fdatasync`ed.
pub(crate) fn syncing_file(path: &Path, file: &File) {
    if let Ok(m) = file.metadata() {
        with(|i| {
            let e = i.files.entry(path.to_path_buf()).or_default();
            *e = (*e).max(m.len());
            let synced = *e;
            if let Some(ends) = i.ends.get_mut(path) {
                ends.retain(|&l| l > synced);
            }
        });
    }
}

/// Called after each append to `file` (at `path`).
pub(crate) fn appended(path: &Path, file: &File) {
    if let Ok(m) = file.metadata() {
        with(|i| i.ends.entry(path.to_path_buf()).or_default().push(m.len()));
    }
}

/// Called just before directory `dir` is `fsync`ed.
pub(crate) fn syncing_dir(dir: &Path) {
    let names = names_in(dir);
    with(|i| {
        i.dirs.insert(dir.to_path_buf(), names);
    });
}

fn names_in(dir: &Path) -> BTreeSet<OsString> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect()
}

/// Leaves the write journal of `cache_dir` as a power cut would, once its
/// daemon is gone, losing everything no sync covered; what is left counts
/// as synced from then on (it is what the machine boots with). Returns the
/// files it deleted and the bytes it cut.
pub fn power_cut(cache_dir: &Path) -> (usize, u64) {
    cut(cache_dir, None)
}

/// [`power_cut`] where the disk may also have kept some of what no sync
/// covered, as a real one does (its own writeback got there first): of
/// each file, drawn on its own, any length it had after an append since
/// its last sync (the writeback stored it, size and all, as it was then),
/// or a prefix of whole 4 KiB pages of it (a torn record); and a file
/// whose name no directory sync covered, kept or not. So a later file may
/// outlive the tail of an earlier one. Drawn from `seed`.
pub fn power_cut_seeded(cache_dir: &Path, seed: u64) -> (usize, u64) {
    cut(cache_dir, Some(seed))
}

fn cut(cache_dir: &Path, seed: Option<u64>) -> (usize, u64) {
    let dir = cache_dir.join("wlog");
    let (mut deleted, mut cut) = (0, 0);
    // xorshift64: a few draws, no dependency for it.
    let mut x = seed.map(|s| s | 1);
    let mut draw = move |n: u64| -> u64 {
        match x.as_mut() {
            None => 0,
            Some(x) => {
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
                *x % (n + 1)
            }
        }
    };
    with(|i| {
        let named = i.dirs.get(&dir).cloned().unwrap_or_default();
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        // The same draws for the same seed, whatever order the directory lists.
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            if !named.contains(&e.file_name()) && draw(1) == 0 {
                let _ = std::fs::remove_file(&path);
                i.files.remove(&path);
                deleted += 1;
                continue;
            }
            let synced = i.files.get(&path).copied().unwrap_or(0).min(len);
            let ends: Vec<u64> = i
                .ends
                .get(&path)
                .map(|e| {
                    e.iter()
                        .copied()
                        .filter(|&l| l > synced && l <= len)
                        .collect()
                })
                .unwrap_or_default();
            let keep = match draw(1) {
                _ if seed.is_none() => synced,
                0 if !ends.is_empty() => ends[draw(ends.len() as u64 - 1) as usize],
                _ => {
                    let pages = (len - synced).div_ceil(4096);
                    (synced + draw(pages) * 4096).min(len)
                }
            };
            if keep < len {
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len(keep).unwrap();
                cut += len - keep;
            }
            i.files.insert(path.clone(), keep);
            i.ends.remove(&path);
        }
        i.dirs.insert(dir.clone(), names_in(&dir));
    });
    (deleted, cut)
}
