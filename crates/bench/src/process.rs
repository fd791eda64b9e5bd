//! The server processes a run starts (baselines, hubs, workers) and what `/proc` says
//! about them: resident memory and CPU time.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use qnllm_hub::{Client, Endpoint};

use crate::report::Memory;
use crate::run::BenchError;

/// Kills a server process when dropped.
pub(crate) struct Server(pub(crate) Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `exe` with `args` and reads the first `lines` lines it prints (its addresses).
pub(crate) fn start(
    exe: &PathBuf,
    what: &'static str,
    args: &[&str],
    lines: usize,
) -> Result<(Server, Vec<String>), BenchError> {
    let mut child = Command::new(exe)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Start {
            what,
            reason: e.to_string(),
        })?;
    let stdout = child.stdout.take().ok_or_else(|| BenchError::Start {
        what,
        reason: "no stdout".into(),
    })?;
    let server = Server(child);
    let mut out = Vec::new();
    for line in BufReader::new(stdout).lines().take(lines) {
        out.push(line.map_err(|e| BenchError::Start {
            what,
            reason: e.to_string(),
        })?);
    }
    if out.len() < lines {
        return Err(BenchError::Start {
            what,
            reason: "it exited before listening".into(),
        });
    }
    Ok((server, out))
}

/// Starts `qnllm worker --connect hub` with `args`; stopped when the handle drops.
pub(crate) fn worker(exe: &PathBuf, hub: &str, args: &[&str]) -> Result<Server, BenchError> {
    let child = Command::new(exe)
        .args(["worker", "--connect", hub])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Start {
            what: "worker",
            reason: e.to_string(),
        })?;
    Ok(Server(child))
}

/// Starts a hub with `args` after `serve`; its TCP address and Unix path, as it printed.
pub(crate) fn hub(
    exe: &PathBuf,
    what: &'static str,
    args: &[&str],
) -> Result<(Server, Endpoint), BenchError> {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let (server, lines) = start(exe, what, &all, 1)?;
    let line = &lines[0];
    let endpoint = if let Some(addr) = line.strip_prefix("qnllm hub listening on tcp ") {
        Endpoint::Tcp(addr.to_string())
    } else if let Some(path) = line.strip_prefix("qnllm hub listening on unix ") {
        Endpoint::Unix(PathBuf::from(path))
    } else {
        return Err(BenchError::Start {
            what,
            reason: format!("unexpected first line {line:?}"),
        });
    };
    Ok((server, endpoint))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time a process has used, user and system (Linux: `/proc/PID/stat`, in the kernel's
/// fixed 100 ticks per second).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// CPU time used by all of `pids` together.
pub(crate) fn cpu_of(pids: &[u32]) -> Option<Duration> {
    pids.iter().map(|&pid| cpu_time(pid)).sum()
}

/// Opens `n` idle client connections to a fresh hub and reads its RSS before and after.
pub(crate) async fn hub_memory(exe: &PathBuf, n: usize) -> Result<Option<Memory>, BenchError> {
    let (hub, lines) = start(
        exe,
        "hub",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-connections",
            &(n + 16).to_string(),
        ],
        1,
    )?;
    let addr = lines[0]
        .trim_start_matches("qnllm hub listening on tcp ")
        .to_string();
    let pid = hub.0.id();
    // One connection first, so the runtime's threads and buffers exist before "idle".
    let warm = Client::connect(&Endpoint::Tcp(addr.clone()), "warm", None)
        .await
        .map_err(|e| BenchError::Measure(e.to_string()))?;
    let Some(idle_kib) = rss_kib(pid) else {
        return Ok(None);
    };
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        open.push(
            Client::connect(&Endpoint::Tcp(addr.clone()), "idle", None)
                .await
                .map_err(|e| BenchError::Measure(e.to_string()))?,
        );
    }
    // Every connection has been welcomed, so the hub holds its session state.
    let Some(loaded_kib) = rss_kib(pid) else {
        return Ok(None);
    };
    drop((warm, open));
    let per_connection_bytes = loaded_kib.saturating_sub(idle_kib) * 1024 / n.max(1) as u64;
    Ok(Some(Memory {
        idle_kib,
        connections: n,
        loaded_kib,
        per_connection_bytes,
    }))
}
