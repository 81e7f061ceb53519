//! Table definitions. `extents.lba` is the rowid, so range lookups are b-tree seeks.
//!
//! The map is versioned so that a checkpoint is O(1) (docs/design/0004):
//! `volume.map_version` is the version the live map is at; a checkpoint
//! records that version and bumps it. Every live row says in which version
//! it was born; a row that a checkpoint can see (born at or before the
//! newest checkpoint's version) is never changed in place: when a write
//! covers it, it moves to `dead_extents` with the version it died in, and
//! what is left of it is born again. Checkpoint `v`'s map is the live rows
//! born at or before `v` plus the dead rows with `born <= v < died`.

/// Schema revision in `PRAGMA user_version` (0: before versioned maps; 2:
/// versioned maps; 3: the chain's epoch and successor position, 0009).
pub const SCHEMA_REVISION: i64 = 3;

/// Extents by segment (live bytes, GC); a restore rebuilds it whole.
pub const EXTENTS_BY_SEG: &str = "CREATE INDEX IF NOT EXISTS extents_by_seg ON extents (seg);";

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS volume (
    id TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    block_size INTEGER NOT NULL,
    created_unix INTEGER NOT NULL,
    -- last segment applied to the map: roll-forward resumes after it
    applied_seq INTEGER NOT NULL,
    -- that segment's writer epoch and the position of its successor
    -- (docs/design/0009): the walk takes only a record at applied_next that
    -- follows applied_seq with an epoch of at least applied_epoch
    applied_epoch INTEGER NOT NULL DEFAULT 0,
    applied_next INTEGER,
    client_bytes_written INTEGER NOT NULL,
    -- the live map's version: the next checkpoint takes it
    map_version INTEGER NOT NULL DEFAULT 1,
    -- bytes of every segment ever applied (writes and compaction's copies):
    -- over client_bytes_written, the write amplification
    segment_bytes_put INTEGER NOT NULL DEFAULT 0
);
-- The lease epoch of the writer that last wrote through this database: a
-- database from an older epoch describes a history another writer has moved
-- past (docs/design/0003).
CREATE TABLE IF NOT EXISTS writer (
    epoch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS segments (
    seq INTEGER PRIMARY KEY,
    size_bytes INTEGER NOT NULL,
    -- bytes the live map references (checkpoints not counted)
    live_bytes INTEGER NOT NULL,
    -- 1 for a writer's fence (docs/design/0009): GC never deletes one, since
    -- a fenced writer may still retry a PUT at its position
    fence INTEGER NOT NULL DEFAULT 0
);
-- A map row: blocks [lba, lba+blocks) are blocks [skip, skip+blocks) of the
-- piece at byte piece_off of segment seg, which is piece_blocks long and whose
-- bytes have crc32c crc (pieces are checksummed whole, so a row cut out of a
-- piece keeps the piece's checksum and a read fetches the whole piece).
CREATE TABLE IF NOT EXISTS extents (
    lba INTEGER PRIMARY KEY,
    blocks INTEGER NOT NULL,
    seg INTEGER NOT NULL,
    piece_off INTEGER NOT NULL,
    piece_blocks INTEGER NOT NULL,
    skip_blocks INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    born INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS extents_by_born ON extents (born);
-- Rows that left the live map but that a checkpoint still sees.
CREATE TABLE IF NOT EXISTS dead_extents (
    id INTEGER PRIMARY KEY,
    lba INTEGER NOT NULL,
    blocks INTEGER NOT NULL,
    seg INTEGER NOT NULL,
    piece_off INTEGER NOT NULL,
    piece_blocks INTEGER NOT NULL,
    skip_blocks INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    born INTEGER NOT NULL,
    died INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_extents_by_died ON dead_extents (died);
CREATE INDEX IF NOT EXISTS dead_extents_by_seg ON dead_extents (seg);
-- A fork's ancestry: segments numbered up to seq_max are in the store at
-- url (a parent's), read-only to this volume and never collected by it.
CREATE TABLE IF NOT EXISTS origins (
    seq_max INTEGER PRIMARY KEY,
    url TEXT NOT NULL
);
-- Checkpoints: named versions of the map (checkpoint.rs).
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_unix INTEGER NOT NULL,
    client_bytes_written INTEGER NOT NULL,
    applied_seq INTEGER NOT NULL,
    extents INTEGER NOT NULL,
    version INTEGER NOT NULL UNIQUE
);
";

/// Columns added since revision 0, for [`crate::MetaDb`]'s upgrade of an
/// older database: (table, column, definition).
pub const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("volume", "map_version", "INTEGER NOT NULL DEFAULT 1"),
    ("volume", "segment_bytes_put", "INTEGER NOT NULL DEFAULT 0"),
    ("volume", "applied_epoch", "INTEGER NOT NULL DEFAULT 0"),
    ("volume", "applied_next", "INTEGER"),
    ("segments", "fence", "INTEGER NOT NULL DEFAULT 0"),
    ("extents", "born", "INTEGER NOT NULL DEFAULT 1"),
    ("checkpoints", "version", "INTEGER NOT NULL DEFAULT 0"),
];
