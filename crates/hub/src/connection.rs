//! Frames over a byte stream: a reader that decodes, and a writer task that batches.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use qnllm_protocol::{encode_frame, Deadline, Frame, FrameDecoder, Message, ProtocolError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Frames queued per connection before senders wait: bounds memory per slow peer.
const QUEUE_FRAMES: usize = 4_096;
/// Longest a closing connection may take to flush what it has queued.
const FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);
/// Most bytes gathered into one write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

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
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, max_frame_bytes: u32) -> FrameReader<R> {
        FrameReader {
            io,
            buf: BytesMut::with_capacity(8 * 1024),
            decoder: FrameDecoder::new(max_frame_bytes),
        }
    }

    /// The next frame, or `None` when the peer closed cleanly between frames.
    pub(crate) async fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated)
                };
            }
        }
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

/// Queues encoded frames for a connection's writer task. Cloning it is cheap.
#[derive(Debug, Clone)]
pub(crate) struct FrameSender {
    tx: mpsc::Sender<Bytes>,
}

impl FrameSender {
    /// Encodes and queues `message` if there is room now; `false` if the queue is full or
    /// the connection is gone. For best-effort messages that must never wait (cancel).
    pub(crate) fn try_send(&self, message: &Message, request_id: u64, deadline: Deadline) -> bool {
        let mut out = BytesMut::new();
        encode_frame(message, request_id, deadline, &mut out);
        self.tx.try_send(out.freeze()).is_ok()
    }

    /// Encodes and queues `message`; `false` if the connection is gone.
    pub(crate) async fn send(
        &self,
        message: &Message,
        request_id: u64,
        deadline: Deadline,
    ) -> bool {
        let mut out = BytesMut::new();
        encode_frame(message, request_id, deadline, &mut out);
        self.tx.send(out.freeze()).await.is_ok()
    }
}

/// The writer task of a connection.
#[derive(Debug)]
pub(crate) struct Writer {
    done: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Writes what is already queued, then closes the socket, even while other holders of
    /// the sender (a backend still listed somewhere) are alive.
    ///
    /// A peer that stopped reading (SIGSTOP) would block the final write forever, so the
    /// flush gets `FLUSH_LIMIT`; after that the socket is dropped unflushed.
    pub(crate) async fn finish(self) {
        self.done.cancel();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(FLUSH_LIMIT, self.task).await.is_err() {
            abort.abort();
        }
    }
}

/// Starts the writer task for `io`. It ends when every sender is dropped, when
/// [`Writer::finish`] is called (after writing what was queued), or when the socket fails.
pub(crate) fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(
    mut io: W,
) -> (FrameSender, Writer) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE_FRAMES);
    let done = tokio_util::sync::CancellationToken::new();
    let finish = done.clone();
    let task = tokio::spawn(async move {
        let mut batch = BytesMut::with_capacity(16 * 1024);
        loop {
            let first = tokio::select! {
                biased;
                frame = rx.recv() => match frame {
                    Some(frame) => frame,
                    None => break,
                },
                () = finish.cancelled() => {
                    // Flush what is queued now; later frames are for a closed session.
                    while let Ok(frame) = rx.try_recv() {
                        batch.extend_from_slice(&frame);
                    }
                    let _ = io.write_all(&batch).await;
                    break;
                }
            };
            batch.extend_from_slice(&first);
            // Gather whatever else is already queued: one syscall for many frames.
            while batch.len() < WRITE_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if io.write_all(&batch).await.is_err() {
                return;
            }
            batch.clear();
        }
        let _ = io.shutdown().await;
    });
    (FrameSender { tx }, Writer { done, task })
}
