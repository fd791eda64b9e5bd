//! `qnllm demo`: the original design's seven scenarios on a real hub with real worker
//! processes, each checking its own results; a report at the end, exit 1 if any failed.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use qnllm::{Mode, NormalInputs, Params, SpikingEngine, UnifiedEngine};
use qnllm_engine::Engine;
use qnllm_router::strategy::{Performance, Preferred, RoundRobin, Strategy};

use crate::learn::TeacherKind;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Requests per strategy in the performance comparison.
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Unlabelled digits the student learns from in the multi-teacher scenario.
    #[arg(long, default_value_t = 900)]
    steps: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

const WAIT: Duration = Duration::from_secs(30);

/// Worker processes started by the demo; stopped (SIGTERM, then SIGKILL) however it ends.
struct Workers(Vec<(String, Child)>);

impl Workers {
    fn spawn(&mut self, addr: &str, name: &str, model: &str) -> Result<()> {
        let exe = std::env::current_exe().context("cannot find the qnllm executable")?;
        let child = Command::new(exe)
            .args([
                "worker",
                "--connect",
                addr,
                "--name",
                name,
                "--model",
                model,
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start worker {name}"))?;
        self.0.push((name.to_string(), child));
        Ok(())
    }

    /// Asks `name` to drain and leave (SIGTERM) and waits for it to exit.
    fn stop(&mut self, name: &str) {
        if let Some(at) = self.0.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.0.remove(at);
            terminate(&mut child);
        }
    }
}

fn terminate(child: &mut Child) {
    #[cfg(unix)]
    {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            terminate(child);
        }
    }
}

/// One scenario's outcome.
#[derive(Debug, serde::Serialize)]
struct Scenario {
    name: &'static str,
    passed: bool,
    lines: Vec<String>,
    seconds: f64,
}

fn check(lines: &mut Vec<String>, ok: bool, what: String) -> bool {
    lines.push(format!("{} {what}", if ok { "✓" } else { "✗" }));
    ok
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or_default()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn wait_for(engine: &UnifiedEngine, names: &[&str]) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut have: Vec<String> = engine
            .router()
            .engines()
            .into_iter()
            .map(|(_, _, info)| info.name)
            .collect();
        have.sort();
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        if have == want {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) fn run(args: DemoArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(demo(&args))?;
    let failed = report.iter().filter(|s| !s.passed).count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!();
        for (i, s) in report.iter().enumerate() {
            println!(
                "{}. {:<32} {}  ({:.2} s)",
                i + 1,
                s.name,
                if s.passed { "PASS" } else { "FAIL" },
                s.seconds
            );
            for line in &s.lines {
                println!("     {line}");
            }
        }
        println!(
            "\n{} of {} scenarios passed",
            report.len() - failed,
            report.len()
        );
    }
    if failed > 0 {
        anyhow::bail!("{failed} scenario(s) failed their checks");
    }
    Ok(())
}

