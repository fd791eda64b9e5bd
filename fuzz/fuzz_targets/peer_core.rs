//! Drives the hub's sans-IO peer core (`crates/hub/src/peer.rs`: `Handshake`, `Requests`,
//! `Received`) with random operations at random instants and checks each answer against a
//! plain model of the protocol's bookkeeping: every request gets exactly one outcome, no id
//! is live twice or matched twice, lateness follows the deadline, and a handshake ends at
//! most once, in order.
#![no_main]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use qnllm_protocol::{
    encode_frame, Deadline, EngineRole, ErrorCode, Frame, FrameDecoder, Message, Register,
    Registered, Welcome, WireError,
};

// The peer core is private to the hub crate (`mod peer;`, every item `pub(crate)`), so the
// very same source file is compiled into this target. Nothing is copied: a change to
// peer.rs is fuzzed as soon as it is made.
#[path = "../../crates/hub/src/peer.rs"]
#[allow(dead_code, unreachable_pub)]
mod peer;

use peer::{
    Handshake, HandshakeError, Progress, Received, Refused, Reply, Requests, Skip, MIN_BUDGET,
};

/// Reads choices from `data`, zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.byte()) | (u16::from(self.byte()) << 8)
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
    fn empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A fake clock that only moves forward, as `Instant::now()` does for the drivers.
struct Clock {
    start: Instant,
    offset: Duration,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: Instant::now(),
            offset: Duration::ZERO,
        }
    }
    fn now(&self) -> Instant {
        self.start + self.offset
    }
    /// Moves on by a small step, a step just around a common deadline, or a big jump.
    fn advance(&mut self, input: &mut Input<'_>) {
        let step = match input.byte() % 4 {
            0 => Duration::from_nanos(u64::from(input.byte())),
            1 => Duration::from_micros(u64::from(input.u16())),
            2 => Duration::from_millis(u64::from(input.u16())),
            _ => Duration::from_secs(u64::from(input.byte())),
        };
        self.offset += step;
    }
}

/// A wait chosen by the input: zero, tiny, ordinary, too long for the clock.
fn wait(input: &mut Input<'_>) -> Duration {
    match input.byte() % 5 {
        0 => Duration::ZERO,
        1 => Duration::from_nanos(u64::from(input.u16())),
        2 => Duration::from_micros(u64::from(input.u32())),
        3 => Duration::from_millis(u64::from(input.u16())),
        _ => Duration::MAX,
    }
}

/// What became of each waiter, by its number.
#[derive(Debug, Default)]
struct Outcomes {
    /// Handed back as an answer or as late.
    delivered: HashMap<u64, u32>,
    /// Dropped (by `forget`, `close`, or by the table itself going away).
    dropped: HashMap<u64, u32>,
}

/// A request's waiter: it records its own drop, so a request forgotten or failed by
/// `close` is seen to get that one outcome too.
#[derive(Debug)]
struct Waiter {
    number: u64,
    outcomes: Rc<RefCell<Outcomes>>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        *self
            .outcomes
            .borrow_mut()
            .dropped
            .entry(self.number)
            .or_default() += 1;
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    One { number: u64, until: Option<Instant> },
    Stream { number: u64 },
}

/// The model of `Requests`: what must be waiting, under which id.
#[derive(Default)]
struct Model {
    live: BTreeMap<u64, Slot>,
    /// The highest id handed out so far (ids are never reused without a wrap, and 2^64
    /// starts cannot happen here).
    highest: u64,
    closed: Option<String>,
    draining: bool,
    /// The numbers given to streams (they have no waiter).
    streams: HashSet<u64>,
}

/// An id to reply to or forget: a live one, one used before, 0, the next, or any.
fn pick_id(input: &mut Input<'_>, model: &Model) -> u64 {
    let choice = input.byte();
    match choice % 6 {
        0 | 1 if !model.live.is_empty() => {
            let keys: Vec<u64> = model.live.keys().copied().collect();
            keys[usize::from(input.byte()) % keys.len()]
        }
        2 if model.highest > 0 => 1 + u64::from(input.u16()) % model.highest,
        3 => 0,
        4 => model.highest + 1 + u64::from(input.byte() % 3),
        _ => u64::from(input.u32()) | (u64::from(choice >> 7) << 63),
    }
}

