//! A path under measurement: a raw stream to a baseline server, qnllm clients of a hub, an
//! HTTP or gRPC client of the front (or of its echo floors), a NATS client, or a router.
//! Each probe measures a slice of round trips at a time, so the run can interleave the
//! paths round by round and drift on a shared machine falls on all of them alike.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qnllm_engine::{NormalInputs, SpikingEngine};
use qnllm_front::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use qnllm_front::pb::ModelInferRequest;
use qnllm_hub::{Client, Endpoint};
use qnllm_router::Router;

use crate::error::BenchError;

/// Time allowed for each request on any path.
const BUDGET: Duration = Duration::from_secs(10);

/// A blocking byte stream to a baseline server.
pub(crate) trait RawStream: Read + Write + Send {}
impl<T: Read + Write + Send> RawStream for T {}

/// Where a raw baseline server listens.
#[derive(Debug, Clone)]
pub(crate) enum RawAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl RawAddr {
    fn connect(&self) -> Result<Box<dyn RawStream>, BenchError> {
        let err = |e: std::io::Error| {
            BenchError::measure("raw baseline", format!("cannot reach {self:?}: {e}"))
        };
        Ok(match self {
            RawAddr::Tcp(addr) => {
                let stream = std::net::TcpStream::connect(addr).map_err(err)?;
                stream.set_nodelay(true).map_err(err)?;
                Box::new(stream)
            }
            RawAddr::Unix(path) => {
                Box::new(std::os::unix::net::UnixStream::connect(path).map_err(err)?)
            }
        })
    }
}

/// The connections a probe measures over.
pub(crate) enum Probe {
    /// Raw streams: the first for latency, all of them for throughput.
    Raw {
        streams: Vec<Box<dyn RawStream>>,
        request: Vec<u8>,
        reply: usize,
    },
    /// qnllm clients of one hub: the first for latency, all of them for throughput. With
    /// more than one encoding, each request is a `reason_batch` of all of them.
    Hub {
        endpoint: Endpoint,
        clients: Vec<Arc<Client>>,
        encodings: Arc<Vec<Vec<f32>>>,
        /// Requests in flight per connection, if not the run's window.
        window: Option<usize>,
    },
    /// The engine in this process, `reason_batch` of all `encodings` per call.
    Engine {
        engine: SpikingEngine,
        encodings: Vec<Vec<f32>>,
    },
    /// One HTTP client (a pool of keep-alive connections): every request posts `body`.
    Http {
        client: reqwest::Client,
        url: String,
        body: bytes::Bytes,
        /// `Inference-Header-Content-Length` for binary tensors; `None` sends JSON.
        header_length: Option<usize>,
    },
    /// One gRPC channel (HTTP/2, requests multiplexed): every request is `request`.
    Grpc {
        client: GrpcInferenceServiceClient<tonic::transport::Channel>,
        request: ModelInferRequest,
    },
    /// One NATS connection: request-reply of `payload` on `subject`.
    Nats {
        client: async_nats::Client,
        subject: String,
        payload: bytes::Bytes,
    },
    /// A router in this process (whose backends are remote): `reason` of one encoding.
    Router {
        router: Arc<Router>,
        encoding: Vec<f32>,
    },
}

impl Probe {
    /// `connections` streams to a raw server exchanging `request`- and `reply`-byte messages.
    pub(crate) fn raw(
        addr: &RawAddr,
        connections: usize,
        request: usize,
        reply: usize,
    ) -> Result<Probe, BenchError> {
        Ok(Probe::Raw {
            streams: (0..connections)
                .map(|_| addr.connect())
                .collect::<Result<_, _>>()?,
            request: vec![1u8; request],
            reply,
        })
    }

