//! Hubs and workers on many hosts over a three-node NATS cluster, with real faults: a NATS
//! node killed, a worker host cut off, a hub killed, a lying engine, learning through two
//! hubs. The hosts are network namespaces made by `.ci/suite/50-multihost`, which runs this
//! binary on its client host; anywhere else every test skips, saying why.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;

use qnllm_engine::{Engine, NormalInputs, Params, SpikingEngine};
use qnllm_hub::{Client, ClientError, Endpoint};
use qnllm_nats::{connect, decode_one, subject, LearnLog, NatsOptions};
use qnllm_protocol::{Coordinate, Message, DEFAULT_MAX_FRAME_BYTES};

const USER: &str = "qnllm";
const PASSWORD: &str = "multihost-secret";
const TOKEN: &str = "hub-token";
/// Each client request's deadline: room for one try on a dead engine and one elsewhere.
const DEADLINE: Duration = Duration::from_secs(4);
/// Longest wait for a process line or a cluster state; a test stuck longer fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// The test hosts, from the suite script.
struct Hosts {
    prefix: String,
    addr: HashMap<String, String>,
    qnllm: String,
}

fn hosts() -> Option<Hosts> {
    if std::env::var("QNLLM_MULTIHOST").ok().as_deref() != Some("1") {
        eprintln!(
            "SKIPPED: multi-host tests run inside the network namespaces of .ci/suite/50-multihost"
        );
        return None;
    }
    let addr = std::env::var("QNLLM_HOSTS")
        .expect("QNLLM_HOSTS")
        .split_whitespace()
        .filter_map(|e| e.split_once('='))
        .map(|(h, a)| (h.to_string(), a.to_string()))
        .collect();
    Some(Hosts {
        prefix: std::env::var("QNLLM_NETNS_PREFIX").expect("QNLLM_NETNS_PREFIX"),
        addr,
        qnllm: std::env::var("QNLLM_BIN").expect("QNLLM_BIN"),
    })
}

impl Hosts {
    fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    fn ip(&self, host: &str) -> &str {
        &self.addr[host]
    }

    fn nats_url(&self, host: &str) -> String {
        format!("nats://{}:4222", self.ip(host))
    }

    fn all_nats(&self) -> String {
        ["n1", "n2", "n3"]
            .iter()
            .map(|h| self.nats_url(h))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn hub(&self, host: &str) -> Endpoint {
        Endpoint::parse(&format!("{}:9999", self.ip(host)))
    }

    /// `ip link set eth0 up|down` on `host`: its only link to the others.
    fn link(&self, host: &str, up: bool) {
        let state = if up { "up" } else { "down" };
        let status = Command::new("ip")
            .args(["-n", &self.ns(host), "link", "set", "eth0", state])
            .status()
            .unwrap();
        assert!(status.success(), "ip link set {state} on {host}");
    }
}

/// A process on a test host, killed on drop; its output lines readable in order.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    dir: Option<std::path::PathBuf>,
}

impl Proc {
    fn start(hosts: &Hosts, host: &str, name: &str, program: &str, args: &[String]) -> Proc {
        Proc::start_teed(hosts, host, name, program, args, None)
    }

