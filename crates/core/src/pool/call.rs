//! One call's path: submit, round trip, decode, and the exactly-once
//! accounting of its outcome.

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use snakepit_protocol::{decode_response, encode_request, Request};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::options::CallOptions;
use super::shared::Shared;
use super::Pool;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::worker::{Failure, Pending, Reply, Worker};

/// How many times one call may be routed to a worker that turns out to be
/// gone before it has reached any (each attempt takes a fresh lease).
pub(crate) const MAX_SENDS: usize = 100;

/// A request frame above this is large: the next request's buffer starts
/// at its size (`Shared::large_request`).
const LARGE_REQUEST: usize = 64 << 10;

/// Where a call went and when: for its span and its `CallEnded` event.
pub(crate) struct CallMeta {
    pub(crate) submitted: Instant,
    pub(crate) queue_wait: Option<Duration>,
    pub(crate) worker: Option<(usize, u32)>,
    pub(crate) span: tracing::Span,
}

impl CallMeta {
    pub(crate) fn new(span: tracing::Span) -> Self {
        CallMeta {
            submitted: Instant::now(),
            queue_wait: None,
            worker: None,
            span,
        }
    }

    /// The call's frame never reached the worker it was written to (the
    /// worker died leaving it unread): it has reached no worker yet.
    pub(crate) fn unsent(&mut self) {
        self.queue_wait = None;
        self.worker = None;
    }

    /// The call has reached `worker`; its frame was made at `sent`.
    pub(crate) fn took(&mut self, worker: &Worker, sent: Instant) {
        let wait = sent.saturating_duration_since(self.submitted);
        self.queue_wait = Some(wait);
        self.worker = Some((worker.slot, worker.pid));
        if !self.span.is_disabled() {
            self.span.record("snakepit.worker", worker.slot as i64);
            self.span.record("process.pid", i64::from(worker.pid));
            self.span
                .record("snakepit.queue_wait_us", wait.as_micros() as i64);
        }
    }
}

/// Counts a call's outcome exactly once: success, failure, or a future
/// dropped before the end (a cancelled call or stream), and reports it to
/// the call's span and the pool's listeners. Holds the pool by reference for
/// one-shot calls and by `Arc` inside a [`CallStream`].
pub(crate) struct Outcome<'c, S: Deref<Target = Shared>> {
    pub(crate) shared: S,
    pub(crate) done: bool,
    pub(crate) command: Cow<'c, str>,
    pub(crate) session: Option<Cow<'c, str>>,
    pub(crate) meta: CallMeta,
}

impl<'c, S: Deref<Target = Shared>> Outcome<'c, S> {
    pub(crate) fn new(shared: S, command: Cow<'c, str>, session: Option<Cow<'c, str>>) -> Self {
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        let span = shared.call_span(&command, session.as_deref());
        Outcome {
            shared,
            done: false,
            command,
            session,
            meta: CallMeta::new(span),
        }
    }

    pub(crate) fn record<T>(&mut self, r: Result<T>) -> Result<T> {
        if std::mem::replace(&mut self.done, true) {
            return r;
        }
        let c = &self.shared.counters;
        let kind = match &r {
            Ok(_) => {
                c.completed.fetch_add(1, Ordering::Release);
                "ok"
            }
            Err(e) => {
                if e.is_crash() {
                    c.crashes.fetch_add(1, Ordering::Relaxed);
                }
                c.errors.fetch_add(1, Ordering::Release);
                e.kind()
            }
        };
        self.report(kind);
        r
    }

    pub(crate) fn report(&self, outcome: &'static str) {
        if !self.meta.span.is_disabled() {
            self.meta.span.record("snakepit.outcome", outcome);
            if outcome != "ok" {
                self.meta.span.record("error.type", outcome);
                self.meta.span.record("otel.status_code", "ERROR");
            }
        }
        if self.shared.listeners.is_empty() {
            return;
        }
        let duration = self.meta.submitted.elapsed();
        self.shared.emit(EventKind::CallEnded {
            command: &self.command,
            session: self.session.as_deref(),
            worker: self.meta.worker.map(|w| w.0),
            pid: self.meta.worker.map(|w| w.1),
            queue_wait: self.meta.queue_wait.unwrap_or(duration),
            duration,
            outcome,
        });
    }
}

