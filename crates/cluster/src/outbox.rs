//! Messages waiting to go out on NATS, sent together.
//!
//! A client's calls and a host's replies are pushed here by the tasks that
//! make them, without waiting; one sender task takes everything pushed
//! since it last ran and sends it, several calls to one host (or several
//! replies to one client) in one NATS message. Under load the callers woken
//! together push together, so a message carries as many calls as were
//! ready, and the NATS server, the network and both ends handle one message
//! instead of many; a lone call goes out alone, as soon as the sender runs.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

pub(crate) struct Outbox<T> {
    items: Mutex<Vec<T>>,
    wake: Notify,
    /// Held while a sender sends what it took, so that a last drain can
    /// wait for it ([`Outbox::sending`]).
    sending: tokio::sync::Mutex<()>,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Outbox {
            items: Mutex::new(Vec::new()),
            wake: Notify::new(),
            sending: tokio::sync::Mutex::new(()),
        }
    }
}

impl<T> Outbox<T> {
    /// Adds an item; the sender runs if it was idle.
    pub(crate) fn push(&self, item: T) {
        let mut items = self.items.lock().unwrap();
        let first = items.is_empty();
        items.push(item);
        drop(items);
        if first {
            // Stores a permit if the sender is busy: it looks again after.
            self.wake.notify_one();
        }
    }

    /// Returns once something is waiting to be sent.
    pub(crate) async fn ready(&self) {
        while self.items.lock().unwrap().is_empty() {
            self.wake.notified().await;
        }
    }

    /// Everything pushed so far, to send (holding [`sending`](Self::sending)).
    pub(crate) fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.items.lock().unwrap())
    }

    /// The sending lock: a sender holds it from [`take`](Self::take) to the
    /// end of its sends; whoever else holds it knows that nothing taken is
    /// still unsent.
    pub(crate) async fn sending(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.sending.lock().await
    }
}

/// Splits `items` into groups of those `same` says go together (a
/// client's calls by host, a host's replies by client), each group in the
/// order its items were pushed, the groups in the order of their first
/// items.
pub(crate) fn groups<T>(items: Vec<T>, same: impl Fn(&T, &T) -> bool) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    for item in items {
        match out.iter_mut().find(|g| same(&g[0], &item)) {
            Some(group) => group.push(item),
            None => out.push(vec![item]),
        }
    }
    out
}

/// Splits `items` into runs of at most `max` bytes (as `size` counts them,
/// with `overhead` for each item), keeping their order; an item larger than
/// `max` is a run of its own.
pub(crate) fn runs<T>(
    items: Vec<T>,
    max: usize,
    size: impl Fn(&T) -> usize,
    overhead: usize,
) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut used = 0;
    for item in items {
        let n = size(&item) + overhead;
        match out.last_mut() {
            Some(run) if used + n <= max => {
                used += n;
                run.push(item);
            }
            _ => {
                used = n;
                out.push(vec![item]);
            }
        }
    }
    out
}

/// The connections a NATS client has made, the first one included
/// (async-nats's `Statistics::connects`): when the count grows, the
/// connection was made again, and what NATS held for the old one, or had
/// not yet taken from it, is gone.
pub(crate) struct Connects(Arc<async_nats::Statistics>);

impl Connects {
    pub(crate) fn of(nats: &async_nats::Client) -> Self {
        Connects(nats.statistics())
    }

    pub(crate) fn now(&self) -> u64 {
        self.0.connects.load(Ordering::Relaxed)
    }
}

/// The most messages kept to send again after a reconnect ([`Resend`]).
pub(crate) const RESEND_MESSAGES: usize = 4096;
/// The most bytes of them.
pub(crate) const RESEND_BYTES: usize = 16 << 20;

/// Messages sent lately, each with the connection count ([`Connects`]) it
/// went out under, to send again once the connection has been made again
/// (a client's cancels, a host's outcomes): the last [`RESEND_MESSAGES`],
/// at most [`RESEND_BYTES`] of them.
#[derive(Default)]
pub(crate) struct Resend {
    messages: VecDeque<(u64, async_nats::Subject, bytes::Bytes)>,
    bytes: usize,
}

impl Resend {
    /// Keeps a message sent under connection count `conn`, dropping the
    /// oldest past the bounds.
    pub(crate) fn keep(&mut self, conn: u64, to: async_nats::Subject, payload: bytes::Bytes) {
        self.bytes += payload.len();
        self.messages.push_back((conn, to, payload));
        while self.messages.len() > RESEND_MESSAGES || self.bytes > RESEND_BYTES {
            let Some((_, _, p)) = self.messages.pop_front() else {
                break;
            };
            self.bytes -= p.len();
        }
    }

    /// Copies of the messages kept that went to `to`, oldest first (they
    /// stay kept).
    pub(crate) fn to(&self, to: &str) -> Vec<(async_nats::Subject, bytes::Bytes)> {
        self.messages
            .iter()
            .filter(|(_, s, _)| s.as_str() == to)
            .map(|(_, s, p)| (s.clone(), p.clone()))
            .collect()
    }

    /// Whether a message that went to `to` is kept.
    pub(crate) fn holds(&self, to: &str) -> bool {
        self.messages.iter().any(|(_, s, _)| s.as_str() == to)
    }

    /// Copies of the messages sent under a count below `conn`, which stay
    /// kept as sent under `conn` (they are kept in the order sent, so those
    /// are the first): sent again now, and once more to a receiver whose
    /// own connection is made again later.
    pub(crate) fn renew(&mut self, conn: u64) -> Vec<(async_nats::Subject, bytes::Bytes)> {
        let mut again = Vec::new();
        for (at, to, p) in self.messages.iter_mut() {
            if *at >= conn {
                break;
            }
            *at = conn;
            again.push((to.clone(), p.clone()));
        }
        again
    }

