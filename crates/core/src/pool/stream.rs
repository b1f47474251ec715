//! Streaming calls: the chunks a worker sends before its final reply.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use serde_json::Value;
use snakepit_protocol::decode_chunk;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::call::{decode_result, InFlight, Outcome};
use super::options::CallOptions;
use super::shared::Shared;
use super::Pool;
use crate::error::{Error, Result};

impl Pool {
    /// Runs `command` and streams the chunks the worker sends before its
    /// final reply. Dropping the stream cancels the call.
    ///
    /// No chunk is lost: when 256 wait unread, a worker that runs one call
    /// at a time waits for the reader; one that runs several ends the
    /// stream with [`Error::StreamBehind`] rather than hold up its other
    /// calls. The call's deadline covers the whole stream, its reading
    /// included: once it has passed, the next item is
    /// [`Error::CallTimeout`], even if chunks that came before it wait
    /// unread (they are dropped with the call). An error item
    /// ends the stream: a chunk nested deeper than the host decodes is
    /// [`Error::Codec`], and the call is cancelled in the worker.
    pub async fn execute_stream(
        &self,
        command: &str,
        args: Value,
        options: CallOptions,
    ) -> Result<CallStream> {
        let shared = self.shared();
        let session = options.session_id.clone().map(Cow::Owned);
        let mut outcome = Outcome::new(shared.clone(), Cow::Owned(command.to_owned()), session);
        let (deadline, timeout) = match self.deadline(command, &options, &outcome.meta) {
            Ok(d) => d,
            Err(e) => return outcome.record(Err(e)),
        };
        let (tx, rx) = mpsc::channel(256);
        let meta = &mut outcome.meta;
        let span = meta.span.clone();
        let submitted = async {
            self.check(command, &args)?;
            let args = self.prepare(command, args)?;
            self.submit(
                command,
                &args,
                &options,
                Some(tx),
                meta,
                (deadline, timeout),
            )
            .await
            .map(|flight| (flight, args))
        }
        .instrument(span)
        .await;
        let (flight, args) = match submitted {
            Ok(f) => f,
            Err(e) => return outcome.record(Err(e)),
        };
        Ok(CallStream {
            outcome,
            chunks: rx,
            flight: Some(flight),
            timer: crate::clock::Timer::at(deadline),
            timeout,
            resend: Resend {
                args,
                options,
                deadline,
                sends: 1,
                under_way: None,
            },
        })
    }
}

/// What a stream needs to be sent again when its frame never reached its
/// worker (written ahead to a worker that died before reading it): a
/// one-shot call goes to another worker then, and so does a stream.
pub(crate) struct Resend {
    args: Value,
    options: CallOptions,
    deadline: std::time::Instant,
    sends: usize,
    under_way: Option<Pin<Box<dyn Future<Output = Resent> + Send>>>,
}

type Resent = Result<(InFlight, mpsc::Receiver<Bytes>, super::call::CallMeta)>;

impl CallStream {
    /// Starts sending the stream again, as it was first sent. It holds the
    /// pool's shared part, never a `Pool` handle: the pool still ends when
    /// its last handle goes (the send then fails with `ShutDown`), however
    /// long the send waits and whether the stream is polled or not.
    fn send_again(&mut self) {
        let shared = self.outcome.shared.clone();
        self.resend.sends += 1;
        let command = self.outcome.command.to_string();
        let args = self.resend.args.clone();
        let options = self.resend.options.clone();
        let at = (self.resend.deadline, self.timeout);
        let mut meta = super::call::CallMeta::new(self.outcome.meta.span.clone());
        meta.submitted = self.outcome.meta.submitted;
        self.resend.under_way = Some(Box::pin(async move {
            let (tx, rx) = mpsc::channel(256);
            let flight =
                super::call::submit(&shared, &command, &args, &options, Some(tx), &mut meta, at)
                    .await?;
            Ok((flight, rx, meta))
        }));
    }
}

/// What a streaming call yields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StreamItem {
    /// A partial result.
    Chunk(Value),
    /// The final result; nothing follows it.
    Done(Value),
}

/// The chunks of a streaming call, then its final result
/// (see [`Pool::execute_stream`]). Dropping it cancels the call.
pub struct CallStream {
    pub(crate) outcome: Outcome<'static, Arc<Shared>>,
    pub(crate) chunks: mpsc::Receiver<Bytes>,
    pub(crate) flight: Option<InFlight>,
    /// The call's deadline, on the runtime reading the stream.
    pub(crate) timer: crate::clock::Timer,
    pub(crate) timeout: Duration,
    pub(crate) resend: Resend,
}