impl<S: Deref<Target = Shared>> Drop for Outcome<'_, S> {
    fn drop(&mut self) {
        if !self.done {
            self.shared
                .counters
                .cancelled
                .fetch_add(1, Ordering::Release);
            self.report("cancelled");
        }
    }
}

/// A call sent to a worker. Dropped before its reply, it cancels the call.
pub(crate) struct InFlight {
    pub(crate) worker: Arc<Worker>,
    pub(crate) id: u64,
    pub(crate) reply: oneshot::Receiver<Reply>,
    pub(crate) done: bool,
    /// The worker's reader expires it at its deadline
    /// ([`Failure::Expired`]): it needs no timer of its own.
    pub(crate) expires: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.worker.abandon(self.id);
        }
    }
}

impl Pool {
    /// Runs `command` with `args` on a free worker.
    pub async fn execute(&self, command: &str, args: Value) -> Result<Value> {
        self.execute_with(command, args, CallOptions::default())
            .await
    }

    /// Runs `command` in a session: on the worker that served the session
    /// last when it is free, otherwise on another.
    pub async fn execute_in_session(
        &self,
        session_id: &str,
        command: &str,
        args: Value,
    ) -> Result<Value> {
        self.execute_with(command, args, CallOptions::default().session(session_id))
            .await
    }

    /// Runs `command` with options: deadline, session, affinity, trace context.
    pub async fn execute_with(
        &self,
        command: &str,
        args: Value,
        options: CallOptions,
    ) -> Result<Value> {
        let shared = self.shared();
        self.counted(command, &options, async |meta| {
            self.check(command, &args)?;
            let args = self.prepare(command, args)?;
            let (frame, worker) = self.round_trip(command, &args, &options, meta).await?;
            let value: Value = decode_result(shared, &worker, command, &frame)?;
            // The call ran: a hook that panics on its result refuses the
            // result, as an `Err` would; the worker is not involved.
            crate::sync::catch(|| shared.adapter.process_response(command, value))
                .unwrap_or_else(|panic| {
                    Err(format!("the adapter's process_response panicked: {panic}"))
                })
                .map_err(|message| Error::ResultRefused {
                    command: command.to_owned(),
                    message,
                })
        })
        .await
    }

    /// Runs a one-shot call's `body` inside its span, counting its outcome
    /// once (a dropped future counts as cancelled).
    pub(crate) async fn counted<T>(
        &self,
        command: &str,
        options: &CallOptions,
        body: impl AsyncFnOnce(&mut CallMeta) -> Result<T>,
    ) -> Result<T> {
        let session = options.session_id.as_deref().map(Cow::Borrowed);
        let mut outcome = Outcome::new(&**self.shared(), Cow::Borrowed(command), session);
        let span = outcome.meta.span.clone();
        let r = body(&mut outcome.meta).instrument(span).await;
        outcome.record(r)
    }

