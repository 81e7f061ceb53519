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
    idle: Mutex<Vec<Connection>>,
}

impl MapReaders {
    pub(crate) fn new(path: &Path) -> MapReaders {
        MapReaders {
            path: path.to_path_buf(),
            idle: Mutex::new(vec![]),
        }
    }

    fn open(&self) -> Result<Connection, MetaError> {
        // Read-only: such a connection never checkpoints the log, not even
        // as the last one to close, so the replicator keeps every frame
        // until it has shipped it (wal.rs).
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| MetaError::open(&self.path, e))?;
        Ok(conn)
    }

    /// The extents intersecting `[a, b)` for each range, clipped to it, by
    /// LBA. Each range is one statement, so one snapshot of the map; the
    /// ranges of one read are disjoint, and each sees every commit that
    /// returned before the lookup began.
    pub fn lookup(&self, ranges: &[(u64, u64)]) -> Result<Vec<Extent>, MetaError> {
        let popped = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match popped {
            Some(c) => c,
            None => self.open()?,
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
        out
    }
}