    /// `connections` clients of the hub at `endpoint`, polling `busy_poll` for replies.
    pub(crate) async fn hub(
        endpoint: &Endpoint,
        connections: usize,
        busy_poll: Duration,
    ) -> Result<Probe, BenchError> {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            let client = Client::connect_with(endpoint, "bench", None, busy_poll)
                .await
                .map_err(|e| {
                    BenchError::measure(
                        "hub path",
                        format!("cannot reach the hub at {endpoint}: {e}"),
                    )
                })?;
            clients.push(Arc::new(client));
        }
        Ok(Probe::Hub {
            endpoint: endpoint.clone(),
            clients,
            encodings: Arc::new(NormalInputs::new(1, 768).take(1).collect()),
            window: None,
        })
    }

    /// Makes every request a `reason_batch` of `size` encodings, `window` of them in flight
    /// per connection.
    pub(crate) fn batches(self, size: usize, window: usize) -> Probe {
        match self {
            Probe::Hub {
                endpoint, clients, ..
            } => Probe::Hub {
                endpoint,
                clients,
                encodings: Arc::new(NormalInputs::new(2, 768).take(size.max(1)).collect()),
                window: Some(window.max(1)),
            },
            raw => raw,
        }
    }

    /// `engine` in this process, called with `reason_batch` of `size` encodings.
    pub(crate) fn engine(engine: SpikingEngine, size: usize) -> Probe {
        Probe::Engine {
            engine,
            encodings: NormalInputs::new(2, 768).take(size.max(1)).collect(),
        }
    }

    /// The first hub client, to wait for engines with.
    pub(crate) fn client(&self) -> Option<&Client> {
        match self {
            Probe::Hub { clients, .. } => clients.first().map(Arc::as_ref),
            _ => None,
        }
    }

    /// The hub a hub path's clients reach.
    pub(crate) fn endpoint(&self) -> Option<Endpoint> {
        match self {
            Probe::Hub { endpoint, .. } => Some(endpoint.clone()),
            _ => None,
        }
    }

    /// One request on an asynchronous path, on `lane` (which picks the hub connection);
    /// `None` for the raw and in-process paths, which are measured on threads.
    async fn call(&self, lane: usize) -> Option<Result<(), String>> {
        Some(match self {
            Probe::Raw { .. } | Probe::Engine { .. } => return None,
            Probe::Hub {
                clients, encodings, ..
            } => match clients.get(lane % clients.len().max(1)) {
                Some(client) => call(client, encodings).await,
                None => Err("a probe without a connection".into()),
            },
            Probe::Http {
                client,
                url,
                body,
                header_length,
            } => {
                let mut request = client.post(url.as_str()).body(body.clone());
                request = match header_length {
                    Some(n) => request.header(qnllm_front::HEADER_LENGTH, *n),
                    None => request.header("content-type", "application/json"),
                };
                match request.send().await {
                    Ok(reply) if reply.status().is_success() => {
                        reply.bytes().await.map(drop).map_err(|e| e.to_string())
                    }
                    Ok(reply) => Err(format!("answered {}", reply.status())),
                    Err(e) => Err(e.to_string()),
                }
            }
            Probe::Grpc { client, request } => client
                .clone()
                .model_infer(request.clone())
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Probe::Nats {
                client,
                subject,
                payload,
            } => client
                .request(subject.clone(), payload.clone())
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Probe::Router { router, encoding } => router
                .reason(encoding, BUDGET)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        })
    }

    /// Encodings per request.
    fn size(&self) -> usize {
        match self {
            Probe::Hub { encodings, .. } => encodings.len().max(1),
            Probe::Engine { encodings, .. } => encodings.len().max(1),
            _ => 1,
        }
    }

    /// Connections the pipelined load spreads over, and requests in flight on each.
    fn lanes(&self, window: usize) -> (usize, usize) {
        match self {
            Probe::Hub {
                clients,
                window: own,
                ..
            } => (clients.len().max(1), own.unwrap_or(window)),
            _ => (1, window),
        }
    }

    /// `n` round trips one at a time, appended to `samples`.
    pub(crate) async fn latency(
        &mut self,
        path: &str,
        n: usize,
        samples: &mut Vec<Duration>,
    ) -> Result<(), BenchError> {
        match self {
            Probe::Raw {
                streams,
                request,
                reply,
            } => {
                let stream = streams.first_mut().ok_or_else(no_connection)?;
                let mut back = vec![0u8; *reply];
                for _ in 0..n {
                    let t = Instant::now();
                    stream
                        .write_all(request)
                        .and_then(|()| stream.read_exact(&mut back))
                        .map_err(|e| BenchError::measure(path, e))?;
                    samples.push(t.elapsed());
                }
            }
            Probe::Engine { engine, encodings } => {
                for _ in 0..n {
                    let t = Instant::now();
                    batch(engine, encodings)?;
                    samples.push(t.elapsed());
                }
            }
            _ => {
                for _ in 0..n {
                    let t = Instant::now();
                    if let Some(Err(e)) = self.call(0).await {
                        return Err(BenchError::measure(path, e));
                    }
                    samples.push(t.elapsed());
                }
            }
        }
        Ok(())
    }

    /// About `n` requests spread over every connection, `window` in flight on each: how
    /// many were answered and the time they took; each one's round trip under that load is
    /// appended to `samples`.
    pub(crate) async fn throughput(
        &mut self,
        path: &str,
        n: usize,
        window: usize,
        samples: &mut Vec<Duration>,
    ) -> Result<(usize, Duration), BenchError> {
        let t = Instant::now();
        let done = match self {
            Probe::Raw {
                streams,
                request,
                reply,
            } => {
                let per = n.div_ceil(streams.len().max(1));
                let (request, reply) = (&*request, *reply);
                std::thread::scope(|scope| {
                    let runs: Vec<_> = streams
                        .iter_mut()
                        .map(|s| scope.spawn(move || pipeline(s, per, window, request, reply)))
                        .collect();
                    let mut done = 0;
                    for run in runs {
                        let times = run.join().unwrap_or_else(|_| {
                            Err(BenchError::measure(path, "a sender thread panicked"))
                        })?;
                        done += times.len();
                        samples.extend(times);
                    }
                    Ok::<usize, BenchError>(done)
                })?
            }
            Probe::Engine { engine, encodings } => {
                // One caller, as an application calling reason_batch in a loop.
                let size = encodings.len().max(1);
                for _ in 0..n.div_ceil(size) {
                    let t = Instant::now();
                    batch(engine, encodings)?;
                    samples.push(t.elapsed());
                }
                n.div_ceil(size) * size
            }
            _ => {
                // `n` counts encodings; each call carries `size` of them.
                let size = self.size();
                let (connections, window) = self.lanes(window);
                let per = n.div_ceil(size).div_ceil(connections);
                let this = &*self;
                let lanes = (0..connections).flat_map(|connection| {
                    (0..window).map(move |lane| async move {
                        let mut times = Vec::new();
                        for _ in (lane..per).step_by(window) {
                            let t = Instant::now();
                            if let Some(Err(e)) = this.call(connection).await {
                                return Err(BenchError::measure(path, e));
                            }
                            times.push(t.elapsed());
                        }
                        Ok::<Vec<Duration>, BenchError>(times)
                    })
                });
                let mut done = 0;
                for lane in futures::future::join_all(lanes).await {
                    let times = lane?;
                    done += times.len() * size;
                    samples.extend(times);
                }
                done
            }
        };
        Ok((done, t.elapsed()))
    }
}

