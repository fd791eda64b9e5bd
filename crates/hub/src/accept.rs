//! The hub's side of the handshake as a sans-IO state machine: fed frames and instants, it
//! checks hello (version, token, role) and a worker's register, and says what to answer.
//!
//! It has no socket and no clock. The driver (`session.rs`) reads a frame, hands it over
//! with the time it was read, sends what comes back, and asks [`Accept::deadline`] how long
//! to wait for the next one. What needs the hub's state (a place under the connection cap,
//! an entry in the registry) is decided by the driver between the steps.

use std::time::{Duration, Instant};

use qnllm_protocol::{
    ErrorCode, Frame, Hello, Message, ProtocolError, Register, Registered, Welcome,
    PROTOCOL_VERSION,
};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// What the hub asks of every hello, and what it tells in its answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Terms<'a> {
    /// How long each of hello and register may take to come.
    pub(crate) hello_timeout: Duration,
    /// The token every hello must carry; `None` (or empty) takes any.
    pub(crate) token: Option<&'a str>,
    /// Told in `welcome`.
    pub(crate) max_frame_bytes: u32,
    /// Told in `welcome` and `registered`.
    pub(crate) heartbeat_interval_ms: u64,
}

/// Why the handshake ends without a session: the `error` frame to send before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The request id the error answers (0: the connection).
    pub(crate) request_id: u64,
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    /// The peer broke the framing or sent a body that does not decode: counted among the
    /// hub's protocol errors.
    pub(crate) protocol_error: bool,
}

impl Refusal {
    fn new(request_id: u64, code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            request_id,
            code,
            message: message.into(),
            protocol_error: false,
        }
    }

    /// The answer to a broken frame, read as the answer to `request_id`.
    pub(crate) fn protocol(err: &ProtocolError, request_id: u64) -> Refusal {
        Refusal {
            request_id: err.request_id().unwrap_or(request_id),
            code: err.code(),
            message: err.to_string(),
            protocol_error: true,
        }
    }
}

/// What a frame moved the handshake to; the driver decides the next step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// A good hello: find the peer a place, then [`Accept::welcome`] it (or refuse it).
    Hello(Hello),
    /// A worker's register: enter it in the registry, then [`Accept::registered`] it (or
    /// [`Accept::unregistered`]).
    Register(Register),
}

/// The peer's role, from its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Worker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for hello, until the deadline.
    Hello,
    /// Hello was good; the driver is finding a place.
    Admitting(Role),
    /// Welcomed worker, waiting for its register until the deadline.
    Register,
    /// The driver is entering the register in the registry.
    Registering,
    /// The session is open: the handshake has nothing more to say.
    Open,
    /// Refused.
    Over,
}

/// The accepting side's handshake: hello → welcome, and for a worker then register →
/// registered, each awaited within `hello_timeout` from when the hub starts waiting for it.
#[derive(Debug)]
pub(crate) struct Accept<'a> {
    terms: Terms<'a>,
    stage: Stage,
    deadline: Instant,
}

impl<'a> Accept<'a> {
    /// A handshake on a connection accepted at `now`: it waits for hello.
    pub(crate) fn new(terms: Terms<'a>, now: Instant) -> Accept<'a> {
        Accept {
            terms,
            stage: Stage::Hello,
            deadline: now + terms.hello_timeout,
        }
    }

    /// When the frame waited for is late; `None` while the handshake waits for nothing
    /// from the peer (on the driver, or over).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        matches!(self.stage, Stage::Hello | Stage::Register).then_some(self.deadline)
    }

