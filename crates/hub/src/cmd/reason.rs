//! `reason` and `batch`: wait for the connection's turn, route through the router, answer
//! with `result` or `batch_result`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qnllm_protocol::{BatchResult, Deadline, ErrorCode, Message};
use qnllm_router::{RequestOptions, Router, RouterError};

use crate::alarm::Alarms;
use crate::cmd::requests::ClientSession;
use crate::connection::FrameSender;
use crate::convert::{error_code, result_body};
use crate::fair::Fair;
use crate::stats::Counters;
use tokio_util::task::TaskTracker;

/// What `reason` and `batch` need of the hub: the router, the turns at it, and the alarms
/// that answer at the deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Routing<'a> {
    pub(crate) router: &'a Arc<Router>,
    pub(crate) fair: &'a Arc<Fair>,
    pub(crate) alarms: &'a Alarms,
}

/// One `reason` request as read.
#[derive(Debug)]
pub(crate) struct Reason {
    pub(crate) id: u64,
    /// Its payload's bytes, counted against the connection's budget while it runs.
    pub(crate) cost: usize,
    pub(crate) encoding: Vec<f32>,
    pub(crate) deadline: Duration,
    pub(crate) no_cache: bool,
}

impl Reason {
    /// Runs the request in a task of its own, which answers it.
    pub(crate) fn apply(self, routing: Routing<'_>, session: &ClientSession) {
        let Reason {
            id,
            cost,
            encoding,
            deadline,
            no_cache,
        } = self;
        let options = RequestOptions {
            no_cache,
            ..Default::default()
        };
        spawn_routed(
            routing,
            session,
            id,
            cost,
            deadline,
            move |router, deadline| async move {
                let answer = router.reason_with(&encoding, deadline, options).await?;
                Ok(Message::Result(result_body(&answer)))
            },
        );
    }
}

/// One `batch` request as read.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) id: u64,
    /// Its payload's bytes, counted against the connection's budget while it runs.
    pub(crate) cost: usize,
    pub(crate) batch: qnllm_protocol::Batch,
    pub(crate) deadline: Duration,
}

impl Batch {
    /// Runs the batch in a task of its own, which answers it.
    pub(crate) fn apply(self, routing: Routing<'_>, session: &ClientSession) {
        let Batch {
            id,
            cost,
            batch,
            deadline,
        } = self;
        spawn_routed(
            routing,
            session,
            id,
            cost,
            deadline,
            move |router, deadline| async move {
                let answers = router
                    .reason_batch(batch.values(), batch.dim() as usize, deadline)
                    .await?;
                let results = answers.iter().map(result_body).collect();
                Ok(Message::BatchResult(BatchResult { results }))
            },
        );
    }
}

/// Counts the request and runs it in a task of its own: waits for the connection's turn at
/// the router, then `route` with what is left of the deadline, and answers with its reply
/// or its error. The deadline counts from now, as the frame is read, not from when the
/// task first runs. At the deadline the hub's alarm answers `DeadlineExceeded` from its
/// own thread (to within tens of µs, where the router's timers round up to a whole
/// millisecond, and a saturated runtime takes milliseconds to poll the woken task); the
/// task then stops the work, and an answer that comes after the deadline is not forwarded.
fn spawn_routed<F, Fut>(
    routing: Routing<'_>,
    session: &ClientSession,
    id: u64,
    cost: usize,
    budget: Duration,
    route: F,
) where
    F: FnOnce(Arc<Router>, Duration) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Message, RouterError>> + Send,
{
    Counters::add(&session.counters().requests, 1);
    let now = Instant::now();
    // A budget too large to add is as good as none: a year.
    let expires = now
        .checked_add(budget)
        .unwrap_or(now + Duration::from_secs(365 * 86_400));
    let (router, fair) = (routing.router.clone(), routing.fair.clone());
    let (sender, counters) = (session.sender.clone(), session.counters_handle());
    let connection = session.connection();
    // Set once the request has its turn at the router; read by the alarm's thread too.
    let turn_taken = Arc::new(AtomicBool::new(false));
    let expiry = Expiry {
        sender: sender.clone(),
        counters: counters.clone(),
        turn_taken: turn_taken.clone(),
        requests: session.requests(),
        runtime: tokio::runtime::Handle::current(),
        id,
        budget,
        expires,
    };
    session.spawn_costing(id, cost, |right| {
        let alarm = {
            let right = right.clone();
            routing.alarms.answer_at(expires, move || {
                if right.take() {
                    expiry.answer();
                }
            })
        };
        async move {
            let work = async {
                let slot = fair.acquire(connection).await;
                turn_taken.store(true, Ordering::Relaxed);
                let left = expires.saturating_duration_since(Instant::now());
                // The router's future is about 3 KB: boxed, it is written once, where the
                // task would otherwise copy it on every move into place.
                let outcome = Box::pin(route(router, left)).await;
                drop(slot);
                outcome
            };
            let outcome = tokio::select! {
                biased;
                () = alarm => None,
                outcome = work => Some(outcome),
            };
            if !right.take() {
                // The alarm answered at the deadline.
                return;
            }
            let late = Instant::now().saturating_duration_since(expires);
            let held_back = matches!(outcome, Some(Ok(_)));
            let message = match outcome {
                None => deadline_passed(budget, turn_taken.load(Ordering::Relaxed)),
                Some(Ok(_)) if !late.is_zero() => format!(
                    "the answer came {late:?} after the deadline of {budget:?}; not forwarded"
                ),
                Some(Ok(reply)) => {
                    sender.send(&reply, id, Deadline::NONE).await;
                    return;
                }
                Some(Err(err)) => {
                    Counters::add(&counters.errors, 1);
                    if matches!(err, RouterError::DeadlineExceeded { .. }) {
                        let lateness = Instant::now().saturating_duration_since(expires);
                        counters.deadlines.record(lateness, false);
                    }
                    sender.fail(id, error_code(&err), err.to_string()).await;
                    return;
                }
            };
            Counters::add(&counters.errors, 1);
            // Counted before it is sent: a client that reads the error and then asks for the
            // metrics finds it there.
            counters
                .deadlines
                .record(Instant::now().saturating_duration_since(expires), held_back);
            sender.fail(id, ErrorCode::DeadlineExceeded, message).await;
        }
    });
}

