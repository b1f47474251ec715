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

const SESSIONS: usize = 10_000;

fn store() -> &'static (MemoryStore, Vec<String>) {
    static STORE: OnceLock<(MemoryStore, Vec<String>)> = OnceLock::new();
    STORE.get_or_init(|| {
        let store = MemoryStore::new();
        let ids: Vec<String> = (0..SESSIONS).map(|i| format!("session_{i}")).collect();
        for id in &ids {
            now(store.ensure_session(id)).unwrap();
            now(store.set(id, "k", json!(1))).unwrap();
        }
        (store, ids)
    })
}

fn next_id() -> &'static str {
    static N: AtomicUsize = AtomicUsize::new(0);
    let (_, ids) = store();
    &ids[N.fetch_add(7919, Ordering::Relaxed) % SESSIONS]
}

#[divan::bench(threads = [1, 2])]
fn ensure_session(b: Bencher<'_, '_>) {
    let (s, _) = store();
    b.bench(|| now(s.ensure_session(next_id())).unwrap());
}

#[divan::bench(threads = [1, 2])]
fn get_key(b: Bencher<'_, '_>) {
    let (s, _) = store();
    b.bench(|| now(s.get(next_id(), "k")).unwrap());
}

#[divan::bench(threads = [1, 2])]
fn set_key(b: Bencher<'_, '_>) {
    let (s, _) = store();
    b.bench(|| now(s.set(next_id(), "k", json!(2))).unwrap());
}

#[divan::bench(threads = [1, 2])]
fn update_session(b: Bencher<'_, '_>) {
    let (s, _) = store();
    b.bench(|| {
        now(s.update_session(next_id(), |s| {
            s.metadata.insert("n".into(), json!(3));
        }))
        .unwrap()
    });
}

#[divan::bench(threads = [1, 2])]
fn create_delete(b: Bencher<'_, '_>) {
    let (s, _) = store();
    static N: AtomicUsize = AtomicUsize::new(0);
    b.bench(|| {
        let id = format!("tmp_{}", N.fetch_add(1, Ordering::Relaxed));
        now(s.create_session(&id, None)).unwrap();
        now(s.delete_session(&id)).unwrap()
    });
}
