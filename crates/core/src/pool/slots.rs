//! The slot table and the queues, as plain data: which worker may take a
//! call, who waits, which session went where. No processes, no async.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::lease::Lease;
use super::supervise::CallLimits;
use crate::error::{Result, StartError};
use crate::worker::Worker;

pub(crate) struct Slot {
    pub(crate) worker: Option<Arc<Worker>>,
    /// The generation of the worker the slot holds (or is starting).
    pub(crate) generation: u64,
    /// The last generation handed out (a recycled worker's replacement
    /// starts under a new one while the old still serves).
    pub(crate) last_generation: u64,
    pub(crate) in_flight: u32,
    pub(crate) capacity: u32,
    /// Calls it may take beyond `capacity` now, written ahead to wait in its
    /// stdin (pipelining; 0 while its calls are long, or when off).
    pub(crate) ahead: u32,
    /// In `State::free` (it has idle capacity) or in `State::ahead` (only
    /// room to be written ahead).
    pub(crate) in_free: bool,
    pub(crate) in_ahead: bool,
    /// Streaming calls leased on it and not yet registered with its
    /// worker (which counts them from then on): nothing is written ahead
    /// meanwhile, even when the call in front of such a stream ends first.
    pub(crate) streams_leased: u32,
    /// A SIGINT is on its way to the call it runs: nothing is written ahead
    /// (the signal must not land in a next call) until that call's reply.
    pub(crate) interrupting: bool,
    pub(crate) breaker_open: bool,
    /// A start of its worker is under way, or asked (`Pool::retry_starts`):
    /// an open breaker is then half-open, and calls wait for that start
    /// rather than fail fast ([`State::broken`]).
    pub(crate) attempting: bool,
    /// The worker's answers at which its supervisor is woken to start its
    /// replacement (recycling by calls); 0 once done, or when off.
    pub(crate) replace_at: u64,
    /// The worker's answers at which it takes no new call; 0: never.
    pub(crate) drain_at: u64,
    /// It reached `drain_at`: it finishes its calls, takes no new one, and
    /// leaves when its replacement is ready.
    pub(crate) draining: bool,
    /// Its health ping is in flight: withheld from callers until answered.
    pub(crate) checking: bool,
    /// Wakes the supervisor when the worker reaches `replace_at`.
    pub(crate) due: Arc<tokio::sync::Notify>,
}

impl Slot {
    /// Empties the slot of its worker of `generation`, and of that worker's
    /// calls; the worker, if the slot still held it. A slot already given
    /// to a later generation is left as it is.
    pub(crate) fn vacate(&mut self, generation: u64) -> Option<Arc<Worker>> {
        if self.generation != generation {
            return None;
        }
        self.in_flight = 0;
        self.worker.take()
    }

    /// Calls in flight on it: its units in use, less the one its health
    /// ping holds (a ping is not a call).
    pub(crate) fn calls(&self) -> u32 {
        self.in_flight.saturating_sub(u32::from(self.checking))
    }

    pub(crate) fn new() -> Self {
        Slot {
            worker: None,
            generation: 0,
            last_generation: 0,
            in_flight: 0,
            capacity: 0,
            ahead: 0,
            streams_leased: 0,
            in_free: false,
            in_ahead: false,
            interrupting: false,
            breaker_open: false,
            attempting: false,
            replace_at: 0,
            drain_at: 0,
            draining: false,
            checking: false,
            due: Arc::default(),
        }
    }

    /// It may take a call now: into idle capacity, or written ahead.
    pub(crate) fn has_room(&self) -> bool {
        let ahead = if self.interrupting { 0 } else { self.ahead };
        self.takes_calls() && self.in_flight < self.capacity + ahead
    }

    /// It may take a call that starts at once.
    pub(crate) fn has_idle_room(&self) -> bool {
        self.takes_calls() && self.in_flight < self.capacity
    }

    fn takes_calls(&self) -> bool {
        self.worker.is_some() && !self.draining && !self.checking
    }

    /// A new worker takes the slot: nothing of the last one's state stays.
    pub(crate) fn reset(&mut self, worker: &Arc<Worker>, capacity: u32) {
        self.worker = Some(worker.clone());
        self.in_flight = 0;
        self.capacity = capacity;
        self.ahead = 0;
        self.streams_leased = 0;
        self.interrupting = false;
        self.attempting = false;
        self.replace_at = 0;
        self.drain_at = 0;
        self.draining = false;
        self.checking = false;
    }

    /// The worker's limits of recycling by calls, set with the worker, before
    /// it takes any call.
    pub(crate) fn limit_calls(&mut self, limits: CallLimits) {
        self.replace_at = limits.replace_at;
        self.drain_at = limits.calls;
    }

