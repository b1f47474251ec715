//! Temporary files the workers write (logs, markers) and what they logged,
//! and a wait for NATS to drop a connection's subscriptions.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A path in the temporary folder no other test (or run) uses:
/// `snakepit-<prefix>-<pid>-<name>-<free port>`.
pub fn temp(prefix: &str, name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "snakepit-{prefix}-{}-{name}-{}",
        std::process::id(),
        super::free_port()
    ))
}

/// A file removed on drop (a test that fails leaves none behind).
pub struct Removed(pub PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the worker logged in `log`: (token, what) lines.
pub fn logged(log: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut parts = l.split(' ');
            let token = parts.next().unwrap_or_default().to_owned();
            let what = parts.next().unwrap_or_default().to_owned();
            (token, what)
        })
        .collect()
}

/// How many `<token> <what>` lines the worker logged in `log`.
pub fn count_logged(log: &Path, token: &str, what: &str) -> usize {
    logged(log)
        .iter()
        .filter(|(t, w)| t == token && w == what)
        .count()
}

/// Waits until NATS finds nobody subscribed to `subject` (a request there
/// comes back "no responders"): the server has dropped the subscriptions
/// of the connection that had it. Fails after `guard`.
pub async fn no_responders(raw: &async_nats::Client, subject: &str, guard: Duration) {
    let until = Instant::now() + guard;
    loop {
        let ask = raw.request(subject.to_owned(), "".into());
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_millis(100), ask).await {
            if e.kind() == async_nats::RequestErrorKind::NoResponders {
                return;
            }
        }
        assert!(
            Instant::now() < until,
            "the server still has a subscriber for {subject}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
