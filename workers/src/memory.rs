//! What an entry of an in-memory cache really takes, so that a cache bounded in bytes bounds the
//! process's memory and not only the text it holds.
//!
//! An allocation takes more than its length: glibc's malloc hands out chunks of at least 32
//! bytes, in steps of 16, each with an 8-byte header. And each moka entry carries the cache's own
//! bookkeeping: its node, the key behind an `Arc`, the access-order and write-order links and a
//! share of the frequency sketch. `workers/tests/cache_memory.rs` fills the caches and checks
//! these weights against what the allocator handed out.

use std::mem::size_of;

/// moka's own memory per entry (0.12, a future cache with a weigher), measured by
/// `workers/tests/cache_memory.rs`, rounded up.
pub const CACHE_ENTRY: usize = 400;

/// Bytes the allocator takes for an allocation of `len` bytes (none for an empty one).
pub const fn allocation(len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let chunk = (len + 8 + 15) & !15;
    if chunk < 32 { 32 } else { chunk }
}

/// Bytes a string holds on the heap.
pub fn string(text: &String) -> usize {
    allocation(text.capacity())
}

/// Bytes of a slice of `len` values of `T` behind an `Arc` (its two counts first).
pub const fn arc_slice<T>(len: usize) -> usize {
    allocation(2 * size_of::<usize>() + len * size_of::<T>())
}

/// A weight as moka takes it.
pub fn weight(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_rounded_as_glibc_rounds_them() {
        assert_eq!(allocation(0), 0);
        assert_eq!(allocation(1), 32);
        assert_eq!(allocation(24), 32);
        assert_eq!(allocation(25), 48);
        assert_eq!(allocation(100), 112);
    }
}
