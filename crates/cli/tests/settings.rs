//! Settings that reach a running process: `qnllm serve --policy` (and the config file's
//! `policy`) decide what the hub's coordinator teaches, and `qnllm worker --nats`'s
//! `--nats-snapshot-every` and `--nats-log-margin` decide when it stores snapshots and how
//! far it trims the update log (against a real nats-server on loopback). Bad values are
//! refused with a message naming them.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::process::Stdio;

use common::hub::{client, hub, runtime, TempFile};
use common::proc::{Proc, WAIT};
use futures::StreamExt;
use qnllm_engine::{Engine, NormalInputs, Params, SpikingEngine};
use qnllm_nats::{connect, subject, Announce, LearnLog, NatsOptions};
use qnllm_protocol::{Coordinate, Message};

/// `qnllm ARGS`: its exit code and stderr, for commands that are refused at once.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qnllm"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Coordinates `count` encodings with learning through the hub started with `args` (three
/// teachers of different seeds, one local student): how many the teachers disagreed on,
/// and of those how many the student learned.
fn disagreements_learned(args: &[&str], count: usize) -> (usize, usize) {
    let mut all = vec![
        "--local",
        "1",
        "--teacher",
        "seed:2",
        "--teacher",
        "seed:3",
        "--teacher",
        "seed:4",
    ];
    all.extend_from_slice(args);
    let (_hub, addr) = hub(&all);
    runtime().block_on(async {
        let client = client(&addr, "policy-test").await;
        let (mut split, mut learned) = (0, 0);
        for x in NormalInputs::new(17, 768).take(count) {
            let message = Message::Coordinate(Coordinate {
                teachers: 0,
                learn: true,
                encoding: x.into(),
            });
            let Message::CoordinationResult(result) = client.request(&message, WAIT).await.unwrap()
            else {
                panic!("not a coordination result");
            };
            let first = result.teachers[0].label;
            if result.teachers.iter().any(|t| t.label != first) {
                split += 1;
                learned += usize::from(result.learned);
            }
        }
        (split, learned)
    })
}