/// One request: a reason, or a `reason_batch` when there are several encodings.
async fn call(client: &Client, encodings: &[Vec<f32>]) -> Result<(), String> {
    let outcome = match encodings {
        [one] => client.reason(one, BUDGET).await.map(drop),
        many => client.reason_batch(many, BUDGET).await.map(drop),
    };
    outcome.map_err(|e| e.to_string())
}

/// One `reason_batch` on the engine in this process.
fn batch(engine: &SpikingEngine, encodings: &[Vec<f32>]) -> Result<(), BenchError> {
    let refs: Vec<&[f32]> = encodings.iter().map(Vec::as_slice).collect();
    qnllm_engine::Engine::reason_batch(engine, &refs)
        .map(drop)
        .map_err(|e| BenchError::measure("in-process reason_batch", e))
}

fn no_connection() -> BenchError {
    BenchError::measure("raw baseline", "a probe without a connection")
}

/// `n` requests with `window` in flight on one raw stream; the round trip of each (the
/// server answers in order, so the oldest request sent is the one answered).
fn pipeline(
    stream: &mut Box<dyn RawStream>,
    n: usize,
    window: usize,
    request: &[u8],
    reply: usize,
) -> Result<Vec<Duration>, BenchError> {
    let mut back = vec![0u8; reply];
    let err = |e: std::io::Error| BenchError::measure("raw baseline", e);
    let mut sent_at = std::collections::VecDeque::with_capacity(window);
    let mut times = Vec::with_capacity(n);
    let mut sent = 0;
    while sent < window.min(n) {
        sent_at.push_back(Instant::now());
        stream.write_all(request).map_err(err)?;
        sent += 1;
    }
    for _ in 0..n {
        stream.read_exact(&mut back).map_err(err)?;
        if let Some(at) = sent_at.pop_front() {
            times.push(at.elapsed());
        }
        if sent < n {
            sent_at.push_back(Instant::now());
            stream.write_all(request).map_err(err)?;
            sent += 1;
        }
    }
    Ok(times)
}