    /// Runs `command` with typed arguments and result: `args` is encoded
    /// straight into the frame and the result decoded straight out of it.
    /// The adapter's `prepare_args`/`process_response` are not applied.
    pub async fn call<A, R>(&self, command: &str, args: &A, options: CallOptions) -> Result<R>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.counted(command, &options, async |meta| {
            self.check(command, &Value::Null)?;
            let (frame, worker) = self.round_trip(command, args, &options, meta).await?;
            decode_result(self.shared(), &worker, command, &frame)
        })
        .await
    }

    /// The call's deadline, counted from submission, and its timeout. An
    /// adapter whose `command_timeout` panics gives the call no deadline:
    /// it is refused with [`Error::Validation`] naming the panic.
    pub(crate) fn deadline(
        &self,
        command: &str,
        options: &CallOptions,
        meta: &CallMeta,
    ) -> Result<(Instant, Duration)> {
        let timeout = match options.timeout {
            Some(t) => t,
            None => before_sending(command, "command_timeout", || {
                self.shared().adapter.command_timeout(command)
            })?,
        };
        Ok((crate::clock::later(meta.submitted, timeout), timeout))
    }

    /// The adapter's `validate_command`; a panic in it refuses the call as
    /// an `Err` would, naming the panic.
    pub(crate) fn check(&self, command: &str, args: &Value) -> Result<()> {
        let shared = self.shared();
        if let Some(supported) = &shared.supported {
            if !supported.contains(command) {
                return Err(Error::UnsupportedCommand(command.to_owned()));
            }
        }
        before_sending(command, "validate_command", || {
            shared.adapter.validate_command(command, args)
        })?
        .map_err(|message| Error::Validation {
            command: command.to_owned(),
            message,
        })
    }

    /// The adapter's `prepare_args`; a panic in it refuses the call with
    /// [`Error::Validation`] naming the panic (the call is not sent).
    pub(crate) fn prepare(&self, command: &str, args: Value) -> Result<Value> {
        before_sending(command, "prepare_args", || {
            self.shared().adapter.prepare_args(command, args)
        })
    }

    pub(crate) async fn round_trip<A: Serialize + ?Sized>(
        &self,
        command: &str,
        args: &A,
        options: &CallOptions,
        meta: &mut CallMeta,
    ) -> Result<(Bytes, Arc<Worker>)> {
        let shared = self.shared();
        let (deadline, timeout) = self.deadline(command, options, meta)?;
        // A call whose frame never reached its worker (the worker died
        // before it was written whole) goes to another one; a call that may
        // have run is never sent again.
        let mut undelivered = 0;
        let flight = loop {
            let mut flight = self
                .submit(command, args, options, None, meta, (deadline, timeout))
                .await?;
            let reply = if flight.expires {
                Some((&mut flight.reply).await)
            } else {
                crate::clock::timeout_at(deadline, &mut flight.reply)
                    .await
                    .ok()
            };
            match reply {
                Some(Ok(Err(Failure::NotSent(e)))) => {
                    flight.done = true;
                    // It never reached that worker: its events name the
                    // worker it reaches next, or none.
                    meta.unsent();
                    undelivered += 1;
                    if undelivered >= MAX_SENDS {
                        return Err(e);
                    }
                }
                // Timed out: `flight` is dropped undone, which abandons the
                // call (cancel, or SIGINT, and the grace period).
                Some(Ok(Err(Failure::Expired))) | None => break Err(flight),
                Some(r) => break Ok((flight, r)),
            }
        };
        match flight {
            Ok((mut flight, Ok(Ok(frame)))) => {
                flight.done = true;
                Ok((frame, flight.worker.clone()))
            }
            Ok((mut flight, Ok(Err(failure)))) => {
                flight.done = true;
                Err(failure.into())
            }
            Ok((mut flight, Err(_))) => {
                flight.done = true;
                Err(Error::ShutDown)
            }
            Err(_) => Err(shared.timed_out(command, timeout)),
        }
    }

    pub(crate) async fn submit<A: Serialize + ?Sized>(
        &self,
        command: &str,
        args: &A,
        options: &CallOptions,
        chunks: Option<mpsc::Sender<Bytes>>,
        meta: &mut CallMeta,
        at: (Instant, Duration),
    ) -> Result<InFlight> {
        submit(self.shared(), command, args, options, chunks, meta, at).await
    }
}

