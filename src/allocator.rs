//! The process's allocator: mimalloc, asked through its plain API wherever that already gives
//! the alignment a layout needs, and its one tuned option.
//!
//! Why not `mimalloc::MiMalloc` as it comes: it sends every allocation through
//! `mi_malloc_aligned`, and mimalloc v3 takes its plain path there only for sizes whose block
//! is a power of two; any other size (a 4.7 KB RESP batch future, a 48-byte node) is
//! over-allocated by its alignment and fixed up, about 360 instructions where `mi_malloc`
//! takes 60 (callgrind, an unpipelined INCR). The crate's own fix is an open pull request
//! (purpleprotocol/mimalloc_rust#170); this is the same dispatch.

use std::{
    alloc::{GlobalAlloc, Layout},
    ffi::{c_int, c_long, c_void},
};

extern "C" {
    fn mi_malloc(size: usize) -> *mut c_void;
    fn mi_zalloc(size: usize) -> *mut c_void;
    fn mi_realloc(p: *mut c_void, newsize: usize) -> *mut c_void;
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
}

/// mimalloc's own guarantee for a plain allocation (`MI_MAX_ALIGN_SIZE`): blocks of 16 bytes
/// and up are 16-aligned, smaller ones aligned to their size class, a multiple of 8.
const PLAIN_ALIGN: usize = 16;

/// mimalloc, through `mi_malloc` / `mi_zalloc` / `mi_realloc` when a plain block is aligned
/// enough, through the `mimalloc` crate's aligned calls otherwise. Frees are `mi_free` either way.
pub struct Allocator;

#[global_allocator]
static GLOBAL: Allocator = Allocator;

/// Whether a plain mimalloc block of `size` bytes is aligned for `layout`: its alignment is at
/// most mimalloc's guarantee, and the size is a multiple of it (so a block under 16 bytes,
/// aligned to its 8-byte size class, still suffices).
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && size.is_multiple_of(align)
}

// SAFETY: every block comes from mimalloc, aligned as its layout asks (`plain`, or mimalloc's
// aligned calls), and goes back to it; `mi_free` takes blocks of either kind.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi_malloc(layout.size()).cast()
        } else {
            mimalloc::MiMalloc.alloc(layout)
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi_zalloc(layout.size()).cast()
        } else {
            mimalloc::MiMalloc.alloc_zeroed(layout)
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        mimalloc::MiMalloc.dealloc(ptr, layout)
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mimalloc::MiMalloc.realloc(ptr, layout, new_size)
        }
    }
}

/// mimalloc's `mi_option_page_full_retain` (its place in v3's `mi_option_t`, mimalloc.h; the
/// test below fails if an upgrade moves it). By default mimalloc keeps 2 full pages in each
/// size class's queue, so the queue holds more than one page, and a page that empties then
/// is given back at once rather than kept a while (`_mi_page_retire` keeps only the lone
/// page of a queue). A hit's few short-lived allocations then took and gave back a page per
/// request: 2.5k instructions of a proxied hit's 16.6k (callgrind; 14.1k without).
const MI_OPTION_PAGE_FULL_RETAIN: c_int = 36;

/// Sets mimalloc's options before the runtime's threads make their heaps (each reads them
/// when it is made), unless the environment sets them (`MIMALLOC_PAGE_FULL_RETAIN`).
pub fn tune() {
    if std::env::var_os("MIMALLOC_PAGE_FULL_RETAIN").is_none() {
        // SAFETY: an option setter of the linked mimalloc, called before other threads exist.
        unsafe { mi_option_set(MI_OPTION_PAGE_FULL_RETAIN, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_option_is_where_it_is_thought_to_be() {
        // Its default and its neighbours' (page_reclaim_on_free 0, page_max_candidates 4):
        // a renumbered enum shows here.
        // SAFETY: option getters of the linked mimalloc.
        let around = unsafe { [-1, 0, 1].map(|d| mi_option_get(MI_OPTION_PAGE_FULL_RETAIN + d)) };
        assert_eq!(
            around,
            [0, 2, 4],
            "page_reclaim_on_free, page_full_retain, page_max_candidates"
        );
    }

    #[test]
    fn every_block_is_aligned_as_its_layout_asks() {
        // Sizes around mimalloc's size classes, with every alignment up to past its guarantee,
        // through each entry point; written to the last byte so a short block shows under a
        // sanitizer too.
        let sizes = (1..=1100).chain([4736, 70_000, 1 << 20]);
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in sizes.clone() {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: non-zero sizes; each block is freed with the layout it was made with.
                unsafe {
                    let p = GLOBAL.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc {size} aligned {align}");
                    p.add(size - 1).write(1);
                    let grown = size * 3 + 5;
                    let q = GLOBAL.realloc(p, layout, grown);
                    assert_eq!(q as usize % align, 0, "realloc {grown} aligned {align}");
                    assert_eq!(q.add(size - 1).read(), 1, "realloc keeps the bytes");
                    GLOBAL.dealloc(q, Layout::from_size_align(grown, align).unwrap());
                    let z = GLOBAL.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "alloc_zeroed {size} aligned {align}");
                    assert!((0..size).all(|i| z.add(i).read() == 0));
                    GLOBAL.dealloc(z, layout);
                }
            }
        }
    }
}