#[test]
fn serve_policy_decides_what_the_coordinator_teaches_and_a_bad_one_is_refused() {
    const STEPS: usize = 12;
    // The default (majority) teaches every consensus, split votes too.
    let (split, learned) = disagreements_learned(&[], STEPS);
    assert!(split > 0, "the teachers never disagreed in {STEPS} steps");
    assert_eq!(learned, split, "majority teaches every consensus");
    // Unanimous teaches none of the split ones: from the flag, and from the config file.
    let (split, learned) = disagreements_learned(&["--policy", "unanimous"], STEPS);
    assert!(split > 0);
    assert_eq!(learned, 0, "--policy unanimous taught a split vote");
    let file = TempFile::new("policy.toml", "policy = \"unanimous\"\n");
    let path = file.0.to_str().unwrap();
    let (split, learned) = disagreements_learned(&["--config", path], STEPS);
    assert!(split > 0);
    assert_eq!(learned, 0, "policy = \"unanimous\" taught a split vote");
    // The flag overrides the file.
    let (split, learned) =
        disagreements_learned(&["--config", path, "--policy", "majority"], STEPS);
    assert_eq!(learned, split);

    let (code, stderr) = refused(&["serve", "--listen", "127.0.0.1:0", "--policy", "often"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("unknown consensus policy `often`") && stderr.contains("unanimous"),
        "{stderr}"
    );
    let bad = TempFile::new("bad-policy.toml", "policy = \"reliable:2\"\n");
    let (code, stderr) = refused(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--config",
        bad.0.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("unknown consensus policy `reliable:2`"),
        "{stderr}"
    );
}

/// A nats-server child on a loopback port it picks, killed on drop, its directory removed.
struct Server {
    child: std::process::Child,
    url: String,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts nats-server with JetStream; `None` when it is not installed.
fn nats_server() -> Option<Server> {
    use std::io::BufRead;
    let bin = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nats-server"))
            .find(|p| p.is_file())
    })?;
    let dir = std::env::temp_dir().join(format!("qnllm-cli-nats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = std::process::Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
        .arg(dir.join("js"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut server = Server {
        child,
        url: String::new(),
        dir,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut url = None;
        let mut lines = std::io::BufReader::new(stderr).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some((_, at)) = line.split_once("Listening for client connections on ") {
                url = Some(format!("nats://{}", at.trim()));
            }
            if line.contains("Server is ready") {
                let _ = tx.send(url.take());
                break;
            }
        }
        // Keep draining so the server never blocks on a full pipe.
        lines.for_each(drop);
    });
    server.url = rx
        .recv_timeout(WAIT)
        .expect("nats-server did not get ready")
        .expect("nats-server named no client port");
    Some(server)
}

/// Starts `qnllm worker --nats` for `seed:SEED` named `name` with `extra` arguments, and
/// waits for its "serving on nats" line.
fn nats_worker(url: &str, name: &str, seed: u64, extra: &[&str]) -> Proc {
    let model = format!("seed:{seed}");
    let mut args = vec![
        "worker",
        "--nats",
        url,
        "--name",
        name,
        "--model",
        &model,
        "--nats-heartbeat-ms",
        "200",
    ];
    args.extend_from_slice(extra);
    let (proc, lines) = Proc::spawn(&args);
    let line = lines
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("{name} did not start:\n{}", proc.log()));
    assert!(line.contains("serving on nats"), "{line}");
    proc
}

#[test]
fn worker_nats_flags_set_the_snapshot_interval_and_the_trim_margin() {
    let Some(server) = nats_server() else {
        eprintln!("SKIPPED: nats-server is not installed (apt-get install nats-server)");
        return;
    };
    // Two lineages (seeds 1 and 2), one worker each: a snapshot every 3 entries, trimmed
    // to 1 entry before it, or not trimmed at all.
    let trims = nats_worker(
        &server.url,
        "trims",
        1,
        &["--nats-snapshot-every", "3", "--nats-log-margin", "1"],
    );
    let keeps = nats_worker(
        &server.url,
        "keeps",
        2,
        &["--nats-snapshot-every", "3", "--nats-log-margin", "off"],
    );
    runtime().block_on(async {
        let client = connect(&NatsOptions::new(&server.url)).await.unwrap();
        let mut announcements = client.subscribe(subject::ANNOUNCE).await.unwrap();
        client.flush().await.unwrap();
        let log = LearnLog::new(client.clone(), 1);
        for (name, seed, first) in [("trims", 1, 2), ("keeps", 2, 1)] {
            let lineage = SpikingEngine::from_seed(seed, Params::default())
                .unwrap()
                .digest()
                .short();
            for (i, x) in NormalInputs::new(5, 768).take(3).enumerate() {
                log.append(&lineage, &x, i as u32, i as u64).await.unwrap();
            }
            // The snapshot at entry 3 is the flag's doing: the default interval is 1 000.
            let stored = tokio::time::timeout(WAIT, async {
                while let Some(message) = announcements.next().await {
                    let a: Announce = serde_json::from_slice(&message.payload).unwrap();
                    if a.name == name && a.snapshot == 3 {
                        return a;
                    }
                }
                panic!("the announcements ended");
            })
            .await
            .unwrap_or_else(|_| panic!("{name} stored no snapshot at entry 3"));
            assert_eq!(stored.model_version, 3, "{stored:?}");
            // And it trimmed (or kept) before announcing it.
            assert_eq!(log.bounds(&lineage).await.unwrap(), (first, 3), "{name}");
        }
    });
    drop((trims, keeps));

    let (code, stderr) = refused(&["worker", "--nats", &server.url, "--nats-log-margin", "soon"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`soon` is neither a number of entries nor `off`"),
        "{stderr}"
    );
}