fn requests(input: &mut Input<'_>) {
    let outcomes = Rc::new(RefCell::new(Outcomes::default()));
    let mut table: Requests<Waiter, u64> = Requests::default();
    let mut model = Model::default();
    let mut clock = Clock::new();
    let mut started = 0u64;
    let mut ops = 0;
    while !input.empty() && ops < 256 {
        ops += 1;
        match input.byte() % 9 {
            0 | 1 => {
                let wait = wait(input);
                let now = clock.now();
                let number = started;
                let waiter = Waiter {
                    number,
                    outcomes: outcomes.clone(),
                };
                let refused = match (&model.closed, model.draining) {
                    (Some(reason), _) => Some(Refused::Closed(reason.clone())),
                    (None, true) => Some(Refused::Draining),
                    (None, false) => None,
                };
                started += 1;
                match (table.start(now, wait, waiter), refused) {
                    (Ok(id), None) => {
                        assert_ne!(id, 0, "0 is for control frames");
                        assert!(id > model.highest, "id {id} handed out again");
                        assert!(!model.live.contains_key(&id), "id {id} is already live");
                        model.highest = id;
                        model.live.insert(
                            id,
                            Slot::One {
                                number,
                                until: now.checked_add(wait),
                            },
                        );
                    }
                    (Err(got), Some(expected)) => {
                        assert_eq!(got, expected);
                        // The refused waiter came back to the caller and is gone: that is
                        // its outcome, and it never entered the table.
                        assert_eq!(outcomes.borrow().dropped.get(&number), Some(&1));
                    }
                    (got, expected) => panic!(
                        "start: got {:?}, expected refusal {expected:?}",
                        got.map_err(|e| e.to_string())
                    ),
                }
            }
            2 => {
                let number = started;
                started += 1;
                let refused = model.closed.is_some() || model.draining;
                model.streams.insert(number);
                match table.open_stream(number) {
                    Ok(id) => {
                        assert!(!refused, "a stream opened while closed or draining");
                        assert_ne!(id, 0);
                        assert!(id > model.highest, "id {id} handed out again");
                        model.highest = id;
                        model.live.insert(id, Slot::Stream { number });
                    }
                    Err(_) => assert!(refused, "a stream refused while open"),
                }
            }
            3 | 4 => {
                clock.advance(input);
                let now = clock.now();
                let id = pick_id(input, &model);
                let expected = model.live.get(&id).copied();
                match (table.reply(now, id), expected) {
                    (Reply::Answer(w), Some(Slot::One { number, until })) => {
                        assert_eq!(w.number, number, "the answer went to another waiter");
                        assert!(
                            until.is_none_or(|u| now < u),
                            "an answer at or after its deadline"
                        );
                        *outcomes.borrow_mut().delivered.entry(number).or_default() += 1;
                        model.live.remove(&id);
                    }
                    (Reply::Late(w), Some(Slot::One { number, until })) => {
                        assert_eq!(w.number, number, "the late reply went to another waiter");
                        assert!(until.is_some_and(|u| now >= u), "late before its deadline");
                        *outcomes.borrow_mut().delivered.entry(number).or_default() += 1;
                        model.live.remove(&id);
                    }
                    (Reply::Stream(s), Some(Slot::Stream { number })) => {
                        assert_eq!(*s, number, "the frame went to another stream");
                    }
                    (Reply::Unmatched { never_sent }, None) => {
                        assert_eq!(
                            never_sent,
                            id == 0 || id > model.highest,
                            "never_sent for id {id}"
                        );
                    }
                    (got, expected) => panic!("reply to {id}: got {got:?}, expected {expected:?}"),
                }
            }
            5 => {
                let id = pick_id(input, &model);
                assert_eq!(
                    table.forget(id),
                    model.live.remove(&id).is_some(),
                    "forget {id}"
                );
            }
            6 => {
                if input.byte() % 4 == 0 {
                    let failed = table.close(|| format!("closed at op {ops}"));
                    assert_eq!(failed, model.live.len(), "close counts what was waiting");
                    model.live.clear();
                    model
                        .closed
                        .get_or_insert_with(|| format!("closed at op {ops}"));
                } else {
                    table.refuse(|| format!("refused at op {ops}"));
                    model
                        .closed
                        .get_or_insert_with(|| format!("refused at op {ops}"));
                }
            }
            7 => {
                table.drain();
                model.draining = true;
            }
            _ => clock.advance(input),
        }
        assert_eq!(table.in_flight(), model.live.len(), "in_flight");
        assert_eq!(table.closed(), model.closed.as_deref(), "closed");
        assert_eq!(
            table.drained(),
            model.draining && model.live.is_empty(),
            "drained"
        );
        // A waiter is still in the table, or it has had its one outcome.
        let outcomes = outcomes.borrow();
        for (id, slot) in &model.live {
            if let Slot::One { number, .. } = slot {
                assert!(
                    !outcomes.delivered.contains_key(number)
                        && !outcomes.dropped.contains_key(number),
                    "request {id} is waiting but already had an outcome"
                );
            }
        }
    }
    drop(table);
    // Every request started had exactly one outcome: delivered once (then dropped by the
    // caller), or dropped once by the table without being delivered.
    let outcomes = outcomes.borrow();
    for number in 0..started {
        let delivered = outcomes.delivered.get(&number).copied().unwrap_or(0);
        let dropped = outcomes.dropped.get(&number).copied().unwrap_or(0);
        if model.streams.contains(&number) {
            assert_eq!(
                (delivered, dropped),
                (0, 0),
                "stream {number} was handed out as a waiter"
            );
            continue;
        }
        assert!(
            delivered <= 1,
            "waiter {number} delivered {delivered} times"
        );
        assert_eq!(dropped, 1, "waiter {number} dropped {dropped} times");
    }
}

