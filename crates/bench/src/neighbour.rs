//! The abusive-neighbour figure: a quiet client's round trips through a hub alone, then
//! beside a client that floods the same hub with pipelined requests and never reads one
//! reply; the second row's p99 ratio is over the first's.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use qnllm_engine::NormalInputs;
use qnllm_hub::{Client, Endpoint};
use qnllm_protocol::{encode_frame, Deadline, Hello, Message};

use crate::error::BenchError;
use crate::process::{hub, worker, HubSpec};
use crate::report::{distribution, row, Base, Group, Row};
use crate::run::wait_for_engine;
use crate::stats::Latency;

/// Most requests the flood writes; the hub stops reading long before, at its budget.
const FLOOD: u64 = 150_000;

/// The two rows: quiet alone, quiet beside the flood (ratio to alone).
pub(crate) async fn rows(exe: &Path, n: usize) -> Result<Vec<Row>, BenchError> {
    let measure = |e: String| BenchError::measure("abusive neighbour", e);
    let (_hub, endpoint, _) = hub(exe, "hub for the abusive neighbour", HubSpec::default())?;
    let Endpoint::Tcp(addr) = &endpoint else {
        return Err(measure("the hub did not listen on TCP".into()));
    };
    let _worker = worker(exe, &endpoint, true, 0)?;
    let quiet = Client::connect(&endpoint, "quiet", None)
        .await
        .map_err(|e| measure(e.to_string()))?;
    wait_for_engine(&quiet).await?;
    let inputs: Vec<Vec<f32>> = NormalInputs::new(3, 768).take(64).collect();
    let round_trips = |count: usize| {
        let (quiet, inputs) = (&quiet, &inputs);
        async move {
            let mut samples = Vec::with_capacity(count);
            for i in 0..count {
                let t = Instant::now();
                quiet
                    .reason(&inputs[i % inputs.len()], Duration::from_secs(10))
                    .await
                    .map_err(|e| measure(format!("the quiet client: {e}")))?;
                samples.push(t.elapsed());
            }
            Ok::<_, BenchError>(samples)
        }
    };
    round_trips(1).await?;
    let alone = round_trips(n).await?;

    let mut abuser =
        std::net::TcpStream::connect(addr.as_str()).map_err(|e| measure(e.to_string()))?;
    let hello = Message::Hello(Hello {
        protocol: qnllm_protocol::PROTOCOL_VERSION,
        role: "client".into(),
        name: "abuser".into(),
        token: None,
    });
    let mut first = BytesMut::new();
    encode_frame(&hello, 0, Deadline::NONE, &mut first);
    abuser
        .write_all(&first)
        .map_err(|e| measure(e.to_string()))?;
    let mut writing = abuser.try_clone().map_err(|e| measure(e.to_string()))?;
    let flood = std::thread::spawn(move || {
        let mut burst = BytesMut::new();
        let reason = Message::Reason(vec![0.25; 768].into());
        let mut id = 1;
        while id <= FLOOD {
            burst.clear();
            for _ in 0..100 {
                encode_frame(&reason, id, Deadline::NONE, &mut burst);
                id += 1;
            }
            if writing.write_all(&burst).is_err() {
                return; // the bench shut the socket
            }
        }
    });
    let beside = round_trips(n).await;
    let _ = abuser.shutdown(std::net::Shutdown::Both);
    let _ = flood.join();
    let beside = beside?;
    let alone_base = Base {
        name: "abusive neighbour: quiet client alone".into(),
        latency: Latency::of(alone.clone()),
        throughput: None,
    };
    Ok(vec![
        row(
            &alone_base.name,
            Group::Other,
            Some(alone_base.latency),
            None,
            None,
            None,
            distribution(&alone),
        ),
        row(
            "abusive neighbour: quiet client beside a flood",
            Group::Other,
            Some(Latency::of(beside.clone())),
            None,
            Some(&alone_base),
            None,
            distribution(&beside),
        ),
    ])
}
