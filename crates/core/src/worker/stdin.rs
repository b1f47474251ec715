//! A worker's stdin: frames written straight from the calling task when the
//! pipe takes them, the rest by a writer task, and the bookkeeping that tells,
//! once the worker is dead, which calls it never read.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::sync::Notify;

use crate::os;
use crate::sync::Unpoisoned;

/// A worker's stdin. A frame is written straight from the sending task when
/// the pipe takes it whole (the usual case: one `write` call, no task hop);
/// otherwise the rest waits in `backlog` and the writer task finishes it,
/// holding the pipe until the backlog is empty, so frames never interleave
/// or overtake each other.
pub(super) struct Stdin {
    pub(super) state: Mutex<StdinState>,
    pub(super) wake: Notify,
}

pub(super) struct StdinState {
    /// `None` while the writer task holds it, and once closed.
    pub(super) pipe: Option<ChildStdin>,
    /// Frames waiting for the pipe, each with the id of the call it starts
    /// (0 for cancels and host replies).
    pub(super) backlog: VecDeque<(u64, Bytes)>,
    /// Close once the backlog is written: the worker sees EOF and exits.
    pub(super) close: bool,
    pub(super) closed: bool,
    /// Calls whose request frame the writer could not write whole: they
    /// never reached the worker.
    pub(super) lost: Vec<u64>,
    /// Host replies in the backlog (a worker that does not read them).
    pub(super) replies: usize,
    /// Bytes accepted so far (written or in the backlog), and bytes written
    /// to the pipe.
    pub(super) accepted: u64,
    pub(super) written: u64,
    /// Recent request frames: call id and the stream offset where the frame
    /// ends. When the worker dies, the bytes it left unread in the pipe tell
    /// which of these it never read whole, so never ran.
    pub(super) recent: VecDeque<(u64, u64)>,
}

/// Request frames further back than this in the stream are taken as read
/// (a pipe holds at most `/proc/sys/fs/pipe-max-size`, 1 MiB by default).
pub(super) const RECENT_WINDOW: u64 = 1 << 20;

impl StdinState {
    /// The pipe is broken (the worker is gone): the calls whose frames it
    /// left unread join `lost`, and the pipe is dropped.
    pub(super) fn broken(&mut self, pipe: Option<ChildStdin>) {
        use std::os::fd::AsRawFd;
        if let Some(unread) = pipe
            .as_ref()
            .and_then(|p| os::unread_in_pipe(p.as_raw_fd()))
        {
            let consumed = self.written.saturating_sub(unread as u64);
            self.lost.extend(
                self.recent
                    .iter()
                    .filter(|&&(_, end)| end > consumed)
                    .map(|&(id, _)| id),
            );
        }
        self.recent.clear();
        self.pipe = None;
        self.closed = true;
    }
}

/// The backlog id of a frame that starts no call (a cancel).
pub(super) const NO_CALL: u64 = 0;
/// The backlog id of a host reply.
pub(super) const HOST_REPLY: u64 = u64::MAX;

impl Stdin {
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, StdinState> {
        self.state.locked()
    }

    /// Writes `frame` or queues it for the writer task; `false` when it
    /// certainly did not reach the worker (the pipe is closed or broken and
    /// not one byte of it was taken... or only part of it, which the worker
    /// cannot have acted on).
    pub(super) fn send(&self, id: u64, frame: Bytes) -> bool {
        let mut guard = self.state();
        let st = &mut *guard;
        if st.closed || st.close {
            return false;
        }
        let end = st.accepted + frame.len() as u64;
        st.accepted = end;
        let frame = match (&mut st.pipe, st.backlog.is_empty()) {
            (Some(pipe), true) => match write_now(pipe, &frame) {
                Ok(n) => {
                    st.written += n as u64;
                    frame.slice(n..)
                }
                Err(_) => {
                    // The worker is gone; its reader fails what was in flight.
                    let pipe = st.pipe.take();
                    st.broken(pipe);
                    return false;
                }
            },
            _ => frame,
        };
        if id != NO_CALL && id != HOST_REPLY {
            let written = st.written;
            while st
                .recent
                .front()
                .is_some_and(|&(_, e)| e + RECENT_WINDOW < written)
            {
                st.recent.pop_front();
            }
            st.recent.push_back((id, end));
        }
        if frame.is_empty() {
            return true;
        }
        if id == HOST_REPLY {
            st.replies += 1;
        }
        st.backlog.push_back((id, frame));
        drop(guard);
        self.wake.notify_one();
        true
    }

