//! A worker registered as a teacher (`qnllm worker --teacher`) on a real hub: the hub's
//! coordinator asks it in every `coordinate` and the local student learns its labels, while
//! `reason` is never routed to it; when it leaves, coordination has no teacher left.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use common::proc::{Proc, WAIT};
use qnllm_hub::{Client, ClientError, Endpoint};
use qnllm_protocol::{Coordinate, ErrorCode, Message};
use serde_json::Value;

/// The hub's address, from the line `qnllm serve` prints once it listens.
fn listening(lines: &std::sync::mpsc::Receiver<String>) -> String {
    loop {
        let line = lines.recv_timeout(WAIT).unwrap();
        if let Some(addr) = line.strip_prefix("qnllm hub listening on tcp ") {
            return addr.trim().to_string();
        }
    }
}

fn engines(metrics: &Value) -> Vec<Value> {
    metrics["engines"].as_array().unwrap().clone()
}

fn engine<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|e| e["name"] == name)
}

/// Waits on the hub's `engines` events until `done` holds for its engine list.
async fn wait_for(client: &Client, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut events = client.subscribe(&["engines"], WAIT).await.unwrap();
    loop {
        let list = engines(&client.metrics(WAIT).await.unwrap());
        if done(&list) {
            return list;
        }
        tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap_or_else(|_| panic!("engines never as expected: {list:?}"))
            .unwrap();
    }
}

fn encoding(i: usize) -> Vec<f32> {
    // 768 values (the default model's inputs), a different pattern per step.
    (0..768)
        .map(|j| ((j * 7 + i * 13) % 17) as f32 / 17.0)
        .collect()
}

async fn coordinate(client: &Client, i: usize) -> Result<Message, ClientError> {
    let message = Message::Coordinate(Coordinate {
        teachers: 0,
        learn: true,
        encoding: encoding(i).into(),
    });
    client.request(&message, WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teacher_worker_is_asked_by_coordinate_and_never_routed_a_reason() {
    let (_hub, lines) = Proc::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--local",
        "1",
        "--model",
        "seed:1",
    ]);
    let addr = listening(&lines);
    let client = Client::connect(&Endpoint::parse(&addr), "test", None)
        .await
        .unwrap();

    // Without a teacher there is nothing to coordinate.
    let none = coordinate(&client, 0).await.unwrap_err();
    assert!(
        matches!(
            &none,
            ClientError::Remote {
                code: ErrorCode::NoEngineAvailable,
                ..
            }
        ),
        "{none:?}"
    );

    let (mut teacher, _) = Proc::spawn(&[
        "worker",
        "--teacher",
        "--connect",
        &addr,
        "--name",
        "t1",
        "--model",
        "seed:7",
    ]);
    let list = wait_for(&client, |l| engine(l, "t1").is_some()).await;
    assert_eq!(engine(&list, "t1").unwrap()["pool"], "teacher", "{list:?}");
    let student = list
        .iter()
        .find(|e| e["pool"] == "serving")
        .unwrap_or_else(|| panic!("no serving engine: {list:?}"))["name"]
        .clone();

    // `reason` goes to the student only: the teacher answers none of them.
    for i in 0..40 {
        client.reason(&encoding(i), WAIT).await.unwrap();
    }
    let list = engines(&client.metrics(WAIT).await.unwrap());
    assert_eq!(engine(&list, "t1").unwrap()["served"], 0, "{list:?}");
    assert_eq!(
        list.iter().filter(|e| e["pool"] == "serving").count(),
        1,
        "the teacher is not in the rotation: {list:?}"
    );

    // `coordinate` asks it, and the student learns its labels.
    let steps = 30;
    let mut learned = 0u64;
    for i in 0..steps {
        let Message::CoordinationResult(result) = coordinate(&client, i).await.unwrap() else {
            panic!("not a coordination result");
        };
        assert_eq!(result.teachers.len(), 1, "{result:?}");
        assert_eq!(result.teachers[0].engine, "t1");
        assert_eq!(result.consensus, result.teachers[0].label);
        learned += u64::from(result.learned);
    }
    assert!(learned > 0, "the student learned nothing from the teacher");
    let list = engines(&client.metrics(WAIT).await.unwrap());
    let t1 = engine(&list, "t1").unwrap();
    assert_eq!(
        t1["served"], steps as u64,
        "one answer per coordinate: {list:?}"
    );
    assert_eq!(t1["model_version"], 0, "a teacher does not learn: {list:?}");
    let student = engine(&list, student.as_str().unwrap()).unwrap();
    assert_eq!(student["model_version"], learned, "{list:?}");

    // The teacher leaves: it is no longer asked.
    teacher.signal("KILL");
    assert_eq!(teacher.exit_code(), None, "killed by a signal");
    wait_for(&client, |l| engine(l, "t1").is_none()).await;
    let gone = coordinate(&client, 0).await.unwrap_err();
    assert!(
        matches!(
            &gone,
            ClientError::Remote {
                code: ErrorCode::NoEngineAvailable,
                ..
            }
        ),
        "{gone:?}"
    );
    // And the hub still serves.
    client.reason(&encoding(1), WAIT).await.unwrap();
}
