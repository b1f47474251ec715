//! A worker's stdin: frames written straight from the calling task when the
//! pipe takes them, the rest by a writer task, and the bookkeeping that tells,
//! once the worker is dead, which calls it never read.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use std::future::poll_fn;
use std::io::IoSlice;

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;
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
    /// The pipe's descriptor (-1 for none), to ask how much of it the
    /// worker left unread also while the writer task holds the pipe (it
    /// gives it up only under this state's lock).
    pub(super) fd: std::os::fd::RawFd,
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
    /// to the pipe. Every write to the pipe and its count happen under this
    /// state's lock, so `written` is exact whenever the lock is held.
    pub(super) accepted: u64,
    pub(super) written: u64,
    /// Recent request frames: call id and the stream offset where the frame
    /// ends. When the worker dies, the bytes it left unread in the pipe tell
    /// which of these it never read whole, so never ran.
    pub(super) recent: VecDeque<(u64, u64)>,
    /// The pipe's capacity, grown to hold a large frame whole.
    pub(super) size: os::PipeSize,
}

/// Of the calls `pending`, those written (in `order`, oldest first) behind
/// another of them: for a worker that runs one call at a time, those
/// waiting, never started. Only the order given counts: a call written too
/// far back to be in the recent record is taken as started, so the first
/// one found may be waiting too, but none of those returned is running.
pub(super) fn behind_first(order: impl IntoIterator<Item = u64>, pending: &[u64]) -> Vec<u64> {
    let mut ids = order.into_iter().filter(|id| pending.contains(id));
    ids.next();
    ids.collect()
}

/// The most calls the record of recent request frames keeps. It holds the
/// calls in flight, bounded by the worker's capacity and the calls written
/// ahead; more means calls that never heard back.
pub(super) const RECENT_MAX: usize = 1 << 16;

impl StdinState {
    /// The pipe is broken (the worker is gone): the calls whose frames it
    /// left unread join `lost`, and the pipe is dropped.
    pub(super) fn broken(&mut self, pipe: Option<ChildStdin>) {
        use std::os::fd::AsRawFd;
        self.count_unread(pipe.as_ref().map(|p| p.as_raw_fd()));
        self.pipe = None;
        self.closed = true;
    }

    /// The calls whose frames lie unread in the pipe `fd` join `lost`: of
    /// the `written` bytes (exact under the lock: no write is under way),
    /// the worker consumed all but the `unread` ones.
    fn count_unread(&mut self, fd: Option<std::os::fd::RawFd>) {
        if let Some(unread) = fd.and_then(os::unread_in_pipe) {
            let consumed = self.written.saturating_sub(unread as u64);
            self.lost.extend(
                self.recent
                    .iter()
                    .filter(|&&(_, end)| end > consumed)
                    .map(|&(id, _)| id),
            );
        }
        self.recent.clear();
    }
}

/// The backlog id of a frame that starts no call (a cancel).
pub(super) const NO_CALL: u64 = 0;
/// The backlog id of a host reply.
pub(super) const HOST_REPLY: u64 = u64::MAX;

