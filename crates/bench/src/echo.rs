//! The baseline server: a raw socket ping-pong with qnllm's message sizes, no protocol.

use std::io::{Read, Write};
use std::path::Path;

/// Serves ping-pong on `tcp` (address) and `unix` (path) until the process exits: read
/// `request_bytes`, write `reply_bytes`, repeat; one thread per connection. Prints
/// `tcp ADDR` and `unix PATH` on stdout once listening.
///
/// # Errors
///
/// When a listener cannot be opened.
pub fn serve_echo(
    tcp: &str,
    unix: Option<&Path>,
    request_bytes: usize,
    reply_bytes: usize,
) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(tcp)?;
    println!("tcp {}", listener.local_addr()?);
    #[cfg(unix)]
    if let Some(path) = unix {
        let _ = std::fs::remove_file(path);
        let unix_listener = std::os::unix::net::UnixListener::bind(path)?;
        println!("unix {}", path.display());
        std::thread::spawn(move || {
            for stream in unix_listener.incoming().flatten() {
                std::thread::spawn(move || pong(stream, request_bytes, reply_bytes));
            }
        });
    }
    std::io::stdout().flush()?;
    for stream in listener.incoming().flatten() {
        let _ = stream.set_nodelay(true);
        std::thread::spawn(move || pong(stream, request_bytes, reply_bytes));
    }
    Ok(())
}

fn pong(mut stream: impl Read + Write, request_bytes: usize, reply_bytes: usize) {
    let mut request = vec![0u8; request_bytes];
    let reply = vec![7u8; reply_bytes];
    while stream.read_exact(&mut request).is_ok() {
        if stream.write_all(&reply).is_err() {
            return;
        }
    }
}