/// The words of a `DeadlineExceeded` the hub says at the deadline.
fn deadline_passed(budget: Duration, turn_taken: bool) -> String {
    if turn_taken {
        format!("the deadline of {budget:?} passed before an engine answered")
    } else {
        format!(
            "the deadline of {budget:?} passed while the request waited for its turn in the \
             router"
        )
    }
}

/// What the alarm needs to answer a request `DeadlineExceeded` from its own thread.
struct Expiry {
    sender: FrameSender,
    counters: Arc<Counters>,
    turn_taken: Arc<AtomicBool>,
    /// Where a reply that has to wait for room in the connection's queue is sent from.
    requests: TaskTracker,
    runtime: tokio::runtime::Handle,
    id: u64,
    budget: Duration,
    expires: Instant,
}

impl Expiry {
    /// Answers `DeadlineExceeded` now: written at once if the connection's queue has room,
    /// else by a task that waits for it (a client that does not read).
    fn answer(self) {
        let message = deadline_passed(self.budget, self.turn_taken.load(Ordering::Relaxed));
        Counters::add(&self.counters.errors, 1);
        // Counted before it is sent, as the task does.
        self.counters.deadlines.record(
            Instant::now().saturating_duration_since(self.expires),
            false,
        );
        let code = ErrorCode::DeadlineExceeded;
        if !self.sender.fail_now(self.id, code, message.clone()) {
            let (sender, id) = (self.sender, self.id);
            self.requests.spawn_on(
                async move { sender.fail(id, code, message).await },
                &self.runtime,
            );
        }
    }
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::HubConfig;
    use crate::connection::spawn_writer;
    use crate::stats::Connections;
    use crate::stream::Stream;
    use bytes::BytesMut;
    use qnllm_protocol::{Frame, FrameDecoder};
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    /// Reads the next frame, blocking (so no task of the runtime that calls it can run).
    fn read_frame(socket: &mut UnixStream, buf: &mut BytesMut) -> Frame {
        let mut decoder = FrameDecoder::new(1 << 24);
        loop {
            if let Some(frame) = decoder.decode(buf).unwrap() {
                return frame;
            }
            let mut chunk = [0u8; 4096];
            let n = socket
                .read(&mut chunk)
                .expect("no answer while the runtime was blocked");
            assert!(n > 0, "the hub's end closed");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn deadline_exceeded(frame: &Frame) -> String {
        match frame.message().unwrap() {
            Message::Error(e) if e.code == ErrorCode::DeadlineExceeded => e.message,
            other => panic!("not DeadlineExceeded: {other:?}"),
        }
    }

    #[test]
    fn the_deadline_is_answered_while_the_runtime_is_blocked_and_frees_the_id_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (hub_end, mut client_end) = UnixStream::pair().unwrap();
        // Bounded: an answer comes within milliseconds, or never.
        client_end
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        hub_end.set_nonblocking(true).unwrap();
        rt.block_on(async {
            let hub_end = tokio::net::UnixStream::from_std(hub_end).unwrap();
            let (_, write) = Stream::Unix(hub_end).into_split();
            let (sender, _writer) = spawn_writer(write);
            let connections = Connections::default();
            let open = connections.open(1, "test", "client", "c");
            let session = ClientSession::new(
                sender,
                open.stats.clone(),
                &HubConfig::default(),
                TaskTracker::new(),
                Arc::default(),
            );
            let (router, fair) = (Arc::new(Router::new()), Fair::new(1));
            // Another connection holds the router's one slot: the requests wait their turn.
            let _held = fair.acquire(2).await;
            let alarms = Alarms::start().unwrap();
            let routing = Routing {
                router: &router,
                fair: &fair,
                alarms: &alarms,
            };
            let reason = |ms| Reason {
                id: 7,
                cost: 0,
                encoding: vec![0.0; 768],
                deadline: Duration::from_millis(ms),
                no_cache: false,
            };
            let mut buf = BytesMut::new();
            reason(5).apply(routing, &session);
            // This thread is the runtime's only one, and it blocks in the read: the
            // request's task cannot run, so the answer is the alarm's own.
            let frame = read_frame(&mut client_end, &mut buf);
            assert_eq!(frame.header.request_id, 7);
            let first = deadline_exceeded(&frame);
            assert!(
                first.contains("5ms") && first.contains("its turn"),
                "{first}"
            );
            // The id is free once answered: the same id again is a new request.
            reason(9).apply(routing, &session);
            let frame = read_frame(&mut client_end, &mut buf);
            assert_eq!(frame.header.request_id, 7);
            let second = deadline_exceeded(&frame);
            assert!(second.contains("9ms"), "not DuplicateRequestId: {second}");
            // Both tasks run now and end without a second answer of their own.
            for _ in 0..1_000 {
                if session.idle() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert!(session.idle(), "the request tasks did not end");
            client_end.set_nonblocking(true).unwrap();
            let mut more = [0u8; 1];
            let read = client_end.read(&mut more);
            assert!(
                buf.is_empty()
                    && matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "a request was answered twice: {read:?}, {} bytes",
                buf.len()
            );
        });
    }
}
