//! Table definitions. `extents.lba` is the rowid, so range lookups are b-tree seeks.

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
    client_bytes_written INTEGER NOT NULL
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
    live_bytes INTEGER NOT NULL
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
    crc INTEGER NOT NULL
);
-- Checkpoints: named copies of the map (checkpoint.rs).
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_unix INTEGER NOT NULL,
    client_bytes_written INTEGER NOT NULL,
    applied_seq INTEGER NOT NULL,
    extents INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoint_extents (
    ckpt INTEGER NOT NULL,
    lba INTEGER NOT NULL,
    blocks INTEGER NOT NULL,
    seg INTEGER NOT NULL,
    piece_off INTEGER NOT NULL,
    piece_blocks INTEGER NOT NULL,
    skip_blocks INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    PRIMARY KEY (ckpt, lba)
) WITHOUT ROWID;
";
