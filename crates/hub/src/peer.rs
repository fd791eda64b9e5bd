//! The sans-IO core of a connection to a hub, written once for the client, the worker and
//! the hub's view of a worker: the handshake, request ids, the requests waiting for
//! replies with their deadlines, and the requests received and not yet answered.
//!
//! It is fed decoded frames and instants and returns the messages to send and what
//! happened; it owns no socket, task or clock. The drivers (`client.rs`, `remote.rs`,
//! `worker.rs`) read and write the frames and keep the timers, so every case of the
//! protocol's bookkeeping is a plain unit test here.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use qnllm_protocol::{
    Deadline, ErrorCode, Frame, Hello, Message, MessageKind, Register, Registered, Welcome,
    WireError, PROTOCOL_VERSION,
};

/// Locks a peer's table. Every operation on the tables here leaves them consistent
/// (single inserts and removes), so a table whose holder panicked is still good to use.
pub(crate) fn lock<T>(table: &Mutex<T>) -> MutexGuard<'_, T> {
    table
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The longest the connecting side waits for each answer of the handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer the connecting side waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Awaiting {
    /// The hub's answer to hello.
    Welcome,
    /// The hub's answer to a worker's register.
    Registered,
}

impl fmt::Display for Awaiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Awaiting::Welcome => "welcome",
            Awaiting::Registered => "registered",
        })
    }
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// The answer did not come in time.
    #[error("no {awaiting} within {waited:?}")]
    Timeout {
        /// What did not come.
        awaiting: Awaiting,
        /// How long it was waited for.
        waited: Duration,
    },
    /// The hub answered with an error frame.
    #[error("{code}: {message}")]
    Refused {
        /// The hub's code.
        code: ErrorCode,
        /// The hub's message.
        message: String,
    },
    /// The hub sent another message than the one the handshake is at.
    #[error("{got} instead of {awaiting}")]
    OutOfOrder {
        /// What the handshake waited for.
        awaiting: Awaiting,
        /// What came.
        got: MessageKind,
    },
    /// The hub's answer did not decode.
    #[error("undecodable {kind} during the handshake: {reason}")]
    Undecodable {
        /// The frame's kind.
        kind: MessageKind,
        /// Why it did not decode.
        reason: String,
    },
}

/// What the hub said in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Greeted {
    /// The welcome.
    pub(crate) welcome: Welcome,
    /// The registration, for a worker.
    pub(crate) registered: Option<Registered>,
}

/// The next step of a handshake.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Progress {
    /// Send this (with request id 0, no deadline) and wait for the next answer.
    Send(Message),
    /// The handshake is over: the connection is open.
    Done(Greeted),
}

#[derive(Debug)]
enum Stage {
    Welcome { register: Option<Register> },
    Registered { welcome: Welcome },
    Over,
}

/// The connecting side's handshake: hello → welcome, and for a worker then register →
/// registered, each answer within its own timeout.
#[derive(Debug)]
pub(crate) struct Handshake {
    stage: Stage,
    timeout: Duration,
    deadline: Instant,
}

impl Handshake {
    /// A client's handshake, started at `now`, and the hello to send.
    pub(crate) fn client(
        name: &str,
        token: Option<&str>,
        now: Instant,
        timeout: Duration,
    ) -> (Handshake, Message) {
        Handshake::start("client", name, token, None, now, timeout)
    }

    /// A worker's handshake, started at `now`, and the hello to send; `register` follows
    /// the welcome.
    pub(crate) fn worker(
        token: Option<&str>,
        register: Register,
        now: Instant,
        timeout: Duration,
    ) -> (Handshake, Message) {
        let name = register.name.clone();
        Handshake::start("worker", &name, token, Some(register), now, timeout)
    }