impl Stdin {
    /// A worker's stdin over `pipe` (`None`: a worker without one, closed).
    pub(super) fn new(pipe: Option<ChildStdin>) -> Stdin {
        use std::os::fd::AsRawFd;
        Stdin {
            state: Mutex::new(StdinState {
                closed: pipe.is_none(),
                fd: pipe.as_ref().map_or(-1, AsRawFd::as_raw_fd),
                pipe,
                backlog: VecDeque::new(),
                close: false,
                lost: Vec::new(),
                replies: 0,
                accepted: 0,
                written: 0,
                recent: VecDeque::new(),
                size: os::PipeSize::new(),
            }),
            wake: Notify::new(),
        }
    }

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
            (Some(pipe), true) => {
                st.size.fit(pipe, frame.len());
                match write_now(pipe, &frame) {
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
                }
            }
            _ => frame,
        };
        if id != NO_CALL && id != HOST_REPLY {
            // Calls leave the record as they end ([`Stdin::ended`]); only a
            // call that never hears back, on a worker that never dies,
            // could stay, and the record keeps at most RECENT_MAX of those.
            if st.recent.len() >= RECENT_MAX {
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

    /// Call `id` ended (its final reply came, or it was taken back): it
    /// leaves the record of recent frames, which so holds the calls in
    /// flight in the order they were written, however much was written
    /// after them (host replies, calls written ahead). Calls end mostly in
    /// the order they were written: the first is usually it.
    pub(super) fn ended(&self, id: u64) {
        let mut st = self.state();
        if st.recent.front().is_some_and(|&(first, _)| first == id) {
            st.recent.pop_front();
        } else if let Some(i) = st.recent.iter().position(|&(c, _)| c == id) {
            st.recent.remove(i);
        }
    }

    /// The calls whose frames the worker, now dead, never read whole.
    /// Also returns the recent calls in the order they were written.
    pub(super) fn take_lost(&self) -> (Vec<u64>, Vec<u64>) {
        let mut st = self.state();
        let order = st.recent.iter().map(|&(id, _)| id).collect();
        if st.pipe.is_some() {
            let pipe = st.pipe.take();
            st.broken(pipe);
        } else if !st.closed && st.fd >= 0 {
            // The writer task holds the pipe (a full one, with a worker
            // that stopped reading): its descriptor is open while this lock
            // is held. The frames of its batch count too; it drops the pipe
            // when its write ends.
            let fd = st.fd;
            st.count_unread(Some(fd));
            st.closed = true;
        }
        let mut lost = std::mem::take(&mut st.lost);
        lost.extend(st.backlog.drain(..).map(|(id, _)| id));
        lost.retain(|&id| id != NO_CALL && id != HOST_REPLY);
        (lost, order)
    }

    /// Of the calls `pending`, the one written first (for a worker that runs
    /// one call at a time, the one it is running). A call not written yet
    /// (registered, its frame on the way) is never it: `is_waiting` relies
    /// on that, and so must not use [`written_behind`](Self::written_behind),
    /// which leaves such a call out.
    pub(super) fn first_written(&self, pending: &[u64]) -> Option<u64> {
        let st = self.state();
        st.recent
            .iter()
            .map(|&(id, _)| id)
            .find(|id| pending.contains(id))
    }

    /// Of the calls `pending`, those written behind another of them: see
    /// [`behind_first`], over the recent record.
    pub(super) fn written_behind(&self, pending: &[u64]) -> Vec<u64> {
        let st = self.state();
        behind_first(st.recent.iter().map(|&(id, _)| id), pending)
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

/// Writes what the pipe takes without waiting (a tokio `ChildStdin` is
/// always non-blocking).
pub(super) fn write_now(pipe: &mut ChildStdin, frame: &[u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    os::write_now(pipe.as_raw_fd(), frame)
}

/// Frames the writer task takes from the backlog for one write: a
/// `writev` of up to this many (far under any system's `IOV_MAX`).
pub(super) const BATCH: usize = 64;

impl StdinState {
    /// Moves the frames at the front of the backlog, up to [`BATCH`], into
    /// `batch`, to go out in one write; `false` if the backlog is empty.
    pub(super) fn take_batch(&mut self, batch: &mut Vec<(u64, Bytes)>) -> bool {
        let n = self.backlog.len().min(BATCH);
        batch.extend(self.backlog.drain(..n));
        self.replies -= batch.iter().filter(|(id, _)| *id == HOST_REPLY).count();
        n > 0
    }
}

/// Writes `frames` to `pipe` in order, as many at once as the pipe takes
/// (one `writev` for the lot when it has room). Each write is made holding
/// what `hold` returns, and `wrote` is told how many bytes went out before
/// that is let go: the writer task holds the stdin state's lock so, and so
/// the count is never behind the pipe for anyone who takes the lock. On
/// error, `frames` keeps only the frames not written whole.
pub(super) async fn write_frames<W: AsyncWrite + Unpin, G>(
    pipe: &mut W,
    frames: &mut Vec<(u64, Bytes)>,
    mut hold: impl FnMut() -> G,
    mut wrote: impl FnMut(&mut G, u64),
) -> std::io::Result<()> {
    let mut first = 0;
    let result = loop {
        if first == frames.len() {
            break Ok(());
        }
        let written = {
            let slices: Vec<IoSlice<'_>> = frames[first..]
                .iter()
                .map(|(_, f)| IoSlice::new(f))
                .collect();
            poll_fn(|cx| {
                let mut held = hold();
                let r = Pin::new(&mut *pipe).poll_write_vectored(cx, &slices);
                if let std::task::Poll::Ready(Ok(n)) = r {
                    wrote(&mut held, n as u64);
                }
                r
            })
            .await
        };
        let mut n = match written {
            Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        while n > 0 {
            let frame = &mut frames[first].1;
            if n >= frame.len() {
                n -= frame.len();
                first += 1;
            } else {
                frame.advance(n);
                n = 0;
            }
        }
    };
    frames.drain(..first);
    result
}

/// Finishes what [`Stdin::send`] could not write at once, several frames
/// per write, and closes the pipe when asked.
pub(super) async fn write_loop(stdin: Arc<Stdin>) {
    let mut batch: Vec<(u64, Bytes)> = Vec::new();
    loop {
        let next = {
            let mut st = stdin.state();
            if st.closed {
                return;
            }
            if st.backlog.is_empty() {
                if st.close {
                    st.pipe = None;
                    st.closed = true;
                    return;
                }
                None
            } else {
                match st.pipe.take() {
                    Some(pipe) => {
                        st.take_batch(&mut batch);
                        let largest = batch.iter().map(|(_, f)| f.len()).max().unwrap_or(0);
                        st.size.fit(&pipe, largest);
                        Some(pipe)
                    }
                    None => return,
                }
            }
        };
        let Some(mut pipe) = next else {
            stdin.wake.notified().await;
            continue;
        };
        let written = {
            let write = write_frames(
                &mut pipe,
                &mut batch,
                || stdin.state(),
                |st, n| st.written += n,
            );
            tokio::pin!(write);
            loop {
                tokio::select! {
                    r = &mut write => break Some(r),
                    () = stdin.wake.notified() => {
                        if stdin.state().closed {
                            break None;
                        }
                    }
                }
            }
        };
        let Some(written) = written else {
            // The worker's end was settled (`take_lost`) while its pipe,
            // held by some other process that reads nothing, stayed full:
            // the pipe and the frames are let go, not waited on for ever.
            return;
        };
        let mut st = stdin.state();
        if written.is_err() {
            // The frames not written whole: the worker cannot have started
            // those calls, nor any it left unread.
            st.lost.extend(batch.drain(..).map(|(id, _)| id));
            st.broken(Some(pipe));
            return; // the reader sees the worker die
        }
        if st.closed {
            // The worker's end was settled meanwhile (`take_lost`).
            batch.clear();
            return;
        }
        st.pipe = Some(pipe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll};

    /// A pipe that takes at most `room` bytes per call and counts its calls.
    struct Counting {
        out: Vec<u8>,
        room: usize,
        calls: usize,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.room - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frames(n: u64) -> Vec<(u64, Bytes)> {
        (1..=n)
            .map(|id| (id, Bytes::from(format!("frame {id};"))))
            .collect()
    }

    #[tokio::test]
    async fn waiting_frames_go_out_in_one_write() {
        let mut pipe = Counting {
            out: Vec::new(),
            room: usize::MAX,
            calls: 0,
        };
        let mut batch = frames(5);
        let mut total = 0;
        write_frames(&mut pipe, &mut batch, || (), |_, n| total += n)
            .await
            .unwrap();
        assert_eq!(pipe.calls, 1, "five frames, one write");
        assert_eq!(pipe.out, b"frame 1;frame 2;frame 3;frame 4;frame 5;");
        assert_eq!(total, pipe.out.len() as u64);
        assert!(batch.is_empty());
    }

    #[tokio::test]
    async fn a_short_write_goes_on_where_it_stopped() {
        let mut pipe = Counting {
            out: Vec::new(),
            room: 11,
            calls: 0,
        };
        let mut batch = frames(4);
        let mut total = 0;
        write_frames(&mut pipe, &mut batch, || (), |_, n| total += n)
            .await
            .unwrap();
        assert_eq!(pipe.out, b"frame 1;frame 2;frame 3;frame 4;");
        assert_eq!(total, 32);
        assert_eq!(pipe.calls, 3, "11 bytes a write");
    }

    #[tokio::test]
    async fn a_failed_write_keeps_the_frames_not_written_whole() {
        /// Takes `room` bytes, then fails.
        struct Breaks(usize);
        impl AsyncWrite for Breaks {
            fn poll_write(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                if self.0 == 0 {
                    return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
                }
                let n = buf.len().min(self.0);
                self.0 -= n;
                Poll::Ready(Ok(n))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let mut batch = frames(3);
        // The first frame whole and half of the second.
        let r = write_frames(&mut Breaks(12), &mut batch, || (), |_, _| {}).await;
        assert!(r.is_err());
        assert_eq!(batch.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn the_writer_takes_the_whole_backlog_at_once() {
        let mut st = StdinState {
            pipe: None,
            fd: -1,
            backlog: VecDeque::new(),
            close: false,
            closed: false,
            lost: Vec::new(),
            replies: 1,
            accepted: 0,
            written: 0,
            recent: VecDeque::new(),
            size: os::PipeSize::new(),
        };
        let mut batch = Vec::new();
        assert!(!st.take_batch(&mut batch));
        st.backlog.extend(frames(3));
        st.backlog
            .push_back((HOST_REPLY, Bytes::from_static(b"reply")));
        st.backlog.extend(frames(BATCH as u64));
        assert!(st.take_batch(&mut batch));
        assert_eq!(batch.len(), BATCH);
        assert_eq!(st.backlog.len(), 4);
        assert_eq!(st.replies, 0, "the host reply left the backlog");
    }
}

#[cfg(all(test, target_os = "linux"))]
mod unread {
    use super::*;

    /// A pipe whose write end is a worker's stdin: (stdin, read end).
    fn stdin_pipe() -> (Arc<Stdin>, std::fs::File) {
        let (read, write) = os::pipe().unwrap();
        let pipe = ChildStdin::from_std(std::process::ChildStdin::from(write)).unwrap();
        let stdin = Arc::new(Stdin::new(Some(pipe)));
        (stdin, std::fs::File::from(read))
    }

    /// Three frames of 600 KiB to a worker that reads nothing: the first
    /// fills most of the (grown) pipe, the rest of the second and all of
    /// the third go to the writer task in one batch, which waits on the
    /// full pipe. None of the three was read: all three are lost, however
    /// much the writer's batch holds.
    #[tokio::test(flavor = "current_thread")]
    async fn frames_in_a_blocked_writers_batch_leave_the_first_frame_unread() {
        let (stdin, mut read) = stdin_pipe();
        let writer = tokio::spawn(write_loop(stdin.clone()));
        let frame = Bytes::from(vec![7u8; 600 << 10]);
        for id in 1..=3 {
            assert!(stdin.send(id, frame.clone()));
        }
        // The writer takes its batch (the rest of 2, and 3) and blocks.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(
            stdin.state().backlog.is_empty(),
            "the writer took the batch"
        );
        let (mut lost, order) = stdin.take_lost();
        lost.sort_unstable();
        assert_eq!(order, [1, 2, 3]);
        assert_eq!(lost, [1, 2, 3], "nothing was read");
        // The writer gives up the full pipe once the worker's end is known.
        stdin.close();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(writer.is_finished(), "the writer still waits on the pipe");
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut read, &mut rest).unwrap();
        assert!(rest.len() < 3 * frame.len(), "the pipe was closed");
    }
}