    /// Lets `room` calls be written ahead, but never so many that a worker
    /// recycled by calls would be given calls past its limit (`served`:
    /// the calls it has answered).
    pub(crate) fn allow_ahead(&mut self, room: u32, served: u64) {
        let room = if self.streams_leased > 0 { 0 } else { room };
        self.ahead = match self.drain_at {
            0 => room,
            at => {
                let left = at
                    .saturating_sub(served)
                    .saturating_sub(u64::from(self.capacity));
                room.min(u32::try_from(left).unwrap_or(u32::MAX))
            }
        };
    }

    /// Acts on the number of calls the worker has answered: wakes its
    /// supervisor near the limit, stops giving it calls at the limit.
    pub(crate) fn count_served(&mut self, served: u64) {
        if self.replace_at > 0 && served >= self.replace_at {
            self.replace_at = 0;
            self.due.notify_one();
        }
        if self.drain_at > 0 && served >= self.drain_at {
            self.draining = true;
        }
    }
}

pub(crate) type LeaseTx = oneshot::Sender<Result<Lease>>;

pub(crate) struct Waiter {
    pub(crate) seq: u64,
    pub(crate) tx: LeaseTx,
    /// A streaming call: nothing is written ahead behind it.
    pub(crate) stream: bool,
    /// The call's session, whose affinity is recorded when it gets its
    /// worker...
    pub(crate) session: Option<Arc<str>>,
    /// ...unless the session ended while the call waited
    /// ([`State::end_session`]).
    pub(crate) session_ended: bool,
}

/// The calls of one session between their touch and their routing.
pub(crate) struct Touching {
    pub(crate) calls: usize,
    /// How often the session ended since the first of them began.
    pub(crate) ends: u64,
}

pub(crate) struct AffinityRecord {
    pub(crate) slot: usize,
    pub(crate) generation: u64,
    pub(crate) last_used: Instant,
}

/// Forgets the affinity records unused for `ttl`, and gives their memory
/// back once the map is mostly empty: a burst of sessions that expired
/// leaves no table sized for them (at most `max_sessions` records).
pub(crate) fn forget_stale(affinity: &mut HashMap<Arc<str>, AffinityRecord>, ttl: Duration) {
    affinity.retain(|_, rec| rec.last_used.elapsed() < ttl);
    if affinity.capacity() > 64 && affinity.len() < affinity.capacity() / 4 {
        affinity.shrink_to(affinity.len() * 2);
    }
}

pub(crate) struct State {
    pub(crate) slots: Vec<Slot>,
    /// Slots that may have idle capacity, most recently freed last (reused
    /// first).
    pub(crate) free: Vec<usize>,
    /// Slots whose workers are busy but may have a call written ahead:
    /// used only when no worker is idle, in turn (a slot given a call goes
    /// to the back), so that calls written ahead spread over the workers
    /// instead of filling one worker's pipe while another's is empty.
    pub(crate) ahead: VecDeque<usize>,
    pub(crate) queue: VecDeque<Waiter>,
    /// Waiters for one slot only (strict session affinity).
    pub(crate) strict: Vec<VecDeque<Waiter>>,
    pub(crate) seq: u64,
    pub(crate) affinity: HashMap<Arc<str>, AffinityRecord>,
    /// Sessions with calls between their session touch and their routing:
    /// how many such calls, and how often the session ended meanwhile
    /// (`Shared::touching`).
    pub(crate) touching: HashMap<Arc<str>, Touching>,
    /// Recycled workers finishing their last calls.
    pub(crate) retiring: Vec<Arc<Worker>>,
    /// Workers out of routing (stdout ended, or the process exited) whose
    /// end their reader still awaits: shutdown must stop them too.
    pub(crate) dying: Vec<Arc<Worker>>,
    /// Workers in their handshake, in no slot yet: shutdown must stop them
    /// too.
    pub(crate) starting: Vec<Arc<Worker>>,
    pub(crate) closed: bool,
    pub(crate) last_start_error: Option<StartError>,
}

impl State {
    /// The last start error, when no worker is ready and every slot's
    /// breaker is open with no start under way or asked: a call then fails
    /// at once with it rather than wait. While a slot tries a start (its
    /// breaker half-open: after the cool-down, or on `Pool::retry_starts`)
    /// calls wait for it, and fail with its error if it fails too.
    pub(crate) fn broken(&self) -> Option<&StartError> {
        let none_ready = self.slots.iter().all(|s| s.worker.is_none());
        let all_open = self.slots.iter().all(|s| s.breaker_open && !s.attempting);
        (none_ready && all_open)
            .then_some(self.last_start_error.as_ref())
            .flatten()
    }