    fn start(
        role: &str,
        name: &str,
        token: Option<&str>,
        register: Option<Register>,
        now: Instant,
        timeout: Duration,
    ) -> (Handshake, Message) {
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            role: role.into(),
            name: name.into(),
            token: token.map(str::to_string),
        };
        let handshake = Handshake {
            stage: Stage::Welcome { register },
            timeout,
            deadline: now + timeout,
        };
        (handshake, Message::Hello(hello))
    }

    /// When the answer waited for is late.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    fn awaiting(&self) -> Awaiting {
        match self.stage {
            Stage::Registered { .. } => Awaiting::Registered,
            Stage::Welcome { .. } | Stage::Over => Awaiting::Welcome,
        }
    }

    /// The handshake's timer fired at `now`: the error if the answer is late.
    pub(crate) fn handle_timeout(&self, now: Instant) -> Option<HandshakeError> {
        (now >= self.deadline).then(|| HandshakeError::Timeout {
            awaiting: self.awaiting(),
            waited: self.timeout,
        })
    }

    /// A frame from the hub, read at `now`. A frame read after the deadline counts as no
    /// answer, whatever it holds.
    ///
    /// # Errors
    ///
    /// [`HandshakeError`]; the connection is then of no use.
    pub(crate) fn handle_frame(
        &mut self,
        now: Instant,
        frame: &Frame,
    ) -> Result<Progress, HandshakeError> {
        if let Some(late) = self.handle_timeout(now) {
            return Err(late);
        }
        let awaiting = self.awaiting();
        let message = frame.message().map_err(|e| HandshakeError::Undecodable {
            kind: frame.kind,
            reason: e.to_string(),
        })?;
        match (std::mem::replace(&mut self.stage, Stage::Over), message) {
            (_, Message::Error(e)) => Err(HandshakeError::Refused {
                code: e.code,
                message: e.message,
            }),
            (Stage::Welcome { register: None }, Message::Welcome(welcome)) => {
                Ok(Progress::Done(Greeted {
                    welcome,
                    registered: None,
                }))
            }
            (
                Stage::Welcome {
                    register: Some(register),
                },
                Message::Welcome(welcome),
            ) => {
                self.stage = Stage::Registered { welcome };
                self.deadline = now + self.timeout;
                Ok(Progress::Send(Message::Register(register)))
            }
            (Stage::Registered { welcome }, Message::Registered(registered)) => {
                Ok(Progress::Done(Greeted {
                    welcome,
                    registered: Some(registered),
                }))
            }
            (_, other) => Err(HandshakeError::OutOfOrder {
                awaiting,
                got: other.kind(),
            }),
        }
    }
}

/// Why no request can be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// The connection is closed, or closing: why.
    #[error("{0}")]
    Closed(String),
    /// The peer is draining: it takes no new request.
    #[error("draining")]
    Draining,
}

/// What a reply frame is for.
#[derive(Debug)]
pub(crate) enum Reply<'a, W, S> {
    /// The answer to a waiting request, now forgotten: hand the frame to its waiter.
    Answer(W),
    /// One more frame for an open stream (a subscription's events); it stays open.
    Stream(&'a mut S),
    /// The answer came at or after its request's deadline: the request is forgotten and
    /// its waiter is to be told it timed out, not given the answer.
    Late(W),
    /// No request waits for this id: a duplicate, an answer to a request given up on, or
    /// (`never_sent`) an id this side never used.
    Unmatched {
        /// The id was never allocated (0, or ahead of every id given out).
        never_sent: bool,
    },
}

#[derive(Debug)]
enum Slot<W, S> {
    One { waiter: W, until: Option<Instant> },
    Stream(S),
}

/// The requesting side: request ids, and the requests waiting for replies (`W`, one reply
/// each, within a deadline) or for a stream of frames (`S`, until forgotten).
#[derive(Debug)]
pub(crate) struct Requests<W, S = ()> {
    next_id: u64,
    /// Ids have wrapped past `u64::MAX` at least once.
    wrapped: bool,
    waiting: HashMap<u64, Slot<W, S>>,
    closed: Option<String>,
    draining: bool,
}

impl<W, S> Default for Requests<W, S> {
    fn default() -> Self {
        Requests {
            next_id: 1,
            wrapped: false,
            waiting: HashMap::new(),
            closed: None,
            draining: false,
        }
    }
}

impl<W, S> Requests<W, S> {
    fn admit(&self) -> Result<(), Refused> {
        if let Some(reason) = &self.closed {
            return Err(Refused::Closed(reason.clone()));
        }
        if self.draining {
            return Err(Refused::Draining);
        }
        Ok(())
    }

    /// The next id no request is waiting under. 0 is never used: it marks control frames.
    fn allocate(&mut self, slot: Slot<W, S>) -> u64 {
        loop {
            let id = self.next_id;
            self.next_id = id.checked_add(1).unwrap_or_else(|| {
                self.wrapped = true;
                1
            });
            if let Entry::Vacant(free) = self.waiting.entry(id) {
                free.insert(slot);
                return id;
            }
        }
    }

