//! The baseline servers: a raw socket ping-pong with qnllm's message sizes, no protocol,
//! and a raw relay that forwards each request to such a server, as a hub forwards to a
//! worker. Blocking threads, one per connection and direction: the least software a
//! round trip through the kernel's sockets can take.

use std::io::{Read, Write};
use std::path::Path;

/// What a baseline server does with each request.
#[derive(Debug, Clone)]
pub(crate) enum Baseline {
    /// Answers it with `reply_bytes` of its own.
    Pong,
    /// Forwards it to the server at this address (`HOST:PORT` or `unix:PATH`) and relays
    /// that server's reply back.
    Relay(String),
}

/// Serves `baseline` on a TCP port of 127.0.0.1 and on the Unix socket `unix`, on threads
/// of their own, for as long as the process lives; returns the TCP address.
///
/// # Errors
///
/// When a listener cannot be opened.
pub(crate) fn spawn(
    unix: &Path,
    request_bytes: usize,
    reply_bytes: usize,
    baseline: &Baseline,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let _ = std::fs::remove_file(unix);
    let unix_listener = std::os::unix::net::UnixListener::bind(unix)?;
    let unix_baseline = baseline.clone();
    std::thread::spawn(move || {
        for stream in unix_listener.incoming().flatten() {
            let baseline = unix_baseline.clone();
            std::thread::spawn(move || {
                let (Ok(reader), writer) = (stream.try_clone(), stream) else {
                    return;
                };
                serve(reader, writer, request_bytes, reply_bytes, &baseline);
            });
        }
    });
    let baseline = baseline.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_nodelay(true);
            let baseline = baseline.clone();
            std::thread::spawn(move || {
                let (Ok(reader), writer) = (stream.try_clone(), stream) else {
                    return;
                };
                serve(reader, writer, request_bytes, reply_bytes, &baseline);
            });
        }
    });
    Ok(addr)
}

fn serve(
    reader: impl Read + Send + 'static,
    writer: impl Write + Send + 'static,
    request_bytes: usize,
    reply_bytes: usize,
    baseline: &Baseline,
) {
    match baseline {
        Baseline::Pong => pong(reader, writer, request_bytes, reply_bytes),
        Baseline::Relay(upstream) => {
            if let Some(upstream_addr) = upstream.strip_prefix("unix:") {
                if let Ok(up) = std::os::unix::net::UnixStream::connect(upstream_addr) {
                    if let Ok(up_reader) = up.try_clone() {
                        relay(reader, writer, up_reader, up, request_bytes, reply_bytes);
                    }
                }
            } else if let Ok(up) = std::net::TcpStream::connect(upstream) {
                let _ = up.set_nodelay(true);
                if let Ok(up_reader) = up.try_clone() {
                    relay(reader, writer, up_reader, up, request_bytes, reply_bytes);
                }
            }
        }
    }
}

fn pong(mut reader: impl Read, mut writer: impl Write, request_bytes: usize, reply_bytes: usize) {
    let mut request = vec![0u8; request_bytes];
    let reply = vec![7u8; reply_bytes];
    while reader.read_exact(&mut request).is_ok() {
        if writer.write_all(&reply).is_err() {
            return;
        }
    }
}

/// Requests flow client → upstream on a thread of their own, replies upstream → client on
/// this one, so pipelined requests overlap as they do through the hub.
fn relay(
    client_reader: impl Read + Send + 'static,
    client_writer: impl Write,
    upstream_reader: impl Read,
    upstream_writer: impl Write + Send + 'static,
    request_bytes: usize,
    reply_bytes: usize,
) {
    let forward =
        std::thread::spawn(move || copy_frames(client_reader, upstream_writer, request_bytes));
    copy_frames(upstream_reader, client_writer, reply_bytes);
    let _ = forward.join();
}

/// Copies whole `frame_bytes` messages, one read and one write each, until either side ends.
fn copy_frames(mut from: impl Read, mut to: impl Write, frame_bytes: usize) {
    let mut frame = vec![0u8; frame_bytes];
    while from.read_exact(&mut frame).is_ok() {
        if to.write_all(&frame).is_err() {
            return;
        }
    }
}
