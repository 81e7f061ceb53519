//! `file://` store: one file per object under a root directory.
//!
//! A put writes a temp file beside the target, fsyncs it, renames it over the
//! target and fsyncs the directory, so an object is either wholly there or not
//! at all after a crash. Conditional puts hold an exclusive `flock` on
//! `<root>/.lock`, which makes them atomic among threads and processes.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{check_key, ObjectMeta, ObjectStore, StoreError};

const LOCK_FILE: &str = ".lock";

#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(FileStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let me = self.clone();
        crate::blocking::unblock(move || f(me))
            .await
            .map_err(|e| StoreError::Io {
                op: "spawn",
                key: String::new(),
                source: std::io::Error::other(e),
            })?
    }

    /// Exclusive lock over conditional puts; released when the file closes.
    fn lock(&self, key: &str) -> Result<File, StoreError> {
        self.ensure_dir(&self.root, key)?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(LOCK_FILE))
            .map_err(|e| StoreError::io("lock", key, e))?;
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
        if rc != 0 {
            return Err(StoreError::io("lock", key, std::io::Error::last_os_error()));
        }
        Ok(f)
    }

    /// Creates `dir` (and parents) and makes the new entries durable.
    fn ensure_dir(&self, dir: &Path, key: &str) -> Result<(), StoreError> {
        if dir.is_dir() {
            return Ok(());
        }
        let mut missing = vec![];
        let mut d = dir;
        while !d.is_dir() {
            missing.push(d.to_path_buf());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        fs::create_dir_all(dir).map_err(|e| StoreError::io("mkdir", key, e))?;
        for m in missing.iter().rev() {
            if let Some(p) = m.parent() {
                fsync_dir(p).map_err(|e| StoreError::io("fsync dir", key, e))?;
            }
        }
        Ok(())
    }

    /// Writes `data` durably to a temp file next to `path`; returns the temp path.
    fn write_temp(&self, key: &str, path: &Path, data: &[u8]) -> Result<PathBuf, StoreError> {
        self.write_temp_parts(key, path, &[data])
    }

    /// [`FileStore::write_temp`] of the concatenation of `parts`, written
    /// one after the other (no joining copy).
    fn write_temp_parts(
        &self,
        key: &str,
        path: &Path,
        parts: &[&[u8]],
    ) -> Result<PathBuf, StoreError> {
        let dir = path.parent().expect("object path has a parent");
        self.ensure_dir(dir, key)?;
        let tmp = dir.join(format!(
            ".tmp-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let res = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            write_all_parts(&mut f, parts)?;
            f.sync_all()
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("put", key, e));
        }
        Ok(tmp)
    }

    /// Renames the temp file into place and makes the rename durable; returns the new etag.
    fn commit_temp(&self, key: &str, tmp: &Path, path: &Path) -> Result<String, StoreError> {
        if let Err(e) = fs::rename(tmp, path) {
            let _ = fs::remove_file(tmp);
            return Err(StoreError::io("put", key, e));
        }
        // The object is visible now; if its directory entry cannot be made
        // durable, a retry would find it and take it for durable. Fail for good.
        fsync_dir(path.parent().unwrap()).map_err(|e| StoreError::NotDurable {
            key: key.to_string(),
            source: e,
        })?;
        let m = fs::metadata(path).map_err(|e| StoreError::io("put", key, e))?;
        Ok(meta_etag(&m))
    }

    fn put_sync(&self, key: &str, data: &[u8]) -> Result<String, StoreError> {
        let path = self.path(key)?;
        let tmp = self.write_temp(key, &path, data)?;
        let _lock = self.lock(key)?;
        self.commit_temp(key, &tmp, &path)
    }

    fn current_etag(&self, key: &str, path: &Path) -> Result<Option<String>, StoreError> {
        match fs::metadata(path) {
            Ok(m) => Ok(Some(meta_etag(&m))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("head", key, e)),
        }
    }
}

/// Etag of a stored file from its metadata: every put renames a new inode
/// into place, so size, inode and mtime together change with every version,
/// and `head`, `list` and conditional puts all agree without reading data.
fn meta_etag(m: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{:x}-{:x}-{:x}.{:x}",
        m.len(),
        m.ino(),
        m.mtime(),
        m.mtime_nsec()
    )
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Parts gathered per `writev`: a segment of 4 KiB random writes has
/// thousands of pieces; far below the kernel's IOV_MAX (1024).
const WRITEV_PARTS_MAX: usize = 256;

