//! `cargo bench -p qnllm-protocol`: the cost of framing a reason request (768 values) and of
//! decoding it, next to a plain copy of the same bytes measured in the same run, which is
//! the least any framing can cost. A conversion one value at a time is shown for reference.
//!
//! `QNLLM_BENCH_MS` sets the time spent on each figure (default 500).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use qnllm_protocol::{encode_reason_frame, Deadline, FrameDecoder, Message};

/// Median time of one call of `f`, run repeatedly for `budget` in batches of 100.
fn median(budget: Duration, mut f: impl FnMut()) -> Duration {
    for _ in 0..1_000 {
        f();
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || times.len() < 20 {
        let t = Instant::now();
        for _ in 0..100 {
            f();
        }
        times.push(t.elapsed() / 100);
    }
    times.sort_unstable();
    times[times.len() / 2]
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("QNLLM_BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500),
    );
    let values: Vec<f32> = (0..768).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut frame = BytesMut::new();
    encode_reason_frame(&values, 1, Deadline::NONE, &mut frame);
    let bytes = frame.to_vec();

    let mut out = BytesMut::with_capacity(8 * 1024);
    let copy = median(budget, || {
        out.clear();
        out.extend_from_slice(black_box(&bytes));
        black_box(&out);
    });
    let encode = median(budget, || {
        out.clear();
        encode_reason_frame(black_box(&values), 1, Deadline::NONE, &mut out);
        black_box(&out);
    });
    let per_value = median(budget, || {
        out.clear();
        out.extend_from_slice(&bytes[..24]);
        for v in black_box(&values) {
            out.put_f32_le(*v);
        }
        black_box(&out);
    });
    let mut decoder = FrameDecoder::default();
    let decode = median(budget, || {
        let mut buf = BytesMut::from(black_box(&bytes[..]));
        let frame = decoder.decode(&mut buf).ok().flatten();
        match frame.map(|f| f.message()) {
            Some(Ok(Message::Reason(encoding))) => {
                black_box(encoding);
            }
            _ => panic!("the frame did not decode"),
        }
    });
    let copy_in = median(budget, || {
        let buf = BytesMut::from(black_box(&bytes[..]));
        black_box(buf);
    });
    let ns = |d: Duration| d.as_nanos() as f64;
    println!("reason frame: {} bytes (768 values)", bytes.len());
    println!("copy the frame's bytes (floor):       {:>8.0} ns", ns(copy));
    println!(
        "encode_reason_frame:                  {:>8.0} ns  = {:.2} × floor",
        ns(encode),
        ns(encode) / ns(copy)
    );
    println!(
        "encode a value at a time (reference): {:>8.0} ns  = {:.2} × floor",
        ns(per_value),
        ns(per_value) / ns(copy)
    );
    println!(
        "copy into a fresh buffer (floor):     {:>8.0} ns",
        ns(copy_in)
    );
    println!(
        "decode frame and message:             {:>8.0} ns  = {:.2} × floor",
        ns(decode),
        ns(decode) / ns(copy_in)
    );
}