fn received(input: &mut Input<'_>) {
    let mut received = Received::default();
    let mut model: HashMap<u64, Option<Instant>> = HashMap::new();
    // Given out by `expire`, their turn not yet come.
    let mut answered: HashSet<u64> = HashSet::new();
    let mut clock = Clock::new();
    let mut ops = 0;
    while !input.empty() && ops < 256 {
        ops += 1;
        let id = u64::from(input.byte() % 16);
        match input.byte() % 6 {
            0 | 1 => {
                let deadline = match input.byte() % 4 {
                    0 => Deadline::NONE,
                    1 => Deadline::from_micros(u32::from(input.byte())),
                    2 => Deadline::from_micros(input.u32()),
                    _ => Deadline::from_remaining(Duration::from_millis(u64::from(input.u16()))),
                };
                let now = clock.now();
                let spent = deadline.remaining().is_some_and(|b| b < MIN_BUDGET);
                match received.admit(now, id, deadline) {
                    Ok(sooner) => {
                        assert!(!spent, "a spent budget was admitted");
                        let expires = deadline.remaining().and_then(|b| now.checked_add(b));
                        answered.remove(&id);
                        model.insert(id, expires);
                        let soonest = model.values().flatten().min().copied();
                        assert_eq!(
                            sooner,
                            expires.is_some() && expires == soonest,
                            "admit {id}: whether its expiry is the soonest"
                        );
                    }
                    Err(skip) => {
                        assert!(spent, "a live budget was refused");
                        assert_eq!(skip, Skip::Expired);
                    }
                }
            }
            2 | 3 => {
                clock.advance(input);
                let now = clock.now();
                let expected = match model.remove(&id) {
                    _ if answered.remove(&id) => Err(Skip::Answered),
                    None => Err(Skip::Cancelled),
                    Some(Some(expires)) if now >= expires => Err(Skip::Expired),
                    Some(_) => Ok(()),
                };
                let got = received.take(now, id);
                assert_eq!(got, expected, "take {id}");
            }
            4 => assert_eq!(
                received.cancel(id),
                model.remove(&id).is_some(),
                "cancel {id}"
            ),
            _ => {
                // The deadline timer fires: every request due by now, soonest first.
                clock.advance(input);
                let now = clock.now();
                let mut due: Vec<(Instant, u64)> = model
                    .iter()
                    .filter_map(|(&id, &expires)| {
                        expires.filter(|&at| at <= now).map(|at| (at, id))
                    })
                    .collect();
                due.sort_unstable();
                for (_, id) in &due {
                    model.remove(id);
                    answered.insert(*id);
                }
                let expected: Vec<u64> = due.into_iter().map(|(_, id)| id).collect();
                assert_eq!(received.expire(now), expected, "expire at {now:?}");
            }
        }
        assert_eq!(
            received.next_expiry(),
            model.values().flatten().min().copied(),
            "the timer's next wake-up"
        );
    }
    // An expired request is answered with the error that says so.
    assert!(
        matches!(Skip::Expired.reply(), Some(Message::Error(ref e)) if e.code == ErrorCode::DeadlineExceeded),
        "an expired request's reply"
    );
    // A cancelled request is not answered at all, and one the timer answered already is
    // not answered again at its turn.
    assert!(
        Skip::Cancelled.reply().is_none(),
        "a cancelled request was answered"
    );
    assert!(
        Skip::Answered.reply().is_none(),
        "an answered request replied twice"
    );
}