    /// The table of a pool of `size` slots, none filled yet.
    pub(crate) fn new(size: usize) -> Self {
        State {
            slots: (0..size).map(|_| Slot::new()).collect(),
            free: Vec::with_capacity(size),
            ahead: VecDeque::with_capacity(size),
            queue: VecDeque::new(),
            strict: (0..size).map(|_| VecDeque::new()).collect(),
            seq: 0,
            affinity: HashMap::new(),
            touching: HashMap::new(),
            retiring: Vec::new(),
            dying: Vec::new(),
            starting: Vec::new(),
            closed: false,
            last_start_error: None,
        }
    }

    /// Queues a waiter for any slot, or for slot `only`; its receiver.
    pub(crate) fn push_waiter(
        &mut self,
        only: Option<usize>,
        stream: bool,
        session: Option<Arc<str>>,
    ) -> oneshot::Receiver<Result<Lease>> {
        let (tx, rx) = oneshot::channel();
        self.seq += 1;
        let waiter = Waiter {
            seq: self.seq,
            tx,
            stream,
            session,
            session_ended: false,
        };
        match only {
            Some(i) => self.strict[i].push_back(waiter),
            None => self.queue.push_back(waiter),
        }
        rx
    }
    pub(crate) fn queued_entries(&self) -> usize {
        self.queue.len() + self.strict.iter().map(VecDeque::len).sum::<usize>()
    }

    /// The calls waiting for slot `i` alone join the general queue, in
    /// the order they came: its worker is gone.
    pub(crate) fn unstrict(&mut self, i: usize) {
        let moved: Vec<Waiter> = self.strict[i].drain(..).collect();
        for w in moved {
            let at = self.queue.partition_point(|q| q.seq < w.seq);
            self.queue.insert(at, w);
        }
    }

    /// Session `id` ended (removed or expired in the store): the calls of
    /// it still waiting get their worker without recording an affinity
    /// for it.
    pub(crate) fn end_session(&mut self, id: &str) {
        if let Some(t) = self.touching.get_mut(id) {
            t.ends += 1;
        }
        let strict = self.strict.iter_mut().flatten();
        for w in self.queue.iter_mut().chain(strict) {
            if w.session.as_deref() == Some(id) {
                w.session_ended = true;
            }
        }
    }

    pub(crate) fn purge_abandoned(&mut self) {
        self.queue.retain(|w| !w.tx.is_closed());
        for q in &mut self.strict {
            q.retain(|w| !w.tx.is_closed());
        }
    }

    /// Lists slot `i` where a call can find it: with the idle workers, or
    /// with those that may only have a call written ahead.
    pub(crate) fn make_free(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if slot.has_idle_room() {
            if !slot.in_free {
                slot.in_free = true;
                self.free.push(i);
            }
        } else if slot.has_room() && !slot.in_ahead {
            slot.in_ahead = true;
            self.ahead.push_back(i);
        }
    }

    /// A slot for a new call: an idle worker if there is one, else one
    /// that may have the call written ahead.
    pub(crate) fn pop_free(&mut self) -> Option<usize> {
        while let Some(i) = self.free.pop() {
            self.slots[i].in_free = false;
            if self.slots[i].has_idle_room() {
                return Some(i);
            }
            self.make_free(i);
        }
        while let Some(i) = self.ahead.pop_front() {
            self.slots[i].in_ahead = false;
            if self.slots[i].has_idle_room() {
                // Freed meanwhile: it is idle now.
                return Some(i);
            }
            if self.slots[i].has_room() {
                return Some(i);
            }
        }
        None
    }

