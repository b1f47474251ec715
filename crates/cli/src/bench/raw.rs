//! The bench's baseline: worker processes driven directly, one plain loop
//! per worker on a thread of its own, one request in flight each; and the
//! same workers driven by one thread for them all, the best a host with a
//! single thread can do without writing calls ahead.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use indicatif::ProgressBar;
use serde_json::{json, Value};
use snakepit_core::{Launch, PipeSize, RawProcess, WireCodec};
use snakepit_protocol::{
    decode_inbound, decode_response, encode_frame, Error as ProtocolError, Inbound, Request,
    HEADER_LEN,
};

use super::measure::{Meter, Run};
use super::progress::Counter;
use super::Load;

/// How the raw workers are started: as the pool would start them.
pub(crate) struct Raw<'a> {
    pub(crate) launch: &'a Launch,
    pub(crate) codec: WireCodec,
    /// The pool's limit, checked from each reply's header.
    pub(crate) max_frame_size: usize,
}

/// How the raw loop's calls are made.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Threads {
    /// A plain loop per worker on a thread of its own.
    PerWorker,
    /// One thread for all the workers (see [`one_thread`]): the bound for
    /// the pool with pipelining off on its one runtime thread.
    One,
}

impl Raw<'_> {
    /// Starts `workers` processes through the spawn path on the runtime,
    /// warms each up, then runs `requests` calls spread over them on plain
    /// threads with blocking pipes (the runtime waits meanwhile).
    pub(crate) async fn run(
        &self,
        load: &Load,
        workers: usize,
        requests: usize,
        bar: &ProgressBar,
        threads: Threads,
    ) -> anyhow::Result<Run> {
        let mut raws = Vec::with_capacity(workers);
        for n in 0..workers {
            raws.push(RawWorker::start(self.launch, self.codec, self.max_frame_size, n).await?);
        }
        for w in &mut raws {
            for i in 0..200 {
                w.call(10 + i, &load.command, &load.args)?; // warm-up
            }
        }
        let per = requests / workers;
        let counter = Counter::start(bar);
        let pids: Vec<u32> = raws.iter().map(|w| w.process.pid()).collect();
        let meter = Meter::start(&pids);
        let done = counter.handle();
        let lat = std::thread::scope(|s| match threads {
            Threads::PerWorker => raws
                .iter_mut()
                .map(|w| {
                    let done = &done;
                    s.spawn(move || -> anyhow::Result<Vec<Duration>> {
                        let mut lat = Vec::with_capacity(per);
                        for i in 0..per {
                            let t = Instant::now();
                            w.call(1000 + i as u64, &load.command, &load.args)?;
                            lat.push(t.elapsed());
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(lat)
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(panicked())))
                .collect::<anyhow::Result<Vec<Vec<Duration>>>>()
                .map(|each| each.into_iter().flatten().collect()),
            Threads::One => s
                .spawn(|| one_thread(&mut raws, per, load, &done))
                .join()
                .unwrap_or_else(|_| Err(panicked())),
        });
        let spent = meter.stop();
        counter.finish();
        Ok(Run::new(lat?, spent))
    }
}

fn panicked() -> anyhow::Error {
    anyhow::anyhow!("a raw loop thread panicked")
}

/// `per` calls on each of `raws` from this one thread, as a host with one
/// thread must make them: one request in flight per worker, the next
/// written as soon as the worker's reply is read, and `poll(2)` to wait for
/// whichever worker answers first. Nothing else runs on the thread (no
/// queue, no callers, no runtime). Their latencies.
fn one_thread(
    raws: &mut [RawWorker],
    per: usize,
    load: &Load,
    done: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<Vec<Duration>> {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut lat = Vec::with_capacity(per * raws.len());
    let mut left = vec![per; raws.len()];
    let mut sent = vec![Instant::now(); raws.len()];
    for (i, w) in raws.iter_mut().enumerate() {
        if per > 0 {
            w.send(1000, &load.command, &load.args)?;
            sent[i] = Instant::now();
        }
    }
    let mut ready = vec![false; raws.len()];
    while left.iter().any(|&n| n > 0) {
        {
            let mut fds: Vec<PollFd<'_>> = raws
                .iter()
                .map(|w| PollFd::new(&w.stdout, PollFlags::IN))
                .collect();
            match poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            for (r, fd) in ready.iter_mut().zip(&fds) {
                *r = !fd.revents().is_empty();
            }
        }
        for (i, w) in raws.iter_mut().enumerate() {
            if !ready[i] || left[i] == 0 {
                continue;
            }
            // The reply is read whole once its first bytes are in.
            w.receive(&load.command)?;
            lat.push(sent[i].elapsed());
            done.fetch_add(1, Ordering::Relaxed);
            left[i] -= 1;
            if left[i] > 0 {
                w.send(1000 + (per - left[i]) as u64, &load.command, &load.args)?;
                sent[i] = Instant::now();
            }
        }
    }
    Ok(lat)
}

/// One worker process driven directly: write a frame, read the reply.
///
/// It bypasses the pool's queue, not its process safety: the process is a
/// `RawProcess` (own process group, parent-death signal, watchdog, run id),
/// and a reply longer than the pool's `max_frame_size` is refused from its
/// header, before anything of that size is allocated.
struct RawWorker {
    /// Kills and reaps the process group when the worker is dropped.
    process: RawProcess,
    stdin: std::fs::File,
    stdout: std::fs::File,
    codec: WireCodec,
    max_frame_size: usize,
    buf: BytesMut,
    frame: Vec<u8>,
    /// The pipes grown for large frames as the pool grows its workers'.
    stdin_size: PipeSize,
    stdout_size: PipeSize,
}

impl RawWorker {
    /// Starts the adapter's program exactly as the pool would (same
    /// program, arguments and environment, same spawn path) and runs the
    /// init handshake.
    async fn start(
        launch: &Launch,
        codec: WireCodec,
        max_frame_size: usize,
        n: usize,
    ) -> anyhow::Result<RawWorker> {
        let worker_id = format!("raw_{n}");
        let launch = launch.clone().env("SNAKEPIT_WORKER_ID", &worker_id);
        let mut process = RawProcess::spawn(launch.clone(), codec)
            .await
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", launch.program.display()))?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (
            process.take_stdin(),
            process.take_stdout(),
            process.take_stderr(),
        ) else {
            anyhow::bail!("the raw worker has no pipes");
        };
        // Plain blocking pipes: the loop runs on a thread of its own.
        let stdin = std::fs::File::from(stdin.into_owned_fd()?);
        let stdout = std::fs::File::from(stdout.into_owned_fd()?);
        let mut stderr = std::fs::File::from(stderr.into_owned_fd()?);
        // Nobody shows a raw worker's stderr, but a full pipe would block it.
        std::thread::Builder::new()
            .name(format!("snakepit-{worker_id}-stderr"))
            .spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()))?;
        let mut w = RawWorker {
            process,
            stdin,
            stdout,
            codec,
            max_frame_size,
            buf: BytesMut::with_capacity(256),
            frame: Vec::new(),
            stdin_size: PipeSize::new(),
            stdout_size: PipeSize::new(),
        };
        w.call(
            1,
            "ping",
            &json!({"initialization": true, "worker_id": worker_id}),
        )?;
        Ok(w)
    }

    /// One round trip: encode, write, read frames until the reply, decode it.
    fn call(&mut self, id: u64, command: &str, args: &Value) -> anyhow::Result<Value> {
        self.send(id, command, args)?;
        self.receive(command)
    }

    /// Encodes and writes one request.
    fn send(&mut self, id: u64, command: &str, args: &Value) -> anyhow::Result<()> {
        self.buf.clear();
        encode_frame(
            &self.codec,
            &Request::new(id, command, args),
            self.max_frame_size,
            &mut self.buf,
        )?;
        self.stdin_size.fit(&self.stdin, self.buf.len());
        self.stdin.write_all(&self.buf)?;
        Ok(())
    }

    /// Reads frames until the reply, and decodes it.
    fn receive(&mut self, command: &str) -> anyhow::Result<Value> {
        loop {
            let mut head = [0u8; HEADER_LEN];
            self.stdout.read_exact(&mut head)?;
            let len = u32::from_be_bytes(head) as usize;
            // The check of `FrameCodec`, from the header alone.
            if len > self.max_frame_size {
                return Err(ProtocolError::FrameTooLarge {
                    len: len as u64,
                    max: self.max_frame_size,
                }
                .into());
            }
            self.frame.resize(len, 0);
            self.stdout.read_exact(&mut self.frame)?;
            self.stdout_size.fit(&self.stdout, HEADER_LEN + len);
            // The hello frame comes before the first reply.
            if let Inbound::Response { .. } = decode_inbound(&self.codec, &self.frame)? {
                return match decode_response::<_, Value>(&self.codec, &self.frame)? {
                    Ok(v) => Ok(v),
                    Err(e) => Err(anyhow::anyhow!("`{command}` failed in the raw worker: {e}")),
                };
            }
        }
    }
}
