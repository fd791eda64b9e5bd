//! `qnllm learn`: multi-teacher learning on the handwritten digits, end to end on real
//! processes: teachers trained on the labelled split, a student replicated on the local
//! engine and worker processes distilled from the unlabelled split, held-out accuracy.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use qnllm::UnifiedEngine;
use qnllm_digits::{accuracy, params, train, Digits, Example, Splits, SPLIT_SEED};
use qnllm_engine::{Model, SpikingEngine};
use qnllm_router::{Backend, ConsensusPolicy, Coordinator, LocalBackend};
use serde::Serialize;

/// Seed of the student's model; the teachers take the seeds after it.
const STUDENT_SEED: u64 = 1;
const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Args)]
pub(crate) struct LearnArgs {
    /// Labelled images each teacher learns from (their true labels).
    #[arg(long, default_value_t = 300)]
    pub(crate) labels: usize,
    /// Unlabelled images the student learns from (the teachers' consensus only).
    #[arg(long, default_value_t = 900)]
    pub(crate) unlabelled: usize,
    /// Teachers (models of seeds 2, 3, …).
    #[arg(long, default_value_t = 3)]
    pub(crate) teachers: usize,
    /// Passes of each teacher over its labelled images (10: each ≥ 85 % held out at 300
    /// labels; 3 left them at 75–81 %).
    #[arg(long, default_value_t = 10)]
    pub(crate) teacher_passes: usize,
    /// Passes of the student over the unlabelled images.
    #[arg(long, default_value_t = 3)]
    pub(crate) passes: usize,
    /// How votes become the consensus and when the student learns it: `majority` (learn
    /// every consensus), `unanimous`, `reliable:SHARE` (reliability-weighted votes, learn
    /// when the consensus holds SHARE of the weight), `peer:SHARE`, or `margin:M` (learn
    /// when the consensus beats the runner-up by more than M of the weight).
    #[arg(long, default_value = "reliable:0.8")]
    pub(crate) policy: String,
    /// Worker processes holding student replicas, besides the local engine.
    #[arg(long, default_value_t = 2)]
    pub(crate) workers: usize,
    /// Of the teachers, how many (the last ones) run as `qnllm worker --teacher` processes
    /// rather than in the hub's process.
    #[arg(long, default_value_t = 1)]
    pub(crate) teacher_workers: usize,
    /// Seed of the labelled / unlabelled / held-out split.
    #[arg(long, default_value_t = SPLIT_SEED)]
    pub(crate) split_seed: u64,
    /// Write an SVG chart of held-out accuracy per pass to FILE.
    #[arg(long, value_name = "FILE")]
    pub(crate) plot: Option<PathBuf>,
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A teacher's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TeacherFigure {
    pub(crate) name: String,
    pub(crate) seed: u64,
    /// `local` (in the hub's process) or `worker` (a `qnllm worker --teacher` process).
    pub(crate) kind: &'static str,
    /// Held-out accuracy, in `[0, 1]`.
    pub(crate) accuracy: f64,
}

/// One pass of the student over the unlabelled images.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Pass {
    pub(crate) pass: usize,
    /// The student's held-out accuracy after the pass.
    pub(crate) accuracy: f64,
    /// A student taught the true labels of the same images, after as many passes.
    pub(crate) true_labels: f64,
    /// Images whose consensus the policy taught.
    pub(crate) taught: usize,
    /// Of those, how many consensus labels were right (the true labels are used for this
    /// count only, never for teaching).
    pub(crate) taught_right: usize,
    /// Share of images on which every teacher gave the same label.
    pub(crate) unanimous: f64,
    /// Mean share of the vote weight behind the consensus.
    pub(crate) agreement: f64,
    /// Every replica's name and model digest after the pass.
    pub(crate) digests: Vec<(String, String)>,
    /// Whether all replicas have one digest and version.
    pub(crate) identical: bool,
    pub(crate) version: u64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Story {
    pub(crate) policy: String,
    pub(crate) labelled: usize,
    pub(crate) unlabelled: usize,
    pub(crate) held_out: usize,
    pub(crate) split_seed: u64,
    pub(crate) teachers: Vec<TeacherFigure>,
    /// The teachers' plain majority vote on the held-out images.
    pub(crate) ensemble: f64,
    pub(crate) student_before: f64,
    pub(crate) student_after: f64,
    pub(crate) passes: Vec<Pass>,
    /// Final teacher reliabilities, as the coordinator estimated them from agreement.
    pub(crate) reliability: Vec<(String, f64)>,
    pub(crate) seconds: f64,
}

