//! Listening: the HTTP and gRPC servers with their limits (loopback unless a token is set,
//! header and body time limits, streams per connection), and graceful shutdown: not-ready
//! first, then drain within the grace period.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use qnllm::UnifiedEngine;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::grpc::GrpcFront;
use crate::pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::state::State;
use crate::FrontConfig;

/// Why the front could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A non-loopback address without a token.
    #[error("{addr} is not a loopback address: set a token (--http-token or QNLLM_HTTP_TOKEN) so only clients that hold it are served")]
    NeedsToken {
        /// The address.
        addr: SocketAddr,
    },
    /// An address could not be bound.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// The address.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A started front.
#[derive(Debug)]
pub struct RunningFront {
    /// Where HTTP listens.
    pub http: Option<SocketAddr>,
    /// Where gRPC listens.
    pub grpc: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningFront {
    /// Waits until the shutdown token is cancelled and every connection has drained (or
    /// the grace period has passed).
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn bind(addr: &str, config: &FrontConfig) -> Result<TcpListener, ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen {
            what: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Listen {
        what: addr.to_string(),
        source,
    })?;
    if !local.ip().is_loopback() && config.token.is_none() {
        return Err(ServeError::NeedsToken { addr: local });
    }
    Ok(listener)
}

/// Binds the configured addresses and serves until `shutdown` is cancelled.
///
/// # Errors
///
/// [`ServeError`]: an address cannot be bound, or is not loopback and no token is set.
pub async fn start(
    engine: Arc<UnifiedEngine>,
    config: FrontConfig,
    shutdown: CancellationToken,
) -> Result<RunningFront, ServeError> {
    let http = match &config.http {
        Some(addr) => Some(bind(addr, &config).await?),
        None => None,
    };
    let grpc = match &config.grpc {
        Some(addr) => Some(bind(addr, &config).await?),
        None => None,
    };
    let closing = CancellationToken::new();
    let state = Arc::new(State::new(engine, config, closing.clone()));
    let mut running = RunningFront {
        http: http.as_ref().and_then(|l| l.local_addr().ok()),
        grpc: grpc.as_ref().and_then(|l| l.local_addr().ok()),
        tasks: Vec::new(),
    };
    // Not-ready first: the moment shutdown starts, readiness reports false; listeners close
    // after the drain delay.
    {
        let (state, shutdown, closing) = (state.clone(), shutdown.clone(), closing.clone());
        running.tasks.push(tokio::spawn(async move {
            shutdown.cancelled().await;
            state.draining.store(true, Ordering::Relaxed);
            tracing::info!("front draining: not ready");
            tokio::time::sleep(state.config.drain_delay).await;
            closing.cancel();
        }));
    }
    running.tasks.push(crate::dashboard::spawn_sampler(
        state.clone(),
        closing.clone(),
    ));
    if let Some(listener) = http {
        running.tasks.push(tokio::spawn(serve_http(
            listener,
            state.clone(),
            closing.clone(),
        )));
    }
    if let Some(listener) = grpc {
        running.tasks.push(tokio::spawn(serve_grpc(
            listener,
            state.clone(),
            closing.clone(),
        )));
    }
    Ok(running)
}

async fn serve_http(listener: TcpListener, state: Arc<State>, closing: CancellationToken) {
    let app = crate::http::router(state.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            () = closing.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _peer)) = accepted else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let config = state.config.clone();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(config.header_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(config.max_streams_per_connection);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let _ = watcher.watch(connection).await;
        });
    }
    drop(listener);
    let grace = state.config.grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "HTTP connections still open after the grace period were cut"
        );
    }
}

async fn serve_grpc(listener: TcpListener, state: Arc<State>, closing: CancellationToken) {
    let config = state.config.clone();
    let service = GrpcInferenceServiceServer::new(GrpcFront {
        state: state.clone(),
    })
    .max_decoding_message_size(config.max_body_bytes)
    .max_encoding_message_size(usize::MAX);
    // Replies are small and come one per request: without TCP_NODELAY the kernel holds one
    // back for the peer's delayed ACK (about 40 ms).
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |stream| {
            if let Ok(stream) = &stream {
                let _ = stream.set_nodelay(true);
            }
            stream
        },
    );
    let grace = config.grace;
    let served = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(config.max_streams_per_connection as usize)
        .max_concurrent_streams(config.max_streams_per_connection)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, closing.clone().cancelled_owned());
    // The grace period counts from the shutdown, not from the start.
    let cut = async {
        closing.cancelled().await;
        tokio::time::sleep(grace + config.drain_delay + grace).await;
    };
    tokio::select! {
        served = served => {
            if let Err(e) = served {
                tracing::warn!(error = %e, "gRPC server stopped");
            }
        }
        () = cut => tracing::warn!("gRPC calls still open after the grace period were cut"),
    }
}
