//! Map lookups off the writer's connection (docs/design/0011): read-only
//! connections to the same WAL database, so readers never wait for the one
//! owner of SQLite (applies, GC, checkpoints, replica snapshots) nor for
//! each other.
//!
//! Each range is looked up by one statement (map.rs), so it sees one
//! commit. In WAL mode a read begun after a commit returned sees that
//! commit, which is what the engine's read path relies on (a segment leaves
//! the in-memory layers only after its apply has committed).
//!
//! A connection is opened by path, so it is opened only while the path
//! still names the writer's file (device and inode, compared before and
//! after the open; the writer keeps its inode alive, so the number cannot
//! be reused meanwhile). A directory another daemon rebuilt under us (a
//! `--force` takeover on the same host) is never read as ours: the lookup
//! says so and the engine asks the writer's connection.
//!
//! The pool is a vector behind a mutex held for a push or a pop, never
//! through a query. Written by hand: r2d2 would add a reaper thread and
//! checkout timeouts; a lookup needs neither, and a connection is opened on
//! demand, so the pool holds at most as many as lookups ever ran at once.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

use crate::map::{self, Extent};
use crate::MetaError;

/// Idle connections kept; more may be open during a burst of concurrent
/// lookups, and are closed when they come back to a full pool.
const READERS_IDLE_MAX: usize = 16;

/// Read-only connections to one on-disk metadata database.
#[derive(Debug)]
pub struct MapReaders {
    path: PathBuf,
    /// Device and inode of the writer's database file.
    file: (u64, u64),
    pub(crate) idle: Mutex<Vec<Connection>>,
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl MapReaders {
    /// Readers of the file at `path`, which must be the writer's own now.
    pub(crate) fn new(path: &Path) -> Option<MapReaders> {
        Some(MapReaders {
            path: path.to_path_buf(),
            file: identity(path)?,
            idle: Mutex::new(vec![]),
        })
    }

    /// A new connection, if the path still names the writer's file.
    fn open(&self) -> Result<Option<Connection>, MetaError> {
        if identity(&self.path) != Some(self.file) {
            return Ok(None);
        }
        // Read-only: such a connection never checkpoints the log, not even
        // as the last one to close, so the replicator keeps every frame
        // until it has shipped it (wal.rs).
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| MetaError::open(&self.path, e))?;
        // SQLite opened the file itself in `open_with_flags`.
        Ok((identity(&self.path) == Some(self.file)).then_some(conn))
    }

    /// The extents intersecting `[a, b)` for each range, clipped to it, by
    /// LBA. Each range is one statement, so one snapshot of the map; the
    /// ranges of one read are disjoint, and each sees every commit that
    /// returned before the lookup began. None: the path no longer names
    /// the writer's file; look the ranges up on the writer's connection.
    pub fn lookup(&self, ranges: &[(u64, u64)]) -> Result<Option<Vec<Extent>>, MetaError> {
        let popped = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match popped {
            Some(c) => c,
            None => match self.open()? {
                Some(c) => c,
                None => return Ok(None),
            },
        };
        let out = (|| {
            let mut out = vec![];
            for &(a, b) in ranges {
                out.extend(map::lookup(&conn, a, b - a)?);
            }
            Ok::<_, MetaError>(out)
        })();
        // A connection that failed is not kept: the next lookup opens afresh.
        if out.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < READERS_IDLE_MAX {
                idle.push(conn);
            }
        }
        out.map(Some)
    }
}
