//! A client's background tasks that wake while the client is still being
//! built (crates/cluster/src/client.rs, `Client::connect_with`): a host's
//! heartbeat that reaches the client then, or the first check of its
//! monitor, must not end the task that hears the hosts or the one that
//! marks them lost.
//!
//! The tasks hold the client weakly and end once it is gone. They were
//! spawned inside `Arc::new_cyclic`, where the client cannot be reached
//! yet: a task that woke before the building thread had finished found no
//! client and ended for good. A client so built never heard of any host (a
//! heartbeat came first) or never found a silent host lost (the monitor's
//! first check came first). It happened in CI about one full run in
//! three, when a host started just before a client beat for the first
//! time while that client was being built on a loaded machine.
//!
//! Which thread runs first is the scheduler's choice. So that these tests
//! do not depend on it, the thread that builds the client is held at each
//! allocation it makes meanwhile (this binary's global allocator,
//! [`Holding`]) until a few ticks of a [`Clock`] have run: tasks spawned
//! after the client's, in the same queue, each of which sends a message
//! through NATS. Whatever the client has spawned by then has had its turn
//! to run, with the messages NATS carried meanwhile.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use snakepit_cluster::{Client, ClientConfig, ServeOptions};

/// The system's allocator, which holds a thread marked with [`held`] at
/// each allocation until the clock has moved [`TICKS_PER_HOLD`] ticks (or
/// for [`MOST_PER_HOLD`] at most, should the clock stop).
struct Holding;

#[global_allocator]
static ALLOCATOR: Holding = Holding;

thread_local! {
    /// This thread is building a client: hold it at each allocation.
    static HOLD: Cell<bool> = const { Cell::new(false) };
}

/// The clock's ticks seen so far (see [`Clock`]).
static TICKS: AtomicU64 = AtomicU64::new(0);

/// The clock's ticks a held allocation waits for.
const TICKS_PER_HOLD: u64 = 6;

/// The longest one allocation is held (a bound for a clock that stopped,
/// never reached while it runs).
const MOST_PER_HOLD: Duration = Duration::from_millis(500);

/// Holds this thread if [`held`] marked it. Nothing here allocates (the
/// thread-local has a constant initialiser and no destructor), so an
/// allocation never comes back into it.
fn hold_if_marked() {
    if !HOLD.try_with(Cell::get).unwrap_or(false) {
        return;
    }
    let from = TICKS.load(Ordering::Acquire);
    let until = Instant::now() + MOST_PER_HOLD;
    while TICKS.load(Ordering::Acquire) < from + TICKS_PER_HOLD && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
}

// SAFETY: every method hands the caller's arguments to the system's
// allocator unchanged and returns what it returns; holding the thread
// first changes when, never what.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Holding {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        hold_if_marked();
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        hold_if_marked();
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        System.realloc(ptr, layout, new_size)
    }
}

/// Clears [`HOLD`] when dropped (a poll that panics included).
struct Unmark;

impl Drop for Unmark {
    fn drop(&mut self) {
        HOLD.with(|h| h.set(false));
    }
}

/// Runs `f`, this thread held at each allocation made while `f` is polled.
async fn held<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        HOLD.with(|h| h.set(true));
        let _unmark = Unmark;
        f.as_mut().poll(cx)
    })
    .await
}

/// A clock: every 5 ms a thread outside the runtime spawns a task on it
/// that publishes a message on `clock`, which another connection counts
/// in [`TICKS`]. Its tasks go through the runtime's queue of tasks spawned
/// from outside it, as those of a client built on this test's thread do,
/// behind them: a tick counted means a task spawned later has run, and a
/// message has crossed NATS. Stopped on drop.
struct Clock {
    count: tokio::task::JoinHandle<()>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Clock {
    async fn start(nats: &NatsServer) -> Clock {
        let reader = nats.connect().await;
        let mut sub = subscribed(&reader, &["clock"]).await.remove(0);
        let count = tokio::spawn(async move {
            let _reader = reader;
            while sub.next().await.is_some() {
                TICKS.fetch_add(1, Ordering::AcqRel);
            }
        });
        let writer = nats.connect().await;
        let runtime = tokio::runtime::Handle::current();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Acquire) {
                let writer = writer.clone();
                runtime.spawn(async move {
                    let _ = writer.publish("clock", "".into()).await;
                });
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let from = TICKS.load(Ordering::Acquire);
        eventually(20, "the clock ticks", || async {
            TICKS.load(Ordering::Acquire) > from
        })
        .await;
        Clock {
            count,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.count.abort();
    }
}

/// A client of the cluster `test` on a connection of its own, built while
/// its thread is held (see the file's comment).
async fn client_built_held(nats: &NatsServer) -> Client {
    let conn = nats.connect().await;
    let mut config = ClientConfig::default();
    config.host_timeout = Duration::from_secs(1);
    held(Client::connect_with(&conn, "test", config))
        .await
        .unwrap()
}

/// Host `a` over a pool of one worker, beating every 10 ms, on a
/// connection of its own.
async fn host_a(nats: &NatsServer) -> (snakepit_core::Pool, snakepit_cluster::Node) {
    let pool = pool(1).await;
    let options = ServeOptions::new()
        .host_id("a")
        .heartbeat(Duration::from_millis(10));
    let node = snakepit_cluster::serve_with(&nats.connect().await, "test", pool.clone(), options)
        .await
        .unwrap();
    (pool, node)
}

/// A host that beats while a client is being built: the client hears it.
/// Before the fix, the heartbeat that came first ended the client's task
/// that hears the hosts, and the client never heard of any host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_a_heartbeat_reaches_while_it_is_built_hears_the_host() {
    let nats = NatsServer::start().await;
    let _clock = Clock::start(&nats).await;
    let (pool, node) = host_a(&nats).await;
    let spy = nats.connect().await;
    let mut beats = subscribed(&spy, &["snakepit.test.hb"]).await.remove(0);
    tokio::time::timeout(Duration::from_secs(20), beats.next())
        .await
        .expect("the host beats");

    let client = client_built_held(&nats).await;
    eventually(20, "the client hears host a", || async {
        client.hosts().iter().any(|h| h.id == "a")
    })
    .await;
    drop(node);
    let _ = tokio::time::timeout(Duration::from_secs(10), pool.shutdown()).await;
}

/// A client built while nothing beats, whose monitor's first check comes
/// while it is being built: a host that starts later and then falls
/// silent is found lost. Before the fix, that first check ended the
/// monitor, and the client listed the silent host for ever.
///
/// The host is heartbeats alone ([`fake_heartbeats`]), which stop without
/// a goodbye: only the monitor can tell the client that it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_first_check_comes_while_it_is_built_finds_a_silent_host_lost() {
    let nats = NatsServer::start().await;
    let _clock = Clock::start(&nats).await;
    let client = client_built_held(&nats).await;

    let beats = fake_heartbeats(&nats.connect().await, "a");
    eventually(20, "the client hears host a", || async {
        client.hosts().iter().any(|h| h.id == "a")
    })
    .await;
    beats.abort();
    eventually(20, "the client finds the silent host lost", || async {
        client.hosts().is_empty()
    })
    .await;
}
