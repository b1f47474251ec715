//! Locks that outlive a panic: a thread that panicked while holding one
//! leaves data this crate keeps consistent at every step, so the guard is
//! taken back instead of spreading the panic.

use std::sync::{Mutex, MutexGuard};

/// `lock` that takes a poisoned lock's guard back.
pub(crate) trait Unpoisoned<T: ?Sized> {
    /// The guard, poisoned or not.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Unpoisoned<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|e| e.into_inner())
    }
}