/// Sends a call to a worker: touches its session, takes a lease (waiting
/// in the queue if need be), encodes and writes its frame. Takes the
/// pool's shared part, not a `Pool` handle, so that a stream sent again
/// holds no handle that would keep its pool alive (`CallStream`).
pub(crate) async fn submit<A: Serialize + ?Sized>(
    shared: &Arc<Shared>,
    command: &str,
    args: &A,
    options: &CallOptions,
    chunks: Option<mpsc::Sender<Bytes>>,
    meta: &mut CallMeta,
    (deadline, timeout): (Instant, Duration),
) -> Result<InFlight> {
    // A session store takes ids of up to `MAX_SESSION_ID_LEN` bytes: a
    // longer one is refused as the stores refuse it, before it is touched.
    if let Some(long) = options
        .session_id
        .as_deref()
        .filter(|s| s.len() > crate::MAX_SESSION_ID_LEN && shared.session_hook.is_some())
    {
        return Err(Error::Session {
            session_id: long.to_owned(),
            message: format!(
                "invalid session id: {} bytes long; at most {} are allowed",
                long.len(),
                crate::MAX_SESSION_ID_LEN
            ),
        });
    }
    // The pool's tables know a session by a key of bounded size.
    let session: Option<Arc<str>> = options
        .session_id
        .as_deref()
        .map(super::shared::affinity_key);
    let mut touch_mark = None;
    if let (Some(hook), Some(s)) = (&shared.session_hook, &session) {
        let id: &str = s;
        // A pool that is shut down refuses the call before its session
        // is touched (made, in a store shared with other hosts).
        touch_mark = Some(shared.touching(s).ok_or(Error::ShutDown)?);
        // So does a call with no time left (a zero timeout): it would
        // not be written, so its session is not made or extended.
        if Instant::now() >= deadline {
            return Err(shared.timed_out(command, timeout));
        }
        // The store's time counts against the call's deadline.
        // A hook that panics fails the call, not the caller's task,
        // whether it panics making its future or running it.
        let store_panicked = |panic| Error::Session {
            session_id: id.to_owned(),
            message: format!("the session store panicked: {panic}"),
        };
        let touch = crate::sync::CatchUnwind(
            crate::sync::catch(|| hook.touch(id)).map_err(store_panicked)?,
        );
        // A shutdown meanwhile refuses the call at once, as it does the
        // calls waiting in the queue, rather than leave its caller to a
        // store that may not answer before the call's deadline.
        let mut ending = shared.shutdown.subscribe();
        let touched = tokio::select! {
            touched = crate::clock::timeout_at(deadline, touch) => touched,
            _ = ending.wait_for(|closed| *closed) => return Err(Error::ShutDown),
        };
        match touched {
            Ok(touched) => touched
                .unwrap_or_else(|panic| Err(format!("the session store panicked: {panic}")))
                .map_err(|message| Error::Session {
                    session_id: id.to_owned(),
                    message,
                })?,
            Err(_) => return Err(shared.timed_out(command, timeout)),
        }
    }
    let mut chunks = chunks;
    // A worker can die (or retire) between handing out its lease and the
    // call reaching it; the call has not been sent then, so it goes
    // elsewhere, and the dead worker leaves the free list at once.
    for _ in 0..MAX_SENDS {
        let lease = shared
            .acquire(
                session.as_ref(),
                options.affinity,
                deadline,
                timeout,
                command,
                chunks.is_some(),
            )
            .await?;
        if let Some(mark) = &touch_mark {
            mark.routed();
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut request = Request::new(id, command, args);
        request.session_id = options.session_id.as_deref();
        // One clock reading for the time left and the queue wait.
        let sent = Instant::now();
        if sent >= deadline {
            // No time left to give the worker (a zero timeout, or a
            // wait that took it all): not sent; the lease goes back.
            return Err(shared.timed_out(command, timeout));
        }
        request.timeout_ms = Some(deadline.saturating_duration_since(sent).as_millis() as u64);
        request.stream = chunks.is_some();
        let traced;
        request.traceparent = match (&options.traceparent, &shared.trace_context) {
            (Some(t), _) => Some(t.as_str()),
            (None, Some(hook)) => {
                // Tracing is best effort: a hook that panics leaves this
                // call without trace headers, and the call goes on.
                traced = crate::sync::catch(|| hook()).unwrap_or_else(|panic| {
                    tracing::warn!(command, panic = %panic, "the trace_context hook panicked; the call is sent without trace headers");
                    None
                });
                request.tracestate = traced.as_ref().and_then(|t| t.tracestate.as_deref());
                request.baggage = traced.as_ref().and_then(|t| t.baggage.as_deref());
                traced.as_ref().map(|t| t.traceparent.as_str())
            }
            (None, None) => None,
        };
        let large = shared.large_request.load(Ordering::Relaxed);
        let mut buf = BytesMut::with_capacity((large + large / 8).max(256));
        encode_request(
            &shared.codec,
            &request,
            shared.config.max_frame_size,
            &mut buf,
        )
        .map_err(Error::Codec)?;
        // Written only while large frames come and go: pools of small
        // calls never touch it.
        let now_large = if buf.len() > LARGE_REQUEST {
            buf.len()
        } else {
            0
        };
        if now_large != large {
            shared.large_request.store(now_large, Ordering::Relaxed);
        }
        let (tx, rx) = oneshot::channel();
        // Kept for a resend: the pending call may be failed by the
        // reader (and dropped with its sender) before it is taken back.
        let chunks_again = chunks.clone();
        let streams = chunks.is_some();
        let pending = Pending {
            chunks: chunks.take(),
            session: session.clone(),
            until: streams.then_some(deadline),
            ..Pending::new(tx, true)
        };
        // A one-shot call's deadline is watched by the worker's reader,
        // with one timer for all its calls; a stream keeps its own.
        let registered = if streams {
            lease.worker.register(id, pending).map(|()| false)
        } else {
            lease.worker.register_until(id, pending, deadline)
        };
        match registered {
            Ok(expires) => {
                let worker = lease.disarm();
                if streams {
                    shared.stream_registered(&worker);
                }
                if worker.send_request(id, buf.freeze()) {
                    meta.took(&worker, sent);
                    return Ok(InFlight {
                        worker,
                        id,
                        reply: rx,
                        done: false,
                        expires,
                    });
                }
                // The worker's stdin is already closed or broken: the
                // call never reached it. Take it back (with its unit,
                // unless the reader has failed it and freed the slot).
                if worker.unregister(id).is_some() {
                    shared.release(&worker);
                }
                shared.worker_gone(&worker);
                // A worker that cannot be written to can take no call:
                // if it still runs (it closed its stdin), it goes.
                worker.kill();
                chunks = chunks_again;
            }
            Err(pending) => {
                shared.worker_gone(&lease.worker);
                chunks = pending.chunks;
            }
        }
    }
    Err(Error::ShutDown)
}

pub(crate) fn decode_result<R: DeserializeOwned>(
    shared: &Shared,
    worker: &Worker,
    command: &str,
    frame: &[u8],
) -> Result<R> {
    let decoded = decode_response::<_, R>(&shared.codec, frame);
    match decoded {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if e.is_cancelled() => Err(Error::Cancelled),
        Ok(Err(error)) => Err(Error::Remote {
            command: command.to_owned(),
            error,
        }),
        // A well-formed reply whose result is not what the caller asked
        // for, or nested deeper than the host decodes: the call's own
        // error; the worker is fine.
        Err(
            e @ (snakepit_protocol::Error::Mismatch { .. }
            | snakepit_protocol::Error::TooDeep { .. }),
        ) => Err(Error::Codec(e)),
        Err(source) => {
            // The reader routed the frame from its first bytes; the rest is
            // broken, so the worker broke the protocol and is replaced.
            tracing::warn!(worker = %worker.id, pid = worker.pid, error = %source, "malformed reply; replacing the worker");
            worker.kill();
            Err(Error::Protocol {
                worker_id: worker.id.clone(),
                source,
            })
        }
    }
}

/// Runs the adapter's hook `name` for a call to `command` that is not sent
/// yet: a panic in it refuses the call with [`Error::Validation`] naming
/// the hook and the panic, as the hook's own refusal would.
fn before_sending<T>(command: &str, name: &str, hook: impl FnOnce() -> T) -> Result<T> {
    crate::sync::catch(hook).map_err(|panic| Error::Validation {
        command: command.to_owned(),
        message: format!("the adapter's {name} panicked: {panic}"),
    })
}
