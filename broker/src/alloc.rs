//! A guard against allocation aborts caused by untrusted array counts.
//!
//! `kafka-protocol` 0.18 decodes an array by reading its element count off
//! the wire and calling `Vec::with_capacity(count)` before decoding a single
//! element (upstream kafka-protocol-rs PRs #152, #161 and #200 fix this and
//! are not released). A 20-byte request can thus ask for hundreds of
//! gigabytes; the system allocator refuses, and Rust aborts the process —
//! not a panic that a connection task could contain.
//!
//! This allocator serves requests of [`HUGE_BYTES`] or more with anonymous
//! mappings made with `MAP_NORESERVE`: the kernel reserves address space and
//! commits pages only when touched. A bogus count therefore costs address
//! space for a moment; decoding fails at the first element that is not
//! there, and the mapping is returned. Everything smaller goes to the
//! system allocator unchanged. Remove this module once a `kafka-protocol`
//! release bounds array capacity by the bytes remaining.
//!
//! Limits: Linux only (elsewhere the system allocator is used as is), and it
//! does not help under `vm.overcommit_memory = 2` or a tight `ulimit -v`.
#![allow(unsafe_code)]

#[cfg(target_os = "linux")]
mod imp {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::ptr;

    /// Allocations at least this large are served by lazy mappings.
    pub const HUGE_BYTES: usize = 1 << 30;
    /// mmap returns page-aligned memory; larger alignments go to System.
    const PAGE_BYTES: usize = 4096;

    pub struct GuardedAlloc;

    fn is_huge(size: usize, align: usize) -> bool {
        size >= HUGE_BYTES && align <= PAGE_BYTES
    }

    // SAFETY: every pointer handed out is either System's (and returned to
    // System with the same layout) or a fresh private anonymous mapping of
    // exactly `layout.size()` bytes, page-aligned (so any alignment up to a
    // page holds), zero-filled, and unmapped with the same size. Which of the
    // two a pointer is follows from its layout alone, which Rust passes
    // unchanged to `dealloc`/`realloc`.
    unsafe impl GlobalAlloc for GuardedAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if is_huge(layout.size(), layout.align()) {
                map(layout.size())
            } else {
                unsafe { System.alloc(layout) }
            }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if is_huge(layout.size(), layout.align()) {
                // Fresh anonymous mappings are zero-filled.
                map(layout.size())
            } else {
                unsafe { System.alloc_zeroed(layout) }
            }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if is_huge(layout.size(), layout.align()) {
                unsafe { libc::munmap(ptr.cast(), layout.size()) };
            } else {
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if !is_huge(layout.size(), layout.align()) && !is_huge(new_size, layout.align()) {
                return unsafe { System.realloc(ptr, layout, new_size) };
            }
            // Crossing into or out of (or within) the mapped range: move.
            let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
                return ptr::null_mut();
            };
            let new = unsafe { self.alloc(new_layout) };
            if !new.is_null() {
                unsafe {
                    ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
            }
            new
        }
    }

    fn map(size: usize) -> *mut u8 {
        // SAFETY: a private anonymous mapping at an address of the kernel's
        // choosing touches no existing memory.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            ptr::null_mut()
        } else {
            p.cast()
        }
    }

    #[global_allocator]
    static GLOBAL: GuardedAlloc = GuardedAlloc;
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes, BytesMut};
    use courier_protocol::request::decode_request;
    use courier_protocol::versions::SUPPORTED;
    use proptest::prelude::*;

    /// A request for every served API and version whose body claims an
    /// array of i32::MAX elements right away: must be an error, not an abort.
    #[test]
    fn absurd_array_counts_are_errors_not_aborts() {
        for api in SUPPORTED {
            for version in api.min..=api.max {
                for body in [
                    &[0x7f, 0xff, 0xff, 0xff, 0, 0][..],
                    &[0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0][..],
                ] {
                    let mut frame = BytesMut::new();
                    frame.put_i16(api.api_key as i16);
                    frame.put_i16(version);
                    frame.put_i32(1);
                    frame.put_i16(-1); // null client id
                    if api.api_key.request_header_version(version) >= 2 {
                        frame.put_u8(0); // no tagged fields
                    }
                    frame.put_slice(body);
                    let _ = decode_request(frame.freeze());
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Any bytes after a well-formed header of any served API decode to
        /// a request or an error.
        #[test]
        fn any_body_after_a_valid_header_decodes_or_errors(
            which in any::<prop::sample::Index>(),
            version_pick in any::<prop::sample::Index>(),
            body in proptest::collection::vec(any::<u8>(), 0..96),
        ) {
            let api = SUPPORTED[which.index(SUPPORTED.len())];
            let version = api.min + version_pick.index((api.max - api.min + 1) as usize) as i16;
            let mut frame = BytesMut::new();
            frame.put_i16(api.api_key as i16);
            frame.put_i16(version);
            frame.put_i32(1);
            frame.put_i16(-1);
            if api.api_key.request_header_version(version) >= 2 {
                frame.put_u8(0);
            }
            frame.put_slice(&body);
            let _ = decode_request(Bytes::from(frame));
        }
    }
}
