//! The server processes a run starts (baselines, hubs, workers) and what `/proc` says
//! about them: resident memory and CPU time.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use qnllm_hub::{Client, Endpoint};

use crate::error::BenchError;
use crate::report::Memory;
use crate::server::{Role, SUBCOMMAND};

/// A server process, killed when dropped (and, for a `bench-server`, ended by its stdin
/// closing even if this process dies first).
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    _stdin: Option<ChildStdin>,
}

impl Server {
    pub(crate) fn new(child: Child, stdin: Option<ChildStdin>) -> Server {
        Server {
            child,
            _stdin: stdin,
        }
    }

    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a `bench-server` printed before `ready`: its addresses by kind (`tcp`, `unix`,
/// `http`, `grpc`).
pub(crate) type Addresses = HashMap<String, String>;

/// Starts `exe bench-server ROLE` and reads the addresses it prints until `ready`.
pub(crate) fn start(
    exe: &Path,
    what: &str,
    role: &Role,
) -> Result<(Server, Addresses), BenchError> {
    let mut child = Command::new(exe)
        .args([SUBCOMMAND, &role.to_arg()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::start(what, format!("{}: {e}", exe.display())))?;
    let stdin = child.stdin.take();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let server = Server::new(child, stdin);
    let stdout = stdout.ok_or_else(|| BenchError::start(what, "no stdout"))?;
    // Its log is read on a thread of its own, so the server never blocks on a full pipe;
    // the last lines say why, should it end before it is ready.
    let log = std::thread::spawn(move || {
        let mut last = std::collections::VecDeque::new();
        for line in stderr.into_iter().flat_map(|e| BufReader::new(e).lines()) {
            let Ok(line) = line else { break };
            if last.len() == 5 {
                last.pop_front();
            }
            last.push_back(line);
        }
        Vec::from(last).join("; ")
    });
    let mut addresses = Addresses::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| BenchError::start(what, e))?;
        if line == "ready" {
            return Ok((server, addresses));
        }
        if let Some((key, value)) = line.split_once(' ') {
            addresses.insert(key.to_string(), value.to_string());
        }
    }
    drop(server);
    let said = log.join().unwrap_or_default();
    Err(BenchError::start(
        what,
        format!("it exited before it was ready: {said}"),
    ))
}

/// One address a server printed, or why it is missing.
pub(crate) fn address(addresses: &Addresses, what: &str, key: &str) -> Result<String, BenchError> {
    addresses
        .get(key)
        .cloned()
        .ok_or_else(|| BenchError::start(what, format!("it printed no {key} address")))
}

/// How a hub of the run is set up.
#[derive(Debug, Clone, Default)]
pub(crate) struct HubSpec {
    pub(crate) unix: Option<PathBuf>,
    pub(crate) local_engines: usize,
    pub(crate) batch_max: usize,
    pub(crate) busy_poll_us: u64,
    pub(crate) max_connections: Option<usize>,
    pub(crate) front: bool,
}

/// Starts a hub: on a Unix socket if `spec.unix` is set, else on TCP; its endpoint and
/// every address it printed.
pub(crate) fn hub(
    exe: &Path,
    what: &str,
    spec: HubSpec,
) -> Result<(Server, Endpoint, Addresses), BenchError> {
    let role = Role::Hub {
        tcp: spec.unix.is_none(),
        unix: spec.unix.clone(),
        local_engines: spec.local_engines,
        batch_max: spec.batch_max,
        busy_poll_us: spec.busy_poll_us,
        max_connections: spec
            .max_connections
            .unwrap_or(qnllm_hub::HubConfig::default().max_connections),
        front: spec.front,
    };
    let (server, addresses) = start(exe, what, &role)?;
    let endpoint = match &spec.unix {
        Some(_) => Endpoint::Unix(PathBuf::from(address(&addresses, what, "unix")?)),
        None => Endpoint::Tcp(address(&addresses, what, "tcp")?),
    };
    Ok((server, endpoint, addresses))
}

/// Starts a Rust worker of the hub at `hub`: the fixed engine (`fixed`) or the reference one.
pub(crate) fn worker(
    exe: &Path,
    hub: &Endpoint,
    fixed: bool,
    busy_poll_us: u64,
) -> Result<Server, BenchError> {
    let connect = match hub {
        Endpoint::Tcp(addr) => addr.clone(),
        Endpoint::Unix(path) => format!("unix:{}", path.display()),
    };
    let role = Role::Worker {
        connect,
        name: if fixed { "fixed" } else { "default" }.into(),
        fixed,
        busy_poll_us,
    };
    Ok(start(exe, "worker", &role)?.0)
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
pub(crate) async fn hub_memory(exe: &Path, n: usize) -> Result<Option<Memory>, BenchError> {
    let what = "hub for the memory figure";
    let spec = HubSpec {
        // Room for the idle clients beyond the connections kept for workers.
        max_connections: Some(n + 64),
        ..HubSpec::default()
    };
    let (hub, endpoint, _) = hub(exe, what, spec)?;
    let pid = hub.id();
    let measure = |e: qnllm_hub::ClientError| BenchError::measure("hub memory", e);
    // One connection first, so the runtime's threads and buffers exist before "idle".
    let warm = Client::connect(&endpoint, "warm", None)
        .await
        .map_err(measure)?;
    let Some(idle_kib) = rss_kib(pid) else {
        return Ok(None);
    };
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        open.push(
            Client::connect(&endpoint, "idle", None)
                .await
                .map_err(measure)?,
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