impl Stream for CallStream {
    type Item = Result<StreamItem>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(resending) = this.resend.under_way.as_mut() {
            match resending.as_mut().poll(cx) {
                Poll::Pending => return this.poll_deadline(cx),
                Poll::Ready(Ok((flight, chunks, meta))) => {
                    this.resend.under_way = None;
                    this.flight = Some(flight);
                    this.chunks = chunks;
                    this.outcome.meta.queue_wait = meta.queue_wait;
                    this.outcome.meta.worker = meta.worker;
                }
                Poll::Ready(Err(e)) => {
                    this.resend.under_way = None;
                    return Poll::Ready(Some(this.outcome.record(Err(e))));
                }
            }
        }
        let Some(flight) = this.flight.as_mut() else {
            return Poll::Ready(None);
        };
        // The reader drops the chunk sender before it delivers the final
        // reply, so every chunk is read before the channel reports closed,
        // and the reply can only be ready once it has.
        let outcome = match this.chunks.poll_recv(cx) {
            // The deadline holds while chunks keep coming too.
            Poll::Ready(Some(_)) if this.timer.deadline() <= std::time::Instant::now() => {
                return Poll::Ready(Some(this.time_out()));
            }
            Poll::Ready(Some(frame)) => {
                match decode_chunk::<_, Value>(&this.outcome.shared.codec, &frame) {
                    Ok(chunk) => return Poll::Ready(Some(Ok(StreamItem::Chunk(chunk)))),
                    // Well-formed, but not what the caller can take (nested
                    // too deep): the stream ends with its own error and the
                    // call is cancelled in the worker, which is fine.
                    Err(
                        source @ (snakepit_protocol::Error::Mismatch { .. }
                        | snakepit_protocol::Error::TooDeep { .. }),
                    ) => {
                        this.flight = None;
                        this.resend.under_way = None;
                        this.chunks.close();
                        Err(Error::Codec(source))
                    }
                    // A chunk routed from its first bytes whose rest is
                    // broken: the worker broke the protocol. It is
                    // replaced, and the stream ends with the error.
                    Err(source) => {
                        let mut flight = this.flight.take().expect("checked");
                        tracing::warn!(worker = %flight.worker.id, pid = flight.worker.pid, error = %source, "malformed chunk; replacing the worker");
                        flight.worker.kill();
                        flight.done = true;
                        Err(Error::Protocol {
                            worker_id: flight.worker.id.clone(),
                            source,
                        })
                    }
                }
            }
            // Every chunk read, and the deadline passed: the reply, even if
            // it came in time, waits unread like the chunks before it.
            Poll::Ready(None) if this.timer.deadline() <= std::time::Instant::now() => {
                return Poll::Ready(Some(this.time_out()));
            }
            Poll::Ready(None) => match Pin::new(&mut flight.reply).poll(cx) {
                // Its deadline passed while the worker waited on this reader.
                Poll::Ready(Ok(Err(crate::worker::Failure::Expired))) => {
                    return Poll::Ready(Some(this.time_out()));
                }
                // Written ahead, never read by a worker that died: it goes
                // to another one (no chunk can have come).
                Poll::Ready(Ok(Err(crate::worker::Failure::NotSent(_))))
                    if this.resend.sends < super::call::MAX_SENDS =>
                {
                    let mut flight = this.flight.take().expect("checked");
                    flight.done = true;
                    this.outcome.meta.unsent();
                    this.send_again();
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(r) => {
                    let mut flight = this.flight.take().expect("checked");
                    // A stream that fell behind is still running in the
                    // worker: dropping the flight undone cancels it there.
                    flight.done = !matches!(
                        r,
                        Ok(Err(crate::worker::Failure::Failed(
                            Error::StreamBehind { .. }
                        )))
                    );
                    match r {
                        Ok(Ok(frame)) => decode_result::<Value>(
                            &this.outcome.shared,
                            &flight.worker,
                            &this.outcome.command,
                            &frame,
                        )
                        .map(StreamItem::Done),
                        Ok(Err(failure)) => Err(failure.into()),
                        Err(_) => Err(Error::ShutDown),
                    }
                }
                Poll::Pending => return this.poll_deadline(cx),
            },
            Poll::Pending => return this.poll_deadline(cx),
        };
        Poll::Ready(Some(this.outcome.record(outcome)))
    }
}

impl CallStream {
    /// When the call's deadline passes: the stream then ends with
    /// `Error::CallTimeout` (whether chunks are still coming or not).
    pub fn deadline(&self) -> std::time::Instant {
        self.timer.deadline()
    }

    pub(crate) fn poll_deadline(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<StreamItem>>> {
        if self.timer.poll_elapsed(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Some(self.time_out()))
    }

    /// Ends the stream with its deadline passed.
    fn time_out(&mut self) -> Result<StreamItem> {
        // Dropping the flight cancels the call; closing the channel lets a
        // worker waiting to hand over a chunk go on (and hear the cancel)
        // even if this stream is kept unread.
        self.flight = None;
        self.resend.under_way = None;
        self.chunks.close();
        let outcome = Err(self
            .outcome
            .shared
            .timed_out(&self.outcome.command, self.timeout));
        self.outcome.record(outcome)
    }
}
