//! Golden vectors: every file in `testdata/protocol/` decodes and re-encodes byte for byte,
//! every message kind has one, and every file under `invalid/` fails with its named error.
//!
//! `QNLLM_BLESS=1 cargo test -p qnllm-protocol --test golden` rewrites the valid vectors
//! from `samples()`; review the diff before committing it.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use qnllm_protocol::*;
use serde_json::json;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/protocol")
}

/// Parses the golden-file format: hex digits, whitespace ignored, `#` starts a comment line.
fn read_hex(path: &Path) -> (Vec<u8>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut comments = Vec::new();
    let mut digits = String::new();
    for line in text.lines() {
        match line.trim().strip_prefix('#') {
            Some(comment) => comments.push(comment.trim().to_string()),
            None => digits.extend(line.chars().filter(|c| !c.is_whitespace())),
        }
    }
    (
        hex::decode(&digits).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        comments,
    )
}

fn write_hex(path: &Path, comment: &str, bytes: &[u8]) {
    let mut text = format!("# {comment}\n");
    // The first line is exactly the header; the payload follows 24 bytes a line.
    for chunk in bytes.chunks(24) {
        text.push_str(&hex::encode(chunk));
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn digest(seed: u8) -> [u8; DIGEST_BYTES] {
    std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
}

fn result_body() -> ResultBody {
    ResultBody {
        label: 3,
        confidence: 0.625,
        total_spikes: 1_234,
        scores: vec![-5, 17, 0, 40],
        label_spikes: vec![0, 2, 0, 9],
        model_version: 2,
        model_digest: digest(1),
        result_digest: digest(2),
        compute_ns: 12_500,
        engine: "worker-1".into(),
    }
}

/// One canonical message per kind (two where a layout has an interesting corner).
fn samples() -> Vec<(&'static str, Message)> {
    let encoding = || Encoding(vec![0.5, -0.25, 1.0e-3, 0.0]);
    vec![
        (
            "hello",
            Message::Hello(Hello {
                protocol: 1,
                role: "worker".into(),
                name: "w1".into(),
                token: Some("s3cret".into()),
            }),
        ),
        (
            "hello-no-token",
            Message::Hello(Hello {
                protocol: 1,
                role: "client".into(),
                name: "app".into(),
                token: None,
            }),
        ),
        (
            "welcome",
            Message::Welcome(Welcome {
                session: 7,
                server: "qnllm/0.1.0".into(),
                max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
                heartbeat_interval_ms: 500,
            }),
        ),
        ("ping", Message::Ping),
        ("pong", Message::Pong),
        (
            "goodbye",
            Message::Goodbye(Goodbye {
                reason: "shutting down".into(),
            }),
        ),
        (
            "error",
            Message::Error(WireError::new(
                ErrorCode::InvalidInput,
                "encoding has 767 values, the model takes 768",
            )),
        ),
        (
            "register",
            Message::Register(Register {
                name: "w1".into(),
                model_digest: hex::encode(digest(1)),
                model_version: 0,
                input_size: 768,
                labels: 10,
                max_in_flight: 64,
                role: EngineRole::Engine,
            }),
        ),
        (
            "register-teacher",
            Message::Register(Register {
                name: "t1".into(),
                model_digest: hex::encode(digest(3)),
                model_version: 0,
                input_size: 64,
                labels: 10,
                max_in_flight: 8,
                role: EngineRole::Teacher,
            }),
        ),
        (
            "registered",
            Message::Registered(Registered {
                engine_id: 3,
                heartbeat_interval_ms: 500,
            }),
        ),
        (
            "heartbeat",
            Message::Heartbeat(Heartbeat {
                in_flight: 2,
                served: 1_000,
            }),
        ),
        ("drain", Message::Drain(Grace { grace_ms: 5_000 })),
        (
            "unregister",
            Message::Unregister(Goodbye {
                reason: "SIGTERM".into(),
            }),
        ),
        (
            "status",
            Message::Status(EngineStatus {
                state: "draining".into(),
                in_flight: 1,
                served: 99,
                model_version: 4,
            }),
        ),
        ("reason", Message::Reason(encoding())),
        ("reason-empty", Message::Reason(Encoding(vec![]))),
        ("result", Message::Result(result_body())),
        (
            "batch",
            Message::Batch(Batch::new(2, vec![0.5, -0.25, 1.0, 2.0, 0.0, -1.0]).unwrap()),
        ),
        (
            "batch_result",
            Message::BatchResult(BatchResult {
                results: vec![
                    result_body(),
                    ResultBody {
                        engine: String::new(),
                        ..result_body()
                    },
                ],
            }),
        ),
        ("cancel", Message::Cancel),
        (
            "coordinate",
            Message::Coordinate(Coordinate {
                teachers: 3,
                learn: true,
                encoding: encoding(),
            }),
        ),
        (
            "coordination_result",
            Message::CoordinationResult(CoordinationResult {
                consensus: 4,
                agreement: 0.75,
                learned: true,
                teachers: vec![
                    TeacherVote {
                        engine: "t1".into(),
                        label: 4,
                        confidence: 0.5,
                        reliability: 1.0,
                    },
                    TeacherVote {
                        engine: "t2".into(),
                        label: 1,
                        confidence: 0.25,
                        reliability: 0.5,
                    },
                ],
            }),
        ),
        (
            "learn",
            Message::Learn(Learn {
                label: 4,
                base_version: 12,
                encoding: encoding(),
            }),
        ),
        (
            "learned",
            Message::Learned(Learned {
                model_version: 13,
                model_digest: digest(3),
            }),
        ),
        ("model_query", Message::ModelQuery),
        (
            "model_info",
            Message::ModelInfo(ModelInfo {
                name: "seed:1".into(),
                input_size: 768,
                hidden: 512,
                steps: 16,
                labels: 10,
                model_version: 0,
                model_digest: hex::encode(digest(1)),
            }),
        ),
        ("cache_query", Message::CacheQuery),
        (
            "cache_stats",
            Message::CacheStats(CacheStats {
                entries: 10,
                capacity: 1_000,
                hits: 90,
                misses: 10,
                evictions: 0,
            }),
        ),
        ("cache_clear", Message::CacheClear),
        ("metrics_query", Message::MetricsQuery),
        (
            "metrics",
            Message::Metrics(json!({"requests": 100, "errors": 1, "p50_us": 42.5})),
        ),
        (
            "subscribe",
            Message::Subscribe(Subscribe {
                topics: vec!["engines".into(), "metrics".into()],
            }),
        ),
        (
            "event",
            Message::Event(Event {
                topic: "engines".into(),
                data: json!({"joined": "w1"}),
            }),
        ),
        (
            "config",
            Message::Config(json!({"strategy": "round-robin"})),
        ),
        ("shutdown", Message::Shutdown(Grace { grace_ms: 10_000 })),
        (
            "call",
            Message::Call(Call {
                handler: "echo".into(),
                payload: b"\x00binary\xffsafe".to_vec(),
            }),
        ),
        ("reply", Message::Reply(b"\x00binary\xffsafe".to_vec())),
        (
            "broadcast",
            Message::Broadcast(Topic {
                topic: "model-sync".into(),
                payload: vec![1, 2, 3],
            }),
        ),
    ]
}

fn file_name(message: &Message, label: &str) -> String {
    format!("{:02x}-{label}.hex", message.kind() as u8)
}

fn encode(message: &Message) -> BytesMut {
    let mut out = BytesMut::new();
    encode_frame(
        message,
        0x1122_3344_5566_7788,
        Deadline::from_micros(250_000),
        &mut out,
    );
    out
}

#[test]
fn samples_match_the_committed_vectors() {
    let bless = std::env::var_os("QNLLM_BLESS").is_some();
    for (label, message) in samples() {
        let path = dir().join(file_name(&message, label));
        let bytes = encode(&message);
        if bless {
            let kind = message.kind();
            let comment = format!(
                "{kind}, {}: request id 0x1122334455667788, deadline 250 ms",
                kind.direction().as_str()
            );
            write_hex(&path, &comment, &bytes);
        }
        let (golden, _) = read_hex(&path);
        assert_eq!(
            hex::encode(&bytes),
            hex::encode(&golden),
            "{} differs from its sample",
            path.display()
        );
    }
}

#[test]
fn every_vector_decodes_and_re_encodes_byte_for_byte() {
    let mut files = 0;
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "hex") {
            continue;
        }
        files += 1;
        let (bytes, _) = read_hex(&path);
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "{}: bytes after the frame", path.display());
        let message = frame
            .message()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name.starts_with(&format!("{:02x}-{}", frame.kind as u8, frame.kind.name())),
            "{name} holds a {}",
            frame.kind
        );
        let mut again = BytesMut::new();
        encode_frame(
            &message,
            frame.header.request_id,
            frame.header.deadline,
            &mut again,
        );
        assert_eq!(
            hex::encode(&again),
            hex::encode(&bytes),
            "{name} does not re-encode byte for byte"
        );
    }
    assert!(files >= MessageKind::ALL.len());
}

