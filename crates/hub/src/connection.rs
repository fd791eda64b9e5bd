//! Frames over a stream: a reader that decodes, and a sender that writes straight to the
//! socket, with a writer task for what the socket cannot take at once.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use qnllm_protocol::{
    encode_frame, Deadline, ErrorCode, Frame, FrameDecoder, Message, ProtocolError, WireError,
};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

use crate::stream::{ReadHalf, WriteHalf};

/// Bytes queued per connection before senders wait: bounds memory per slow peer.
const QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Frames sent closer together than this are a burst: the next one gathers the frames
/// that come due with it into one write. Farther apart, each is written at once.
const GATHER_WINDOW: Duration = Duration::from_micros(50);
/// Room for the first read of a connection.
const MIN_READ_BYTES: usize = 8 * 1024;
/// Most room made for one read: about 20 reason frames, and at most this much buffer per
/// busy connection.
const MAX_READ_BYTES: usize = 64 * 1024;
/// Longest a closing connection may take to flush what it has queued.
const FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The peer broke the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
}

/// Reads whole frames from a stream.
#[derive(Debug)]
pub(crate) struct FrameReader {
    io: ReadHalf,
    buf: BytesMut,
    decoder: FrameDecoder,
    /// How long to poll for the next bytes before sleeping on the socket; zero by default.
    busy_poll: Duration,
    /// Room made before each read; grows while reads come back full.
    read_size: usize,
}

impl FrameReader {
    pub(crate) fn new(io: ReadHalf, max_frame_bytes: u32) -> FrameReader {
        FrameReader {
            io,
            buf: BytesMut::with_capacity(MIN_READ_BYTES),
            decoder: FrameDecoder::new(max_frame_bytes),
            busy_poll: Duration::ZERO,
            read_size: MIN_READ_BYTES,
        }
    }

    /// Polls for up to `spin` before each sleep on the socket (see
    /// [`FrameReader::read_frame`]).
    pub(crate) fn busy_poll(mut self, spin: Duration) -> FrameReader {
        self.busy_poll = spin;
        self
    }

