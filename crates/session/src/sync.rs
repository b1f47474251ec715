//! Locks that outlive a panic: a thread that panicked while holding one
//! leaves data this crate keeps consistent at every step, so the guard is
//! taken back instead of spreading the panic.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

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

/// Reading and writing a `RwLock`, poisoned or not.
pub(crate) trait UnpoisonedRw<T: ?Sized> {
    /// The read guard.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// The write guard.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> UnpoisonedRw<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|e| e.into_inner())
    }
}
