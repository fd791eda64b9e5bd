//! A real worker (`qnllm_hub::worker::run`) against a scripted hub on 127.0.0.1:0: a request
//! queued behind slow work is answered `DeadlineExceeded` at its deadline, not when its turn
//! comes.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::scripted::ScriptedHub;
use qnllm_engine::{Params, SpikingEngine};
use qnllm_hub::Endpoint;
use qnllm_protocol::{encode_frame, Deadline, ErrorCode, Message};
use qnllm_router::LocalBackend;

/// An engine with four inputs (small frames: a burst arrives in one read), the largest
/// hidden layer its 16 steps allow, and many labels: each reason takes a while.
fn slow_engine() -> LocalBackend {
    let params = Params {
        inputs: 4,
        hidden: 4096,
        steps: 16,
        labels: 1000,
        ..Params::default()
    };
    LocalBackend::new("slow", SpikingEngine::from_seed(1, params).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_behind_slow_work_is_answered_at_its_deadline_not_at_its_turn() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = Endpoint::Tcp(listener.local_addr().unwrap().to_string());
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let mut config = qnllm_hub::WorkerConfig::new(endpoint);
    config.name = "slow".into();
    tokio::spawn(qnllm_hub::worker::run(config, slow_engine(), stop.clone()));

    let mut hub = ScriptedHub::accept(&listener).await;

    // In one write: slow reasons without a deadline, then one that may wait 2 ms. The
    // worker reads them together and serves them as one group, in order, on the task that
    // read them; their replies leave together when the group is done.
    const AHEAD: u64 = 12;
    const URGENT: u64 = 1_000;
    let reason = Message::Reason(vec![0.5f32; 4].into());
    let mut wire = BytesMut::new();
    for id in 1..=AHEAD {
        encode_frame(&reason, id, Deadline::NONE, &mut wire);
    }
    let budget = Duration::from_millis(2);
    encode_frame(&reason, URGENT, Deadline::from_remaining(budget), &mut wire);
    hub.send_bytes(&wire).await;

    // The urgent request's DeadlineExceeded comes at its deadline, before the results of
    // the work ahead of it; at its turn it would come after all of them.
    let mut results_before = 0;
    loop {
        match hub.reply().await {
            (URGENT, Message::Error(e)) => {
                assert_eq!(e.code, ErrorCode::DeadlineExceeded, "{}", e.message);
                break;
            }
            (id, Message::Result(_)) if (1..=AHEAD).contains(&id) => results_before += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        results_before, 0,
        "the DeadlineExceeded came after {results_before} of the {AHEAD} results ahead of it"
    );
    // The work ahead is still computed and answered, and the urgent request is not
    // answered a second time at its turn.
    let mut results = 0;
    while results < AHEAD {
        match hub.reply().await {
            (id, Message::Result(_)) if (1..=AHEAD).contains(&id) => results += 1,
            other => panic!("{other:?}"),
        }
    }
    hub.send(&Message::Ping).await;
    assert!(matches!(hub.reply().await, (0, Message::Pong)));
}
