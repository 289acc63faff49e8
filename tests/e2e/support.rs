//! Helpers shared by the end-to-end tests.

use std::process::{Command, Output};

/// The `cutover` binary under test.
pub fn cutover() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.env_remove("CUTOVER_PLAN").env_remove("RUST_LOG");
    cmd
}

/// Runs a command and returns its output, with stdout and stderr as text.
pub fn output(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("failed to run cutover");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// Whether a process exists.
pub fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether a docker container exists (running or not).
pub fn container_exists(id: &str) -> bool {
    Command::new("docker")
        .args(["inspect", "--format", "{{.Id}}", id])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A cutover scenario: two servers, a working directory with a plan file.
pub struct Scenario {
    pub pair: cutover_testkit::PgPair,
    pub dir: tempfile::TempDir,
}

impl Scenario {
    /// The seed scenario with a plan whose URLs carry the servers' passwords.
    pub fn seed() -> Scenario {
        Scenario::with(cutover_testkit::PgPair::seed().unwrap(), "")
    }

    pub fn with(pair: cutover_testkit::PgPair, extra_plan: &str) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let s = Scenario { pair, dir };
        s.write_plan(&s.pair.source.url("app"), &s.pair.target.url("app"), extra_plan);
        s
    }

    pub fn write_plan(&self, source_url: &str, target_url: &str, extra: &str) {
        std::fs::write(
            self.plan_path(),
            format!("[source]\nurl = \"{source_url}\"\n\n[target]\nurl = \"{target_url}\"\n{extra}"),
        )
        .unwrap();
    }

    pub fn plan_path(&self) -> std::path::PathBuf {
        self.dir.path().join("cutover.toml")
    }

    pub fn run_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("cutover-run")
    }

    /// `cutover --plan <plan> <args>` in the scenario's directory.
    pub fn cutover(&self, args: &[&str]) -> Command {
        let mut cmd = cutover();
        cmd.current_dir(self.dir.path())
            .arg("--plan")
            .arg(self.plan_path())
            .args(args);
        cmd.stdin(std::process::Stdio::null());
        cmd
    }

    /// Runs cutover and returns (exit code, stdout, stderr), asserting that
    /// neither password appears in the output.
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let (out, stdout, stderr) = output(&mut self.cutover(args));
        for pw in [self.pair.source.password(), self.pair.target.password()] {
            assert!(
                !stdout.contains(pw) && !stderr.contains(pw),
                "a password leaked in `cutover {args:?}`"
            );
        }
        (out.status.code().unwrap_or(-1), stdout, stderr)
    }

    pub fn target_digest(&self) -> std::collections::BTreeMap<String, cutover_testkit::TableDigest> {
        self.pair.target.digest("app", &["cutover"]).unwrap()
    }

    pub fn source_digest(&self) -> std::collections::BTreeMap<String, cutover_testkit::TableDigest> {
        self.pair.source.digest("app", &["cutover"]).unwrap()
    }
}
