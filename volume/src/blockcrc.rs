//! Written data is checksummed once (docs/design/0012): each 4 KiB block's
//! crc32c is computed when a write is admitted, outside every lock, and
//! everything downstream reuses it: the write log records the block
//! checksums, a segment's piece checksum is folded from its blocks'
//! checksums, and the read cache takes a line's checksums as given.
//! Before, a written byte went through crc32c four times (log, segment,
//! the cache's block checksums and its line checksum).
//!
//! Folding: for crc32c (reflected, init and final xor all ones) and blocks
//! `A`, `B` with `|B| = n`, `crc(A ‖ B) = Z_n(crc(A)) ⊕ crc(B)`, where `Z_n`
//! is the linear map that runs the CRC register over `n` zero bytes. `Z_n`
//! for `n = 4096` is tabulated once (four byte tables, 4 KiB), so a fold is
//! four lookups per block. Written by hand because the `crc32c` crate's
//! `crc32c_combine` derives the operator again on every call (measured in
//! the VM rig: combining 16 block checksums per line cost more than the
//! checksums themselves).

use std::sync::OnceLock;

use bytes::Bytes;

/// The block the checksums are of: the volume's block size, and the read
/// cache's check granularity (`spritedisk_cache::disk::CHECK_BYTES`).
pub const CRC_BLOCK_BYTES: usize = 4096;

/// `Z_4096` as four byte-indexed tables: `Z(x) = T0[x & 0xff] ⊕ T1[(x >>
/// 8) & 0xff] ⊕ T2[..] ⊕ T3[x >> 24]` (it is linear over GF(2)).
fn shift_tables() -> &'static [[u32; 256]; 4] {
    static TABLES: OnceLock<Box<[[u32; 256]; 4]>> = OnceLock::new();
    TABLES.get_or_init(|| {
        let zeros = [0u8; CRC_BLOCK_BYTES];
        // The register after n zero bytes from state `s`: crc32c_append
        // takes and returns the complemented register.
        let z = |s: u32| !crc32c::crc32c_append(!s, &zeros);
        let basis: Vec<u32> = (0..32).map(|i| z(1u32 << i)).collect();
        let mut t = Box::new([[0u32; 256]; 4]);
        for (k, table) in t.iter_mut().enumerate() {
            for (b, entry) in table.iter_mut().enumerate() {
                *entry = (0..8)
                    .filter(|bit| b & (1 << bit) != 0)
                    .fold(0, |acc, bit| acc ^ basis[k * 8 + bit]);
            }
        }
        t
    })
}

/// crc32c of the concatenation of whole blocks, from their crc32cs.
pub fn fold(block_crcs: &[u32]) -> u32 {
    let t = shift_tables();
    let mut it = block_crcs.iter();
    let Some(&first) = it.next() else {
        return 0;
    };
    it.fold(first, |acc, &c| {
        t[0][(acc & 0xff) as usize]
            ^ t[1][((acc >> 8) & 0xff) as usize]
            ^ t[2][((acc >> 16) & 0xff) as usize]
            ^ t[3][(acc >> 24) as usize]
            ^ c
    })
}

/// The crc32c of each block of `data` (whole blocks).
pub fn block_crcs(data: &[u8]) -> Vec<u32> {
    debug_assert!(data.len().is_multiple_of(CRC_BLOCK_BYTES));
    data.chunks(CRC_BLOCK_BYTES).map(crc32c::crc32c).collect()
}

/// Written data with the checksum of each of its blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub bytes: Bytes,
    pub crcs: Vec<u32>,
}

impl Checked {
    /// Checksums `bytes` (whole blocks): the one pass over a written byte.
    pub fn new(bytes: Bytes) -> Checked {
        let crcs = block_crcs(&bytes);
        Checked { bytes, crcs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A fold of block checksums is the checksum of the blocks, for
        /// any data and any number of blocks (a piece is up to 16).
        #[test]
        fn a_fold_is_the_checksum_of_the_concatenation(
            seed in any::<u64>(), blocks in 1usize..20, zero_block in any::<Option<u8>>()
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let mut data: Vec<u8> = (0..blocks * CRC_BLOCK_BYTES).map(|_| rng.gen()).collect();
            if let Some(z) = zero_block {
                let b = z as usize % blocks;
                data[b * CRC_BLOCK_BYTES..(b + 1) * CRC_BLOCK_BYTES].fill(0);
            }
            prop_assert_eq!(fold(&block_crcs(&data)), crc32c::crc32c(&data));
        }
    }

    #[test]
    fn a_changed_byte_changes_the_fold() {
        let mut data = vec![7u8; 3 * CRC_BLOCK_BYTES];
        let before = fold(&block_crcs(&data));
        data[CRC_BLOCK_BYTES + 5] ^= 1;
        assert_ne!(fold(&block_crcs(&data)), before);
        assert_eq!(fold(&block_crcs(&data)), crc32c::crc32c(&data));
    }
}
