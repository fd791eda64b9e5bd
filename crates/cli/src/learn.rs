//! `qnllm learn`: multi-teacher learning on the handwritten digits, end to end on real
//! processes: teachers trained on the labelled split, a student replicated on the local
//! engine and worker processes distilled from the unlabelled split, held-out accuracy.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use qnllm::UnifiedEngine;
use qnllm_digits::{accuracy, params, train, Digits, Example, Splits, SPLIT_SEED};
use qnllm_engine::{Engine, Model, SpikingEngine};
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
    /// Teachers (models of seeds 2, 3, …); 3 unless --teacher-kinds names them.
    #[arg(long)]
    pub(crate) teachers: Option<usize>,
    /// What runs each teacher, comma-separated, one per teacher: `rust` (the Rust engine in
    /// the hub's own process), `rust-worker` (`qnllm worker --teacher`), `python` (`python -m
    /// qnllm worker --teacher`, the Rust engine through PyO3; needs --python) or `cpp`
    /// (`qnllm-cpp-worker --teacher`, the independent C++ engine; needs --cpp-worker). Each
    /// worker loads its own trained model file. The hub's own teachers come first (the
    /// coordinator asks them first), the workers after in the order given. Without it: the
    /// last --teacher-workers teachers are `rust-worker`, the others `rust`.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "KIND,...")]
    pub(crate) teacher_kinds: Vec<TeacherKind>,
    /// The Python interpreter of the `python` teachers: one that can `import qnllm` (the
    /// bindings: `pip install ./bindings/python`).
    #[arg(long, value_name = "PATH", env = "QNLLM_PYTHON")]
    pub(crate) python: Option<PathBuf>,
    /// The `qnllm-cpp-worker` binary of the `cpp` teachers (`cmake -S bindings/cpp -B
    /// target/cpp/build && cmake --build target/cpp/build --target qnllm-cpp-worker`).
    #[arg(long, value_name = "PATH", env = "QNLLM_CPP_WORKER")]
    pub(crate) cpp_worker: Option<PathBuf>,
    /// Passes of each teacher over its labelled images (10: each 93.8–96.0 % held out at 300
    /// labels; 3: 92.3–93.6 %, split seed 14).
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
    /// rather than in the hub's process (without --teacher-kinds).
    #[arg(long, default_value_t = 1, conflicts_with = "teacher_kinds")]
    pub(crate) teacher_workers: usize,
    /// Seed of the labelled / unlabelled / held-out split.
    #[arg(long, default_value_t = SPLIT_SEED)]
    pub(crate) split_seed: u64,
    /// Write an SVG chart of held-out accuracy per pass to FILE.
    #[arg(long, value_name = "FILE")]
    pub(crate) plot: Option<PathBuf>,
    /// Keep the run's files in DIR: every teacher's trained model (teacher-N.safetensors),
    /// the untrained student's, and answers.json (the held-out images, and every teacher's
    /// label and confidence on each, as its own process answered).
    #[arg(long, value_name = "DIR")]
    pub(crate) keep: Option<PathBuf>,
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What runs a teacher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum TeacherKind {
    /// The Rust engine in the hub's own process.
    Rust,
    /// The Rust engine in a `qnllm worker --teacher` process.
    RustWorker,
    /// `python -m qnllm worker --teacher --engine qnllm.engines:ReferenceEngine`.
    Python,
    /// `qnllm-cpp-worker --teacher`.
    Cpp,
}

impl TeacherKind {
    /// The language of the engine that answers.
    pub(crate) fn language(self) -> &'static str {
        match self {
            TeacherKind::Rust | TeacherKind::RustWorker => "Rust",
            TeacherKind::Python => "Python",
            TeacherKind::Cpp => "C++",
        }
    }

    /// Where it runs.
    pub(crate) fn process(self) -> &'static str {
        match self {
            TeacherKind::Rust => "the hub's process",
            TeacherKind::RustWorker => "qnllm worker --teacher",
            TeacherKind::Python => "python -m qnllm worker --teacher",
            TeacherKind::Cpp => "qnllm-cpp-worker --teacher",
        }
    }

    /// The name `--teacher-kinds` takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            TeacherKind::Rust => "rust",
            TeacherKind::RustWorker => "rust-worker",
            TeacherKind::Python => "python",
            TeacherKind::Cpp => "cpp",
        }
    }

    fn in_hub(self) -> bool {
        self == TeacherKind::Rust
    }
}