    /// Starts a request at `now` whose waiter gives up after `wait`: its id.
    ///
    /// # Errors
    ///
    /// [`Refused`] when closed or draining.
    pub(crate) fn start(
        &mut self,
        now: Instant,
        wait: Duration,
        waiter: W,
    ) -> Result<u64, Refused> {
        self.admit()?;
        let until = now.checked_add(wait);
        Ok(self.allocate(Slot::One { waiter, until }))
    }

    /// Opens a stream: every frame with its id goes to `stream` until it is forgotten.
    ///
    /// # Errors
    ///
    /// [`Refused`] when closed or draining.
    pub(crate) fn open_stream(&mut self, stream: S) -> Result<u64, Refused> {
        self.admit()?;
        Ok(self.allocate(Slot::Stream(stream)))
    }

    /// A reply with request id `id`, read at `now`: who it is for.
    pub(crate) fn reply(&mut self, now: Instant, id: u64) -> Reply<'_, W, S> {
        let never_sent = id == 0 || (!self.wrapped && id >= self.next_id);
        match self.waiting.entry(id) {
            Entry::Occupied(slot) => {
                if matches!(slot.get(), Slot::Stream(_)) {
                    match slot.into_mut() {
                        Slot::Stream(stream) => Reply::Stream(stream),
                        Slot::One { .. } => Reply::Unmatched { never_sent: false },
                    }
                } else {
                    match slot.remove() {
                        Slot::One { waiter, until } if until.is_some_and(|u| now >= u) => {
                            Reply::Late(waiter)
                        }
                        Slot::One { waiter, .. } => Reply::Answer(waiter),
                        Slot::Stream(_) => Reply::Unmatched { never_sent: false },
                    }
                }
            }
            Entry::Vacant(_) => Reply::Unmatched { never_sent },
        }
    }

    /// Forgets a request or stream (answered elsewhere, given up on, dropped): whether it
    /// was still waiting. A later reply to it is unmatched.
    pub(crate) fn forget(&mut self, id: u64) -> bool {
        self.waiting.remove(&id).is_some()
    }

    /// Takes no new request (the peer said goodbye); those waiting still get their replies.
    pub(crate) fn refuse(&mut self, reason: impl FnOnce() -> String) {
        self.closed.get_or_insert_with(reason);
    }

    /// The connection is gone: takes no new request, and forgets every waiting one (its
    /// waiter is dropped, which tells it). How many were waiting.
    pub(crate) fn close(&mut self, reason: impl FnOnce() -> String) -> usize {
        self.refuse(reason);
        let failed = self.waiting.len();
        self.waiting.clear();
        failed
    }

    /// Why no request is taken, once closed.
    pub(crate) fn closed(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// Takes no new request; those waiting may finish.
    pub(crate) fn drain(&mut self) {
        self.draining = true;
    }

    /// Draining, and nothing waits any more.
    pub(crate) fn drained(&self) -> bool {
        self.draining && self.waiting.is_empty()
    }

    /// Requests and streams waiting.
    pub(crate) fn in_flight(&self) -> usize {
        self.waiting.len()
    }

    #[cfg(test)]
    fn skip_to(&mut self, next_id: u64) {
        self.next_id = next_id;
    }
}

/// A budget below this on arrival has passed before any work could start.
pub(crate) const MIN_BUDGET: Duration = Duration::from_micros(20);

/// Why a received request is answered without being computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// The requester cancelled it (or it was never admitted): it gets no answer at all.
    /// The hub forgot its id when it sent `cancel`, so an answer would only be dropped
    /// there, and under overload (every request timing out) it would double the frames
    /// on a connection that is already behind.
    Cancelled,
    /// Its deadline passed before its turn.
    Expired,
    /// Its deadline passed while it waited and [`Received::expire`] gave it out to be
    /// answered then: its turn sends nothing.
    Answered,
}

impl Skip {
    /// The error reply that says so; none for a request already answered or cancelled.
    pub(crate) fn reply(self) -> Option<Message> {
        match self {
            Skip::Cancelled | Skip::Answered => None,
            Skip::Expired => Some(Message::Error(WireError::new(
                ErrorCode::DeadlineExceeded,
                "the deadline passed before the worker could start; not computed",
            ))),
        }
    }
}