async fn demo(args: &DemoArgs) -> Result<Vec<Scenario>> {
    let started = Instant::now();
    let bar = ProgressBar::new(8);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("starting the hub and two worker processes");

    let mut engine = UnifiedEngine::builder()
        .listen("127.0.0.1:0")
        .cache(10_000)
        .build()?;
    engine.router().set_cache_enabled(false);
    engine.start().await?;
    let addr = engine
        .tcp_addr()
        .context("the hub has no TCP address")?
        .to_string();
    let mut workers = Workers(Vec::new());
    workers.spawn(&addr, "worker-1", "seed:1")?;
    workers.spawn(&addr, "worker-2", "seed:1")?;
    let serving = ["local-0", "worker-1", "worker-2"];
    if !wait_for(&engine, &serving).await {
        anyhow::bail!("the worker processes did not join the hub within {WAIT:?}");
    }
    bar.inc(1);

    let mut report = Vec::new();
    let reference = SpikingEngine::from_seed(1, Params::default())?;

    // 1. Basic reasoning.
    bar.set_message("1/7 basic reasoning");
    let t = Instant::now();
    let mut lines = Vec::new();
    let mut ok = true;
    let mut engines = BTreeMap::<String, usize>::new();
    let mut latencies = Vec::new();
    let mut same = 0;
    let inputs: Vec<Vec<f32>> = NormalInputs::new(1, 768).take(30).collect();
    for x in &inputs {
        let answer = engine.reason(x).await?;
        same += usize::from(answer.reasoning == reference.reason(x)?);
        *engines.entry(answer.engine).or_default() += 1;
        latencies.push(answer.latency);
    }
    latencies.sort();
    ok &= check(
        &mut lines,
        same == inputs.len(),
        format!(
            "{same}/{} answers bit-identical to the reference engine",
            inputs.len()
        ),
    );
    ok &= check(
        &mut lines,
        engines.len() == 3,
        format!("answered by {engines:?}"),
    );
    lines.push(format!(
        "latency p50 {:.0} µs, max {:.0} µs",
        us(quantile(&latencies, 0.5)),
        us(quantile(&latencies, 1.0))
    ));
    report.push(Scenario {
        name: "basic reasoning",
        passed: ok,
        lines,
        seconds: t.elapsed().as_secs_f64(),
    });
    bar.inc(1);

    // 2. Batch processing.
    bar.set_message("2/7 batch processing");
    let t = Instant::now();
    let mut lines = Vec::new();
    let batch: Vec<Vec<f32>> = NormalInputs::new(2, 768).take(1_000).collect();
    let b = Instant::now();
    let answers = engine.reason_batch(&batch).await?;
    let batch_time = b.elapsed();
    let right = answers
        .iter()
        .zip(&batch)
        .filter(|(a, x)| {
            reference
                .reason(x)
                .map(|r| r == a.reasoning)
                .unwrap_or(false)
        })
        .count();
    let mut ok = check(
        &mut lines,
        right == batch.len(),
        format!(
            "{right}/{} batch answers identical to one-by-one, in input order",
            batch.len()
        ),
    );
    let mut parts = BTreeMap::<&str, usize>::new();
    for a in &answers {
        *parts.entry(a.engine.as_str()).or_default() += 1;
    }
    ok &= check(
        &mut lines,
        parts.len() == 3,
        format!("split into one batch frame per engine: {parts:?}"),
    );
    lines.push(format!(
        "1000 encodings in {:.1} ms = {:.0} encodings/s",
        batch_time.as_secs_f64() * 1e3,
        1_000.0 / batch_time.as_secs_f64()
    ));
    ok &= answers.len() == batch.len();
    report.push(Scenario {
        name: "batch processing",
        passed: ok,
        lines,
        seconds: t.elapsed().as_secs_f64(),
    });
    bar.inc(1);

    // 3. Redundant verification with a faulty engine.
    bar.set_message("3/7 redundant verification");
    let t = Instant::now();
    let mut lines = Vec::new();
    workers.spawn(&addr, "faulty", "seed:2")?;
    let mut ok = check(
        &mut lines,
        wait_for(&engine, &["local-0", "worker-1", "worker-2", "faulty"]).await,
        "a faulty worker (wrong model) joined".into(),
    );
    engine.router().set_policy(
        Box::new(RoundRobin::default()),
        Mode::Redundant { copies: 3 },
    );
    let before = engine.metrics().router;
    let mut correct = 0;
    let inputs: Vec<Vec<f32>> = NormalInputs::new(3, 768).take(60).collect();
    for x in &inputs {
        if let Ok(answer) = engine.reason(x).await {
            correct += usize::from(answer.reasoning == reference.reason(x)?);
        }
    }
    let after = engine.metrics().router;
    let faulty = after.engines.iter().find(|e| e.info.name == "faulty");
    ok &= check(
        &mut lines,
        correct == inputs.len(),
        format!(
            "{correct}/{} answers correct: the majority of 3 engines wins",
            inputs.len()
        ),
    );
    // Another model is never mixed in: the router keeps it in its own pool.
    ok &= check(
        &mut lines,
        faulty.is_some_and(|e| e.pool == qnllm_router::Pool::Foreign && e.health.requests == 0),
        "the faulty engine (another model) is kept in the foreign pool and asked nothing".into(),
    );
    let caught = after.disagreements - before.disagreements;
    ok &= check(
        &mut lines,
        caught == 0,
        format!("{caught} disagreements among the engines of the served model"),
    );
    engine
        .router()
        .set_policy(Box::new(RoundRobin::default()), Mode::Single);
    workers.stop("faulty");
    ok &= check(
        &mut lines,
        wait_for(&engine, &serving).await,
        "the faulty worker drained and left on SIGTERM".into(),
    );
    report.push(Scenario {
        name: "redundant verification",
        passed: ok,
        lines,
        seconds: t.elapsed().as_secs_f64(),
    });
    bar.inc(1);

    // 4. Multi-teacher coordination with a learning student: `qnllm learn` on the digits,
    // with its own hub and worker processes (the student takes 64 inputs), and teachers in
    // Rust, Python and C++ when those can be found.
    bar.set_message("4/7 multi-teacher learning on the digits");
    let t = Instant::now();
    let mut lines = Vec::new();
    let python = crate::learn::discover_python();
    let cpp = crate::learn::discover_cpp_worker();
    let mut kinds = vec![TeacherKind::Rust];
    for (found, kind, language) in [
        (&python, TeacherKind::Python, "Python"),
        (&cpp, TeacherKind::Cpp, "C++"),
    ] {
        match found {
            Ok(_) => kinds.push(kind),
            Err(why) => {
                kinds.push(TeacherKind::RustWorker);
                lines.push(format!(
                    "no {language} teacher (a Rust worker instead): {why}"
                ));
            }
        }
    }
    let learn_args = crate::learn::LearnArgs {
        unlabelled: args.steps,
        passes: 2,
        json: true,
        teacher_kinds: kinds,
        python: python.ok(),
        cpp_worker: cpp.ok(),
        ..crate::learn::LearnArgs::default()
    };
    let story = crate::learn::story(&learn_args, &indicatif::ProgressBar::hidden()).await?;
    let kinds: Vec<String> = story
        .teachers
        .iter()
        .map(|t| format!("{} {} ({})", t.name, t.language, t.process))
        .collect();
    lines.insert(0, format!("teachers: {}", kinds.join(", ")));
    let teachers: Vec<String> = story
        .teachers
        .iter()
        .map(|t| format!("{} {:.1} %", t.name, t.accuracy * 100.0))
        .collect();
    lines.push(format!(
        "teachers trained on {} labelled digits, held-out accuracy: {}; majority vote {:.1} %",
        story.labelled,
        teachers.join(", "),
        story.ensemble * 100.0
    ));
    let curve: Vec<String> = std::iter::once(story.student_before)
        .chain(story.passes.iter().map(|p| p.accuracy))
        .map(|a| format!("{:.1} %", a * 100.0))
        .collect();
    lines.push(format!(
        "student ({} policy) on {} unlabelled digits, held-out accuracy per pass: {}",
        story.policy,
        story.unlabelled,
        curve.join(" → ")
    ));
    if let Some(last) = story.passes.last() {
        lines.push(format!(
            "teachers unanimous on {:.1} % of the images; {} of {} consensus labels taught",
            last.unanimous * 100.0,
            last.taught,
            story.unlabelled
        ));
    }
    let mut ok = check(
        &mut lines,
        story
            .teachers
            .iter()
            .all(|t| t.same_as_rust == story.held_out),
        format!(
            "every teacher answered the {} held-out digits as a Rust engine loading its model file does (labels and confidences, bit for bit)",
            story.held_out
        ),
    );
    ok &= check(
        &mut lines,
        story.replicas_identical(),
        format!(
            "after every pass the {} student replicas (local + workers) are bit-identical",
            story.passes.first().map_or(0, |p| p.digests.len())
        ),
    );
    ok &= check(
        &mut lines,
        story.student_after >= story.student_before + 0.40,
        format!(
            "the student gained {:.1} points from the teachers alone (at least 40 wanted)",
            (story.student_after - story.student_before) * 100.0
        ),
    );
    report.push(Scenario {
        name: "multi-teacher coordination",
        passed: ok,
        lines,
        seconds: t.elapsed().as_secs_f64(),
    });
    bar.inc(1);

    // 5. Performance comparison of the strategies.
    bar.set_message("5/7 strategy comparison");
    let t = Instant::now();
    let mut lines = vec![format!(
        "{:<22} {:>9} {:>9} {:>10}  engines",
        "strategy", "p50 µs", "p99 µs", "req/s"
    )];
    let mut ok = true;
    let strategies: Vec<(&str, Box<dyn Strategy>, Mode)> = vec![
        ("round-robin", Box::new(RoundRobin::default()), Mode::Single),
        (
            "local-first 80/20",
            Box::new(Preferred::local(0.8)),
            Mode::Single,
        ),
        (
            "remote-first 80/20",
            Box::new(Preferred::remote(0.8)),
            Mode::Single,
        ),
        ("performance (P2C)", Box::new(Performance), Mode::Single),
        ("hedged", Box::new(RoundRobin::default()), Mode::Hedged),
        (
            "redundant ×2",
            Box::new(RoundRobin::default()),
            Mode::Redundant { copies: 2 },
        ),
        (
            "workers, 64 callers",
            Box::new(Preferred::remote(1.0)),
            Mode::Single,
        ),
        (
            "workers, 64, batching",
            Box::new(Preferred::remote(1.0)),
            Mode::Single,
        ),
    ];
    let engine = Arc::new(engine);
    for (i, (name, strategy, mode)) in strategies.into_iter().enumerate() {
        engine.router().set_policy(strategy, mode);
        // The last two rows load the workers with 64 concurrent callers, the last with
        // dynamic batching: concurrent requests to a worker leave together.
        let callers = if name.contains("64") { 64 } else { 8 };
        let batching = name.ends_with("batching").then_some(qnllm::BatchPolicy {
            max_batch: 32,
            max_delay: Duration::ZERO,
        });
        engine.set_dynamic_batching(batching);
        let inputs: Arc<Vec<Vec<f32>>> = Arc::new(
            NormalInputs::new(100 + i as u64, 768)
                .take(args.requests)
                .collect(),
        );
        let began = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|c| {
                let (engine, inputs) = (engine.clone(), inputs.clone());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for x in inputs.iter().skip(c).step_by(callers) {
                        out.push(engine.reason(x).await.map(|a| (a.latency, a.engine)));
                    }
                    out
                })
            })
            .collect();
        let mut latencies = Vec::new();
        let mut engines = BTreeMap::<String, usize>::new();
        let mut errors = 0;
        for task in tasks {
            for outcome in task.await? {
                match outcome {
                    Ok((latency, who)) => {
                        latencies.push(latency);
                        *engines.entry(who).or_default() += 1;
                    }
                    Err(_) => errors += 1,
                }
            }
        }
        let elapsed = began.elapsed();
        latencies.sort();
        let shares: Vec<String> = engines
            .iter()
            .map(|(n, c)| format!("{n} {:.0}%", *c as f64 * 100.0 / args.requests as f64))
            .collect();
        lines.push(format!(
            "{name:<22} {:>9.0} {:>9.0} {:>10.0}  {}",
            us(quantile(&latencies, 0.5)),
            us(quantile(&latencies, 0.99)),
            args.requests as f64 / elapsed.as_secs_f64(),
            shares.join(", ")
        ));
        ok &= errors == 0;
    }
    engine
        .router()
        .set_policy(Box::new(RoundRobin::default()), Mode::Single);
    engine.set_dynamic_batching(None);
    check(
        &mut lines,
        ok,
        format!(
            "every strategy answered all {} requests (8 concurrent callers unless noted)",
            args.requests
        ),
    );
    report.push(Scenario {
        name: "strategy comparison",
        passed: ok,
        lines,
        seconds: t.elapsed().as_secs_f64(),
    });
    bar.inc(1);

    // 6. Cache effectiveness.
    bar.set_message("6/7 cache effectiveness");
    let t = Instant::now();
    let mut lines = Vec::new();
    engine.router().set_cache_enabled(true);
    engine.router().clear_cache();
    let inputs: Vec<Vec<f32>> = NormalInputs::new(6, 768).take(500).collect();
    let before = engine.metrics().router.cache.unwrap_or_default();
    let first = Instant::now();
    for x in &inputs {
        engine.reason(x).await?;
    }
    let cold = first.elapsed();
    let second = Instant::now();
    let mut cached = 0;
    for x in &inputs {
        cached += usize::from(engine.reason(x).await?.cached);
    }
    let warm = second.elapsed();
    let after = engine.metrics().router.cache.unwrap_or_default();
    let (hits, misses) = (after.hits - before.hits, after.misses - before.misses);
    let mut ok = check(
        &mut lines,
        cached == inputs.len(),
        format!(
            "second pass: {cached}/{} answers from the cache",
            inputs.len()
        ),
    );
    ok &= check(
        &mut lines,
        hits == 500 && misses == 500,
        format!(
            "hits {hits}, misses {misses}: hit ratio {:.0} % over both passes",
            hits as f64 * 100.0 / (hits + misses).max(1) as f64
        ),
    );
    lines.push(format!(
        "cold pass {:.1} µs/request, cached pass {:.1} µs/request: {:.1}× faster",
        us(cold) / 500.0,
        us(warm) / 500.0,
        cold.as_secs_f64() / warm.as_secs_f64().max(1e-9)
    ));
    engine.router().set_cache_enabled(false);
    report.push(Scenario {
        name: "cache effectiveness",
        passed: ok,
        lines,
        seconds: t.elapsed().as_secs_f64(),
    });
    bar.inc(1);

    // 7. Server monitoring.
    bar.set_message("7/7 server monitoring");
    let t = Instant::now();
    let metrics = engine.metrics();
    let mut lines = vec![format!(
        "{:<10} {:<7} {:>8} {:>7} {:>8} {:>8} {:>9} {:>9}",
        "engine", "kind", "requests", "errors", "p50 µs", "p99 µs", "ewma µs", "ejections"
    )];
    for e in &metrics.router.engines {
        lines.push(format!(
            "{:<10} {:<7} {:>8} {:>7} {:>8} {:>8} {:>9.0} {:>9}",
            e.info.name,
            e.info.kind,
            e.health.requests,
            e.health.errors,
            e.health.p50_us,
            e.health.p99_us,
            e.health.ewma_us,
            e.health.ejections
        ));
    }
    let r = &metrics.router;
    lines.push(format!(
        "router: {} requests, {} retries, {} hedges ({} won), {} ejections, {} disagreements, {} batches",
        r.requests, r.retries, r.hedges, r.hedge_wins, r.ejections, r.disagreements, r.batches
    ));
    let hub = &metrics.hub;
    lines.push(format!(
        "hub: {} connections open, {} frames in, {} engines joined, {} lost",
        hub["connections"]["open"], hub["frames_in"], hub["engines_joined"], hub["engines_lost"]
    ));
    let all_served = metrics.router.engines.iter().all(|e| e.health.requests > 0);
    let ok = check(
        &mut lines,
        all_served && metrics.router.engines.len() == 3,
        "every engine served requests and reports its latency".into(),
    );
    report.push(Scenario {
        name: "server monitoring",
        passed: ok,
        lines,
        seconds: t.elapsed().as_secs_f64(),
    });
    bar.inc(1);
    bar.finish_and_clear();

    drop(workers); // the workers drain and exit
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.stop().await;
    }
    eprintln!("demo finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(report)
}
