//! Taking and giving back a unit of a worker's capacity: the free list,
//! the queue, session affinity, and the `Lease` that returns itself on drop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::options::Affinity;
use super::shared::Shared;
use super::slots::{AffinityRecord, State};
use crate::error::{Error, Result};
use crate::worker::Worker;

/// A claim on one unit of a worker's capacity. Dropped unused, it gives the
/// unit back (so a lease lost in a cancelled queue wait leaks nothing).
pub(crate) struct Lease {
    pub(crate) worker: Arc<Worker>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) armed: bool,
    /// For a streaming call: counted in its slot's `streams_leased` until
    /// the stream is registered with the worker ([`Shared::stream_registered`])
    /// or the lease is dropped unused.
    pub(crate) stream: bool,
}

impl Lease {
    pub(crate) fn disarm(mut self) -> Arc<Worker> {
        self.armed = false;
        self.worker.clone()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            if self.stream {
                self.shared.stream_registered(&self.worker);
            }
            self.shared.release(&self.worker);
        }
    }
}

impl Shared {
    /// Gives back one unit of `worker`'s capacity: to the oldest waiter it
    /// may serve, or to the free list.
    pub(crate) fn release(self: &Arc<Self>, worker: &Worker) {
        let mut st = self.state();
        let slot = &mut st.slots[worker.slot];
        if slot.generation != worker.generation || slot.worker.is_none() {
            return;
        }
        slot.in_flight = slot.in_flight.saturating_sub(1);
        slot.interrupting = false;
        // A running call refused its SIGINT because of this unit (a call
        // leased, then never sent) may have it now.
        if let Some(due) = worker.interrupt_due() {
            self.interrupt_in(&mut st, worker, due);
        }
        let slot = &mut st.slots[worker.slot];
        let served = worker.served.load(Ordering::Relaxed);
        slot.allow_ahead(worker.pipeline_room(self.config.pipeline_depth), served);
        if slot.replace_at > 0 || slot.drain_at > 0 {
            slot.count_served(served);
        }
        self.hand_off(&mut st, worker.slot);
    }

    /// Sends SIGINT for call `id`, the one `worker` runs, if the signal can
    /// reach only that call; whether it did. Under the pool's lock, so that
    /// no call is handed to the worker between the check and the signal; a
    /// worker with another call leased or registered (written ahead, even
    /// to a recycled worker out of its slot) is not signalled, but calls
    /// written ahead and given up unrun do not count; a call refused is
    /// signalled when the last call behind it is given up
    /// ([`Worker::abandon`]). Once signalled, nothing is written ahead to
    /// it until that call's reply.
    pub(crate) fn interrupt(&self, worker: &Worker, id: u64) -> bool {
        self.interrupt_in(&mut self.state(), worker, id)
    }

    /// [`Shared::interrupt`] under the pool's lock, held.
    fn interrupt_in(&self, st: &mut State, worker: &Worker, id: u64) -> bool {
        let slot = &mut st.slots[worker.slot];
        let routed = slot.generation == worker.generation && slot.worker.is_some();
        // Calls given up while they waited behind `id`, and sent a
        // `cancel` frame, keep their units until the worker answers them;
        // it will not run them.
        if routed && worker.interrupt_refused(id, slot.in_flight) {
            return false;
        }
        if !worker.signal_call(id) {
            return false;
        }
        if routed {
            slot.interrupting = true;
        }
        true
    }

    pub(crate) fn hand_off(self: &Arc<Self>, st: &mut State, i: usize) {
        while st.slots[i].has_room() {
            let Some(waiter) = st.pop_waiter(i) else {
                st.make_free(i);
                return;
            };
            let slot = &mut st.slots[i];
            slot.in_flight += 1;
            if waiter.stream {
                slot.ahead = 0; // until it is registered with its worker
                slot.streams_leased += 1;
            }
            let lease = Lease {
                worker: slot.worker.clone().expect("has_room checked"),
                shared: self.clone(),
                armed: true,
                stream: waiter.stream,
            };
            if let Err(Ok(lease)) = waiter.tx.send(Ok(lease)) {
                // The waiter left between the check and the send.
                lease.disarm();
                let slot = &mut st.slots[i];
                slot.in_flight -= 1;
                if waiter.stream {
                    slot.streams_leased -= 1;
                }
                continue;
            }
            // Under the lock that hands the worker over, so that a session
            // that ends is either ended for this waiter already, or has
            // this record removed after it.
            if let (Some(s), false) = (&waiter.session, waiter.session_ended) {
                self.remember(st, s, i);
            }
        }
    }

