//! `learn` and `coordinate` from a client through a real hub: bad requests get the error
//! code that says the request was bad, and the hub keeps teaching everyone else.

#![allow(clippy::unwrap_used)]

mod common;

use common::{config, engine, start, tcp, WAIT};
use qnllm_engine::NormalInputs;
use qnllm_hub::{Client, ClientError};
use qnllm_protocol::{ErrorCode, Learn, Message};

fn learn(label: u32, base_version: u64, encoding: Vec<f32>) -> Message {
    Message::Learn(Learn {
        label,
        base_version,
        encoding: encoding.into(),
    })
}

fn code(result: Result<Message, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Remote { code, message }) => (code, message),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learn_with_nan_or_a_bad_label_is_invalid_input_and_the_hub_keeps_learning() {
    let (running, stop) = start(config()).await;
    running.hub().add_local(engine("local-0"));
    let client = Client::connect(&tcp(&running), "test", None).await.unwrap();
    let mut nan = NormalInputs::new(7, 768).next().unwrap();
    nan[5] = f32::NAN;
    let (c, message) = code(client.request(&learn(1, 0, nan), WAIT).await);
    assert_eq!(c, ErrorCode::InvalidInput, "{message}");
    assert!(message.contains("index 5"), "{message}");
    let x = NormalInputs::new(8, 768).next().unwrap();
    let (c, message) = code(client.request(&learn(10, 0, x.clone()), WAIT).await);
    assert_eq!(c, ErrorCode::InvalidInput, "{message}");
    assert!(message.contains("label 10"), "{message}");
    let (c, message) = code(client.request(&learn(1, 0, vec![0.5; 3]), WAIT).await);
    assert_eq!(c, ErrorCode::InvalidInput, "{message}");
    // Nothing was applied: the next good update is still for version 0.
    match client.request(&learn(1, 0, x), WAIT).await.unwrap() {
        Message::Learned(l) => assert_eq!(l.model_version, 1),
        other => panic!("{other:?}"),
    }
    stop.cancel();
    running.wait().await;
}
