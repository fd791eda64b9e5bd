//! `Endpoint`: where to connect or listen, a TCP address or `unix:PATH`.

use std::fmt;
use std::path::PathBuf;

use crate::stream::Stream;

/// A TCP `host:port` or a Unix socket path written `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A TCP address such as `127.0.0.1:9999`.
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl Endpoint {
    /// Parses `unix:PATH` or `host:port`.
    pub fn parse(text: &str) -> Endpoint {
        match text.strip_prefix("unix:") {
            Some(path) => Endpoint::Unix(PathBuf::from(path)),
            None => Endpoint::Tcp(text.to_string()),
        }
    }

    /// Opens a stream to the endpoint, with `TCP_NODELAY` on TCP.
    ///
    /// # Errors
    ///
    /// The connect error.
    pub async fn connect(&self) -> std::io::Result<Stream> {
        match self {
            Endpoint::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Ok(Stream::Tcp(stream))
            }
            #[cfg(unix)]
            Endpoint::Unix(path) => Ok(Stream::Unix(tokio::net::UnixStream::connect(path).await?)),
            #[cfg(not(unix))]
            Endpoint::Unix(_) => Err(std::io::Error::other("Unix sockets need a Unix system")),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => f.write_str(addr),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}