/// Writes `parts` one after the other, [`WRITEV_PARTS_MAX`] per `writev`
/// (a short write is finished part by part). By hand: std's
/// `write_all_vectored` is not stable. The engine's write log uses it too.
pub fn write_all_parts<W: Write>(f: &mut W, parts: &[&[u8]]) -> std::io::Result<()> {
    for group in parts.chunks(WRITEV_PARTS_MAX) {
        let slices: Vec<std::io::IoSlice> =
            group.iter().map(|p| std::io::IoSlice::new(p)).collect();
        let total: usize = group.iter().map(|p| p.len()).sum();
        let mut done = f.write_vectored(&slices)?;
        if done == total {
            continue;
        }
        for p in group {
            if done >= p.len() {
                done -= p.len();
                continue;
            }
            f.write_all(&p[done..])?;
            done = 0;
        }
    }
    Ok(())
}

fn not_found_or(op: &'static str, key: &str, e: std::io::Error) -> StoreError {
    if e.kind() == ErrorKind::NotFound {
        StoreError::NotFound(key.to_string())
    } else {
        StoreError::io(op, key, e)
    }
}

#[async_trait]
impl ObjectStore for FileStore {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let key = key.to_string();
        self.blocking(move |s| {
            let path = s.path(&key)?;
            fs::read(&path)
                .map(Bytes::from)
                .map_err(|e| not_found_or("get", &key, e))
        })
        .await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        let key = key.to_string();
        self.blocking(move |s| {
            let path = s.path(&key)?;
            let mut f = File::open(&path).map_err(|e| not_found_or("get", &key, e))?;
            let size = f
                .metadata()
                .map_err(|e| StoreError::io("get", &key, e))?
                .len();
            if offset.checked_add(len).is_none_or(|end| end > size) {
                return Err(StoreError::OutOfRange {
                    key,
                    offset,
                    len,
                    size,
                });
            }
            let mut buf = vec![0u8; len as usize];
            f.seek(SeekFrom::Start(offset))
                .and_then(|_| f.read_exact(&mut buf))
                .map_err(|e| StoreError::io("get", &key, e))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        let key = key.to_string();
        self.blocking(move |s| s.put_sync(&key, &data)).await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        self.put_parts_if_absent(key, &[data]).await
    }

    async fn put_parts_if_absent(&self, key: &str, parts: &[Bytes]) -> Result<String, StoreError> {
        let key = key.to_string();
        let parts = parts.to_vec();
        self.blocking(move |s| {
            let path = s.path(&key)?;
            let slices: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
            let tmp = s.write_temp_parts(&key, &path, &slices)?;
            let _lock = s.lock(&key)?;
            let exists = path
                .try_exists()
                .map_err(|e| StoreError::io("put", &key, e));
            if exists.as_ref().map_or(true, |e| *e) {
                let _ = fs::remove_file(&tmp);
                exists?;
                return Err(StoreError::PreconditionFailed(key));
            }
            s.commit_temp(&key, &tmp, &path)
        })
        .await
    }

    async fn put_if_match(&self, key: &str, data: Bytes, etag: &str) -> Result<String, StoreError> {
        let key = key.to_string();
        let etag = etag.to_string();
        self.blocking(move |s| {
            let path = s.path(&key)?;
            let tmp = s.write_temp(&key, &path, &data)?;
            let _lock = s.lock(&key)?;
            if s.current_etag(&key, &path)?.as_deref() != Some(etag.as_str()) {
                let _ = fs::remove_file(&tmp);
                return Err(StoreError::PreconditionFailed(key));
            }
            s.commit_temp(&key, &tmp, &path)
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let key = key.to_string();
        self.blocking(move |s| {
            let path = s.path(&key)?;
            let size = match fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(StoreError::io("head", &key, e)),
            };
            let Some(etag) = s.current_etag(&key, &path)? else {
                return Ok(None);
            };
            Ok(Some(ObjectMeta { key, size, etag }))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.blocking(move |s| {
            let path = s.path(&key)?;
            match fs::remove_file(&path) {
                Ok(()) => {
                    fsync_dir(path.parent().unwrap()).map_err(|e| StoreError::io("delete", &key, e))
                }
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StoreError::io("delete", &key, e)),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |s| {
            let mut out = vec![];
            walk(&s.root, "", &prefix, &mut out).map_err(|e| StoreError::io("list", &prefix, e))?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

/// Recursive listing that only descends into directories that can hold keys
/// with `prefix`, skipping temp and lock files.
fn walk(dir: &Path, rel: &str, prefix: &str, out: &mut Vec<ObjectMeta>) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") || (rel.is_empty() && name == LOCK_FILE) {
            continue;
        }
        let key = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let ft = entry.file_type()?;
        if ft.is_dir() {
            let as_dir = format!("{key}/");
            if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                walk(&entry.path(), &key, prefix, out)?;
            }
        } else if ft.is_file() && key.starts_with(prefix) {
            let m = entry.metadata()?;
            out.push(ObjectMeta {
                etag: meta_etag(&m),
                key,
                size: m.len(),
            });
        }
    }
    Ok(())
}