    /// [`Proc::start`], also copying every output line, tagged with `name`, to `tee`.
    fn start_teed(
        hosts: &Hosts,
        host: &str,
        name: &str,
        program: &str,
        args: &[String],
        tee: Option<mpsc::Sender<(String, String)>>,
    ) -> Proc {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &hosts.ns(host), program])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let verbose = std::env::var_os("QNLLM_MULTIHOST_VERBOSE").is_some();
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err) as Box<dyn std::io::Read + Send>,
        ] {
            let (tx, tee, tag) = (tx.clone(), tee.clone(), name.to_string());
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    if verbose {
                        eprintln!("[{tag}] {line}");
                    }
                    if let Some(tee) = &tee {
                        let _ = tee.send((tag.clone(), line.clone()));
                    }
                    let _ = tx.send(line);
                }
            });
        }
        Proc {
            name: name.to_string(),
            child,
            lines,
            dir: None,
        }
    }

    /// Waits for an output line containing `text`.
    fn wait_line(&self, text: &str) {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return,
                Ok(_) => {}
                Err(_) => panic!("{}: no line with {text:?}", self.name),
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The next line of `lines` that `want` accepts, waiting at most [`PATIENCE`]; `None` when
/// none came (or every sender is gone).
fn next_line(
    lines: &mut mpsc::Receiver<(String, String)>,
    want: impl Fn(&str) -> bool,
) -> Option<(String, String)> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok((tag, line)) if want(&line) => return Some((tag, line)),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// A NATS node on `host`, its output lines also sent to `tee`; returns once it is ready.
fn nats_node(hosts: &Hosts, host: &str, tee: mpsc::Sender<(String, String)>) -> Proc {
    let ip = hosts.ip(host);
    let dir = std::env::temp_dir().join(format!("{}js-{host}", hosts.prefix));
    let routes = ["n1", "n2", "n3"]
        .iter()
        .map(|h| format!("nats://{}:6222", hosts.ip(h)))
        .collect::<Vec<_>>()
        .join(",");
    let args: Vec<String> = [
        "-n",
        host,
        "-a",
        ip,
        "-p",
        "4222",
        "--user",
        USER,
        "--pass",
        PASSWORD,
        "-js",
        "-sd",
        dir.to_str().unwrap(),
        "--cluster_name",
        "qnllm",
        "--cluster",
        &format!("nats://{ip}:6222"),
        "--routes",
        &routes,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut proc = Proc::start_teed(hosts, host, host, "nats-server", &args, Some(tee));
    proc.dir = Some(dir);
    proc.wait_line("Server is ready");
    proc
}

fn nats_args(url: &str, heartbeat_ms: u64) -> Vec<String> {
    [
        "--nats",
        url,
        "--nats-user",
        USER,
        "--nats-password",
        PASSWORD,
        "--nats-insecure",
        "--nats-heartbeat-ms",
        &heartbeat_ms.to_string(),
        "--nats-log-replicas",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

const HEARTBEAT_MS: u64 = 300;

fn worker(hosts: &Hosts, host: &str, name: &str, url: &str, extra: &[&str]) -> Proc {
    let mut args: Vec<String> = ["worker", "--name", name, "--model", "seed:1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(nats_args(url, HEARTBEAT_MS));
    args.extend(extra.iter().map(|s| s.to_string()));
    let proc = Proc::start(hosts, host, name, &hosts.qnllm, &args);
    proc.wait_line("serving on nats");
    proc
}

fn hub(hosts: &Hosts, host: &str, url: &str, extra: &[&str]) -> Proc {
    let listen = format!("{}:9999", hosts.ip(host));
    let mut args: Vec<String> = ["serve", "--listen", &listen, "--token", TOKEN]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(nats_args(url, HEARTBEAT_MS));
    args.extend(extra.iter().map(|s| s.to_string()));
    let proc = Proc::start(hosts, host, host, &hosts.qnllm, &args);
    proc.wait_line("listening on tcp");
    proc
}

/// The cluster: three NATS nodes, two workers (w1 knows only n1, w2 only n2: the rest they
/// learn from the cluster), two hubs (h1 on n1, h2 on n2).
struct Cluster {
    hosts: Hosts,
    /// The test's own connection to the cluster (every node's URL).
    nats: async_nats::Client,
    nodes: HashMap<String, Proc>,
    workers: HashMap<String, Proc>,
    hubs: HashMap<String, Proc>,
}

impl Cluster {
    async fn start(hosts: Hosts, hub_args: &[&str]) -> Cluster {
        let (tee, mut node_lines) = mpsc::channel();
        let mut nodes = HashMap::new();
        for n in ["n1", "n2", "n3"] {
            nodes.insert(n.to_string(), nats_node(&hosts, n, tee.clone()));
        }
        drop(tee);
        // JetStream needs a meta leader before the update log can be made. A node that
        // takes part in the election logs its outcome ("Self is new JetStream cluster
        // metadata leader" on the winner, "JetStream cluster new metadata leader: …" on a
        // voter); a node that joins after it logs nothing, so one line is the event.
        let elected =
            |line: &str| line.contains("metadata leader") && !line.contains("no metadata leader");
        let (node, line) = next_line(&mut node_lines, elected)
            .unwrap_or_else(|| panic!("no JetStream metadata leader within {PATIENCE:?}"));
        eprintln!("nats nodes ready; {node}: {line}");
        // Make the update log now, R3. A refusal (the leader not yet current with its peers)
        // is tried again when a node next reports a change of cluster state.
        let nats = test_client(&hosts).await;
        let log = LearnLog::new(nats.clone(), 3);
        let lineage = local().digest().short();
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            match log.stream(&lineage).await {
                Ok(_) => break,
                Err(e) => {
                    eprintln!("update log not made yet: {e}");
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the update log cannot be made within {PATIENCE:?}: {e}"
                    );
                    if next_line(&mut node_lines, |_| true).is_none() {
                        panic!("the update log cannot be made ({e}) and no node said more within {PATIENCE:?}");
                    }
                }
            }
        }
        let mut workers = HashMap::new();
        workers.insert(
            "w1".into(),
            worker(&hosts, "w1", "w1", &hosts.nats_url("n1"), &[]),
        );
        workers.insert(
            "w2".into(),
            worker(&hosts, "w2", "w2", &hosts.nats_url("n2"), &[]),
        );
        let mut hubs = HashMap::new();
        hubs.insert(
            "h1".into(),
            hub(&hosts, "h1", &hosts.nats_url("n1"), hub_args),
        );
        hubs.insert(
            "h2".into(),
            hub(&hosts, "h2", &hosts.nats_url("n2"), hub_args),
        );
        let cluster = Cluster {
            hosts,
            nats,
            nodes,
            workers,
            hubs,
        };
        for h in ["h1", "h2"] {
            cluster.wait_engines(h, &["w1", "w2"]).await;
        }
        cluster
    }

    async fn client(&self, hub: &str) -> Client {
        Client::connect(&self.hosts.hub(hub), "multihost", Some(TOKEN))
            .await
            .unwrap()
    }

    /// Engine names `hub`'s router lists.
    async fn engines(&self, hub: &str) -> Vec<String> {
        let Ok(client) = Client::connect(&self.hosts.hub(hub), "probe", Some(TOKEN)).await else {
            return Vec::new();
        };
        let Ok(m) = client.metrics(Duration::from_secs(2)).await else {
            return Vec::new();
        };
        let mut names: Vec<String> = m["router"]["engines"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["name"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names
    }

    async fn router_metrics(&self, hub: &str) -> serde_json::Value {
        let client = self.client(hub).await;
        client.metrics(Duration::from_secs(2)).await.unwrap()["router"].clone()
    }

    /// Waits until `hub`'s router lists exactly `names`. The hub's view changes when it
    /// hears an announcement (or misses heartbeats, which it checks at each heartbeat
    /// interval, while the other workers keep announcing): its list is read again after
    /// each announcement the test hears.
    async fn wait_engines(&self, hub: &str, names: &[&str]) {
        let want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        // One announcement missed while subscribing costs one heartbeat, nothing more.
        let mut announcements = self.nats.subscribe(subject::ANNOUNCE).await.unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let have = self.engines(hub).await;
            if have == want {
                return;
            }
            let heard = tokio::time::timeout_at(deadline, announcements.next()).await;
            assert!(
                matches!(heard, Ok(Some(_))),
                "{hub} lists {have:?}, not {want:?}, after {PATIENCE:?}"
            );
        }
    }
}

async fn test_client(hosts: &Hosts) -> async_nats::Client {
    let options = NatsOptions {
        user: Some(USER.into()),
        password: Some(PASSWORD.into()),
        insecure: true,
        ..NatsOptions::new(hosts.all_nats())
    };
    connect(&options).await.unwrap()
}

fn local() -> SpikingEngine {
    SpikingEngine::from_seed(1, Params::default()).unwrap()
}

/// What a load run saw: every request ends in exactly one of these.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    /// Answered with an error frame (a clear error).
    errors: Vec<String>,
    /// No answer at all within the deadline, or the connection lost: what must not happen.
    lost: Vec<String>,
    /// Answered with a result whose digest differs from the local engine's.
    wrong: u64,
    by_engine: HashMap<String, u64>,
    by_hub: HashMap<String, u64>,
}

/// Requests from `tasks` clients until `stop`; client `i` uses `hubs[i % len]` and, when
/// `fail_over`, moves to the next hub when its own goes away (retrying that request).
struct Load {
    started: std::time::Instant,
    tally: Arc<Mutex<Tally>>,
    done: tokio::sync::watch::Receiver<u64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(cluster: &Cluster, hubs: &[&str], tasks: usize, fail_over: bool) -> Load {
        let local = local();
        let inputs: Vec<Vec<f32>> = NormalInputs::new(77, 768).take(64).collect();
        let expected: Arc<Vec<_>> = Arc::new(
            inputs
                .iter()
                .map(|x| local.reason(x).unwrap().result_digest)
                .collect(),
        );
        let inputs = Arc::new(inputs);
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (count, done) = tokio::sync::watch::channel(0u64);
        let count = Arc::new(count);
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for i in 0..tasks {
            // Spread over the hubs; with fail-over, every client starts on the first.
            let start = if fail_over { 0 } else { i };
            let order: Vec<(String, Endpoint)> = (0..hubs.len())
                .map(|k| hubs[(start + k) % hubs.len()])
                .map(|h| (h.to_string(), cluster.hosts.hub(h)))
                .collect();
            let first = cluster.client(&order[0].0).await;
            let (tally, count, stop, inputs, expected) = (
                tally.clone(),
                count.clone(),
                stop.clone(),
                inputs.clone(),
                expected.clone(),
            );
            handles.push(tokio::spawn(async move {
                let mut at = 0usize;
                let mut client = first;
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    let x = &inputs[n % inputs.len()];
                    let outcome = loop {
                        match client.reason(x, DEADLINE).await {
                            Err(ClientError::Closed(reason)) if fail_over => {
                                // This hub is gone: carry on with the next one.
                                let mut moved = false;
                                for _ in 0..order.len() {
                                    at = (at + 1) % order.len();
                                    if let Ok(c) =
                                        Client::connect(&order[at].1, "multihost", Some(TOKEN))
                                            .await
                                    {
                                        client = c;
                                        moved = true;
                                        break;
                                    }
                                }
                                if !moved {
                                    break Err(ClientError::Closed(reason));
                                }
                            }
                            other => break other,
                        }
                    };
                    {
                        let mut t = tally.lock().unwrap();
                        match outcome {
                            Ok(answer) => {
                                t.ok += 1;
                                if answer.reasoning.result_digest != expected[n % expected.len()] {
                                    t.wrong += 1;
                                }
                                *t.by_engine.entry(answer.engine).or_default() += 1;
                                *t.by_hub.entry(order[at].0.clone()).or_default() += 1;
                            }
                            Err(ClientError::Remote { code, message }) => {
                                t.errors.push(format!("{code}: {message}"))
                            }
                            Err(other) => t.lost.push(other.to_string()),
                        }
                    }
                    count.send_modify(|c| *c += 1);
                    n += tasks;
                }
            }));
        }
        Load {
            started: std::time::Instant::now(),
            tally,
            done,
            stop,
            tasks: handles,
        }
    }

    /// Waits until `more` requests beyond those finished now have finished.
    async fn wait_more(&mut self, more: u64) {
        let target = *self.done.borrow() + more;
        tokio::time::timeout(PATIENCE, self.done.wait_for(|&d| d >= target))
            .await
            .expect("the load stalled")
            .unwrap();
    }

    /// Requests `engine` has answered so far.
    fn served_by(&self, engine: &str) -> u64 {
        self.tally
            .lock()
            .unwrap()
            .by_engine
            .get(engine)
            .copied()
            .unwrap_or(0)
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let seconds = self.started.elapsed().as_secs_f64();
        let tally = Arc::try_unwrap(self.tally).unwrap().into_inner().unwrap();
        eprintln!(
            "load: {} ok in {seconds:.1} s ({:.0}/s), {} errors, {} lost, {} wrong; by engine {:?}; by hub {:?}; first errors {:?}",
            tally.ok,
            tally.ok as f64 / seconds,
            tally.errors.len(),
            tally.lost.len(),
            tally.wrong,
            tally.by_engine,
            tally.by_hub,
            tally.errors.iter().chain(&tally.lost).take(3).collect::<Vec<_>>()
        );
        tally
    }
}

/// Waits until `engine` has answered at least one more request of `load`.
async fn wait_served(load: &mut Load, engine: &str) {
    let before = load.served_by(engine);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while load.served_by(engine) <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{engine} answered nothing more"
        );
        load.wait_more(1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_served_by_workers_on_other_hosts_with_the_local_digests() {
    let Some(hosts) = hosts() else { return };
    let cluster = Cluster::start(hosts, &[]).await;
    let local = local();
    for h in ["h1", "h2"] {
        let client = cluster.client(h).await;
        let mut engines = std::collections::BTreeSet::new();
        for x in NormalInputs::new(5, 768).take(20) {
            let answer = client.reason(&x, DEADLINE).await.unwrap();
            assert_eq!(
                answer.reasoning.result_digest,
                local.reason(&x).unwrap().result_digest
            );
            assert_eq!(answer.reasoning.model_digest, local.digest());
            engines.insert(answer.engine);
        }
        // Round-robin over both remote workers, none of them on the hub's host.
        assert_eq!(engines.into_iter().collect::<Vec<_>>(), ["w1", "w2"], "{h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_nats_node_under_load_loses_nothing_and_everyone_reconnects() {
    let Some(hosts) = hosts() else { return };
    let mut cluster = Cluster::start(hosts, &[]).await;
    let mut load = Load::start(&cluster, &["h1", "h2"], 6, false).await;
    load.wait_more(100).await;
    // n1 carries w1 and h1: both must find n2 or n3 by themselves.
    cluster.nodes.get_mut("n1").unwrap().kill();
    load.wait_more(100).await;
    for h in ["h1", "h2"] {
        cluster.wait_engines(h, &["w1", "w2"]).await;
    }
    // w1 answers again, through hubs that have reconnected.
    wait_served(&mut load, "w1").await;
    wait_served(&mut load, "w2").await;
    load.wait_more(100).await;
    let tally = load.finish().await;
    assert!(tally.lost.is_empty(), "requests lost: {:?}", tally.lost);
    assert_eq!(tally.wrong, 0);
    assert!(tally.ok > 300, "{tally:?}");
    // After the reconnection both hubs serve through both workers.
    for h in ["h1", "h2"] {
        let client = cluster.client(h).await;
        let mut engines = std::collections::BTreeSet::new();
        for x in NormalInputs::new(6, 768).take(10) {
            engines.insert(client.reason(&x, DEADLINE).await.unwrap().engine);
        }
        assert_eq!(engines.len(), 2, "{h}: {engines:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_host_cut_off_fails_over_within_the_deadline_and_rejoins() {
    let Some(hosts) = hosts() else { return };
    let cluster = Cluster::start(hosts, &[]).await;
    let mut load = Load::start(&cluster, &["h1", "h2"], 6, false).await;
    load.wait_more(100).await;
    cluster.hosts.link("w1", false);
    // Its heartbeats stop: both hubs drop it, and the load goes on through w2.
    for h in ["h1", "h2"] {
        cluster.wait_engines(h, &["w2"]).await;
    }
    load.wait_more(100).await;
    cluster.hosts.link("w1", true);
    for h in ["h1", "h2"] {
        cluster.wait_engines(h, &["w1", "w2"]).await;
    }
    wait_served(&mut load, "w1").await;
    load.wait_more(50).await;
    let tally = load.finish().await;
    // Every request that was on w1 when its link went down was retried on w2 in time.
    assert!(tally.lost.is_empty(), "requests lost: {:?}", tally.lost);
    assert!(
        tally.errors.is_empty(),
        "requests failed: {:?}",
        tally.errors
    );
    assert_eq!(tally.wrong, 0);
    let retries: u64 = {
        let mut sum = 0;
        for h in ["h1", "h2"] {
            sum += cluster.router_metrics(h).await["retries"].as_u64().unwrap();
        }
        sum
    };
    eprintln!("retries after the cut: {retries}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_hub_moves_its_clients_to_the_other() {
    let Some(hosts) = hosts() else { return };
    let mut cluster = Cluster::start(hosts, &[]).await;
    // Every client starts on h1 and knows h2.
    let mut load = Load::start(&cluster, &["h1", "h2"], 4, true).await;
    load.wait_more(100).await;
    cluster.hubs.get_mut("h1").unwrap().kill();
    load.wait_more(150).await;
    let tally = load.finish().await;
    assert!(tally.lost.is_empty(), "requests lost: {:?}", tally.lost);
    assert!(
        tally.errors.is_empty(),
        "requests failed: {:?}",
        tally.errors
    );
    assert_eq!(tally.wrong, 0);
    // Those on h1 carried on through h2, which still reaches both workers.
    assert!(
        tally.by_hub.get("h2").copied().unwrap_or(0) >= 150,
        "{tally:?}"
    );
    assert_eq!(tally.by_engine.len(), 2, "{tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redundant_mode_across_hosts_catches_a_lying_remote_engine() {
    let Some(hosts) = hosts() else { return };
    let mut cluster = Cluster::start(hosts, &["--mode", "redundant", "--redundancy", "3"]).await;
    // A third worker on w2's host answers every request with one fixed result. A fixed
    // engine names a model digest of its own, so the hub keeps it in its foreign pool
    // (docs/router.md): caught before it can answer, never routed to.
    let liar = worker(
        &cluster.hosts,
        "w2",
        "liar",
        &cluster.hosts.nats_url("n3"),
        &["--fixed"],
    );
    cluster.workers.insert("liar".into(), liar);
    // And a third honest one on w1's host, so three honest engines remain once the liar is
    // ejected (redundancy 3 needs three engines).
    let w3 = worker(
        &cluster.hosts,
        "w1",
        "w3",
        &cluster.hosts.nats_url("n3"),
        &[],
    );
    cluster.workers.insert("w3".into(), w3);
    cluster
        .wait_engines("h1", &["liar", "w1", "w2", "w3"])
        .await;
    let local = local();
    let client = cluster.client("h1").await;
    for x in NormalInputs::new(8, 768).take(20) {
        let answer = client.reason(&x, DEADLINE).await.unwrap();
        assert_eq!(
            answer.reasoning.result_digest,
            local.reason(&x).unwrap().result_digest
        );
        assert_ne!(answer.engine, "liar");
    }
    let router = cluster.router_metrics("h1").await;
    let liar = router["engines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "liar")
        .unwrap()
        .clone();
    assert_eq!(liar["pool"], "foreign", "{liar}");
    assert_eq!(liar["requests"], 0, "{liar}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learning_through_two_hubs_leaves_every_replica_bit_identical() {
    let Some(hosts) = hosts() else { return };
    let cluster = Cluster::start(hosts, &["--teacher", "seed:2"]).await;
    let samples: Vec<Vec<f32>> = NormalInputs::new(31, 768).take(16).collect();
    let teach = |hub: &'static str, xs: Vec<Vec<f32>>| {
        let client = cluster.client(hub);
        async move {
            let client = client.await;
            for x in xs {
                let coordinate = Coordinate {
                    teachers: 0,
                    learn: true,
                    encoding: x.into(),
                };
                match client
                    .request(&Message::Coordinate(coordinate), DEADLINE)
                    .await
                {
                    Ok(Message::CoordinationResult(r)) => assert!(r.learned, "{hub}: {r:?}"),
                    other => panic!("{hub}: {other:?}"),
                }
            }
        }
    };
    // Both hubs learn at once: their updates interleave in the log.
    tokio::join!(
        teach("h1", samples[..8].to_vec()),
        teach("h2", samples[8..].to_vec())
    );
    let nats = test_client(&cluster.hosts).await;
    let log = LearnLog::new(nats.clone(), 3);
    let lineage = local().digest().short();
    let mut replay = local();
    let mut seq = 1;
    while let Some(entry) = log.read(&lineage, seq).await.unwrap() {
        replay.learn(&entry.encoding, entry.label).unwrap();
        seq += 1;
    }
    assert_eq!(seq - 1, 16, "one log entry per update");
    assert_ne!(replay.digest(), local().digest());
    // Every replica, on its own host, is at the replayed model, bit for bit.
    for w in ["w1", "w2"] {
        let mut ask = Vec::new();
        ask.extend_from_slice(&16u64.to_le_bytes());
        ask.extend_from_slice(&10_000u32.to_le_bytes());
        let reply = tokio::time::timeout(PATIENCE, nats.request(subject::applied(w), ask.into()))
            .await
            .unwrap_or_else(|_| panic!("{w} did not answer applied within {PATIENCE:?}"))
            .unwrap();
        match decode_one(&reply.payload, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .message()
            .unwrap()
        {
            Message::Learned(l) => {
                assert_eq!(l.model_digest, replay.digest().0, "{w}");
                assert_eq!(l.model_version, replay.info().version, "{w}");
            }
            other => panic!("{w}: {other:?}"),
        }
    }
    // And both hubs now answer with that model.
    for h in ["h1", "h2"] {
        let client = cluster.client(h).await;
        for x in &samples[..4] {
            let answer = client.reason(x, DEADLINE).await.unwrap();
            assert_eq!(answer.reasoning.model_digest, replay.digest(), "{h}");
            assert_eq!(
                answer.reasoning.result_digest,
                replay.reason(x).unwrap().result_digest
            );
        }
    }
}