    /// The next frame, or `None` when the peer closed cleanly between frames.
    ///
    /// With a busy-poll time, an empty buffer is first polled with non-blocking reads for
    /// up to that long, yielding to the runtime's other tasks between tries, so a reply that
    /// comes within it is taken without the thread going to sleep and being woken, which on
    /// a virtual machine costs tens of microseconds. The price is a core kept busy while it
    /// waits.
    pub(crate) async fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        let mut spin_since: Option<std::time::Instant> = None;
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if !self.busy_poll.is_zero() {
                let since = *spin_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() < self.busy_poll {
                    match self.io.try_read_buf(&mut self.buf) {
                        Ok(0) => return self.closed(),
                        Ok(_) => {
                            spin_since = None;
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            tokio::task::yield_now().await;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            self.buf.reserve(self.read_size);
            let room = self.buf.capacity() - self.buf.len();
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return self.closed();
            }
            // A read that filled all the room says more is waiting: take bigger bites, so a
            // burst of frames arrives in few syscalls. Idle connections keep small buffers.
            if n == room {
                self.read_size = (self.read_size * 2).min(MAX_READ_BYTES);
            }
            spin_since = None;
        }
    }

    fn closed(&self) -> Result<Option<Frame>, ReadError> {
        if self.buf.is_empty() {
            Ok(None)
        } else {
            Err(ReadError::Truncated)
        }
    }

    /// The next frame if it has already been read whole; never waits on the socket.
    pub(crate) fn next_buffered(&mut self) -> Result<Option<Frame>, ReadError> {
        Ok(self.decoder.decode(&mut self.buf)?)
    }

    /// [`FrameReader::read_frame`] with a time limit; `Ok(None)` also on timeout's expiry is
    /// not wanted, so expiry is its own outcome.
    pub(crate) async fn read_frame_within(
        &mut self,
        limit: Duration,
    ) -> Result<Result<Option<Frame>, ReadError>, Elapsed> {
        tokio::time::timeout(limit, self.read_frame())
            .await
            .map_err(|_| Elapsed)
    }
}

/// A time limit passed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Elapsed;

/// Sends frames on a connection. Cloning it is cheap.
///
/// A frame is written straight to the socket by the task that sends it when nothing is
/// queued ahead of it: a request or reply costs one syscall and no hop to another task or
/// thread. What the socket does not take at once is queued, and the connection's writer
/// task flushes the queue, many frames per syscall, as the socket drains. In a burst
/// (frames closer than `GATHER_WINDOW`), an async sender first lets the frames due at the
/// same moment join its own, then writes them in one syscall. The queue is bounded: past
/// `QUEUE_BYTES`, [`FrameSender::send`] waits for room and [`FrameSender::try_send`] gives
/// up.
#[derive(Debug, Clone)]
pub(crate) struct FrameSender {
    handle: Arc<SenderHandle>,
}

/// Shared by the clones of one [`FrameSender`]; when the last is dropped, the writer task
/// flushes and closes.
#[derive(Debug)]
struct SenderHandle {
    outbox: Arc<Outbox>,
}

impl Drop for SenderHandle {
    fn drop(&mut self) {
        self.outbox.lock().senders_gone = true;
        self.outbox.flush.notify_one();
    }
}

#[derive(Debug)]
struct Outbox {
    io: WriteHalf,
    state: Mutex<OutboxState>,
    /// Wakes the writer task: bytes were queued, or it should end.
    flush: Notify,
    /// Wakes senders waiting for room in the queue.
    room: Notify,
}

#[derive(Debug, Default)]
struct OutboxState {
    /// Bytes accepted from senders that the socket has not taken yet, in order.
    queued: BytesMut,
    /// No more frames are accepted: the socket failed or the connection is closing.
    closed: bool,
    /// Every sender is gone: flush, then close.
    senders_gone: bool,
    /// A sender is letting others add to `queued` before it writes it all.
    gathering: bool,
    /// When a sender last sent a frame.
    last_send: Option<std::time::Instant>,
}

/// A gathering sender's turn: it writes what was gathered, or, if its task is dropped while
/// it waits, leaves that to the writer task.
struct Gather<'a>(&'a Outbox);

impl Gather<'_> {
    /// Writes the gathered frames; what the socket does not take goes to the writer task.
    fn write(self) -> bool {
        let outbox = self.0;
        let mut state = outbox.lock();
        state.gathering = false;
        if state.closed {
            return false;
        }
        while !state.queued.is_empty() {
            match outbox.io.try_write(&state.queued) {
                Ok(n) => state.queued.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    outbox.flush.notify_one();
                    return true;
                }
                Err(_) => {
                    state.closed = true;
                    outbox.flush.notify_one();
                    return false;
                }
            }
        }
        outbox.room.notify_waiters();
        true
    }
}

impl Drop for Gather<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        if state.gathering {
            state.gathering = false;
            self.0.flush.notify_one();
        }
    }
}

/// What became of a frame offered to the outbox.
enum Offer {
    /// Written, or queued for the writer task.
    Sent,
    /// The queue is at its bound; nothing was written.
    Full,
    /// The connection is gone or closing.
    Closed,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // Every change under the lock leaves the state whole, so a poisoned lock is fine.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `frame` and makes its sender the gatherer (`Some(true)`) when nothing is queued
    /// or being gathered and the previous frame went out less than `GATHER_WINDOW` ago, a
    /// sign of a burst; `Some(false)` when the connection is gone; `None` otherwise (the
    /// frame is then offered as usual: a lone frame is written at once).
    fn start_gathering(&self, frame: &[u8]) -> Option<bool> {
        let mut state = self.lock();
        if state.closed {
            return Some(false);
        }
        let now = std::time::Instant::now();
        let burst = state
            .last_send
            .is_some_and(|last| now.duration_since(last) < GATHER_WINDOW);
        state.last_send = Some(now);
        if burst && state.queued.is_empty() && !state.gathering {
            state.queued.extend_from_slice(frame);
            state.gathering = true;
            return Some(true);
        }
        None
    }

