//! `MemoryStore` operations per call, on one thread and on two.
//!
//! `cargo bench -p snakepit-session --bench store`
//!
//! The store's futures never wait, so each call is polled once, by hand:
//! what is measured is the store, not an executor.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

use divan::Bencher;
use serde_json::json;
use snakepit_session::{MemoryStore, SessionStore};

fn main() {
    divan::main();
}

struct NoWake;
impl Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

fn now<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(NoWake));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("MemoryStore futures are always ready"),
    }
}

/// Live sessions in the store (the `n` of each figure). Calls pick them in
/// a scattered order: with 1,000 the store stays in the CPU caches, with
/// 100,000 most lookups miss them, as with real traffic over many sessions.
const SIZES: [usize; 2] = [1_000, 100_000];

fn store(n: usize) -> &'static MemoryStore {
    static STORES: [OnceLock<MemoryStore>; 2] = [OnceLock::new(), OnceLock::new()];
    let slot = SIZES.iter().position(|&s| s == n).expect("a known size");
    STORES[slot].get_or_init(|| {
        let store = MemoryStore::new();
        for i in 0..n {
            let id = format!("session_{i}");
            now(store.ensure_session(&id)).unwrap();
            now(store.set(&id, "k", json!(1))).unwrap();
        }
        store
    })
}

/// Calls `f` with the next session id, formatted into a reused buffer.
fn with_id<R>(sessions: usize, f: impl FnOnce(&str) -> R) -> R {
    use std::cell::RefCell;
    use std::fmt::Write;
    static N: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static BUF: RefCell<String> = RefCell::new(String::with_capacity(32)));
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        let n = N.fetch_add(7919, Ordering::Relaxed) % sessions;
        let _ = write!(b, "session_{n}");
        f(&b)
    })
}

#[divan::bench(threads = [1, 2], args = SIZES)]
fn ensure_session(b: Bencher<'_, '_>, n: usize) {
    let s = store(n);
    b.bench(|| with_id(n, |id| now(s.ensure_session(id)).unwrap()));
}

#[divan::bench(threads = [1, 2], args = SIZES)]
fn get_key(b: Bencher<'_, '_>, n: usize) {
    let s = store(n);
    b.bench(|| with_id(n, |id| now(s.get(id, "k")).unwrap()));
}

#[divan::bench(threads = [1, 2], args = SIZES)]
fn set_key(b: Bencher<'_, '_>, n: usize) {
    let s = store(n);
    b.bench(|| with_id(n, |id| now(s.set(id, "k", json!(2))).unwrap()));
}

#[divan::bench(threads = [1, 2], args = SIZES)]
fn update_session(b: Bencher<'_, '_>, n: usize) {
    let s = store(n);
    b.bench(|| {
        with_id(n, |id| {
            now(s.update_session(id, |s| {
                s.metadata.insert("n".into(), json!(3));
            }))
            .unwrap()
        })
    });
}

#[divan::bench(threads = [1, 2], args = SIZES)]
fn create_delete(b: Bencher<'_, '_>, n: usize) {
    let s = store(n);
    static N: AtomicUsize = AtomicUsize::new(0);
    b.bench(|| {
        let id = format!("tmp_{}", N.fetch_add(1, Ordering::Relaxed));
        now(s.create_session(&id, None)).unwrap();
        now(s.delete_session(&id)).unwrap()
    });
}
