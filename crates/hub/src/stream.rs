//! `Stream`: a connected TCP or Unix socket, split into halves that a connection's reader
//! and writer own.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// A stream a session runs over: TCP or a Unix socket.
#[derive(Debug)]
pub enum Stream {
    /// TCP, with `TCP_NODELAY` set.
    Tcp(tokio::net::TcpStream),
    /// A Unix socket.
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Stream {
    /// Splits into halves that reader and writer own: no lock between them.
    pub(crate) fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            #[cfg(unix)]
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
        }
    }
}

/// The reading half of a [`Stream`].
#[derive(Debug)]
pub(crate) enum ReadHalf {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    #[cfg(unix)]
    Unix(tokio::net::unix::OwnedReadHalf),
}

impl ReadHalf {
    /// Reads what the socket holds now; `WouldBlock` when it holds nothing.
    pub(crate) fn try_read_buf(&self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        match self {
            ReadHalf::Tcp(r) => r.try_read_buf(buf),
            #[cfg(unix)]
            ReadHalf::Unix(r) => r.try_read_buf(buf),
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            #[cfg(unix)]
            ReadHalf::Unix(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// The writing half of a [`Stream`]. Writes never wait: `try_write` writes what the socket
/// takes now, and `writable` waits for room. Dropping it shuts the direction down.
#[derive(Debug)]
pub(crate) enum WriteHalf {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    #[cfg(unix)]
    Unix(tokio::net::unix::OwnedWriteHalf),
}

impl WriteHalf {
    /// Writes what the socket accepts now; `WouldBlock` when it accepts nothing.
    pub(crate) fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(w) => w.try_write(bytes),
            #[cfg(unix)]
            WriteHalf::Unix(w) => w.try_write(bytes),
        }
    }

    /// Writes what the socket accepts now by a direct `send`, from any thread. Unlike
    /// [`WriteHalf::try_write`], it does not first consult tokio's record of readiness,
    /// which only the runtime's driver updates: on a runtime too busy to run it, that record
    /// can say "not writable" long after the socket drained. Never raises SIGPIPE.
    pub(crate) fn write_now(&self, bytes: &[u8]) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        let flags = libc::MSG_NOSIGNAL;
        #[cfg(not(target_os = "linux"))]
        let flags = 0;
        let socket = match self {
            WriteHalf::Tcp(w) => socket2::SockRef::from(w.as_ref()),
            #[cfg(unix)]
            WriteHalf::Unix(w) => socket2::SockRef::from(w.as_ref()),
        };
        socket.send_with_flags(bytes, flags)
    }

    /// Tells the peer nothing more is coming (shutdown of the write direction), even while
    /// other holders keep the socket open.
    pub(crate) fn shutdown(&self) {
        let _ = match self {
            WriteHalf::Tcp(w) => {
                socket2::SockRef::from(w.as_ref()).shutdown(std::net::Shutdown::Write)
            }
            #[cfg(unix)]
            WriteHalf::Unix(w) => {
                socket2::SockRef::from(w.as_ref()).shutdown(std::net::Shutdown::Write)
            }
        };
    }

    /// Waits until the socket may accept bytes.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(w) => w.writable().await,
            #[cfg(unix)]
            WriteHalf::Unix(w) => w.writable().await,
        }
    }
}