/// A teacher's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TeacherFigure {
    pub(crate) name: String,
    pub(crate) seed: u64,
    /// What ran it (`rust`, `rust-worker`, `python`, `cpp`).
    pub(crate) kind: TeacherKind,
    /// The language of its engine (`Rust`, `Python`, `C++`).
    pub(crate) language: &'static str,
    /// Where it ran: the hub's process, or the command of its worker process.
    pub(crate) process: &'static str,
    /// Its worker process, when it had one.
    pub(crate) pid: Option<u32>,
    /// Its trained model's digest.
    pub(crate) model_digest: String,
    /// Its model file, with --keep.
    pub(crate) model: Option<PathBuf>,
    /// Held-out accuracy of its own answers (asked through the hub), in `[0, 1]`.
    pub(crate) accuracy: f64,
    /// Of the held-out images, how many it answered bit-identically (label and confidence)
    /// to a Rust engine in this process loading its model file.
    pub(crate) same_as_rust: usize,
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
            teachers: None,
            teacher_kinds: Vec::new(),
            python: None,
            cpp_worker: None,
            teacher_passes: 10,
            passes: 3,
            policy: "reliable:0.8".into(),
            workers: 2,
            teacher_workers: 1,
            split_seed: SPLIT_SEED,
            plot: None,
            keep: None,
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

/// The worker processes of a run (teachers and student replicas); killed and reaped however
/// the run ends.
struct Processes(Vec<(String, Child)>);

impl Processes {
    fn spawn(&mut self, name: &str, mut command: Command) -> Result<u32> {
        let child = command
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", command.get_program()))?;
        let pid = child.id();
        self.0.push((name.to_string(), child));
        Ok(pid)
    }

    /// The first process that has exited, and how.
    fn exited(&mut self) -> Option<(String, ExitStatus)> {
        self.0
            .iter_mut()
            .find_map(|(name, child)| match child.try_wait() {
                Ok(Some(status)) => Some((name.clone(), status)),
                _ => None,
            })
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The programs that run the Python and C++ teachers, checked before anything starts.
#[derive(Debug, Default)]
struct Launchers {
    python: Option<PathBuf>,
    cpp_worker: Option<PathBuf>,
}

impl Launchers {
    fn for_kinds(args: &LearnArgs, kinds: &[TeacherKind]) -> Result<Launchers> {
        let mut launchers = Launchers::default();
        if kinds.contains(&TeacherKind::Python) {
            let python = args.python.clone().context(
                "a python teacher needs an interpreter that can import qnllm: set --python PATH (or QNLLM_PYTHON)",
            )?;
            check_python(&python)?;
            launchers.python = Some(python);
        }
        if kinds.contains(&TeacherKind::Cpp) {
            let cpp = args.cpp_worker.clone().context(
                "a cpp teacher needs the qnllm-cpp-worker binary: set --cpp-worker PATH (or QNLLM_CPP_WORKER)",
            )?;
            check_cpp_worker(&cpp)?;
            launchers.cpp_worker = Some(cpp);
        }
        Ok(launchers)
    }

    /// The command of a worker teacher serving `model` to the hub at `addr` as `name`.
    fn command(&self, kind: TeacherKind, addr: &str, name: &str, model: &Path) -> Result<Command> {
        let mut command = match kind {
            TeacherKind::Rust => anyhow::bail!("{name} runs in the hub's process, not a worker"),
            TeacherKind::RustWorker => {
                let exe = std::env::current_exe().context("cannot find the qnllm executable")?;
                let mut c = Command::new(exe);
                c.args(["worker", "--teacher"]);
                c
            }
            TeacherKind::Python => {
                let python = self.python.as_ref().context("no --python")?;
                let mut c = Command::new(python);
                c.args([
                    "-m",
                    "qnllm",
                    "worker",
                    "--teacher",
                    "--engine",
                    "qnllm.engines:ReferenceEngine",
                ]);
                c
            }
            TeacherKind::Cpp => {
                let mut c = Command::new(self.cpp_worker.as_ref().context("no --cpp-worker")?);
                c.args(["--teacher", "--quiet"]);
                c
            }
        };
        command
            .args(["--connect", addr, "--name", name, "--model"])
            .arg(model);
        Ok(command)
    }
}

/// Checks that `python` runs and its bindings' worker takes `--model`.
///
/// # Errors
///
/// One line naming `--python` and what to do.
pub(crate) fn check_python(python: &Path) -> Result<()> {
    let out = Command::new(python)
        .args(["-m", "qnllm", "worker", "--help"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "--python {}: cannot run it; set --python (or QNLLM_PYTHON) to an interpreter that can import qnllm",
                python.display()
            )
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = stderr.lines().last().unwrap_or("no error message").trim();
        anyhow::bail!(
            "--python {} cannot run the qnllm worker ({why}): install the bindings in it (pip install ./bindings/python) or set --python (or QNLLM_PYTHON) to one that has them",
            python.display()
        );
    }
    if !String::from_utf8_lossy(&out.stdout).contains("--model") {
        anyhow::bail!(
            "--python {}: its qnllm bindings are older than `worker --model`; reinstall them (pip install ./bindings/python)",
            python.display()
        );
    }
    Ok(())
}

/// Checks that `path` is an executable file.
///
/// # Errors
///
/// One line naming `--cpp-worker` and how to build the binary.
pub(crate) fn check_cpp_worker(path: &Path) -> Result<()> {
    let build = "build it with `cmake -S bindings/cpp -B target/cpp/build && cmake --build target/cpp/build --target qnllm-cpp-worker`";
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "--cpp-worker {}: no such file; {build}, and set --cpp-worker (or QNLLM_CPP_WORKER) to it",
            path.display()
        )
    })?;
    #[cfg(unix)]
    let executable = {
        use std::os::unix::fs::PermissionsExt as _;
        meta.permissions().mode() & 0o111 != 0
    };
    #[cfg(not(unix))]
    let executable = true;
    if !meta.is_file() || !executable {
        anyhow::bail!(
            "--cpp-worker {} is not an executable file; {build}, and set --cpp-worker (or QNLLM_CPP_WORKER) to it",
            path.display()
        );
    }
    Ok(())
}