impl Default for LearnArgs {
    fn default() -> LearnArgs {
        LearnArgs {
            labels: 300,
            unlabelled: 900,
            teachers: 3,
            teacher_passes: 10,
            passes: 3,
            policy: "reliable:0.8".into(),
            workers: 2,
            teacher_workers: 1,
            split_seed: SPLIT_SEED,
            plot: None,
            json: false,
        }
    }
}

impl Story {
    /// Whether every replica had the same model after every pass.
    pub(crate) fn replicas_identical(&self) -> bool {
        self.passes.iter().all(|p| p.identical)
    }
}

/// Student replicas in worker processes; killed and reaped however the run ends.
struct Replicas(Vec<Child>);

impl Replicas {
    fn spawn(&mut self, addr: &str, name: &str, model: &Path, teacher: bool) -> Result<()> {
        let exe = std::env::current_exe().context("cannot find the qnllm executable")?;
        let child = Command::new(exe)
            .args(["worker", "--connect", addr, "--name", name, "--model"])
            .arg(model)
            .args(teacher.then_some("--teacher"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start worker {name}"))?;
        self.0.push(child);
        Ok(())
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn run(args: LearnArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let bar = progress_bar(args.json);
    let story = runtime.block_on(story(&args, &bar))?;
    bar.finish_and_clear();
    if let Some(path) = &args.plot {
        std::fs::write(path, svg(&story))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&story)?);
    } else {
        print_table(&story);
    }
    if !story.replicas_identical() {
        anyhow::bail!("the student replicas diverged");
    }
    Ok(())
}

pub(crate) fn progress_bar(hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn held_accuracy(engine: &SpikingEngine, examples: &[Example]) -> Result<f64> {
    Ok(accuracy(engine, examples)?)
}

fn backend_accuracy(backend: &LocalBackend, examples: &[Example]) -> Result<f64> {
    let mut right = 0usize;
    for e in examples {
        right += usize::from(backend.reason_now(&e.encoding)?.reasoning.label == e.label);
    }
    Ok(right as f64 / examples.len().max(1) as f64)
}

/// Runs the whole story; `bar` shows the steps.
pub(crate) async fn story(args: &LearnArgs, bar: &ProgressBar) -> Result<Story> {
    let started = Instant::now();
    let policy = ConsensusPolicy::parse(&args.policy).map_err(anyhow::Error::msg)?;
    if args.teachers == 0 || args.passes == 0 {
        anyhow::bail!("--teachers and --passes must be at least 1");
    }
    if args.teacher_workers > args.teachers {
        anyhow::bail!(
            "--teacher-workers {} is more than the {} teachers",
            args.teacher_workers,
            args.teachers
        );
    }
    let local_teachers = args.teachers - args.teacher_workers;
    let digits = Digits::load()?;
    let splits = Splits::new(digits.len(), args.split_seed, args.labels, args.unlabelled);
    let labelled = digits.examples(&splits.labelled);
    let unlabelled = digits.examples(&splits.unlabelled);
    let held_out = digits.examples(&splits.held_out);
    if labelled.is_empty() || unlabelled.is_empty() || held_out.is_empty() {
        anyhow::bail!(
            "the {} images leave {} labelled, {} unlabelled and {} held out: every part needs one",
            digits.len(),
            labelled.len(),
            unlabelled.len(),
            held_out.len()
        );
    }
    bar.set_length((args.teachers * args.teacher_passes * labelled.len()) as u64);
    bar.set_message("training the teachers on their labels");

    // Teachers: each its own random hidden layer, taught the labelled split.
    let mut teacher_models = Vec::new();
    let mut teachers = Vec::new();
    for i in 0..args.teachers {
        let seed = STUDENT_SEED + 1 + i as u64;
        let mut engine = SpikingEngine::from_seed(seed, params())?;
        for _ in 0..args.teacher_passes {
            train(&mut engine, &labelled, 1)?;
            bar.inc(labelled.len() as u64);
        }
        teachers.push(TeacherFigure {
            name: format!("teacher-{i}"),
            seed,
            kind: if i < local_teachers {
                "local"
            } else {
                "worker"
            },
            accuracy: held_accuracy(&engine, &held_out)?,
        });
        teacher_models.push(engine.model().clone());
    }
    let ensemble = ensemble_accuracy(&teacher_models, &held_out).await?;

    // The student: the local engine and the workers serve one untrained model.
    let student = Model::from_seed(STUDENT_SEED, params())?;
    let dir = TempDir(std::env::temp_dir().join(format!("qnllm-learn-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)
        .with_context(|| format!("cannot create {}", dir.0.display()))?;
    let model_file = dir.0.join("student.safetensors");
    student
        .save(&model_file)
        .with_context(|| format!("cannot write {}", model_file.display()))?;
    let mut builder = UnifiedEngine::builder()
        .listen("127.0.0.1:0")
        .model(student.clone())
        .deadline(WAIT);
    for model in &teacher_models[..local_teachers] {
        builder = builder.teacher(model.clone());
    }
    let mut engine = builder.build()?;
    engine.start().await?;
    let addr = engine
        .tcp_addr()
        .context("the embedded hub has no TCP address")?
        .to_string();
    let mut replicas = Replicas(Vec::new());
    // Teacher workers join one at a time, so they are asked in the same order every run.
    bar.set_message("waiting for the teacher workers");
    for (i, model) in teacher_models.iter().enumerate().skip(local_teachers) {
        let file = dir.0.join(format!("teacher-{i}.safetensors"));
        model
            .save(&file)
            .with_context(|| format!("cannot write {}", file.display()))?;
        replicas.spawn(&addr, &format!("teacher-{i}"), &file, true)?;
        wait_for(
            || engine.coordinator().teacher_count() > i,
            "teacher workers",
        )
        .await?;
    }
    for i in 0..args.workers {
        replicas.spawn(&addr, &format!("worker-{}", i + 1), &model_file, false)?;
    }
    bar.set_message("waiting for the workers");
    wait_for(
        || engine.router().backends().len() > args.workers, // the local engine and the workers
        "workers",
    )
    .await?;
    engine.coordinator().set_policy(policy);
    let local = engine
        .locals()
        .first()
        .cloned()
        .context("the engine has no local student")?;
    let student_before = backend_accuracy(&local, &held_out)?;

    // The same student taught the true labels of the same images: the reference.
    let mut reference = SpikingEngine::new(student);

    bar.set_position(0);
    bar.set_length((args.passes * unlabelled.len()) as u64);
    let mut passes = Vec::new();
    for pass in 1..=args.passes {
        bar.set_message(format!("pass {pass}/{}: distilling", args.passes));
        let (mut taught, mut taught_right, mut unanimous, mut agreement) = (0, 0, 0, 0.0);
        for e in &unlabelled {
            let step = engine.coordinate(&e.encoding, true).await?;
            taught += usize::from(step.taught);
            taught_right += usize::from(step.taught && step.consensus == e.label);
            unanimous += usize::from(step.unanimous);
            agreement += step.agreement;
            bar.inc(1);
        }
        train(&mut reference, &unlabelled, 1)?;
        let mut digests: Vec<(String, String, u64)> = engine
            .router()
            .backends()
            .iter()
            .map(|b| {
                let info = b.describe();
                (info.name, info.model_digest.to_hex(), info.model_version)
            })
            .collect();
        // Workers join in any order; the report lists them by name.
        digests.sort();
        let identical = digests.len() == 1 + args.workers
            && digests
                .windows(2)
                .all(|w| (&w[0].1, w[0].2) == (&w[1].1, w[1].2))
            && digests
                .first()
                .is_some_and(|d| d.1 == local.info().digest.to_hex());
        let n = unlabelled.len() as f64;
        passes.push(Pass {
            pass,
            accuracy: backend_accuracy(&local, &held_out)?,
            true_labels: held_accuracy(&reference, &held_out)?,
            taught,
            taught_right,
            unanimous: unanimous as f64 / n,
            agreement: agreement / n,
            version: digests.first().map_or(0, |d| d.2),
            digests: digests.into_iter().map(|(n, d, _)| (n, d)).collect(),
            identical,
        });
    }
    let reliability = engine.coordinator().metrics().teachers;
    drop(replicas);
    engine.stop().await;
    Ok(Story {
        policy: policy.name(),
        labelled: labelled.len(),
        unlabelled: unlabelled.len(),
        held_out: held_out.len(),
        split_seed: args.split_seed,
        teachers,
        ensemble,
        student_before,
        student_after: passes.last().map_or(student_before, |p| p.accuracy),
        passes,
        reliability,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Held-out accuracy of the teachers' plain majority vote (confidence breaks ties).
async fn ensemble_accuracy(models: &[Model], held_out: &[Example]) -> Result<f64> {
    let teachers = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            Arc::new(LocalBackend::new(
                format!("teacher-{i}"),
                SpikingEngine::new(m.clone()),
            )) as Arc<dyn Backend>
        })
        .collect();
    let vote = Coordinator::new(teachers, Vec::new());
    let mut right = 0usize;
    for e in held_out {
        let step = vote.coordinate(&e.encoding, 0, false, WAIT).await?;
        right += usize::from(step.consensus == e.label);
    }
    Ok(right as f64 / held_out.len().max(1) as f64)
}

async fn wait_for(joined: impl Fn() -> bool, what: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !joined() {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the {what} did not join the hub within {WAIT:?}");
        }
        // The CLI waits for the processes it started; the hub has no join future to await.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn print_table(s: &Story) {
    println!(
        "digits: {} labelled, {} unlabelled, {} held out (split seed {}); policy {}",
        s.labelled, s.unlabelled, s.held_out, s.split_seed, s.policy
    );
    println!("\nheld-out accuracy");
    for t in &s.teachers {
        let name = format!("{} (seed {}, {})", t.name, t.seed, t.kind);
        println!("  {name:<26} {:>8}", pct(t.accuracy));
    }
    println!("  {:<26} {:>8}", "teachers' majority vote", pct(s.ensemble));
    println!("  {:<26} {:>8}", "student before", pct(s.student_before));
    println!(
        "\n{:>4} {:>9} {:>12} {:>13} {:>10} {:>10}  replicas",
        "pass", "student", "true labels", "taught/right", "unanimous", "agreement"
    );
    for p in &s.passes {
        println!(
            "{:>4} {:>9} {:>12} {:>13} {:>10} {:>10}  {} at v{}",
            p.pass,
            pct(p.accuracy),
            pct(p.true_labels),
            format!("{}/{}", p.taught, p.taught_right),
            pct(p.unanimous),
            pct(p.agreement),
            if p.identical { "identical" } else { "DIVERGED" },
            p.version
        );
    }
    println!(
        "\nstudent after {} passes: {} ({:+.1} points over untrained; majority vote {}, true labels {})",
        s.passes.len(),
        pct(s.student_after),
        (s.student_after - s.student_before) * 100.0,
        pct(s.ensemble),
        s.passes.last().map_or_else(String::new, |p| pct(p.true_labels))
    );
    let reliability: Vec<String> = s
        .reliability
        .iter()
        .map(|(n, r)| format!("{n} {r:.3}"))
        .collect();
    println!(
        "teacher reliability (from agreement): {}",
        reliability.join(", ")
    );
    if let Some(last) = s.passes.last() {
        println!("replica digests:");
        for (name, digest) in &last.digests {
            println!("  {name:<10} {digest}");
        }
    }
    println!("{:.1} s", s.seconds);
}

/// Held-out accuracy per pass as an SVG line chart: the student, the student taught the true
/// labels, and flat lines for each teacher and their majority vote.
pub(crate) fn svg(s: &Story) -> String {
    use std::fmt::Write as _;
    const W: f64 = 760.0;
    const H: f64 = 440.0;
    const L: f64 = 60.0;
    const R: f64 = 230.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    let passes = s.passes.len().max(1) as f64;
    let x = |pass: f64| L + pass / passes * (W - L - R);
    let y = |acc: f64| T + (1.0 - acc) * (H - T - B);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{L}" y="22" font-size="15">Held-out accuracy on the digits, policy {} ({} labels per teacher)</text>"#,
        s.policy, s.labelled
    );
    for tick in 0..=10 {
        let acc = f64::from(tick) / 10.0;
        let _ = writeln!(
            out,
            r##"<line x1="{L}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}%</text>"##,
            W - R,
            L - 6.0,
            y(acc) + 4.0,
            tick * 10,
            y = y(acc)
        );
    }
    for pass in 0..=s.passes.len() {
        let px = x(pass as f64);
        let _ = writeln!(
            out,
            r#"<text x="{px:.1}" y="{}" text-anchor="middle">{pass}</text>"#,
            H - B + 18.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">pass over the unlabelled images</text>"#,
        (L + W - R) / 2.0,
        H - 12.0
    );
    let mut legend = Vec::new();
    let mut line = |points: Vec<(f64, f64)>, colour: &str, dash: &str, label: String| {
        let path: Vec<String> = points
            .iter()
            .map(|(p, a)| format!("{:.1},{:.1}", x(*p), y(*a)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
            path.join(" ")
        );
        for (p, a) in &points {
            if dash.is_empty() {
                let _ = writeln!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                    x(*p),
                    y(*a)
                );
            }
        }
        legend.push((colour.to_string(), dash.to_string(), label));
    };
    let flat = |acc: f64| vec![(0.0, acc), (passes, acc)];
    let student: Vec<(f64, f64)> = std::iter::once((0.0, s.student_before))
        .chain(s.passes.iter().map(|p| (p.pass as f64, p.accuracy)))
        .collect();
    let truth: Vec<(f64, f64)> = std::iter::once((0.0, s.student_before))
        .chain(s.passes.iter().map(|p| (p.pass as f64, p.true_labels)))
        .collect();
    line(student, "#d62728", "", "student (teachers only)".into());
    line(truth, "#1f77b4", "", "student (true labels)".into());
    line(
        flat(s.ensemble),
        "#2ca02c",
        "6 3",
        format!("majority vote {:.1}%", s.ensemble * 100.0),
    );
    let greys = ["#7f7f7f", "#9467bd", "#8c564b", "#bcbd22", "#17becf"];
    for (i, t) in s.teachers.iter().enumerate() {
        line(
            flat(t.accuracy),
            greys[i % greys.len()],
            "2 3",
            format!("{} {:.1}%", t.name, t.accuracy * 100.0),
        );
    }
    let taught: Vec<(f64, f64)> = s
        .passes
        .iter()
        .map(|p| (p.pass as f64, p.taught as f64 / s.unlabelled.max(1) as f64))
        .collect();
    if !taught.is_empty() {
        line(taught, "#ff7f0e", "", "share of images taught".into());
    }
    for (i, (colour, dash, label)) in legend.iter().enumerate() {
        let ly = T + 10.0 + i as f64 * 20.0;
        let lx = W - R + 16.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}">{label}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0
        );
    }
    out.push_str("</svg>\n");
    out
}
