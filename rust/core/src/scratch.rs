//! Recycled large buffers.
//!
//! A fresh multi-megabyte `Vec` is mapped from the OS on every call, and first touching its
//! pages costs more than filling them: copying a 1024 x 8192 f32 feature matrix into a new
//! buffer took 15 ms of a 57 ms forward, into a recycled one 4.5 ms. So the working buffers that
//! every call needs again (the partner search's unit rows and similarity strips, the copies of
//! inputs that are not C-ordered) are handed back after use and reused by the next call on the
//! same thread. Outputs, which leave the call, are new memory (see `pages`).
//!
//! At most [`MAX_SPARE`] buffers of at least [`MIN_BYTES`] each are kept per thread, the
//! largest ones; they are freed when the thread exits.

use std::any::Any;
use std::cell::RefCell;
use std::mem::size_of;

/// Spare buffers kept per thread (one call of the bindings needs at most four large ones).
const MAX_SPARE: usize = 4;
/// Smaller buffers come from the allocator's own free lists quickly enough.
const MIN_BYTES: usize = 1 << 20;

thread_local! {
    static SPARE: RefCell<Vec<(usize, Box<dyn Any>)>> = const { RefCell::new(Vec::new()) };
}

/// An empty `Vec<T>` with room for `capacity` elements: the smallest fitting spare buffer of
/// this thread, or a new allocation.
pub fn buffer<T: Copy + 'static>(capacity: usize) -> Vec<T> {
    match spare(capacity) {
        Some(mut vec) => {
            vec.clear();
            vec
        }
        None => Vec::with_capacity(capacity),
    }
}

/// A `Vec<T>` of `len` elements with unspecified contents (a spare buffer's old values, or
/// zeros), for outputs that are overwritten completely: no pass of zeros before the real one.
pub fn overwritable<T: Copy + Default + 'static>(len: usize) -> Vec<T> {
    let mut vec = spare(len).unwrap_or_default();
    vec.truncate(len);
    vec.resize(len, T::default());
    vec
}

/// The smallest spare buffer of this thread with room for `capacity` elements, if any.
fn spare<T: Copy + 'static>(capacity: usize) -> Option<Vec<T>> {
    if capacity * size_of::<T>() < MIN_BYTES {
        return None;
    }
    let reused = SPARE.with_borrow_mut(|spare| {
        let fitting = spare
            .iter()
            .enumerate()
            .filter(|(_, (bytes, any))| *bytes >= capacity * size_of::<T>() && any.is::<Vec<T>>())
            .min_by_key(|(_, (bytes, _))| *bytes)
            .map(|(position, _)| position)?;
        spare.swap_remove(fitting).1.downcast::<Vec<T>>().ok()
    })?;
    (reused.capacity() >= capacity).then_some(*reused)
}

/// Hands `vec` back for reuse by [`buffer`] (small buffers are simply dropped).
pub fn recycle<T: Copy + 'static>(vec: Vec<T>) {
    let bytes = vec.capacity() * size_of::<T>();
    if bytes < MIN_BYTES {
        return;
    }
    SPARE.with_borrow_mut(|spare| {
        spare.push((bytes, Box::new(vec)));
        if spare.len() > MAX_SPARE {
            // Keep the largest: they are the expensive ones to map again.
            if let Some(smallest) = (0..spare.len()).min_by_key(|&i| spare[i].0) {
                spare.swap_remove(smallest);
            }
        }
    });
}

/// `values` copied into a (recycled) buffer.
pub fn copied<T: Copy + 'static>(values: &[T]) -> Vec<T> {
    let mut vec = buffer(values.len());
    vec.extend_from_slice(values);
    vec
}

#[cfg(test)]
mod tests {
    use super::{buffer, copied, overwritable, recycle, MAX_SPARE, MIN_BYTES};

    const BIG: usize = MIN_BYTES / 4 + 10; // f32 elements: just over the threshold

    #[test]
    fn a_recycled_buffer_is_reused_with_its_allocation() {
        let first = copied(&vec![1.5f32; BIG]);
        let address = first.as_ptr();
        recycle(first);
        let again = buffer::<f32>(BIG - 5);
        assert_eq!(again.as_ptr(), address);
        assert!(again.is_empty(), "a reused buffer must come back empty");
    }

    #[test]
    fn an_overwritable_buffer_has_its_length_and_reuses_a_spare() {
        let first = copied(&vec![1.5f32; BIG]);
        let address = first.as_ptr();
        recycle(first);
        let shorter = overwritable::<f32>(BIG - 5);
        assert_eq!((shorter.as_ptr(), shorter.len()), (address, BIG - 5));
        let fresh = overwritable::<f32>(3 * BIG);
        assert_eq!(fresh.len(), 3 * BIG);
        assert!(fresh.iter().all(|&x| x == 0.0), "new memory is zeroed");
    }

    #[test]
    fn buffers_of_another_type_or_too_small_are_not_reused() {
        let small = buffer::<f64>(BIG / 2);
        let small_address = small.as_ptr();
        recycle(small);
        let other_type = buffer::<f32>(BIG);
        assert_ne!(other_type.as_ptr() as *const u8, small_address as *const u8);
        let too_big = buffer::<f64>(BIG);
        assert_ne!(too_big.as_ptr(), small_address);
    }

    #[test]
    fn at_most_max_spare_buffers_are_kept() {
        for k in 0..MAX_SPARE + 3 {
            recycle(vec![0u8; MIN_BYTES + k]);
        }
        let kept = super::SPARE.with_borrow(|spare| spare.len());
        assert_eq!(kept, MAX_SPARE);
    }
}
