//! The shared store suite, against `MemoryStore`.

mod common;

use std::time::Duration;

use snakepit_session::MemoryStore;

async fn make(ttl: Duration, sweep: Duration) -> (MemoryStore, ()) {
    (
        MemoryStore::builder()
            .default_ttl(ttl)
            .sweep_interval(sweep)
            .build(),
        (),
    )
}

store_suite!(make);