/// A frame the hub might send during a handshake, or a torn one.
fn hub_frame(input: &mut Input<'_>) -> Frame {
    let message = match input.byte() % 7 {
        0 | 1 => Message::Welcome(Welcome {
            session: u64::from(input.byte()),
            server: "fuzz".into(),
            max_frame_bytes: 1 << 16,
            heartbeat_interval_ms: 100,
        }),
        2 | 3 => Message::Registered(Registered {
            engine_id: u64::from(input.byte()),
            heartbeat_interval_ms: 100,
        }),
        4 => Message::Error(WireError::new(ErrorCode::Unauthorized, "no")),
        5 => Message::Pong,
        _ => Message::Welcome(Welcome {
            session: 0,
            server: String::new(),
            max_frame_bytes: 0,
            heartbeat_interval_ms: 0,
        }),
    };
    let mut bytes = BytesMut::new();
    encode_frame(&message, 0, Deadline::NONE, &mut bytes);
    let mut frame = FrameDecoder::new(1 << 20)
        .decode(&mut bytes)
        .expect("an encoded frame decodes")
        .expect("an encoded frame is whole");
    if input.byte() % 8 == 0 {
        // The right kind, a body that does not decode.
        let n = usize::from(input.byte() % 16);
        frame.payload = Bytes::from(input.bytes(n));
    }
    frame
}

fn handshake(input: &mut Input<'_>) {
    let mut clock = Clock::new();
    let timeout = wait(input).min(Duration::from_secs(3600));
    let worker = input.byte() % 2 == 0;
    let register = Register {
        name: "fuzz".into(),
        model_digest: "00".repeat(32),
        model_version: 1,
        input_size: 4,
        labels: 2,
        max_in_flight: 8,
        role: EngineRole::Engine,
    };
    let (mut hs, hello) = if worker {
        Handshake::worker(None, register.clone(), clock.now(), timeout)
    } else {
        Handshake::client("fuzz", None, clock.now(), timeout)
    };
    assert!(
        matches!(hello, Message::Hello(ref h) if h.role == if worker { "worker" } else { "client" })
    );
    assert_eq!(
        hs.deadline(),
        clock.now().checked_add(timeout).expect("a bounded timeout")
    );
    let mut sent_register = false;
    let mut ops = 0;
    while !input.empty() && ops < 16 {
        ops += 1;
        clock.advance(input);
        let now = clock.now();
        let late = now >= hs.deadline();
        assert_eq!(
            hs.handle_timeout(now).is_some(),
            late,
            "handle_timeout at the deadline"
        );
        if input.byte() % 4 == 0 {
            continue; // the timer fired, no frame
        }
        let frame = hub_frame(input);
        let body = frame.message();
        match hs.handle_frame(now, &frame) {
            Ok(Progress::Send(message)) => {
                assert!(!late, "progress after the deadline");
                assert!(
                    worker && !sent_register,
                    "a register sent twice, or by a client"
                );
                assert!(
                    matches!(body, Ok(Message::Welcome(_))),
                    "register after {body:?}"
                );
                assert_eq!(message, Message::Register(register.clone()));
                assert_eq!(
                    hs.deadline(),
                    now + timeout,
                    "the registered gets its own timeout"
                );
                sent_register = true;
            }
            Ok(Progress::Done(greeted)) => {
                assert!(!late, "done after the deadline");
                match &body {
                    Ok(Message::Welcome(w)) => {
                        assert!(!worker, "a worker done at the welcome");
                        assert_eq!(&greeted.welcome, w);
                        assert_eq!(greeted.registered, None);
                    }
                    Ok(Message::Registered(r)) => {
                        assert!(worker && sent_register, "registered done before register");
                        assert_eq!(greeted.registered.as_ref(), Some(r));
                    }
                    other => panic!("done after {other:?}"),
                }
                return; // the connection is open: the driver stops using the handshake
            }
            Err(HandshakeError::Timeout { waited, .. }) => {
                assert!(late, "a timeout before the deadline");
                assert_eq!(waited, timeout);
                return;
            }
            Err(err) => {
                assert!(!late, "{err} after the deadline instead of a timeout");
                match (&err, &body) {
                    (HandshakeError::Refused { code, .. }, Ok(Message::Error(e))) => {
                        assert_eq!(*code, e.code)
                    }
                    (HandshakeError::Undecodable { .. }, Err(_)) => {}
                    (HandshakeError::OutOfOrder { got, .. }, Ok(m)) => {
                        assert_eq!(*got, m.kind());
                        assert!(
                            !matches!(m, Message::Error(_)),
                            "an error frame is a refusal"
                        );
                    }
                    _ => panic!("{err:?} for {body:?}"),
                }
                return;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let mut input = Input(rest);
    match which % 3 {
        0 => requests(&mut input),
        1 => received(&mut input),
        _ => handshake(&mut input),
    }
});