    /// Leases slot `i`'s worker. `stream`: for a streaming call, which may
    /// wait on its reader for any time, so nothing is written ahead behind
    /// it until the worker's next release.
    pub(crate) fn take(self: &Arc<Self>, st: &mut State, i: usize, stream: bool) -> Lease {
        let slot = &mut st.slots[i];
        slot.in_flight += 1;
        if stream {
            slot.ahead = 0;
            slot.streams_leased += 1;
        }
        let worker = slot.worker.clone().expect("taken slots have a worker");
        st.make_free(i);
        Lease {
            worker,
            shared: self.clone(),
            armed: true,
            stream,
        }
    }

    /// A streaming call leased on `worker` was registered with it (which
    /// counts it from then on, see `Worker::pipeline_room`), or its lease
    /// was dropped unused: its slot no longer holds calls back for it.
    pub(crate) fn stream_registered(&self, worker: &Worker) {
        let mut st = self.state();
        let slot = &mut st.slots[worker.slot];
        if slot.generation == worker.generation && slot.worker.is_some() {
            slot.streams_leased = slot.streams_leased.saturating_sub(1);
        }
    }

    pub(crate) async fn acquire(
        self: &Arc<Self>,
        session: Option<&Arc<str>>,
        affinity: Affinity,
        deadline: Instant,
        timeout: Duration,
        command: &str,
        stream: bool,
    ) -> Result<Lease> {
        let rx = {
            let mut st = self.state();
            if st.closed {
                return Err(Error::ShutDown);
            }
            let preferred = session.and_then(|s| {
                let rec = st.affinity.get_mut(s)?;
                rec.last_used = Instant::now();
                let (slot, generation) = (rec.slot, rec.generation);
                let s = &st.slots[slot];
                // A draining worker is about to go: the session moves on.
                (s.generation == generation && s.worker.is_some() && !s.draining).then_some(slot)
            });
            let mut strict_slot = None;
            if let Some(p) = preferred {
                // Its worker is free: idle, or (strict affinity, which waits
                // for it anyway) with room to have the call written ahead.
                let free = match affinity {
                    Affinity::Strict => st.slots[p].has_room(),
                    _ => st.slots[p].has_idle_room(),
                };
                if free {
                    return Ok(self.take(&mut st, p, stream));
                }
                match affinity {
                    Affinity::Prefer => {}
                    Affinity::Strict => strict_slot = Some(p),
                    // Withheld only while it answers the pool's own health
                    // ping, it runs no call: it is not busy (`stats()`
                    // counts it available), so the call waits for the ping
                    // as a strict one would, rather than fail.
                    Affinity::FailFast if st.slots[p].checking => strict_slot = Some(p),
                    Affinity::FailFast => {
                        let worker_id = st.slots[p]
                            .worker
                            .as_ref()
                            .map_or_else(String::new, |w| w.id.clone());
                        return Err(Error::WorkerBusy {
                            session_id: session.map(|s| s.to_string()).unwrap_or_default(),
                            worker_id,
                        });
                    }
                }
            }
            if strict_slot.is_none() {
                if let Some(i) = st.pop_free() {
                    let lease = self.take(&mut st, i, stream);
                    if let Some(s) = session {
                        self.remember(&mut st, s, i);
                    }
                    return Ok(lease);
                }
                if let Some(e) = st.broken() {
                    return Err(Error::StartFailed(Box::new(e.clone())));
                }
            }
            if st.queued_entries() >= self.config.max_queue_size {
                st.purge_abandoned();
                let queued = st.queued_entries();
                if queued >= self.config.max_queue_size {
                    self.counters.pool_saturated.fetch_add(1, Ordering::Relaxed);
                    return Err(Error::PoolSaturated { queued });
                }
            }
            st.push_waiter(strict_slot, stream, session.cloned())
        };
        let queue_deadline = deadline.min(crate::clock::later(
            Instant::now(),
            self.config.queue_timeout,
        ));
        match crate::clock::timeout_at(queue_deadline, rx).await {
            // Its session's affinity was recorded as it got the worker.
            Ok(Ok(Ok(lease))) => Ok(lease),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(Error::ShutDown),
            Err(_) if queue_deadline >= deadline => Err(self.timed_out(command, timeout)),
            Err(_) => {
                self.counters.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                Err(Error::QueueTimeout(self.config.queue_timeout))
            }
        }
    }

    pub(crate) fn remember(&self, st: &mut State, session: &Arc<str>, slot: usize) {
        let generation = st.slots[slot].generation;
        let now = Instant::now();
        if let Some(rec) = st.affinity.get_mut(session) {
            *rec = AffinityRecord {
                slot,
                generation,
                last_used: now,
            };
        } else if st.affinity.len() < self.config.max_sessions {
            st.affinity.insert(
                session.clone(),
                AffinityRecord {
                    slot,
                    generation,
                    last_used: now,
                },
            );
        }
    }
}