    /// Takes out the messages sent under a count below `conn`, oldest
    /// first. Two tasks that keep what they send (a host's replies and its
    /// declines) may keep them a little out of the order of their counts,
    /// so every message is looked at, not only the first ones.
    pub(crate) fn before(&mut self, conn: u64) -> Vec<(async_nats::Subject, bytes::Bytes)> {
        let mut again = Vec::new();
        let mut kept = VecDeque::with_capacity(self.messages.len());
        for (at, to, p) in self.messages.drain(..) {
            if at < conn {
                self.bytes -= p.len();
                again.push((to, p));
            } else {
                kept.push_back((at, to, p));
            }
        }
        self.messages = kept;
        again
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_keep_order_and_size() {
        let items = vec![3usize, 3, 3, 10, 1, 1];
        let r = runs(items, 8, |n| *n, 1);
        assert_eq!(r, vec![vec![3, 3], vec![3], vec![10], vec![1, 1]]);
        assert!(runs(Vec::<usize>::new(), 8, |n| *n, 1).is_empty());
    }

    #[test]
    fn groups_keep_the_order_of_their_items() {
        let items = vec![(1, 'a'), (2, 'b'), (1, 'c'), (3, 'd'), (2, 'e')];
        let g = groups(items, |a, b| a.0 == b.0);
        assert_eq!(
            g,
            vec![
                vec![(1, 'a'), (1, 'c')],
                vec![(2, 'b'), (2, 'e')],
                vec![(3, 'd')]
            ]
        );
    }

    #[tokio::test]
    async fn a_push_while_the_sender_is_busy_is_not_lost() {
        let outbox = Outbox::default();
        outbox.push(1);
        outbox.ready().await;
        assert_eq!(outbox.take(), vec![1]);
        // The sender is "sending" now; two more arrive meanwhile.
        outbox.push(2);
        outbox.push(3);
        outbox.ready().await;
        assert_eq!(outbox.take(), vec![2, 3]);
        assert!(outbox.take().is_empty());
        let ready =
            tokio::time::timeout(std::time::Duration::from_millis(20), outbox.ready()).await;
        assert!(ready.is_err(), "nothing pushed: ready waits");
    }

    #[test]
    fn resend_gives_back_what_went_out_under_older_connections_in_order() {
        let msg = |s: &str| {
            (
                async_nats::Subject::from(s),
                bytes::Bytes::from(s.to_owned()),
            )
        };
        let mut r = Resend::default();
        for (conn, s) in [(1, "a"), (1, "b"), (2, "c")] {
            let (to, p) = msg(s);
            r.keep(conn, to, p);
        }
        assert!(r.before(1).is_empty());
        let again: Vec<String> = r
            .before(2)
            .into_iter()
            .map(|(to, _)| to.to_string())
            .collect();
        assert_eq!(again, ["a", "b"]);
        assert!(r.before(2).is_empty(), "taken out");
        assert_eq!(r.before(3).len(), 1);
        for i in 0..RESEND_MESSAGES + 10 {
            let (to, p) = msg(&i.to_string());
            r.keep(5, to, p);
        }
        assert_eq!(r.before(6).len(), RESEND_MESSAGES, "the oldest went first");
    }

    #[test]
    fn resend_gives_back_older_messages_kept_behind_newer_ones() {
        let mut r = Resend::default();
        for (conn, s) in [(1, "a"), (2, "b"), (1, "c"), (2, "d")] {
            r.keep(conn, s.into(), bytes::Bytes::from(s));
        }
        let again: Vec<String> = r
            .before(2)
            .into_iter()
            .map(|(to, _)| to.to_string())
            .collect();
        assert_eq!(again, ["a", "c"]);
        assert_eq!(r.bytes, 2, "b and d stay, counted");
        assert_eq!(r.before(3).len(), 2);
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn renewed_messages_are_sent_again_once_per_reconnect_and_stay_kept() {
        let mut r = Resend::default();
        for (conn, to, p) in [(1, "h1", "x"), (1, "h2", "y"), (2, "h1", "z")] {
            r.keep(conn, to.into(), bytes::Bytes::from(p));
        }
        let payloads = |v: Vec<(async_nats::Subject, bytes::Bytes)>| -> Vec<bytes::Bytes> {
            v.into_iter().map(|(_, p)| p).collect()
        };
        assert_eq!(payloads(r.renew(2)), ["x", "y"]);
        assert!(r.renew(2).is_empty(), "sent again under 2 already");
        assert_eq!(payloads(r.to("h1")), ["x", "z"], "still kept");
        assert_eq!(payloads(r.renew(3)), ["x", "y", "z"]);
        assert_eq!(r.before(4).len(), 3);
    }

    #[test]
    fn resend_to_one_subject_copies_its_messages_in_order_and_keeps_them() {
        let mut r = Resend::default();
        for (conn, to, p) in [(1, "h1", "x"), (1, "h2", "y"), (2, "h1", "z")] {
            r.keep(conn, to.into(), bytes::Bytes::from(p));
        }
        let payloads = |v: Vec<(async_nats::Subject, bytes::Bytes)>| -> Vec<bytes::Bytes> {
            v.into_iter().map(|(_, p)| p).collect()
        };
        assert_eq!(payloads(r.to("h1")), ["x", "z"]);
        assert_eq!(payloads(r.to("h1")), ["x", "z"], "still kept");
        assert!(r.to("h3").is_empty());
        assert_eq!(r.before(3).len(), 3);
    }
}
