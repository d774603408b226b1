//! Scratch buffers a backend keeps from one op to the next.
//!
//! An op's workers take their buffers (im2col panels, tiles) from the
//! backend's [`Keep`] and hand them back when their loop ends, so that a
//! layer run again and again (a training loop, a benchmark) allocates and
//! zeroes its scratch once rather than on every call: DCGAN's transposed
//! layer packs two 2 MiB panels per call, which a fresh buffer first zeroes
//! (7% of that op's time). What is kept is bounded: at most [`KEPT`] sets,
//! each no larger than the largest op's share of its `workspace_bytes`, freed
//! with the backend.

use std::any::Any;
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, PoisonError};

/// Sets of buffers a backend keeps at most: enough for every worker of a
/// pool of 8 threads, with one nested loop each.
const KEPT: usize = 16;

/// Buffers handed back by earlier ops, of any type.
pub(crate) struct Keep {
    free: Mutex<Vec<Box<dyn Any + Send>>>,
}

impl Keep {
    pub const fn new() -> Self {
        Keep { free: Mutex::new(Vec::new()) }
    }

    /// A kept `T`, or a new one from `make`; it is kept again when the lease drops.
    pub fn take<T: Any + Send>(&self, make: impl FnOnce() -> T) -> Kept<'_, T> {
        let kept = {
            let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
            free.iter().position(|value| value.is::<T>()).map(|i| free.swap_remove(i))
        };
        let value = kept.and_then(|value| value.downcast::<T>().ok()).map_or_else(make, |value| *value);
        Kept { keep: self, value: Some(value) }
    }
}

impl std::fmt::Debug for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.free.lock().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("Keep").field("kept", &kept).finish()
    }
}

/// A value taken from a [`Keep`], handed back when dropped.
pub(crate) struct Kept<'a, T: Any + Send> {
    keep: &'a Keep,
    /// `Some` until dropped.
    value: Option<T>,
}

impl<T: Any + Send> Deref for Kept<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value.as_ref().expect("a kept value is held until dropped")
    }
}

impl<T: Any + Send> DerefMut for Kept<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value.as_mut().expect("a kept value is held until dropped")
    }
}

impl<T: Any + Send> Drop for Kept<'_, T> {
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            let mut free = self.keep.free.lock().unwrap_or_else(PoisonError::into_inner);
            if free.len() < KEPT {
                free.push(Box::new(value));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_handed_back_is_taken_again_by_type() {
        let keep = Keep::new();
        {
            let mut numbers = keep.take(Vec::<f32>::new);
            numbers.extend([1.0, 2.0]);
            let _text = keep.take(String::new);
        }
        assert_eq!(*keep.take(Vec::<f32>::new), [1.0, 2.0], "the f32 buffer comes back as it was left");
        assert!(keep.take(Vec::<f64>::new).is_empty(), "another type makes its own");
        let held: Vec<_> = (0..2 * KEPT).map(|_| keep.take(|| 0u8)).collect();
        drop(held);
        assert_eq!(keep.free.lock().unwrap().len(), KEPT, "at most KEPT are kept");
    }
}