    /// The calls whose frames the worker, now dead, never read whole.
    /// Also returns the recent calls in the order they were written.
    pub(super) fn take_lost(&self) -> (Vec<u64>, Vec<u64>) {
        let mut st = self.state();
        let order = st.recent.iter().map(|&(id, _)| id).collect();
        if st.pipe.is_some() {
            let pipe = st.pipe.take();
            st.broken(pipe);
        }
        let mut lost = std::mem::take(&mut st.lost);
        lost.extend(st.backlog.drain(..).map(|(id, _)| id));
        lost.retain(|&id| id != NO_CALL && id != HOST_REPLY);
        (lost, order)
    }

    /// Of the calls `pending`, the one written first (for a worker that runs
    /// one call at a time, the one it is running).
    pub(super) fn first_written(&self, pending: &[u64]) -> Option<u64> {
        let st = self.state();
        st.recent
            .iter()
            .map(|&(id, _)| id)
            .find(|id| pending.contains(id))
    }

    /// Host replies written to the backlog and not yet to the pipe.
    pub(super) fn queued_replies(&self) -> usize {
        self.state().replies
    }

    pub(super) fn close(&self) {
        let mut st = self.state();
        st.close = true;
        if st.pipe.is_some() && st.backlog.is_empty() {
            st.pipe = None;
            st.closed = true;
        }
        drop(st);
        // Either the writer task finishes the backlog and closes, or it
        // sees `closed` and ends.
        self.wake.notify_one();
    }
}

/// Writes what the pipe takes without waiting.
pub(super) fn write_now(pipe: &mut ChildStdin, frame: &[u8]) -> std::io::Result<usize> {
    use tokio::io::AsyncWrite;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut written = 0;
    while written < frame.len() {
        match Pin::new(&mut *pipe).poll_write(&mut cx, &frame[written..]) {
            std::task::Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            std::task::Poll::Ready(Ok(n)) => written += n,
            std::task::Poll::Ready(Err(e)) => return Err(e),
            std::task::Poll::Pending => break,
        }
    }
    Ok(written)
}

/// Finishes what [`Stdin::send`] could not write at once, and closes the
/// pipe when asked.
pub(super) async fn write_loop(stdin: Arc<Stdin>) {
    loop {
        let next = {
            let mut st = stdin.state();
            if st.closed {
                return;
            }
            match st.backlog.pop_front() {
                Some((id, frame)) => match st.pipe.take() {
                    Some(pipe) if id == HOST_REPLY => {
                        st.replies -= 1;
                        Some((pipe, id, frame))
                    }
                    Some(pipe) => Some((pipe, id, frame)),
                    None => {
                        st.backlog.push_front((id, frame));
                        return;
                    }
                },
                None if st.close => {
                    st.pipe = None;
                    st.closed = true;
                    return;
                }
                None => None,
            }
        };
        let Some((mut pipe, id, frame)) = next else {
            stdin.wake.notified().await;
            continue;
        };
        let mut done = 0;
        while done < frame.len() {
            match pipe.write(&frame[done..]).await {
                Ok(n) if n > 0 => {
                    done += n;
                    stdin.state().written += n as u64;
                }
                _ => {
                    // Not written whole: the worker cannot have started
                    // that call, nor any it left unread.
                    let mut st = stdin.state();
                    st.lost.push(id);
                    st.broken(Some(pipe));
                    return; // the reader sees the worker die
                }
            }
        }
        stdin.state().pipe = Some(pipe);
    }
}
