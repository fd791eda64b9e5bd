//! A real hub process under abuse and at shutdown, with real worker processes and raw
//! sockets on 127.0.0.1:0: a client that floods and never reads (the hub's own RSS, read
//! from /proc), SIGTERM of the hub under load (every request gets one answer), SIGTERM of
//! a worker under load (it drains; nothing fails over).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::BytesMut;
use qnllm_engine::NormalInputs;
use qnllm_protocol::{encode_frame, Deadline, ErrorCode, FrameDecoder, Hello, Message};

mod common;

use common::hub::{client, runtime, wait_for_engines, TempFile};
use common::proc::Proc;

const WAIT: Duration = Duration::from_secs(60);

/// Starts `qnllm serve` with `settings` (TOML) and returns it with its TCP address.
fn hub(settings: &str) -> (Proc, String, TempFile) {
    let file = TempFile::new("hub.toml", settings);
    let path = file.0.display().to_string();
    let (proc, addr) = common::hub::hub(&["--config", &path]);
    (proc, addr, file)
}

fn worker(addr: &str, name: &str) -> Proc {
    common::hub::worker(addr, name, &[])
}

fn frame(message: &Message, id: u64) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(message, id, Deadline::NONE, &mut out);
    out.to_vec()
}

/// A raw TCP client that has said hello and read its welcome.
fn raw_client(addr: &str, name: &str) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let hello = Message::Hello(Hello {
        protocol: 1,
        role: "client".into(),
        name: name.into(),
        token: None,
    });
    stream.write_all(&frame(&hello, 0)).unwrap();
    let mut decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(frame) = decoder.decode(&mut buf).unwrap() {
            assert!(matches!(frame.message().unwrap(), Message::Welcome(_)));
            return stream;
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before welcome");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The open connection named `name` in a metrics snapshot.
fn connection<'a>(metrics: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    metrics["connections"]["list"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

#[test]
fn a_client_that_floods_and_never_reads_cannot_grow_the_hub_and_others_are_served() {
    const FLOOD: u64 = 150_000;
    let (hub, addr, _config) = hub("");
    let _w = worker(&addr, "w");
    let rt = runtime();
    let quiet = rt.block_on(async {
        let quiet = client(&addr, "quiet").await;
        wait_for_engines(&quiet, &["w"]).await;
        quiet.reason(&[0.1; 768], WAIT).await.unwrap();
        quiet
    });
    let before = hub.rss_kib();

    // The abuser pipelines 150 000 reasons (about 460 MB) and never reads a reply.
    let abuser = raw_client(&addr, "abuser");
    let mut writing = abuser.try_clone().unwrap();
    let mut events = rt
        .block_on(quiet.subscribe(&["connections"], WAIT))
        .unwrap();
    let (flood_done, mut flood_finished) = tokio::sync::oneshot::channel();
    let flood = std::thread::spawn(move || {
        let reason = frame(&Message::Reason(vec![0.25; 768].into()), 0);
        let mut burst = Vec::with_capacity(reason.len() * 100);
        let mut sent = 0u64;
        while sent < FLOOD {
            burst.clear();
            for id in sent + 1..=(sent + 100).min(FLOOD) {
                let mut f = reason.clone();
                f[8..16].copy_from_slice(&id.to_le_bytes());
                burst.extend_from_slice(&f);
            }
            if writing.write_all(&burst).is_err() {
                break; // the test shut the socket: the hub had stopped reading it
            }
            sent = (sent + 100).min(FLOOD);
        }
        let _ = flood_done.send(());
        sent
    });
    // Either the hub reads everything (and holds it all), or it stops reading the abuser
    // at its budget and says so (a `connections` event): wait for whichever comes first.
    let in_flight = rt.block_on(async {
        loop {
            tokio::select! {
                event = events.recv() => {
                    let event = event.unwrap();
                    if event.data["paused"] == "abuser" {
                        break;
                    }
                }
                _ = &mut flood_finished => break,
            }
        }
        let metrics = quiet.metrics(WAIT).await.unwrap();
        connection(&metrics, "abuser").map_or(0, |c| c["in_flight"].as_u64().unwrap_or(0))
    });
    eprintln!(
        "hub RSS {} KiB once the flood was read or paused ({in_flight} in flight)",
        hub.rss_kib()
    );
    // Other clients are served while the abuser is held at its budget.
    rt.block_on(async {
        for x in NormalInputs::new(7, 768).take(200) {
            quiet.reason(&x, WAIT).await.unwrap();
        }
    });
    let during = hub.rss_kib();
    let grown_mib = during.saturating_sub(before) as f64 / 1024.0;
    eprintln!(
        "hub RSS {before} KiB before the flood, {during} KiB during it (+{grown_mib:.1} MiB); \
         abuser in flight {in_flight}"
    );
    assert!(
        grown_mib < 32.0,
        "the flood grew the hub by {grown_mib:.1} MiB ({in_flight} requests in flight)"
    );
    assert!(in_flight <= 512, "{in_flight} requests in flight");
    abuser.shutdown(std::net::Shutdown::Both).unwrap();
    let sent = flood.join().unwrap();
    assert!(sent < FLOOD, "the hub read all {sent} requests");
    // Closing with unread replies resets the connection: the hub's writes fail, its
    // requests end and the session closes.
    drop(abuser);
    // After the abuser leaves, its memory is freed; whether the allocator returns it to
    // the OS is reported (docs/hub.md), not asserted.
    rt.block_on(async {
        loop {
            let event = tokio::time::timeout(WAIT, events.recv())
                .await
                .unwrap()
                .unwrap();
            if event.data["closed"] == "abuser" {
                break;
            }
        }
    });
    eprintln!("hub RSS {} KiB after the abuser left", hub.rss_kib());
}

/// What one raw client saw, by request id.
#[derive(Default)]
struct Seen {
    replies: HashMap<u64, Vec<Result<(), ErrorCode>>>,
    goodbye: bool,
}

#[test]
fn sigterm_of_a_loaded_hub_answers_every_request_it_read() {
    let (mut hub, addr, _config) = hub("grace_ms = 5000\n");
    let _w = worker(&addr, "w");
    runtime().block_on(async { wait_for_engines(&client(&addr, "probe").await, &["w"]).await });

    let stream = raw_client(&addr, "loaded");
    let goodbye = Arc::new(AtomicBool::new(false));
    let mut reading = stream.try_clone().unwrap();
    let (credit, credits) = mpsc::channel::<()>();
    let (warm, warmed) = mpsc::channel::<()>();
    let goodbye_ = goodbye.clone();
    let reader = std::thread::spawn(move || {
        let mut seen = Seen::default();
        let mut decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut answered = 0u64;
        loop {
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                let id = frame.header.request_id;
                match frame.message().unwrap() {
                    Message::Goodbye(_) if id == 0 => {
                        seen.goodbye = true;
                        goodbye_.store(true, Ordering::SeqCst);
                    }
                    Message::Result(_) => seen.replies.entry(id).or_default().push(Ok(())),
                    Message::Error(e) => seen.replies.entry(id).or_default().push(Err(e.code)),
                    other => panic!("unexpected {other:?}"),
                }
                answered += 1;
                if answered == 2_000 {
                    let _ = warm.send(());
                }
                let _ = credit.send(());
            }
            match reading.read(&mut chunk) {
                Ok(0) | Err(_) => return seen,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    });
    // Pipeline, 64 in flight, until the hub says goodbye; then send nothing more and close
    // our side, as the protocol asks.
    let mut writing = stream.try_clone().unwrap();
    let goodbye_ = goodbye.clone();
    let writer = std::thread::spawn(move || {
        let mut sent = 0u64;
        let mut window = 64;
        let inputs: Vec<Vec<f32>> = NormalInputs::new(5, 768).take(64).collect();
        while !goodbye_.load(Ordering::SeqCst) {
            if window == 0 {
                if credits.recv().is_err() {
                    break; // the reader saw the connection close
                }
                window += 1;
                continue;
            }
            window -= 1;
            sent += 1;
            let x = inputs[(sent % 64) as usize].clone();
            if writing
                .write_all(&frame(&Message::Reason(x.into()), sent))
                .is_err()
            {
                break;
            }
        }
        let _ = writing.shutdown(std::net::Shutdown::Write);
        sent
    });
    warmed.recv_timeout(WAIT).unwrap();
    hub.signal("TERM");
    let sent = writer.join().unwrap();
    let seen = reader.join().unwrap();
    assert!(seen.goodbye, "no goodbye");
    let mut results = 0;
    let mut shutting_down = 0;
    for id in 1..=sent {
        match seen.replies.get(&id).map(Vec::as_slice) {
            Some([Ok(())]) => results += 1,
            Some([Err(ErrorCode::ShuttingDown)]) => shutting_down += 1,
            other => panic!("request {id} of {sent}: {other:?}"),
        }
    }
    eprintln!("{sent} sent: {results} results, {shutting_down} ShuttingDown, none silent");
    assert_eq!(seen.replies.len() as u64, sent, "replies to ids never sent");
    assert_eq!(hub.exit_code(), Some(0), "{}", hub.log());
}

#[test]
fn sigterm_of_a_loaded_worker_drains_it_with_nothing_failed_over() {
    let (_hub, addr, _config) = hub("");
    let mut leaving = worker(&addr, "leaving");
    let _staying = worker(&addr, "staying");
    let rt = runtime();
    rt.block_on(async {
        let probe = client(&addr, "probe").await;
        wait_for_engines(&probe, &["leaving", "staying"]).await;
        let load = Arc::new(client(&addr, "load").await);
        let stop = Arc::new(AtomicBool::new(false));
        let (count, mut done) = tokio::sync::watch::channel(0u64);
        let count = Arc::new(count);
        let tasks: Vec<_> = (0..32u64)
            .map(|t| {
                let (load, stop, count) = (load.clone(), stop.clone(), count.clone());
                tokio::spawn(async move {
                    let inputs: Vec<Vec<f32>> = NormalInputs::new(t, 768).take(16).collect();
                    let mut errors = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        if let Err(e) = load.reason(&inputs[i % 16], WAIT).await {
                            errors.push(e.to_string());
                        }
                        i += 1;
                        count.send_modify(|n| *n += 1);
                    }
                    errors
                })
            })
            .collect();
        done.wait_for(|n| *n >= 1_000).await.unwrap();
        leaving.signal("TERM");
        let code = tokio::task::block_in_place(|| leaving.exit_code());
        assert_eq!(code, Some(0), "{}", leaving.log());
        let after = *done.borrow();
        done.wait_for(|n| *n >= after + 500).await.unwrap();
        stop.store(true, Ordering::SeqCst);
        let mut errors = Vec::new();
        for task in tasks {
            errors.extend(task.await.unwrap());
        }
        assert!(
            errors.is_empty(),
            "{} errors: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        wait_for_engines(&probe, &["staying"]).await;
        let metrics = probe.metrics(WAIT).await.unwrap();
        assert_eq!(metrics["failed_over"], 0, "{metrics}");
    });
}