/// The answering side: requests read and not yet computed, with when each expires, in
/// deadline order. A `cancel` removes its entry. The driver keeps one timer at
/// [`Received::next_expiry`] and, when it fires, answers what [`Received::expire`] gives
/// out: a request is answered at its deadline, not when its turn comes. At its turn a
/// request whose entry is gone, expired or already answered is not computed.
#[derive(Debug, Default)]
pub(crate) struct Received {
    queued: HashMap<u64, Option<Instant>>,
    /// The deadlines of the queued requests, soonest first.
    by_deadline: BTreeSet<(Instant, u64)>,
    /// Answered by [`Received::expire`], their turn not yet come.
    answered: HashSet<u64>,
}

impl Received {
    /// Notes a request read at `now` with its header's deadline: whether its expiry is now
    /// the soonest (the driver's timer is to be moved to it).
    ///
    /// # Errors
    ///
    /// [`Skip::Expired`] if its budget is already too small to start.
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        id: u64,
        deadline: Deadline,
    ) -> Result<bool, Skip> {
        let expires = match deadline.remaining() {
            Some(budget) if budget < MIN_BUDGET => return Err(Skip::Expired),
            Some(budget) => now.checked_add(budget),
            None => None,
        };
        self.answered.remove(&id);
        if let Some(Some(old)) = self.queued.insert(id, expires) {
            self.by_deadline.remove(&(old, id));
        }
        let Some(expires) = expires else {
            return Ok(false);
        };
        self.by_deadline.insert((expires, id));
        Ok(self.next_expiry() == Some(expires))
    }

    /// When the soonest queued request expires.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.by_deadline.first().map(|&(at, _)| at)
    }

    /// The requests whose deadline has come at `now`, soonest first: the driver answers
    /// each `DeadlineExceeded` now ([`Skip::Expired`]'s reply), and their turns send nothing.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<u64> {
        let mut expired = Vec::new();
        while let Some(&(at, id)) = self.by_deadline.first() {
            if at > now {
                break;
            }
            self.by_deadline.pop_first();
            self.queued.remove(&id);
            self.answered.insert(id);
            expired.push(id);
        }
        expired
    }

    /// The request's turn has come at `now`: whether to compute it. It is forgotten
    /// either way.
    ///
    /// # Errors
    ///
    /// [`Skip`]: cancelled (or never admitted), expired, or already answered.
    pub(crate) fn take(&mut self, now: Instant, id: u64) -> Result<(), Skip> {
        if self.answered.remove(&id) {
            return Err(Skip::Answered);
        }
        match self.queued.remove(&id) {
            None => Err(Skip::Cancelled),
            Some(Some(expires)) => {
                self.by_deadline.remove(&(expires, id));
                if now >= expires {
                    Err(Skip::Expired)
                } else {
                    Ok(())
                }
            }
            Some(None) => Ok(()),
        }
    }

    /// The requester cancelled `id`: whether it was still waiting for its turn (and not
    /// answered already).
    pub(crate) fn cancel(&mut self, id: u64) -> bool {
        match self.queued.remove(&id) {
            Some(Some(expires)) => {
                self.by_deadline.remove(&(expires, id));
                true
            }
            Some(None) => true,
            None => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use bytes::BytesMut;
    use qnllm_protocol::{encode_frame, FrameDecoder, DEFAULT_MAX_FRAME_BYTES};

    use super::*;

    fn frame(message: &Message, id: u64) -> Frame {
        let mut bytes = BytesMut::new();
        encode_frame(message, id, Deadline::NONE, &mut bytes);
        FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES)
            .decode(&mut bytes)
            .unwrap()
            .unwrap()
    }

    fn welcome() -> Message {
        Message::Welcome(Welcome {
            session: 7,
            server: "test".into(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            heartbeat_interval_ms: 100,
        })
    }

    fn registered() -> Message {
        Message::Registered(Registered {
            engine_id: 3,
            heartbeat_interval_ms: 100,
        })
    }

    fn register() -> Register {
        Register {
            name: "w".into(),
            model_digest: "00".repeat(32),
            model_version: 0,
            input_size: 4,
            labels: 2,
            max_in_flight: 8,
            role: qnllm_protocol::EngineRole::Engine,
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_client_says_hello_and_is_done_at_the_welcome() {
        let t0 = Instant::now();
        let (mut hs, hello) = Handshake::client("app", Some("secret"), t0, SECOND);
        match hello {
            Message::Hello(hello) => {
                assert_eq!(hello.role, "client");
                assert_eq!(hello.name, "app");
                assert_eq!(hello.token.as_deref(), Some("secret"));
                assert_eq!(hello.protocol, PROTOCOL_VERSION);
            }
            other => panic!("{other:?}"),
        }
        let done = hs.handle_frame(t0 + SECOND / 2, &frame(&welcome(), 0));
        match done.unwrap() {
            Progress::Done(greeted) => {
                assert_eq!(greeted.welcome.session, 7);
                assert_eq!(greeted.registered, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_worker_registers_after_the_welcome_and_each_answer_has_its_own_timeout() {
        let t0 = Instant::now();
        let (mut hs, hello) = Handshake::worker(None, register(), t0, SECOND);
        assert!(matches!(hello, Message::Hello(ref h) if h.role == "worker" && h.name == "w"));
        let at = t0 + SECOND * 9 / 10;
        match hs.handle_frame(at, &frame(&welcome(), 0)).unwrap() {
            Progress::Send(Message::Register(r)) => assert_eq!(r, register()),
            other => panic!("{other:?}"),
        }
        // The registered may take its own full timeout from the welcome.
        assert_eq!(hs.deadline(), at + SECOND);
        assert_eq!(hs.handle_timeout(t0 + SECOND), None);
        match hs.handle_frame(at + SECOND / 2, &frame(&registered(), 0)) {
            Ok(Progress::Done(greeted)) => {
                assert_eq!(greeted.welcome.session, 7);
                assert_eq!(greeted.registered.map(|r| r.engine_id), Some(3));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn welcome_timeout_fires_at_the_deadline_and_a_late_welcome_does_not_count() {
        let t0 = Instant::now();
        let (mut hs, _) = Handshake::client("app", None, t0, SECOND);
        assert_eq!(hs.deadline(), t0 + SECOND);
        assert_eq!(hs.handle_timeout(t0 + SECOND / 2), None);
        let timeout = HandshakeError::Timeout {
            awaiting: Awaiting::Welcome,
            waited: SECOND,
        };
        assert_eq!(hs.handle_timeout(t0 + SECOND), Some(timeout.clone()));
        assert_eq!(
            hs.handle_frame(t0 + SECOND, &frame(&welcome(), 0)),
            Err(timeout)
        );
    }

    #[test]
    fn registered_timeout_names_what_did_not_come() {
        let t0 = Instant::now();
        let (mut hs, _) = Handshake::worker(None, register(), t0, SECOND);
        hs.handle_frame(t0, &frame(&welcome(), 0)).unwrap();
        let err = hs.handle_timeout(t0 + SECOND * 2).unwrap();
        assert_eq!(err.to_string(), "no registered within 1s");
    }

    #[test]
    fn handshake_out_of_order_is_an_error_naming_both_messages() {
        let t0 = Instant::now();
        // A registered before the welcome.
        let (mut hs, _) = Handshake::worker(None, register(), t0, SECOND);
        let err = hs.handle_frame(t0, &frame(&registered(), 0)).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::OutOfOrder {
                awaiting: Awaiting::Welcome,
                got: MessageKind::Registered,
            }
        );
        assert_eq!(err.to_string(), "registered (0x11) instead of welcome");
        // A second welcome where the registered belongs.
        let (mut hs, _) = Handshake::worker(None, register(), t0, SECOND);
        hs.handle_frame(t0, &frame(&welcome(), 0)).unwrap();
        let err = hs.handle_frame(t0, &frame(&welcome(), 0)).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::OutOfOrder {
                awaiting: Awaiting::Registered,
                got: MessageKind::Welcome,
            }
        );
        // A client is not registered.
        let (mut hs, _) = Handshake::client("app", None, t0, SECOND);
        assert!(matches!(
            hs.handle_frame(t0, &frame(&Message::Pong, 0)),
            Err(HandshakeError::OutOfOrder {
                awaiting: Awaiting::Welcome,
                got: MessageKind::Pong
            })
        ));
    }

    #[test]
    fn an_error_frame_in_the_handshake_is_a_refusal_with_the_hubs_code() {
        let t0 = Instant::now();
        let (mut hs, _) = Handshake::client("app", Some("wrong"), t0, SECOND);
        let refusal = Message::Error(WireError::new(ErrorCode::Unauthorized, "bad token"));
        assert_eq!(
            hs.handle_frame(t0, &frame(&refusal, 0)),
            Err(HandshakeError::Refused {
                code: ErrorCode::Unauthorized,
                message: "bad token".into()
            })
        );
    }

    #[test]
    fn a_reply_goes_to_its_request_once() {
        let t0 = Instant::now();
        let mut table: Requests<&str> = Requests::default();
        let a = table.start(t0, SECOND, "a").unwrap();
        let b = table.start(t0, SECOND, "b").unwrap();
        assert_ne!(a, b);
        assert_ne!(a, 0);
        assert_eq!(table.in_flight(), 2);
        assert!(matches!(table.reply(t0, b), Reply::Answer("b")));
        assert!(matches!(table.reply(t0, a), Reply::Answer("a")));
        assert_eq!(table.in_flight(), 0);
    }

    #[test]
    fn a_duplicate_reply_is_unmatched_and_leaves_other_requests_waiting() {
        let t0 = Instant::now();
        let mut table: Requests<&str> = Requests::default();
        let a = table.start(t0, SECOND, "a").unwrap();
        let b = table.start(t0, SECOND, "b").unwrap();
        assert!(matches!(table.reply(t0, a), Reply::Answer("a")));
        assert!(matches!(
            table.reply(t0, a),
            Reply::Unmatched { never_sent: false }
        ));
        assert_eq!(table.in_flight(), 1);
        assert!(matches!(table.reply(t0, b), Reply::Answer("b")));
    }

    #[test]
    fn a_reply_to_an_unknown_id_is_unmatched_and_marked_never_sent() {
        let t0 = Instant::now();
        let mut table: Requests<&str> = Requests::default();
        let a = table.start(t0, SECOND, "a").unwrap();
        for unknown in [0, a + 1, u64::MAX] {
            assert!(
                matches!(
                    table.reply(t0, unknown),
                    Reply::Unmatched { never_sent: true }
                ),
                "{unknown}"
            );
        }
        assert_eq!(table.in_flight(), 1, "the waiting request is untouched");
        assert!(matches!(table.reply(t0, a), Reply::Answer("a")));
    }

    #[test]
    fn a_reply_after_the_deadline_is_late_not_an_answer() {
        let t0 = Instant::now();
        let mut table: Requests<&str> = Requests::default();
        let on_time = table.start(t0, SECOND, "on time").unwrap();
        let late = table.start(t0, SECOND, "late").unwrap();
        let just_before = t0 + SECOND - Duration::from_nanos(1);
        assert!(matches!(
            table.reply(just_before, on_time),
            Reply::Answer("on time")
        ));
        assert!(matches!(
            table.reply(t0 + SECOND, late),
            Reply::Late("late")
        ));
        // Late is final: the request is forgotten.
        assert!(matches!(
            table.reply(t0 + SECOND, late),
            Reply::Unmatched { never_sent: false }
        ));
        assert_eq!(table.in_flight(), 0);
    }

    #[test]
    fn a_wait_too_long_for_the_clock_has_no_deadline() {
        let t0 = Instant::now();
        let mut table: Requests<&str> = Requests::default();
        let id = table.start(t0, Duration::MAX, "patient").unwrap();
        assert!(matches!(
            table.reply(t0 + SECOND * 3600, id),
            Reply::Answer("patient")
        ));
    }

    #[test]
    fn a_cancelled_request_gets_no_later_reply() {
        let t0 = Instant::now();
        let mut table: Requests<&str> = Requests::default();
        let id = table.start(t0, SECOND, "gave up").unwrap();
        assert!(
            table.forget(id),
            "it was waiting: the peer is told to cancel"
        );
        assert!(!table.forget(id), "a second forget has nothing to cancel");
        assert!(matches!(
            table.reply(t0, id),
            Reply::Unmatched { never_sent: false }
        ));
    }

    #[test]
    fn ids_wrap_past_the_top_skipping_zero_and_ids_still_waiting() {
        let t0 = Instant::now();
        let mut table: Requests<&str> = Requests::default();
        let one = table.start(t0, SECOND, "old").unwrap();
        assert_eq!(one, 1);
        table.skip_to(u64::MAX);
        assert_eq!(table.start(t0, SECOND, "top").unwrap(), u64::MAX);
        let wrapped = table.start(t0, SECOND, "wrapped").unwrap();
        assert_eq!(wrapped, 2, "0 is for control frames and 1 is still waiting");
        assert!(matches!(table.reply(t0, 1), Reply::Answer("old")));
        assert!(matches!(table.reply(t0, 2), Reply::Answer("wrapped")));
        assert!(matches!(table.reply(t0, u64::MAX), Reply::Answer("top")));
        // After a wrap any id may have been used: none is called never sent but 0.
        assert!(matches!(
            table.reply(t0, 99),
            Reply::Unmatched { never_sent: false }
        ));
        assert!(matches!(
            table.reply(t0, 0),
            Reply::Unmatched { never_sent: true }
        ));
        // 1 is free again and is reused in turn.
        table.skip_to(1);
        assert_eq!(table.start(t0, SECOND, "reused").unwrap(), 1);
    }

    #[test]
    fn a_stream_takes_every_frame_until_forgotten() {
        let t0 = Instant::now();
        let mut table: Requests<&str, Vec<u32>> = Requests::default();
        let id = table.open_stream(Vec::new()).unwrap();
        for n in 0..3 {
            match table.reply(t0 + SECOND * 100, id) {
                Reply::Stream(events) => events.push(n),
                other => panic!("{other:?}"),
            }
        }
        match table.reply(t0, id) {
            Reply::Stream(events) => assert_eq!(events, &[0, 1, 2]),
            other => panic!("{other:?}"),
        }
        assert!(table.forget(id));
        assert!(matches!(table.reply(t0, id), Reply::Unmatched { .. }));
    }

    #[test]
    fn closing_fails_every_waiting_request_and_refuses_new_ones() {
        let t0 = Instant::now();
        let mut table: Requests<&str, ()> = Requests::default();
        table.start(t0, SECOND, "a").unwrap();
        table.open_stream(()).unwrap();
        assert_eq!(table.close(|| "hub left".into()), 2);
        assert_eq!(table.in_flight(), 0);
        assert_eq!(
            table.start(t0, SECOND, "b"),
            Err(Refused::Closed("hub left".into()))
        );
        // The first reason stays.
        table.close(|| "later".into());
        assert_eq!(table.closed(), Some("hub left"));
    }

    #[test]
    fn after_goodbye_waiting_requests_still_get_replies_but_no_new_ones_start() {
        let t0 = Instant::now();
        let mut table: Requests<&str> = Requests::default();
        let a = table.start(t0, SECOND, "a").unwrap();
        table.refuse(|| "goodbye".into());
        assert_eq!(
            table.start(t0, SECOND, "b"),
            Err(Refused::Closed("goodbye".into()))
        );
        assert!(matches!(table.reply(t0, a), Reply::Answer("a")));
    }

    #[test]
    fn draining_refuses_new_requests_and_is_done_when_the_last_reply_comes() {
        let t0 = Instant::now();
        let mut table: Requests<&str> = Requests::default();
        let a = table.start(t0, SECOND, "a").unwrap();
        table.drain();
        assert_eq!(table.start(t0, SECOND, "b"), Err(Refused::Draining));
        assert!(!table.drained());
        assert!(matches!(table.reply(t0, a), Reply::Answer("a")));
        assert!(table.drained());
    }

    #[test]
    fn a_received_request_cancelled_before_its_turn_is_not_computed() {
        let t0 = Instant::now();
        let mut received = Received::default();
        received
            .admit(t0, 5, Deadline::from_remaining(SECOND))
            .unwrap();
        received.admit(t0, 6, Deadline::NONE).unwrap();
        assert!(received.cancel(5));
        assert!(!received.cancel(5), "already cancelled");
        assert_eq!(received.take(t0, 5), Err(Skip::Cancelled));
        assert_eq!(received.take(t0, 6), Ok(()));
        assert!(!received.cancel(6), "taken: too late to cancel");
        assert!(
            Skip::Cancelled.reply().is_none(),
            "a cancelled request is not answered"
        );
    }

    #[test]
    fn a_received_request_expires_at_its_deadline_and_a_spent_budget_is_refused_on_arrival() {
        let t0 = Instant::now();
        let mut received = Received::default();
        let budget = Duration::from_millis(5);
        received
            .admit(t0, 1, Deadline::from_remaining(budget))
            .unwrap();
        received
            .admit(t0, 2, Deadline::from_remaining(budget))
            .unwrap();
        assert_eq!(
            received.take(t0 + budget - Duration::from_nanos(1), 1),
            Ok(())
        );
        assert_eq!(received.take(t0 + budget, 2), Err(Skip::Expired));
        assert_eq!(
            received.admit(t0, 3, Deadline::from_remaining(MIN_BUDGET / 2)),
            Err(Skip::Expired)
        );
        assert_eq!(received.take(t0, 3), Err(Skip::Cancelled), "never admitted");
        // No deadline: never expires.
        received.admit(t0, 4, Deadline::NONE).unwrap();
        assert_eq!(received.take(t0 + SECOND * 3600, 4), Ok(()));
        assert!(matches!(
            Skip::Expired.reply(),
            Some(Message::Error(ref e)) if e.code == ErrorCode::DeadlineExceeded
        ));
    }

    #[test]
    fn a_queued_request_is_given_out_at_its_deadline_and_its_turn_sends_nothing() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut received = Received::default();
        assert_eq!(received.next_expiry(), None);
        // Admitted in another order than their deadlines; the timer follows the soonest.
        assert_eq!(
            received.admit(t0, 1, Deadline::from_remaining(ms * 5)),
            Ok(true)
        );
        assert_eq!(
            received.admit(t0, 2, Deadline::from_remaining(ms * 2)),
            Ok(true)
        );
        assert_eq!(
            received.admit(t0, 3, Deadline::from_remaining(ms * 9)),
            Ok(false)
        );
        assert_eq!(received.admit(t0, 4, Deadline::NONE), Ok(false));
        assert_eq!(received.next_expiry(), Some(t0 + ms * 2));
        assert!(received.expire(t0 + ms).is_empty(), "nothing is due yet");
        // The deadline comes while all four still wait for their turn.
        assert_eq!(received.expire(t0 + ms * 5), vec![2, 1]);
        assert_eq!(received.next_expiry(), Some(t0 + ms * 9));
        assert!(received.expire(t0 + ms * 5).is_empty(), "given out once");
        // Answered already: no second reply at the turn, and a late cancel finds nothing.
        assert!(!received.cancel(2));
        assert_eq!(received.take(t0 + ms * 6, 2), Err(Skip::Answered));
        assert_eq!(received.take(t0 + ms * 6, 1), Err(Skip::Answered));
        assert_eq!(Skip::Answered.reply(), None);
        // Then forgotten: a stray second turn is not answered twice either way.
        assert_eq!(received.take(t0 + ms * 6, 1), Err(Skip::Cancelled));
        assert_eq!(received.take(t0 + ms * 6, 3), Ok(()));
        assert_eq!(received.next_expiry(), None, "taken: its timer is gone");
        assert_eq!(received.take(t0 + SECOND * 3600, 4), Ok(()));
        assert!(received.expire(t0 + SECOND * 3600).is_empty());
    }

    #[test]
    fn a_cancelled_or_taken_request_leaves_the_timer() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut received = Received::default();
        received.admit(t0, 1, Deadline::from_remaining(ms)).unwrap();
        received
            .admit(t0, 2, Deadline::from_remaining(ms * 2))
            .unwrap();
        received
            .admit(t0, 3, Deadline::from_remaining(ms * 3))
            .unwrap();
        assert!(received.cancel(1));
        assert_eq!(received.next_expiry(), Some(t0 + ms * 2));
        assert_eq!(received.take(t0, 2), Ok(()));
        assert_eq!(received.next_expiry(), Some(t0 + ms * 3));
        assert_eq!(received.expire(t0 + SECOND), vec![3]);
        // A request admitted again under its id keeps only its new deadline.
        received.admit(t0, 4, Deadline::from_remaining(ms)).unwrap();
        received
            .admit(t0, 4, Deadline::from_remaining(ms * 7))
            .unwrap();
        assert_eq!(received.next_expiry(), Some(t0 + ms * 7));
        assert_eq!(received.expire(t0 + ms * 7), vec![4]);
    }
}
