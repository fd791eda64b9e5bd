//! A hub and its workers as `qnllm` child processes on 127.0.0.1:0, a client to it, and a
//! wait on its `engines` events: the set-up the integration tests share.

use qnllm_hub::{Client, Endpoint};

use super::proc::{Proc, WAIT};

/// Starts `qnllm serve` with `args` (on 127.0.0.1:0 unless they say `--listen`) and returns
/// it with its TCP address, read from its first stdout line.
pub(crate) fn hub(args: &[&str]) -> (Proc, String) {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    if !args.contains(&"--listen") {
        all.extend(["--listen", "127.0.0.1:0"]);
    }
    let (proc, lines) = Proc::spawn(&all);
    let line = lines
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("hub did not start:\n{}", proc.log()));
    let addr = line
        .strip_prefix("qnllm hub listening on tcp ")
        .unwrap_or_else(|| panic!("unexpected line {line}"))
        .to_string();
    (proc, addr)
}

/// Starts `qnllm worker` named `name` on the hub at `addr`, with `extra` arguments.
pub(crate) fn worker(addr: &str, name: &str, extra: &[&str]) -> Proc {
    let mut all = vec!["worker", "--connect", addr, "--name", name];
    all.extend_from_slice(extra);
    Proc::spawn(&all).0
}

/// A two-thread runtime for the test's own clients.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A client named `name` of the hub at `addr` (which is listening: [`hub`] read its line).
pub(crate) async fn client(addr: &str, name: &str) -> Client {
    Client::connect(&Endpoint::parse(addr), name, None)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
}

/// Waits on the hub's `engines` events until its engines are exactly `names` (sorted), and
/// returns its metrics then.
pub(crate) async fn wait_for_engines(client: &Client, names: &[&str]) -> serde_json::Value {
    let mut events = client.subscribe(&["engines"], WAIT).await.unwrap();
    loop {
        let metrics = client.metrics(WAIT).await.unwrap();
        let mut have: Vec<String> = metrics["engines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect();
        have.sort();
        if have == names {
            return metrics;
        }
        tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap_or_else(|_| panic!("engines {have:?}, expected {names:?}"))
            .unwrap();
    }
}

/// A file under the temp dir, removed on drop (a hub's `--config`).
pub(crate) struct TempFile(pub(crate) std::path::PathBuf);

impl TempFile {
    pub(crate) fn new(name: &str, text: &str) -> TempFile {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("qnllm-test-{}-{n}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
