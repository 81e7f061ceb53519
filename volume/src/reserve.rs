//! Room kept for the metadata database on the local disk it shares with the
//! read cache and the write log. If that disk fills up (the cache is told
//! its size, but other tenants of the disk are not), the database could not
//! record newly durable segments and every FLUSH would fail. A preallocated
//! file is given up at that moment, so the map keeps moving while the
//! operator frees space; the next attach allocates it again.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const FILE: &str = "meta.reserve";
/// Enough for the database to apply thousands of segments (a few KiB each).
pub(crate) const META_RESERVE_BYTES: u64 = 32 << 20;

#[derive(Debug)]
pub(crate) struct MetaReserve {
    path: Option<PathBuf>,
}

impl MetaReserve {
    /// Allocates the reserve in `dir` unless it is there already. Without
    /// room for it, the volume works on, unprotected (and says so).
    pub(crate) fn open(dir: &Path) -> MetaReserve {
        let path = dir.join(FILE);
        let ok = std::fs::metadata(&path).is_ok_and(|m| m.len() == META_RESERVE_BYTES)
            || allocate(&path).inspect_err(|e| {
                let _ = std::fs::remove_file(&path);
                tracing::warn!(error = %e, "no room for the metadata reserve: a full local disk will stall flushes");
            }).is_ok();
        MetaReserve {
            path: ok.then_some(path),
        }
    }

    /// Deletes the reserve; true if there was one to give.
    pub(crate) fn release(&mut self) -> bool {
        match self.path.take() {
            Some(p) => std::fs::remove_file(p).is_ok(),
            None => false,
        }
    }
}

fn allocate(path: &Path) -> std::io::Result<()> {
    let f: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    // SAFETY: posix_fallocate on a descriptor we own; it really allocates
    // blocks, which set_len would not.
    let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, META_RESERVE_BYTES as libc::off_t) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    f.sync_all()
}
