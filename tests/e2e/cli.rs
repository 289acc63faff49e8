//! The command-line surface: help, version, exit codes, the demo.

use crate::support::{cutover, output};

#[test]
fn help_lists_every_subcommand() {
    let (out, stdout, _) = output(cutover().arg("--help"));
    assert!(out.status.success());
    for sub in [
        "init", "inspect", "doctor", "plan", "run", "status", "verify", "rollback", "report", "demo",
    ] {
        assert!(
            stdout.contains(&format!("\n  {sub} ")),
            "--help lacks {sub}:\n{stdout}"
        );
    }
    let (out, stdout, _) = output(cutover().arg("--version"));
    assert!(out.status.success());
    assert_eq!(stdout.trim(), format!("cutover {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn unimplemented_subcommands_say_so() {
    for sub in ["init", "doctor", "report"] {
        let (out, _, stderr) = output(cutover().arg(sub));
        assert_eq!(out.status.code(), Some(6), "{sub}: {stderr}");
        assert!(
            stderr.contains("not implemented yet") && stderr.contains("nothing was done"),
            "{stderr}"
        );
    }
}

#[test]
fn unknown_subcommand_is_bad_input() {
    let (out, _, stderr) = output(cutover().arg("frobnicate"));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("unrecognized subcommand"), "{stderr}");
}

#[test]
fn demo_shows_the_split_and_leaves_no_server() {
    let (out, stdout, stderr) = output(cutover().arg("demo"));
    assert!(out.status.success(), "demo failed: {stderr}");
    assert!(stdout.contains("17 tables  22 users"), "{stdout}");
    assert!(stdout.contains("13 tables  1 users"), "{stdout}");
    assert!(stdout.contains("protected_accounts, protection_settings, row_change_log, user_deletion_audit"));
    assert!(stdout.contains("=== cutover plan"), "{stdout}");
    assert!(
        stdout.contains("verify: the target holds exactly the source's data."),
        "{stdout}"
    );
    let ports: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("source (local)") || l.starts_with("target (external)"))
        .filter_map(|l| l.split("127.0.0.1:").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .collect();
    assert_eq!(ports.len(), 2, "{stdout}");
    for port in ports {
        let alive = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_ok();
        assert!(!alive, "a demo server still listens on {port}");
    }
}