    /// The timer fired at `now`: the refusal if the frame waited for is late (the
    /// handshake is then over), `None` if it is not due yet.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Option<Refusal> {
        if self.deadline().is_none_or(|deadline| now < deadline) {
            return None;
        }
        let refusal = if self.stage == Stage::Hello {
            let limit = self.terms.hello_timeout;
            Refusal::new(
                0,
                ErrorCode::HelloTimeout,
                format!("no hello within {limit:?}"),
            )
        } else {
            Refusal::new(0, ErrorCode::HelloTimeout, "no register after hello")
        };
        self.stage = Stage::Over;
        Some(refusal)
    }

    /// The frame that could not be read whole: what to answer; the handshake is over.
    pub(crate) fn handle_broken(&mut self, err: &ProtocolError) -> Refusal {
        self.stage = Stage::Over;
        Refusal::protocol(err, 0)
    }

    /// A frame from the peer, read at `now`. A frame read at or after the deadline counts
    /// as none, whatever it holds; a frame while the handshake waits for nothing is out of
    /// order.
    ///
    /// # Errors
    ///
    /// The [`Refusal`] to send; the handshake is then over.
    pub(crate) fn handle_frame(&mut self, now: Instant, frame: &Frame) -> Result<Step, Refusal> {
        if let Some(late) = self.handle_timeout(now) {
            return Err(late);
        }
        let stage = std::mem::replace(&mut self.stage, Stage::Over);
        let id = frame.header.request_id;
        let message = frame.message().map_err(|err| Refusal::protocol(&err, id))?;
        match (stage, message) {
            (Stage::Hello, Message::Hello(hello)) => {
                let role = self
                    .check(&hello)
                    .map_err(|(code, message)| Refusal::new(id, code, message))?;
                self.stage = Stage::Admitting(role);
                Ok(Step::Hello(hello))
            }
            (Stage::Hello, other) => Err(Refusal::new(
                id,
                ErrorCode::UnexpectedMessage,
                format!("expected hello first, got {}", other.kind()),
            )),
            (Stage::Register, Message::Register(register)) => {
                self.stage = Stage::Registering;
                Ok(Step::Register(register))
            }
            (_, other) => Err(Refusal::new(
                id,
                ErrorCode::UnexpectedMessage,
                format!("a worker registers first, got {}", other.kind()),
            )),
        }
    }

    /// The role of a hello that passed, or the code and message that refuse it.
    fn check(&self, hello: &Hello) -> Result<Role, (ErrorCode, String)> {
        if hello.protocol != PROTOCOL_VERSION {
            let message = format!(
                "hello speaks protocol {}, this hub speaks {PROTOCOL_VERSION}",
                hello.protocol
            );
            return Err((ErrorCode::UnsupportedVersion, message));
        }
        if let Some(expected) = self.terms.token.filter(|t| !t.is_empty()) {
            // Compare digests in constant time: neither content nor length leaks through
            // timing.
            let given = Sha256::digest(hello.token.as_deref().unwrap_or("").as_bytes());
            if !bool::from(given.ct_eq(&Sha256::digest(expected.as_bytes()))) {
                tracing::warn!(name = %hello.name, "hello refused: wrong or missing token");
                return Err((
                    ErrorCode::Unauthorized,
                    "wrong or missing auth token".into(),
                ));
            }
        }
        match hello.role.as_str() {
            "client" => Ok(Role::Client),
            "worker" => Ok(Role::Worker),
            role => Err((
                ErrorCode::UnexpectedMessage,
                format!("role `{role}` is unknown: use `client` or `worker`"),
            )),
        }
    }

    /// The hello was given a place as session `session` at `now`: the `welcome` to send.
    /// A client's session is then open; a worker's register is awaited from `now`.
    ///
    /// Called at another step, it still answers, and the handshake is over.
    pub(crate) fn welcome(&mut self, session: u64, now: Instant) -> Message {
        self.stage = match self.stage {
            Stage::Admitting(Role::Client) => Stage::Open,
            Stage::Admitting(Role::Worker) => {
                self.deadline = now + self.terms.hello_timeout;
                Stage::Register
            }
            _ => Stage::Over,
        };
        Message::Welcome(Welcome {
            session,
            server: concat!("qnllm/", env!("CARGO_PKG_VERSION")).into(),
            max_frame_bytes: self.terms.max_frame_bytes,
            heartbeat_interval_ms: self.terms.heartbeat_interval_ms,
        })
    }

    /// The register was entered as engine `engine_id`: the `registered` to send; the
    /// worker's session is open.
    pub(crate) fn registered(&mut self, engine_id: u64) -> Message {
        self.stage = if self.stage == Stage::Registering {
            Stage::Open
        } else {
            Stage::Over
        };
        Message::Registered(Registered {
            engine_id,
            heartbeat_interval_ms: self.terms.heartbeat_interval_ms,
        })
    }

    /// The registry refused the register, saying `why`: the refusal to send.
    pub(crate) fn unregistered(&mut self, why: impl std::fmt::Display) -> Refusal {
        self.stage = Stage::Over;
        Refusal::new(
            0,
            ErrorCode::MalformedBody,
            format!("registration refused: {why}"),
        )
    }

    /// The session is open: hello (and a worker's register) went through.
    pub(crate) fn is_open(&self) -> bool {
        self.stage == Stage::Open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qnllm_protocol::{encode_frame, Deadline, EngineRole, FrameDecoder};

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn terms(token: Option<&str>) -> Terms<'_> {
        Terms {
            hello_timeout: TIMEOUT,
            token,
            max_frame_bytes: 1 << 20,
            heartbeat_interval_ms: 500,
        }
    }

    fn frame(message: &Message, id: u64) -> Frame {
        let mut bytes = bytes::BytesMut::new();
        encode_frame(message, id, Deadline::NONE, &mut bytes);
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder
            .decode(&mut bytes)
            .expect("a frame this test encoded decodes")
            .expect("whole")
    }

    fn hello(role: &str, token: Option<&str>) -> Message {
        Message::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            role: role.into(),
            name: "peer".into(),
            token: token.map(str::to_string),
        })
    }

    fn register() -> Message {
        Message::Register(Register {
            name: "w".into(),
            model_digest: "00".repeat(32),
            model_version: 0,
            input_size: 4,
            labels: 2,
            max_in_flight: 8,
            role: EngineRole::Engine,
        })
    }

    #[test]
    fn a_client_hello_is_welcomed_and_the_session_opens() {
        let t0 = Instant::now();
        let mut accept = Accept::new(terms(None), t0);
        assert_eq!(accept.deadline(), Some(t0 + TIMEOUT));
        let step = accept
            .handle_frame(
                t0 + Duration::from_millis(1),
                &frame(&hello("client", None), 0),
            )
            .expect("a good hello");
        assert!(matches!(step, Step::Hello(ref h) if h.role == "client"));
        // Waiting on the driver: no timer of its own.
        assert_eq!(accept.deadline(), None);
        assert_eq!(accept.handle_timeout(t0 + TIMEOUT * 2), None);
        match accept.welcome(7, t0) {
            Message::Welcome(w) => {
                assert_eq!(
                    (w.session, w.max_frame_bytes, w.heartbeat_interval_ms),
                    (7, 1 << 20, 500)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(accept.is_open());
        assert_eq!(accept.deadline(), None);
    }

    #[test]
    fn a_worker_registers_within_its_own_timeout_counted_from_the_welcome() {
        let t0 = Instant::now();
        let mut accept = Accept::new(terms(None), t0);
        accept
            .handle_frame(t0, &frame(&hello("worker", None), 0))
            .expect("hello");
        let welcomed = t0 + Duration::from_secs(4);
        accept.welcome(1, welcomed);
        assert!(!accept.is_open());
        assert_eq!(accept.deadline(), Some(welcomed + TIMEOUT));
        // Past hello's deadline, within register's: not late.
        assert_eq!(accept.handle_timeout(t0 + TIMEOUT), None);
        let step = accept
            .handle_frame(
                t0 + TIMEOUT + Duration::from_secs(1),
                &frame(&register(), 0),
            )
            .expect("register in time");
        assert!(matches!(step, Step::Register(ref r) if r.name == "w"));
        match accept.registered(42) {
            Message::Registered(r) => assert_eq!((r.engine_id, r.heartbeat_interval_ms), (42, 500)),
            other => panic!("{other:?}"),
        }
        assert!(accept.is_open());
    }

    #[test]
    fn no_hello_in_time_is_a_hello_timeout_and_a_frame_at_the_deadline_is_late() {
        let t0 = Instant::now();
        let mut accept = Accept::new(terms(None), t0);
        assert_eq!(
            accept.handle_timeout(t0 + TIMEOUT - Duration::from_nanos(1)),
            None
        );
        let late = accept
            .handle_frame(t0 + TIMEOUT, &frame(&hello("client", None), 0))
            .expect_err("a hello at the deadline is late");
        assert_eq!(
            late,
            Refusal::new(
                0,
                ErrorCode::HelloTimeout,
                format!("no hello within {TIMEOUT:?}")
            )
        );
        assert_eq!(accept.deadline(), None, "over");

        let mut accept = Accept::new(terms(None), t0);
        let refusal = accept.handle_timeout(t0 + TIMEOUT).expect("due");
        assert_eq!(refusal.code, ErrorCode::HelloTimeout);
        assert!(!refusal.protocol_error);
    }

    #[test]
    fn no_register_in_time_is_a_hello_timeout_naming_register() {
        let t0 = Instant::now();
        let mut accept = Accept::new(terms(None), t0);
        accept
            .handle_frame(t0, &frame(&hello("worker", None), 0))
            .expect("hello");
        accept.welcome(1, t0);
        let refusal = accept.handle_timeout(t0 + TIMEOUT).expect("due");
        assert_eq!(
            refusal,
            Refusal::new(0, ErrorCode::HelloTimeout, "no register after hello")
        );
    }

    #[test]
    fn each_bad_hello_is_refused_with_its_own_code_on_its_request_id() {
        let t0 = Instant::now();
        let cases = [
            (
                frame(&Message::Ping, 3),
                ErrorCode::UnexpectedMessage,
                "expected hello first, got ping",
            ),
            (
                frame(
                    &Message::Hello(Hello {
                        protocol: PROTOCOL_VERSION + 1,
                        role: "client".into(),
                        name: "old".into(),
                        token: None,
                    }),
                    3,
                ),
                ErrorCode::UnsupportedVersion,
                "speaks protocol",
            ),
            (
                frame(&hello("client", None), 3),
                ErrorCode::Unauthorized,
                "wrong or missing auth token",
            ),
            (
                frame(&hello("client", Some("guess")), 3),
                ErrorCode::Unauthorized,
                "wrong or missing auth token",
            ),
            (
                frame(&hello("admin", Some("s3cret")), 3),
                ErrorCode::UnexpectedMessage,
                "role `admin` is unknown",
            ),
        ];
        for (frame, code, text) in cases {
            let mut accept = Accept::new(terms(Some("s3cret")), t0);
            let refusal = accept.handle_frame(t0, &frame).expect_err("refused");
            assert_eq!((refusal.request_id, refusal.code), (3, code), "{refusal:?}");
            assert!(refusal.message.contains(text), "{refusal:?}");
            assert!(!refusal.protocol_error);
            assert_eq!(accept.deadline(), None, "over after a refusal");
        }
        let mut accept = Accept::new(terms(Some("s3cret")), t0);
        let step = accept.handle_frame(t0, &frame(&hello("client", Some("s3cret")), 0));
        assert!(matches!(step, Ok(Step::Hello(_))), "the right token passes");
    }

    #[test]
    fn an_undecodable_hello_is_a_protocol_error_on_its_request_id() {
        let t0 = Instant::now();
        let mut accept = Accept::new(terms(None), t0);
        let mut broken = frame(&hello("client", None), 9);
        broken.payload = bytes::Bytes::from_static(b"\xff not a hello");
        let refusal = accept.handle_frame(t0, &broken).expect_err("undecodable");
        assert!(refusal.protocol_error);
        assert_eq!(refusal.request_id, 9);
        assert_eq!(refusal.code, ErrorCode::MalformedBody);
    }

    #[test]
    fn a_worker_that_sends_anything_but_register_is_refused() {
        let t0 = Instant::now();
        let mut accept = Accept::new(terms(None), t0);
        accept
            .handle_frame(t0, &frame(&hello("worker", None), 0))
            .expect("hello");
        accept.welcome(1, t0);
        let refusal = accept
            .handle_frame(t0, &frame(&Message::Ping, 5))
            .expect_err("ping before register");
        assert_eq!(
            refusal,
            Refusal::new(
                5,
                ErrorCode::UnexpectedMessage,
                "a worker registers first, got ping (0x03)"
            )
        );
    }

    #[test]
    fn a_second_hello_after_the_welcome_is_out_of_order() {
        let t0 = Instant::now();
        let mut accept = Accept::new(terms(None), t0);
        accept
            .handle_frame(t0, &frame(&hello("worker", None), 0))
            .expect("hello");
        accept.welcome(1, t0);
        let refusal = accept
            .handle_frame(t0, &frame(&hello("worker", None), 0))
            .expect_err("hello twice");
        assert_eq!(refusal.code, ErrorCode::UnexpectedMessage);
    }

    #[test]
    fn a_refused_registration_says_why() {
        let t0 = Instant::now();
        let mut accept = Accept::new(terms(None), t0);
        accept
            .handle_frame(t0, &frame(&hello("worker", None), 0))
            .expect("hello");
        accept.welcome(1, t0);
        accept
            .handle_frame(t0, &frame(&register(), 0))
            .expect("register");
        let refusal = accept.unregistered("dim 0 is not a dimension");
        assert_eq!(
            refusal,
            Refusal::new(
                0,
                ErrorCode::MalformedBody,
                "registration refused: dim 0 is not a dimension"
            )
        );
        assert!(!accept.is_open());
    }
}
