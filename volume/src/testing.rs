//! Test support (feature `test-support`): a simulated power cut of the
//! local write journal.
//!
//! Every sync the journal makes is recorded here, from the file system's
//! own view at the time (a file's length just before its `fdatasync`, the
//! names in the directory just before its `fsync`), and so is every page
//! written since, with what it held before. [`power_cut`] then leaves the
//! journal as the worst power loss would: each file cut back to its
//! length at its last sync (or emptied, if never synced), each page
//! written since holding its old bytes (a recycled file's earlier life,
//! docs/design/0015), and every file whose name no directory sync covered
//! deleted. A sync the journal forgets to make, or a FLUSH that returns
//! before its sync, is a write the cut takes away.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Default)]
struct Image {
    files: BTreeMap<PathBuf, FileImage>,
    /// A directory's names at its last sync.
    dirs: BTreeMap<PathBuf, BTreeSet<OsString>>,
}

/// What a power cut may leave of one file.
#[derive(Default)]
struct FileImage {
    /// Its length at its last sync (when first seen, if it was never).
    synced_len: u64,
    /// The 4 KiB pages written since its last sync, each with what it held
    /// before (short at the end of the file then, empty past it): a disk
    /// may have kept the old or the new of each (docs/design/0015: a
    /// recycled file is overwritten in place).
    old_pages: BTreeMap<u64, Vec<u8>>,
    /// The lengths it had after each write since its last sync: a disk
    /// may have kept any of them (the file system's writeback stored the
    /// file, and its size, as it was then).
    ends: Vec<u64>,
}

const PAGE: u64 = 4096;

static IMAGE: Mutex<Option<Image>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut Image) -> T) -> T {
    f(IMAGE.lock().unwrap().get_or_insert_with(Image::default))
}

/// Called just before `file` (at `path`) is `fdatasync`ed.
pub(crate) fn syncing_file(path: &Path, file: &File) {
    if let Ok(m) = file.metadata() {
        with(|i| {
            let f = i.files.entry(path.to_path_buf()).or_default();
            f.synced_len = m.len();
            f.old_pages.clear();
            f.ends.clear();
        });
    }
}

/// Called just before `len` bytes are written at `file`'s position.
pub(crate) fn writing(path: &Path, file: &File, len: usize) {
    use std::io::Seek;
    use std::os::unix::fs::FileExt;
    let (Ok(at), Ok(m)) = ((&*file).stream_position(), file.metadata()) else {
        return;
    };
    let file_len = m.len();
    with(|i| {
        let f = i
            .files
            .entry(path.to_path_buf())
            // First seen: what it holds is on the disk (a file created
            // here is empty).
            .or_insert_with(|| FileImage {
                synced_len: file_len,
                ..FileImage::default()
            });
        for page in at / PAGE..(at + len as u64).div_ceil(PAGE) {
            f.old_pages.entry(page).or_insert_with(|| {
                let start = page * PAGE;
                let n = file_len.saturating_sub(start).min(PAGE) as usize;
                let mut old = vec![0; n];
                // Opened again: the journal's own handle is write-only.
                File::open(path)
                    .and_then(|r| r.read_exact_at(&mut old, start))
                    .expect("reading a journal page back");
                old
            });
        }
    });
}

/// Called after each write to `file` (at `path`).
pub(crate) fn appended(path: &Path, file: &File) {
    if let Ok(m) = file.metadata() {
        with(|i| {
            i.files
                .entry(path.to_path_buf())
                .or_default()
                .ends
                .push(m.len())
        });
    }
}

/// Called after `from` is renamed `to`: the file's image goes with it.
pub(crate) fn renamed(from: &Path, to: &Path) {
    with(|i| {
        if let Some(f) = i.files.remove(from) {
            i.files.insert(to.to_path_buf(), f);
        }
    });
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
/// daemon is gone, losing everything no sync covered: each file cut back
/// to its length at its last sync, each page written since holding what
/// it held before, every name no directory sync covered deleted. What is
/// left counts as synced from then on (it is what the machine boots with).
/// Returns the files it deleted and the bytes it cut or set back.
pub fn power_cut(cache_dir: &Path) -> (usize, u64) {
    cut(cache_dir, None)
}

/// [`power_cut`] where the disk may also have kept some of what no sync
/// covered, as a real one does (its own writeback got there first): of
/// each file, drawn on its own, any length it had after a write since its
/// last sync, or a length in whole 4 KiB pages (a torn record); of each
/// page written since, drawn on its own, the new or the old bytes (pages
/// reach the disk in any order); and a file whose name no directory sync
/// covered, kept or not. So a later file may outlive the tail of an
/// earlier one, and a later record one before it. Drawn from `seed`.
pub fn power_cut_seeded(cache_dir: &Path, seed: u64) -> (usize, u64) {
    cut(cache_dir, Some(seed))
}

fn cut(cache_dir: &Path, seed: Option<u64>) -> (usize, u64) {
    use std::os::unix::fs::FileExt;
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
            // Never seen written: it is what the disk holds.
            let image = i.files.remove(&path).unwrap_or(FileImage {
                synced_len: len,
                ..FileImage::default()
            });
            let synced = image.synced_len.min(len);
            let ends: Vec<u64> = image
                .ends
                .iter()
                .copied()
                .filter(|&l| l > synced && l <= len)
                .collect();
            let keep = match draw(1) {
                _ if seed.is_none() => synced,
                0 if !ends.is_empty() => ends[draw(ends.len() as u64 - 1) as usize],
                _ => (synced + draw((len - synced).div_ceil(PAGE)) * PAGE).min(len),
            };
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            for (&page, old) in &image.old_pages {
                let start = page * PAGE;
                if start >= keep || (seed.is_some() && draw(1) == 0) {
                    continue;
                }
                // The old bytes, zeros past the old end, up to what is kept.
                let n = (keep - start).min(PAGE) as usize;
                let mut bytes = old.clone();
                bytes.resize(n, 0);
                f.write_all_at(&bytes, start).unwrap();
                cut += n as u64;
            }
            if keep < len {
                f.set_len(keep).unwrap();
                cut += len - keep;
            }
            i.files.insert(
                path.clone(),
                FileImage {
                    synced_len: keep,
                    ..FileImage::default()
                },
            );
        }
        i.dirs.insert(dir.clone(), names_in(&dir));
    });
    (deleted, cut)
}