#[test]
fn every_kind_has_a_vector() {
    let names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for &kind in MessageKind::ALL {
        let prefix = format!("{:02x}-{}", kind as u8, kind.name());
        assert!(
            names.iter().any(|n| n.starts_with(&prefix)),
            "no golden vector for {kind}"
        );
    }
}

#[test]
fn invalid_vectors_fail_with_the_error_they_name() {
    let mut files = 0;
    for entry in std::fs::read_dir(dir().join("invalid")).unwrap() {
        let path = entry.unwrap().path();
        files += 1;
        let (bytes, comments) = read_hex(&path);
        let expect = comments
            .iter()
            .find_map(|c| c.strip_prefix("expect:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{}: no '# expect:' line", path.display()));
        let mut buf = BytesMut::from(&bytes[..]);
        let outcome = FrameDecoder::new(1 << 20)
            .decode(&mut buf)
            .and_then(|frame| match frame {
                Some(frame) => frame.message().map(|_| ()),
                None => Ok(()),
            });
        let err = outcome.expect_err(&format!("{} decoded", path.display()));
        let variant = format!("{err:?}");
        assert!(
            variant.starts_with(expect),
            "{}: expected {expect}, got {variant}",
            path.display()
        );
    }
    assert!(files >= 6);
}

#[test]
fn the_spec_names_every_kind_and_error_code() {
    let spec = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.md"),
    )
    .unwrap();
    for &kind in MessageKind::ALL {
        assert!(
            spec.contains(&format!("`{}`", kind.name())),
            "docs/protocol.md does not describe {kind}"
        );
        assert!(
            spec.contains(&format!("0x{:02x}", kind as u8)),
            "docs/protocol.md does not give the id of {kind}"
        );
    }
    for &code in ErrorCode::ALL {
        assert!(
            spec.contains(&format!("{code:?}")),
            "docs/protocol.md does not list error code {code:?}"
        );
    }
}

#[test]
fn a_register_without_a_role_is_an_engine_and_an_unknown_role_is_malformed() {
    let old = br#"{"name":"w","model_digest":"00","model_version":0,"input_size":4,"labels":2,"max_in_flight":1}"#;
    let Message::Register(register) = Message::decode(MessageKind::Register, old).unwrap() else {
        panic!("not a register");
    };
    assert_eq!(register.role, EngineRole::Engine);
    let teacher = br#"{"name":"w","model_digest":"00","model_version":0,"input_size":4,"labels":2,"max_in_flight":1,"role":"teacher"}"#;
    let Message::Register(register) = Message::decode(MessageKind::Register, teacher).unwrap()
    else {
        panic!("not a register");
    };
    assert_eq!(register.role, EngineRole::Teacher);
    let martian = br#"{"name":"w","model_digest":"00","model_version":0,"input_size":4,"labels":2,"max_in_flight":1,"role":"martian"}"#;
    let err = Message::decode(MessageKind::Register, martian).unwrap_err();
    assert_eq!(err.code(), ErrorCode::MalformedBody);
    assert!(err.to_string().contains("teacher"), "{err}");
}
