//! A `qnllm` child process for the integration tests: its stdout lines on a channel, its
//! stderr kept as a log, signals, exit, RSS; killed when the test ends, however it ends.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// How long any wait on a child may take.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// A child process that is killed when the test ends, however it ends.
pub(crate) struct Proc {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    pub(crate) fn spawn(args: &[&str]) -> (Proc, mpsc::Receiver<String>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_qnllm"))
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (pipe, log) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        (Proc { child, stderr }, rx)
    }

    pub(crate) fn pid(&self) -> String {
        self.child.id().to_string()
    }

    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    pub(crate) fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (bounded by `WAIT`) until the process has logged `needle`: the log is read by
    /// another thread, so a line may arrive just after the event it reports.
    pub(crate) fn wait_for_log(&self, needle: &str) {
        let deadline = std::time::Instant::now() + WAIT;
        while !self.log().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "never logged {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process's resident set, in KiB, from /proc/PID/status.
    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    /// Waits for the process to exit by itself (bounded by `WAIT`).
    pub(crate) fn exit_code(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
