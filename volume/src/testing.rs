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
        });
    }
}

/// Called just before directory `dir` is `fsync`ed.
pub(crate) fn syncing_dir(dir: &Path) {
    let names: BTreeSet<OsString> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    with(|i| {
        i.dirs.insert(dir.to_path_buf(), names);
    });
}

/// Leaves the write journal of `cache_dir` as a power cut would, once its
/// daemon is gone; what is left counts as synced from then on (it is what
/// the machine boots with). Returns the files it deleted and the bytes it
/// cut.
pub fn power_cut(cache_dir: &Path) -> (usize, u64) {
    let dir = cache_dir.join("wlog");
    let (mut deleted, mut cut) = (0, 0);
    with(|i| {
        let named = i.dirs.get(&dir).cloned().unwrap_or_default();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            if !named.contains(&e.file_name()) {
                let _ = std::fs::remove_file(&path);
                i.files.remove(&path);
                deleted += 1;
                continue;
            }
            let keep = i.files.get(&path).copied().unwrap_or(0).min(len);
            if keep < len {
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len(keep).unwrap();
                cut += len - keep;
            }
            i.files.insert(path, keep);
        }
        syncing_dir_locked(i, &dir);
    });
    (deleted, cut)
}

fn syncing_dir_locked(i: &mut Image, dir: &Path) {
    let names = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    i.dirs.insert(dir.to_path_buf(), names);
}