    /// Writes `frame` now if nothing is queued, and queues what the socket does not take.
    fn offer(&self, frame: &[u8], state: &mut OutboxState) -> Offer {
        if state.closed {
            return Offer::Closed;
        }
        if !state.queued.is_empty() {
            if state.queued.len() >= QUEUE_BYTES {
                return Offer::Full;
            }
            // The writer task was woken when the queue became non-empty.
            state.queued.extend_from_slice(frame);
            return Offer::Sent;
        }
        match self.io.try_write(frame) {
            Ok(n) if n == frame.len() => return Offer::Sent,
            Ok(n) => state.queued.extend_from_slice(&frame[n..]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                state.queued.extend_from_slice(frame);
            }
            Err(_) => {
                state.closed = true;
                return Offer::Closed;
            }
        }
        self.flush.notify_one();
        Offer::Sent
    }

    /// Queues `frame` behind what is queued or being gathered, then writes the queue now, as
    /// far as the socket takes it, by direct syscalls from the calling thread; the writer
    /// task gets the rest. Order is kept: a gatherer finds its frames already written.
    fn push_now(&self, frame: &[u8]) -> Offer {
        let mut state = self.lock();
        if state.closed {
            return Offer::Closed;
        }
        if state.queued.len() >= QUEUE_BYTES {
            return Offer::Full;
        }
        state.queued.extend_from_slice(frame);
        while !state.queued.is_empty() {
            match self.io.write_now(&state.queued) {
                Ok(n) => state.queued.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.flush.notify_one();
                    return Offer::Sent;
                }
                Err(_) => {
                    state.closed = true;
                    self.flush.notify_one();
                    return Offer::Closed;
                }
            }
        }
        self.room.notify_waiters();
        Offer::Sent
    }
}

impl FrameSender {
    /// Sends `message` if the queue has room now; `false` if it is full or the connection
    /// is gone. For best-effort messages that must never wait (cancel).
    pub(crate) fn try_send(&self, message: &Message, request_id: u64, deadline: Deadline) -> bool {
        let frame = encode(message, request_id, deadline);
        let outbox = &self.handle.outbox;
        let mut state = outbox.lock();
        matches!(outbox.offer(&frame, &mut state), Offer::Sent)
    }

    /// Sends `message`, waiting while the queue is full; `false` if the connection is gone.
    pub(crate) async fn send(
        &self,
        message: &Message,
        request_id: u64,
        deadline: Deadline,
    ) -> bool {
        self.send_encoded(encode(message, request_id, deadline))
            .await
    }

    /// Sends an `error` reply for `request_id` (0: about the connection itself), waiting
    /// while the queue is full; a connection that is gone drops it.
    pub(crate) async fn fail(&self, request_id: u64, code: ErrorCode, message: impl Into<String>) {
        let error = Message::Error(WireError::new(code, message));
        self.send(&error, request_id, Deadline::NONE).await;
    }