    /// The oldest live waiter that slot `i` may serve.
    pub(crate) fn pop_waiter(&mut self, i: usize) -> Option<Waiter> {
        loop {
            let strict_seq = self.strict[i].front().map(|w| w.seq);
            let any_seq = self.queue.front().map(|w| w.seq);
            let w = match (strict_seq, any_seq) {
                (None, None) => return None,
                (Some(s), Some(a)) if a < s => self.queue.pop_front(),
                (Some(_), _) => self.strict[i].pop_front(),
                (None, Some(_)) => self.queue.pop_front(),
            }?;
            if !w.tx.is_closed() {
                return Some(w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_affinity_records_go_and_their_table_shrinks() {
        let mut affinity = HashMap::new();
        let old = Instant::now() - Duration::from_secs(10);
        for i in 0..10_000 {
            let rec = AffinityRecord {
                slot: 0,
                generation: 0,
                last_used: if i < 10 { Instant::now() } else { old },
            };
            affinity.insert(Arc::<str>::from(format!("s{i}")), rec);
        }
        let grown = affinity.capacity();
        forget_stale(&mut affinity, Duration::from_secs(5));
        assert_eq!(affinity.len(), 10, "the records used within the TTL stay");
        assert!(
            affinity.capacity() < grown / 100,
            "the table sized for 10,000 is given back: {} of {grown}",
            affinity.capacity()
        );
        forget_stale(&mut affinity, Duration::from_secs(5));
        assert_eq!(affinity.len(), 10);
    }

    #[test]
    fn the_oldest_waiter_a_slot_may_serve_goes_first_and_abandoned_ones_are_skipped() {
        let mut st = State::new(2);
        let any1 = st.push_waiter(None, false, None);
        let only0 = st.push_waiter(Some(0), false, None);
        let any2 = st.push_waiter(None, false, None);
        let only1 = st.push_waiter(Some(1), false, None);
        assert_eq!(st.queued_entries(), 4);
        // Slot 1: the oldest it may serve is the first general waiter.
        assert_eq!(st.pop_waiter(1).map(|w| w.seq), Some(1));
        // Slot 0: its strict waiter (seq 2) is older than general seq 3.
        assert_eq!(st.pop_waiter(0).map(|w| w.seq), Some(2));
        drop(any2); // gave up waiting
        assert_eq!(
            st.pop_waiter(0).map(|w| w.seq),
            None,
            "slot 0 has nobody left"
        );
        assert_eq!(st.pop_waiter(1).map(|w| w.seq), Some(4));
        drop((any1, only0, only1));
        assert_eq!(st.queued_entries(), 0);
    }

    #[test]
    fn waiters_for_a_slot_whose_worker_is_gone_join_the_queue_in_order() {
        let mut st = State::new(2);
        let a = st.push_waiter(None, false, None);
        let b = st.push_waiter(Some(0), false, None);
        let c = st.push_waiter(None, false, None);
        let d = st.push_waiter(Some(0), false, None);
        st.unstrict(0);
        assert!(st.strict[0].is_empty());
        let order: Vec<u64> = st.queue.iter().map(|w| w.seq).collect();
        assert_eq!(order, [1, 2, 3, 4]);
        assert_eq!(st.pop_waiter(1).map(|w| w.seq), Some(1));
        assert_eq!(
            st.pop_waiter(1).map(|w| w.seq),
            Some(2),
            "slot 1 may serve it now"
        );
        drop((a, b, c, d));
    }

    #[test]
    fn vacating_an_old_generation_leaves_the_slots_new_worker_and_calls() {
        let mut slot = Slot::new();
        slot.generation = 3;
        slot.in_flight = 2;
        assert!(slot.vacate(2).is_none());
        assert_eq!(slot.in_flight, 2, "generation 3's calls stay");
        assert!(slot.vacate(3).is_none(), "no worker was in it");
        assert_eq!(slot.in_flight, 0, "generation 3's calls went with it");
    }

    #[test]
    fn purging_keeps_only_live_waiters() {
        let mut st = State::new(1);
        let keep = st.push_waiter(None, false, None);
        drop(st.push_waiter(None, false, None));
        drop(st.push_waiter(Some(0), false, None));
        st.purge_abandoned();
        assert_eq!(st.queued_entries(), 1);
        drop(keep);
    }

    #[test]
    fn calls_written_ahead_never_take_a_worker_past_its_limit() {
        let mut slot = Slot::new();
        slot.capacity = 1;
        slot.allow_ahead(16, 10);
        assert_eq!(slot.ahead, 16, "no limit");
        slot.drain_at = 50;
        slot.allow_ahead(16, 10);
        assert_eq!(slot.ahead, 16, "far from it");
        slot.allow_ahead(16, 45);
        assert_eq!(slot.ahead, 4, "45 answered, 1 running, 4 ahead: 50");
        slot.allow_ahead(16, 49);
        assert_eq!(slot.ahead, 0);
        slot.allow_ahead(16, 60);
        assert_eq!(slot.ahead, 0, "past it (a replacement that failed)");
    }

    #[test]
    fn nothing_is_written_ahead_while_a_stream_is_leased_and_not_registered() {
        let mut slot = Slot::new();
        slot.capacity = 1;
        slot.streams_leased = 1;
        slot.allow_ahead(16, 10);
        assert_eq!(
            slot.ahead, 0,
            "the call in front ended before the stream was registered"
        );
        slot.streams_leased = 0;
        slot.allow_ahead(16, 10);
        assert_eq!(slot.ahead, 16);
    }

    #[test]
    fn a_slot_drains_at_its_limit_and_wakes_its_supervisor_before() {
        let mut slot = Slot::new();
        slot.replace_at = 45;
        slot.drain_at = 50;
        slot.count_served(44);
        assert!(!slot.draining);
        assert_eq!(slot.replace_at, 45);
        slot.count_served(45);
        assert_eq!(slot.replace_at, 0, "the supervisor was woken once");
        assert!(!slot.draining);
        slot.count_served(50);
        assert!(slot.draining);
        assert!(!slot.has_room());
    }
}
