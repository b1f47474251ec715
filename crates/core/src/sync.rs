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

/// A future of the application's (a host function, a session hook) whose
/// panic is caught and given as its message: it must not unwind into the
/// pool's tasks, where it would leave a caller or a worker waiting for an
/// answer that never comes.
pub(crate) struct CatchUnwind<F>(pub(crate) F);

impl<F: std::future::Future + Unpin> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = std::pin::Pin::new(&mut self.0);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(panic) => std::task::Poll::Ready(Err(panic_message(&*panic))),
        }
    }
}

/// What a panic said, when it said it with a string.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Runs the application's synchronous code (an adapter's hooks, a session
/// store's `touch` making its future, the `trace_context` hook) with its
/// panic caught and given as its message, for the same reason as
/// [`CatchUnwind`]: on a caller's task, a panic would end the caller's
/// future as if it had been dropped, and the call would count as
/// cancelled instead of failed.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| panic_message(&*p))
}
