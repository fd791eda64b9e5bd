//! Property tests: every message kind round-trips, and the decoder never panics on
//! arbitrary bytes or on any split of a valid stream.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use qnllm_protocol::*;

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9 é☃_-]{0,24}"
}

fn finite() -> impl Strategy<Value = f64> {
    -1.0e6..1.0e6f64
}

fn encoding() -> impl Strategy<Value = Encoding> {
    // Any bit pattern, NaNs included: the wire carries bits, the engine judges them.
    vec(any::<u32>().prop_map(f32::from_bits), 0..64).prop_map(Encoding)
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn result_body() -> impl Strategy<Value = ResultBody> {
    (
        (any::<u32>(), 0.0f32..=1.0, any::<u32>()),
        (0usize..16).prop_flat_map(|n| (vec(any::<i32>(), n), vec(any::<u32>(), n))),
        (
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            text(),
        ),
    )
        .prop_map(
            |(
                (label, confidence, total_spikes),
                (scores, label_spikes),
                (v, md, rd, ns, engine),
            )| ResultBody {
                label,
                confidence,
                total_spikes,
                scores,
                label_spikes,
                model_version: v,
                model_digest: md,
                result_digest: rd,
                compute_ns: ns,
                engine,
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u8>(), text(), text(), proptest::option::of(text())).prop_map(
            |(protocol, role, name, token)| Message::Hello(Hello {
                protocol,
                role,
                name,
                token
            })
        ),
        (any::<u64>(), text(), any::<u32>(), any::<u64>()).prop_map(
            |(session, server, max_frame_bytes, heartbeat_interval_ms)| {
                Message::Welcome(Welcome {
                    session,
                    server,
                    max_frame_bytes,
                    heartbeat_interval_ms,
                })
            }
        ),
        Just(Message::Ping),
        Just(Message::Pong),
        text().prop_map(|reason| Message::Goodbye(Goodbye { reason })),
        (any::<u16>(), text()).prop_map(|(code, message)| Message::Error(WireError::new(
            ErrorCode::from_u16(code),
            message
        ))),
        (
            text(),
            text(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>()
        )
            .prop_map(
                |(
                    name,
                    model_digest,
                    model_version,
                    input_size,
                    labels,
                    max_in_flight,
                    teacher,
                )| {
                    Message::Register(Register {
                        name,
                        model_digest,
                        model_version,
                        input_size,
                        labels,
                        max_in_flight,
                        role: if teacher {
                            EngineRole::Teacher
                        } else {
                            EngineRole::Engine
                        },
                    })
                }
            ),
        (any::<u64>(), any::<u64>()).prop_map(|(engine_id, heartbeat_interval_ms)| {
            Message::Registered(Registered {
                engine_id,
                heartbeat_interval_ms,
            })
        }),
        (any::<u32>(), any::<u64>())
            .prop_map(|(in_flight, served)| Message::Heartbeat(Heartbeat { in_flight, served })),
        any::<u64>().prop_map(|grace_ms| Message::Drain(Grace { grace_ms })),
        text().prop_map(|reason| Message::Unregister(Goodbye { reason })),
        (text(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
            |(state, in_flight, served, model_version)| {
                Message::Status(EngineStatus {
                    state,
                    in_flight,
                    served,
                    model_version,
                })
            }
        ),
        encoding().prop_map(Message::Reason),
        result_body().prop_map(Message::Result),
        (1u32..8, 0usize..8)
            .prop_flat_map(|(dim, count)| vec(any::<f32>(), dim as usize * count)
                .prop_map(move |v| Batch::new(dim, v).unwrap()))
            .prop_map(Message::Batch),
        vec(result_body(), 0..4).prop_map(|results| Message::BatchResult(BatchResult { results })),
        Just(Message::Cancel),
        (any::<u8>(), any::<bool>(), encoding()).prop_map(|(teachers, learn, encoding)| {
            Message::Coordinate(Coordinate {
                teachers,
                learn,
                encoding,
            })
        }),
        (
            any::<u32>(),
            finite(),
            any::<bool>(),
            vec((text(), any::<u32>(), finite(), finite()), 0..4)
        )
            .prop_map(|(consensus, agreement, learned, votes)| {
                let teachers = votes
                    .into_iter()
                    .map(|(engine, label, confidence, reliability)| TeacherVote {
                        engine,
                        label,
                        confidence,
                        reliability,
                    })
                    .collect();
                Message::CoordinationResult(CoordinationResult {
                    consensus,
                    agreement,
                    learned,
                    teachers,
                })
            }),
        (any::<u32>(), any::<u64>(), encoding()).prop_map(|(label, base_version, encoding)| {
            Message::Learn(Learn {
                label,
                base_version,
                encoding,
            })
        }),
        (any::<u64>(), any::<[u8; 32]>()).prop_map(|(model_version, model_digest)| {
            Message::Learned(Learned {
                model_version,
                model_digest,
            })
        }),
        Just(Message::ModelQuery),
        (
            text(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            text()
        )
            .prop_map(
                |(name, input_size, hidden, steps, labels, model_version, model_digest)| {
                    Message::ModelInfo(ModelInfo {
                        name,
                        input_size,
                        hidden,
                        steps,
                        labels,
                        model_version,
                        model_digest,
                    })
                }
            ),
        Just(Message::CacheQuery),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(entries, capacity, hits, misses, evictions)| {
                Message::CacheStats(CacheStats {
                    entries,
                    capacity,
                    hits,
                    misses,
                    evictions,
                })
            }),
        Just(Message::CacheClear),
        Just(Message::MetricsQuery),
        json_value().prop_map(Message::Metrics),
        vec(text(), 0..4).prop_map(|topics| Message::Subscribe(Subscribe { topics })),
        (text(), json_value()).prop_map(|(topic, data)| Message::Event(Event { topic, data })),
        json_value().prop_map(Message::Config),
        any::<u64>().prop_map(|grace_ms| Message::Shutdown(Grace { grace_ms })),
        (text(), vec(any::<u8>(), 0..64))
            .prop_map(|(handler, payload)| Message::Call(Call { handler, payload })),
        vec(any::<u8>(), 0..64).prop_map(Message::Reply),
        (text(), vec(any::<u8>(), 0..64))
            .prop_map(|(topic, payload)| Message::Broadcast(Topic { topic, payload })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn every_message_round_trips(message in message(), id in any::<u64>(), deadline in any::<u32>()) {
        let mut wire = BytesMut::new();
        encode_frame(&message, id, Deadline::from_micros(deadline), &mut wire);
        let copy = wire.clone();
        let frame = FrameDecoder::default().decode(&mut wire).unwrap().unwrap();
        prop_assert!(wire.is_empty());
        prop_assert_eq!(frame.kind, message.kind());
        prop_assert_eq!(frame.header.request_id, id);
        prop_assert_eq!(frame.header.deadline.as_micros(), deadline);
        let decoded = frame.message().unwrap();
        // Encoding compares bits and confidences are never NaN here, so `==` is exact.
        prop_assert_eq!(&decoded, &message);
        let mut again = BytesMut::new();
        encode_frame(&decoded, id, Deadline::from_micros(deadline), &mut again);
        prop_assert_eq!(again, copy);
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..512), max in 0u32..1024) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut decoder = FrameDecoder::new(max);
        while let Ok(Some(frame)) = decoder.decode(&mut buf) {
            let _ = frame.message();
        }
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bodies(kind in proptest::sample::select(MessageKind::ALL), body in vec(any::<u8>(), 0..256)) {
        let _ = Message::decode(kind, &body);
    }

    #[test]
    fn any_split_of_a_valid_stream_yields_the_same_frames(
        messages in vec(message(), 1..6),
        cuts in vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut wire = BytesMut::new();
        for (id, message) in messages.iter().enumerate() {
            encode_frame(message, id as u64, Deadline::NONE, &mut wire);
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut from = 0;
        for to in points {
            buf.extend_from_slice(&wire[from..to]);
            from = to;
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                decoded.push(frame.message().unwrap());
            }
        }
        prop_assert_eq!(decoded.len(), messages.len());
        for (a, b) in decoded.iter().zip(&messages) {
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn flipping_any_byte_of_a_valid_frame_never_panics(message in message(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut wire = BytesMut::new();
        encode_frame(&message, 1, Deadline::NONE, &mut wire);
        let i = at.index(wire.len());
        wire[i] ^= 1 << bit;
        let mut decoder = FrameDecoder::default();
        if let Ok(Some(frame)) = decoder.decode(&mut wire) {
            let _ = frame.message();
        }
    }
}
