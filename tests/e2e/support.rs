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