/// The build's `target/` directory, when this executable is in one (`target/debug/qnllm`).
fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let target = exe.parent()?.parent()?;
    (target.file_name()? == "target").then(|| target.to_path_buf())
}

/// The interpreter `qnllm demo` runs Python teachers with: `QNLLM_PYTHON` when set, else
/// `target/venv-python/bin/python` beside this executable's build (where `.ci/suite/20-python`
/// and `55-teachers` make it); `Err` says why there is none.
pub(crate) fn discover_python() -> Result<PathBuf, String> {
    let path = match std::env::var_os("QNLLM_PYTHON").filter(|v| !v.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => target_dir()
            .map(|t| t.join("venv-python/bin/python"))
            .filter(|p| p.exists())
            .ok_or("QNLLM_PYTHON is not set and there is no target/venv-python/bin/python")?,
    };
    check_python(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

/// The C++ worker `qnllm demo` runs C++ teachers with: `QNLLM_CPP_WORKER` when set, else
/// `target/cpp/build/qnllm-cpp-worker` or `target/cpp/teachers/qnllm-cpp-worker` beside this
/// executable's build (where `.ci/suite/30-cpp` and `55-teachers` build it); `Err` says why
/// there is none.
pub(crate) fn discover_cpp_worker() -> Result<PathBuf, String> {
    let path = match std::env::var_os("QNLLM_CPP_WORKER").filter(|v| !v.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => target_dir()
            .into_iter()
            .flat_map(|t| {
                ["build", "teachers"].map(|tree| t.join("cpp").join(tree).join("qnllm-cpp-worker"))
            })
            .find(|p| p.exists())
            .ok_or(
                "QNLLM_CPP_WORKER is not set and there is no target/cpp/build/qnllm-cpp-worker",
            )?,
    };
    check_cpp_worker(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

/// The run's directory: --keep's, kept, or a temporary one removed on drop.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
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

impl LearnArgs {
    /// Every teacher's kind, the hub's own first.
    ///
    /// # Errors
    ///
    /// A count that --teachers, --teacher-kinds and --teacher-workers do not agree on.
    pub(crate) fn kinds(&self) -> Result<Vec<TeacherKind>> {
        if self.teacher_kinds.is_empty() {
            let n = self.teachers.unwrap_or(3);
            if self.teacher_workers > n {
                anyhow::bail!(
                    "--teacher-workers {} is more than the {n} teachers",
                    self.teacher_workers
                );
            }
            let mut kinds = vec![TeacherKind::Rust; n - self.teacher_workers];
            kinds.extend(vec![TeacherKind::RustWorker; self.teacher_workers]);
            return Ok(kinds);
        }
        if let Some(n) = self.teachers.filter(|&n| n != self.teacher_kinds.len()) {
            anyhow::bail!(
                "--teachers {n} but --teacher-kinds names {}: name one kind per teacher (or leave out --teachers)",
                self.teacher_kinds.len()
            );
        }
        let mut kinds = self.teacher_kinds.clone();
        // Stable: the workers keep the order given.
        kinds.sort_by_key(|k| !k.in_hub());
        Ok(kinds)
    }
}

/// Runs the whole story; `bar` shows the steps.
pub(crate) async fn story(args: &LearnArgs, bar: &ProgressBar) -> Result<Story> {
    let started = Instant::now();
    let policy = ConsensusPolicy::parse(&args.policy).map_err(anyhow::Error::msg)?;
    let kinds = args.kinds()?;
    if kinds.is_empty() || args.passes == 0 {
        anyhow::bail!("--teachers and --passes must be at least 1");
    }
    // Before anything starts: a missing interpreter or binary is an error, not half a cluster.
    let launchers = Launchers::for_kinds(args, &kinds)?;
    let local_teachers = kinds.iter().filter(|k| k.in_hub()).count();
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
    let dir = match &args.keep {
        Some(path) => RunDir {
            path: path.clone(),
            keep: true,
        },
        None => RunDir {
            path: std::env::temp_dir().join(format!("qnllm-learn-{}", std::process::id())),
            keep: false,
        },
    };
    std::fs::create_dir_all(&dir.path)
        .with_context(|| format!("cannot create {}", dir.path.display()))?;
    bar.set_length((kinds.len() * args.teacher_passes * labelled.len()) as u64);
    bar.set_message("training the teachers on their labels");

    // Teachers: each its own random hidden layer, taught the labelled split, saved to a file
    // that its process loads.
    let mut teacher_models = Vec::new();
    let mut teacher_files = Vec::new();
    for i in 0..kinds.len() {
        let seed = STUDENT_SEED + 1 + i as u64;
        let mut engine = SpikingEngine::from_seed(seed, params())?;
        for _ in 0..args.teacher_passes {
            train(&mut engine, &labelled, 1)?;
            bar.inc(labelled.len() as u64);
        }
        let file = dir.path.join(format!("teacher-{i}.safetensors"));
        engine
            .model()
            .save(&file)
            .with_context(|| format!("cannot write {}", file.display()))?;
        teacher_models.push(engine.model().clone());
        teacher_files.push(file);
    }
    let ensemble = ensemble_accuracy(&teacher_models, &held_out).await?;

    // The student: the local engine and the workers serve one untrained model.
    let student = Model::from_seed(STUDENT_SEED, params())?;
    let model_file = dir.path.join("student.safetensors");
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
    let mut processes = Processes(Vec::new());
    let mut pids = vec![None; kinds.len()];
    // Teacher workers join one at a time, so they are asked in the same order every run.
    bar.set_message("waiting for the teacher workers");
    for (i, kind) in kinds.iter().enumerate().skip(local_teachers) {
        let name = format!("teacher-{i}");
        let command = launchers.command(*kind, &addr, &name, &teacher_files[i])?;
        pids[i] = Some(processes.spawn(&name, command)?);
        wait_for(
            || engine.coordinator().teacher_count() > i,
            &format!("{name} ({})", kind.name()),
            &mut processes,
        )
        .await?;
    }
    for i in 0..args.workers {
        let name = format!("worker-{}", i + 1);
        let exe = std::env::current_exe().context("cannot find the qnllm executable")?;
        let mut command = Command::new(exe);
        command
            .args(["worker", "--connect", &addr, "--name", &name, "--model"])
            .arg(&model_file);
        processes.spawn(&name, command)?;
    }
    bar.set_message("waiting for the workers");
    wait_for(
        || engine.router().backends().len() > args.workers, // the local engine and the workers
        "student workers",
        &mut processes,
    )
    .await?;
    let names = engine.coordinator().teacher_names();
    let want: Vec<String> = (0..kinds.len()).map(|i| format!("teacher-{i}")).collect();
    if names != want {
        anyhow::bail!("the hub's teachers are {names:?}, not {want:?}");
    }
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
    bar.set_length((args.passes * unlabelled.len() + held_out.len()) as u64);
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

    // Every teacher's own answers on the held-out images, asked through the hub (after the
    // distillation, so its reliabilities are the distillation's alone).
    bar.set_message("asking every teacher about the held-out images");
    let mut answers: Vec<Vec<(u32, f64)>> = vec![Vec::new(); kinds.len()];
    for (k, e) in held_out.iter().enumerate() {
        let step = engine.coordinate(&e.encoding, false).await?;
        for (i, name) in want.iter().enumerate() {
            let vote = step
                .votes
                .iter()
                .find(|v| &v.engine == name)
                .with_context(|| format!("{name} did not answer held-out image {k}"))?;
            answers[i].push((vote.label, vote.confidence));
        }
        bar.inc(1);
    }
    drop(processes);
    engine.stop().await;

    let mut teachers = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        // A Rust engine loading the model file the teacher loaded.
        let rust = SpikingEngine::new(
            Model::load(&teacher_files[i])
                .with_context(|| format!("cannot read {}", teacher_files[i].display()))?,
        );
        let mut same = 0usize;
        for (e, &(label, confidence)) in held_out.iter().zip(&answers[i]) {
            let r = rust.reason(&e.encoding)?;
            same += usize::from(r.label == label && f64::from(r.confidence) == confidence);
        }
        let right = held_out
            .iter()
            .zip(&answers[i])
            .filter(|(e, a)| e.label == a.0)
            .count();
        let name = want[i].clone();
        teachers.push(TeacherFigure {
            seed: STUDENT_SEED + 1 + i as u64,
            kind: *kind,
            language: kind.language(),
            process: kind.process(),
            pid: pids[i],
            model_digest: teacher_models[i].digest().to_hex(),
            model: dir.keep.then(|| teacher_files[i].clone()),
            accuracy: right as f64 / held_out.len() as f64,
            same_as_rust: same,
            name,
        });
    }
    if dir.keep {
        write_answers(&dir.path, &splits.held_out, &held_out, &teachers, &answers)?;
    }
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

/// `DIR/answers.json`: the held-out images (index, label, encoding) and every teacher's
/// labels and confidences on them, in order.
fn write_answers(
    dir: &Path,
    indices: &[usize],
    held_out: &[Example],
    teachers: &[TeacherFigure],
    answers: &[Vec<(u32, f64)>],
) -> Result<()> {
    let images: Vec<serde_json::Value> = indices
        .iter()
        .zip(held_out)
        .map(|(index, e)| serde_json::json!({"index": index, "label": e.label, "encoding": e.encoding}))
        .collect();
    let teachers: Vec<serde_json::Value> = teachers
        .iter()
        .zip(answers)
        .map(|(t, a)| {
            serde_json::json!({
                "name": t.name,
                "kind": t.kind,
                "model": t.model,
                "labels": a.iter().map(|x| x.0).collect::<Vec<_>>(),
                "confidences": a.iter().map(|x| x.1).collect::<Vec<_>>(),
            })
        })
        .collect();
    let file = dir.join("answers.json");
    let text =
        serde_json::to_string(&serde_json::json!({"held_out": images, "teachers": teachers}))?;
    std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))
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

/// Waits until `joined`; fails when one of `processes` exits first, or after [`WAIT`].
async fn wait_for(joined: impl Fn() -> bool, what: &str, processes: &mut Processes) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !joined() {
        if let Some((name, status)) = processes.exited() {
            anyhow::bail!(
                "{name} exited ({status}) before {what} joined the hub; its error is above"
            );
        }
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
    println!(
        "\n{:<36} {:>8}  {:<7} {:<33} same answers as Rust",
        "held-out accuracy", "", "engine", "process"
    );
    for t in &s.teachers {
        let name = format!("  {} (seed {}, {})", t.name, t.seed, t.kind.name());
        println!(
            "{name:<36} {:>8}  {:<7} {:<33} {}/{}",
            pct(t.accuracy),
            t.language,
            t.process,
            t.same_as_rust,
            s.held_out
        );
    }
    println!("  {:<34} {:>8}", "teachers' majority vote", pct(s.ensemble));
    println!("  {:<34} {:>8}", "student before", pct(s.student_before));
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