    /// Sends an `error` reply for `request_id` now, from any thread, without the runtime:
    /// for an answer that must not wait for a busy runtime to poll a task (a deadline).
    /// `false` if the queue is at its bound or the connection is gone; then nothing was
    /// sent.
    pub(crate) fn fail_now(
        &self,
        request_id: u64,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> bool {
        let error = Message::Error(WireError::new(code, message));
        let frame = encode(&error, request_id, Deadline::NONE);
        matches!(self.handle.outbox.push_now(&frame), Offer::Sent)
    }

    /// Sends several replies (message, request id) in one write, in order.
    pub(crate) async fn send_all(&self, replies: &[(Message, u64)]) -> bool {
        let mut frames = BytesMut::new();
        for (message, request_id) in replies {
            encode_frame(message, *request_id, Deadline::NONE, &mut frames);
        }
        self.send_encoded(frames).await
    }

    /// Sends frames already encoded, waiting while the queue is full.
    pub(crate) async fn send_encoded(&self, frame: BytesMut) -> bool {
        let outbox = &self.handle.outbox;
        match outbox.start_gathering(&frame) {
            Some(true) => {
                // Let the tasks that are ready now on this thread queue their frames
                // (replies to one burst of requests come due together), then write them all
                // in one syscall. A lone frame waits one pass of the scheduler, far less
                // than a syscall per frame costs under load.
                let gather = Gather(outbox);
                tokio::task::yield_now().await;
                return gather.write();
            }
            Some(false) => return false,
            None => {}
        }
        loop {
            let room = outbox.room.notified();
            tokio::pin!(room);
            {
                let mut state = outbox.lock();
                match outbox.offer(&frame, &mut state) {
                    Offer::Sent => return true,
                    Offer::Closed => return false,
                    // Registered before the lock is released: a drain in between still
                    // wakes it.
                    Offer::Full => {
                        room.as_mut().enable();
                    }
                }
            }
            room.await;
        }
    }
}

impl FrameSender {
    /// A handle that can end this connection's writing side without keeping it open.
    pub(crate) fn closer(&self) -> Closer {
        Closer {
            outbox: self.handle.outbox.clone(),
        }
    }
}

/// Ends the writing side of a connection: what is queued is flushed, later frames are
/// refused, then the socket's write half is shut down (the peer reads end of stream).
#[derive(Debug, Clone)]
pub(crate) struct Closer {
    outbox: Arc<Outbox>,
}

impl Closer {
    pub(crate) fn close(&self) {
        self.outbox.lock().closed = true;
        self.outbox.flush.notify_one();
        self.outbox.room.notify_waiters();
    }
}

fn encode(message: &Message, request_id: u64, deadline: Deadline) -> BytesMut {
    let mut out = BytesMut::new();
    encode_frame(message, request_id, deadline, &mut out);
    out
}

/// The writer task of a connection.
#[derive(Debug)]
pub(crate) struct Writer {
    outbox: Arc<Outbox>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Writes what is already queued, then closes the socket, even while other holders of
    /// the sender (a backend still listed somewhere) are alive: later frames are refused.
    ///
    /// A peer that stopped reading (SIGSTOP) would block the final write forever, so the
    /// flush gets `FLUSH_LIMIT`; after that the socket is closed unflushed.
    pub(crate) async fn finish(self) {
        self.outbox.lock().closed = true;
        self.outbox.flush.notify_one();
        self.outbox.room.notify_waiters();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(FLUSH_LIMIT, self.task).await.is_err() {
            abort.abort();
            self.outbox.io.shutdown();
        }
    }
}

/// Starts the writer task for `io`. It ends when every sender is dropped or
/// [`Writer::finish`] is called (after writing what was queued), or when the socket fails.
pub(crate) fn spawn_writer(io: WriteHalf) -> (FrameSender, Writer) {
    let outbox = Arc::new(Outbox {
        io,
        state: Mutex::new(OutboxState::default()),
        flush: Notify::new(),
        room: Notify::new(),
    });
    let task = tokio::spawn(flush_queue(outbox.clone()));
    let sender = FrameSender {
        handle: Arc::new(SenderHandle {
            outbox: outbox.clone(),
        }),
    };
    (sender, Writer { outbox, task })
}

/// Writes queued bytes as the socket drains, until the connection ends.
async fn flush_queue(outbox: Arc<Outbox>) {
    loop {
        match write_queued(&outbox) {
            Flushed::Empty { ending: false } => outbox.flush.notified().await,
            Flushed::Empty { ending: true } => {
                outbox.lock().closed = true;
                outbox.room.notify_waiters();
                outbox.io.shutdown();
                return;
            }
            Flushed::SocketFull => {
                if outbox.io.writable().await.is_err() {
                    return fail(&outbox);
                }
            }
            Flushed::Failed => return fail(&outbox),
        }
    }
}

/// What one pass of the writer task achieved.
enum Flushed {
    /// The queue is empty; `ending` if the connection is closing.
    Empty { ending: bool },
    /// The socket takes no more for now.
    SocketFull,
    /// The socket failed.
    Failed,
}

/// Writes what the socket takes now, in as few syscalls as it allows.
fn write_queued(outbox: &Outbox) -> Flushed {
    let mut state = outbox.lock();
    while !state.queued.is_empty() {
        match outbox.io.try_write(&state.queued) {
            Ok(n) => {
                state.queued.advance(n);
                if state.queued.len() < QUEUE_BYTES {
                    outbox.room.notify_waiters();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Flushed::SocketFull,
            Err(_) => return Flushed::Failed,
        }
    }
    Flushed::Empty {
        ending: state.closed || state.senders_gone,
    }
}

/// The socket failed: refuse further frames and free the waiting senders.
fn fail(outbox: &Outbox) {
    let mut state = outbox.lock();
    state.closed = true;
    state.queued = BytesMut::new();
    drop(state);
    outbox.room.notify_waiters();
    outbox.io.shutdown();
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stream::Stream;
    use qnllm_protocol::{Goodbye, MessageKind};

    fn ping() -> Message {
        Message::Goodbye(Goodbye {
            reason: "x".repeat(3_000),
        })
    }

    /// A sender on one end of a socket pair, a frame reader on the other.
    fn pair() -> (FrameSender, Writer, FrameReader) {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (_, write) = Stream::Unix(a).into_split();
        let (read, _) = Stream::Unix(b).into_split();
        let (sender, writer) = spawn_writer(write);
        (sender, writer, FrameReader::new(read, 1 << 24))
    }

    #[tokio::test]
    async fn a_full_queue_refuses_try_send_and_holds_send_until_the_peer_reads() {
        let (sender, writer, mut reader) = pair();
        // Nobody reads: the kernel's buffer fills, then the queue up to its bound.
        let mut sent = 0u64;
        while sender.try_send(&ping(), sent + 1, Deadline::NONE) {
            sent += 1;
            assert!(sent < 100_000, "the queue never filled");
        }
        let queued = sent as usize * (HEADER + 3_002);
        assert!(queued >= QUEUE_BYTES, "refused after only {queued} bytes");
        // A waiting send completes once the reader drains the socket.
        let late = tokio::spawn({
            let sender = sender.clone();
            async move { sender.send(&ping(), u64::MAX, Deadline::NONE).await }
        });
        tokio::task::yield_now().await;
        assert!(!late.is_finished(), "send went through a full queue");
        for expected in 1..=sent {
            let frame = reader.read_frame().await.unwrap().unwrap();
            assert_eq!(frame.header.request_id, expected, "frames out of order");
            assert_eq!(frame.kind, MessageKind::Goodbye);
        }
        assert!(late.await.unwrap());
        let last = reader.read_frame().await.unwrap().unwrap();
        assert_eq!(last.header.request_id, u64::MAX);
        drop(sender);
        writer.finish().await;
        assert!(
            reader.read_frame().await.unwrap().is_none(),
            "no clean close"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_senders_never_interleave_frames() {
        let (sender, writer, mut reader) = pair();
        let tasks: Vec<_> = (0..8u64)
            .map(|task| {
                let sender = sender.clone();
                tokio::spawn(async move {
                    for i in 0..500u64 {
                        assert!(sender.send(&ping(), task * 1_000 + i, Deadline::NONE).await);
                    }
                })
            })
            .collect();
        let mut next = [0u64; 8];
        for _ in 0..8 * 500 {
            let frame = reader.read_frame().await.unwrap().unwrap();
            let (task, i) = (
                frame.header.request_id / 1_000,
                frame.header.request_id % 1_000,
            );
            assert_eq!(
                i, next[task as usize],
                "a task's frames arrived out of order"
            );
            next[task as usize] += 1;
            assert!(frame.message().is_ok(), "a frame was torn");
        }
        for task in tasks {
            task.await.unwrap();
        }
        drop(sender);
        writer.finish().await;
    }

    #[tokio::test]
    async fn finish_flushes_what_is_queued_then_refuses_more() {
        let (sender, writer, mut reader) = pair();
        let mut sent = 0u64;
        while sent < 200 && sender.try_send(&ping(), sent + 1, Deadline::NONE) {
            sent += 1;
        }
        let drain = tokio::spawn(async move {
            let mut got = 0u64;
            while let Some(frame) = reader.read_frame().await.unwrap() {
                got += 1;
                assert_eq!(frame.header.request_id, got);
            }
            got
        });
        writer.finish().await;
        assert!(
            !sender.send(&ping(), 0, Deadline::NONE).await,
            "accepted after finish"
        );
        assert!(!sender.try_send(&ping(), 0, Deadline::NONE));
        assert_eq!(drain.await.unwrap(), sent);
    }

    #[tokio::test]
    async fn a_busy_polling_reader_gets_every_frame_then_the_close() {
        let (sender, writer, reader) = pair();
        let mut reader = reader.busy_poll(Duration::from_millis(5));
        let send = tokio::spawn(async move {
            for id in 1..=300u64 {
                assert!(sender.send(&ping(), id, Deadline::NONE).await);
                if id % 7 == 0 {
                    tokio::task::yield_now().await; // let the reader find an empty socket
                }
            }
            drop(sender);
            writer.finish().await;
        });
        for id in 1..=300u64 {
            let frame = reader.read_frame().await.unwrap().unwrap();
            assert_eq!(frame.header.request_id, id);
        }
        assert!(reader.read_frame().await.unwrap().is_none());
        send.await.unwrap();
    }

    #[tokio::test]
    async fn a_busy_polling_reader_reports_a_frame_cut_short() {
        use tokio::io::AsyncWriteExt;
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let (read, _) = Stream::Unix(a).into_split();
        let mut reader = FrameReader::new(read, 1 << 24).busy_poll(Duration::from_millis(5));
        let mut frame = BytesMut::new();
        encode_frame(&ping(), 1, Deadline::NONE, &mut frame);
        b.write_all(&frame[..frame.len() / 2]).await.unwrap();
        b.shutdown().await.unwrap();
        assert!(matches!(
            reader.read_frame().await,
            Err(ReadError::Truncated)
        ));
    }

    #[tokio::test]
    async fn frames_gathered_in_a_burst_go_out_even_if_the_gatherer_is_dropped() {
        let (sender, writer, mut reader) = pair();
        // The writer task starts and waits for work, as on a live connection.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        // As if a frame had just gone out: the next send gathers.
        sender.handle.outbox.lock().last_send =
            Some(std::time::Instant::now() + Duration::from_secs(3_600));
        let message = ping();
        let mut gatherer = Box::pin(sender.send(&message, 1, Deadline::NONE));
        assert!(
            futures::poll!(gatherer.as_mut()).is_pending(),
            "the sender should wait one scheduler pass to gather"
        );
        assert!(sender.outbox_gathering());
        // Another task's frame joins the gathered one without a write of its own.
        assert!(sender.try_send(&ping(), 2, Deadline::NONE));
        drop(gatherer); // its request was cancelled, say
        assert!(!sender.outbox_gathering());
        expect_ids(&mut reader, [1, 2]).await;
        // And a completed gather writes what it gathered itself.
        sender.handle.outbox.lock().last_send =
            Some(std::time::Instant::now() + Duration::from_secs(3_600));
        let (a, b) = tokio::join!(
            sender.send(&message, 3, Deadline::NONE),
            sender.send(&message, 4, Deadline::NONE)
        );
        assert!(a && b);
        expect_ids(&mut reader, [3, 4]).await;
        drop(sender);
        writer.finish().await;
    }

    /// Reads frames with these request ids, in order; fails rather than hang if one never
    /// goes out.
    async fn expect_ids(reader: &mut FrameReader, ids: [u64; 2]) {
        for id in ids {
            let frame = tokio::time::timeout(Duration::from_secs(10), reader.read_frame())
                .await
                .expect("a gathered frame never went out")
                .unwrap()
                .unwrap();
            assert_eq!(frame.header.request_id, id);
        }
    }

    impl FrameSender {
        fn outbox_gathering(&self) -> bool {
            self.handle.outbox.lock().gathering
        }
    }

    const HEADER: usize = qnllm_protocol::HEADER_BYTES;
}
