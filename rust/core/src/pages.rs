//! Fresh memory for large outputs, backed by transparent huge pages where the OS offers them.
//!
//! A new multi-megabyte output (dF_T of a 1024 x 8192 float32 batch is 32 MB) is mapped from
//! the OS and faulted in page by page on first write: 8192 faults of 4 KiB, which took 20 ms
//! of a 30 ms backward on a virtual machine. Asking Linux for transparent huge pages on the
//! buffer (`madvise(MADV_HUGEPAGE)`, honoured when THP is `always` or `madvise`) turns them
//! into 16 faults of 2 MiB. Elsewhere, or when the kernel declines, the buffer is an ordinary
//! zeroed allocation.

use std::mem::size_of;

/// Buffers from this size on are worth the system call.
const MIN_BYTES: usize = 4 << 20;

/// `len` zeros, in memory that has not been touched yet (large ones: see the module doc).
pub(crate) fn zeroed<T: Copy>(zero: T, len: usize) -> Vec<T> {
    let vec = vec![zero; len];
    if len * size_of::<T>() >= MIN_BYTES {
        advise_huge_pages(vec.as_ptr().cast(), len * size_of::<T>());
    }
    vec
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(start: *const u8, bytes: usize) {
    const HUGE: usize = 2 << 20;
    // madvise wants page-aligned bounds: advise the whole 2 MiB pages inside the buffer.
    let first = (start as usize).next_multiple_of(HUGE);
    let end = (start as usize + bytes) / HUGE * HUGE;
    if end > first {
        // SAFETY: [first, end) lies inside the live allocation `start..start + bytes`;
        // MADV_HUGEPAGE changes how its pages are backed, never their contents (zeros here).
        // A refusal (no THP support) is harmless, so the result is ignored.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_start: *const u8, _bytes: usize) {}

#[cfg(test)]
mod tests {
    use super::zeroed;

    #[test]
    fn large_and_small_buffers_are_zeros_of_the_requested_length() {
        for len in [0, 10, 3 << 20] {
            let vec = zeroed(0.0f32, len);
            assert_eq!(vec.len(), len);
            assert!(vec.iter().all(|&x| x == 0.0));
        }
    }
}
