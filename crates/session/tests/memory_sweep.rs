//! sessions.md, `MemoryStore`: "The sweep runs on the Tokio runtime the
//! store was built in and ends with the last handle." Shown through the
//! runtime's count of live tasks and a listener the store owns.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use snakepit_session::{EndReason, MemoryStore, SessionStore};
use snakepit_tests::until;

/// The tasks alive on this test's runtime.
fn tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// The sweep is one task on the store's runtime; it keeps sweeping while
/// any handle (the store or a clone) lives, and once the last one is dropped
/// the task ends and the store, with its listeners, is freed.
#[tokio::test(flavor = "current_thread")]
async fn the_sweep_ends_with_the_last_handle() {
    assert_eq!(tasks(), 0, "nothing runs before the store");
    let store = MemoryStore::builder()
        .sweep_interval(Duration::from_millis(10))
        .build();
    assert_eq!(tasks(), 1, "the sweep");

    // A listener the store owns: its `Arc` is freed only with the store.
    let ended: Arc<Mutex<Vec<(String, EndReason)>>> = Arc::default();
    let owned = Arc::new(());
    let freed = Arc::downgrade(&owned);
    let log = ended.clone();
    store.on_session_end(Arc::new(move |id, why| {
        let _keep = &owned;
        log.lock().unwrap().push((id.to_owned(), why));
    }));

    // Only a clone is left: the sweep goes on and finds what expires.
    let clone = store.clone();
    drop(store);
    clone
        .create_session("short", Some(Duration::from_millis(1)))
        .await
        .unwrap();
    until(10, "the sweep reports the expired session", || async {
        !ended.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        ended.lock().unwrap()[0],
        ("short".to_owned(), EndReason::Expired)
    );
    assert_eq!(tasks(), 1, "the sweep still runs");

    drop(clone);
    until(10, "the sweep ends after the last handle", || async {
        tasks() == 0
    })
    .await;
    assert!(
        freed.upgrade().is_none(),
        "the store and its listeners are freed"
    );
}

/// Built outside a runtime there is no sweep: nothing is spawned, and
/// `cleanup_expired` is the way to free expired sessions.
#[test]
fn outside_a_runtime_there_is_no_sweep() {
    let store = MemoryStore::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(tasks(), 0);
        store
            .create_session("s", Some(Duration::from_millis(1)))
            .await
            .unwrap();
        until(10, "the session expires", || async {
            !store.session_exists("s").await.unwrap()
        })
        .await;
        store.cleanup_expired().await.unwrap();
        assert_eq!(store.stats().await.unwrap().sessions_expired, 1);
        assert_eq!(tasks(), 0, "no sweep was started");
    });
}

/// `MemoryStoreBuilder::sweep_interval`: "30 s by default". On a runtime
/// whose clock is paused (the sweep sleeps on Tokio's clock; sessions
/// expire on the real one): an expired session is still unreported 29.9 s
/// in, and reported by the sweep just after 30 s.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_sweep_runs_every_30_seconds_by_default() {
    let store = MemoryStore::new();
    let ended: Arc<Mutex<Vec<(String, EndReason)>>> = Arc::default();
    let log = ended.clone();
    store.on_session_end(Arc::new(move |id, why| {
        log.lock().unwrap().push((id.to_owned(), why));
    }));
    // The sweep's first sleep starts when its task first runs.
    tokio::task::yield_now().await;
    store
        .create_session("short", Some(Duration::from_millis(1)))
        .await
        .unwrap();
    std::thread::sleep(Duration::from_millis(20)); // expired on the real clock

    tokio::time::advance(Duration::from_millis(29_900)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(ended.lock().unwrap().is_empty(), "no sweep before 30 s");

    tokio::time::advance(Duration::from_millis(200)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        *ended.lock().unwrap(),
        [("short".to_owned(), EndReason::Expired)],
        "the sweep at 30 s reports the expired session"
    );
}
