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
fn init_writes_a_template_once() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("cutover.toml");
    let (out, _, stderr) = output(cutover().arg("--plan").arg(&plan).arg("init"));
    assert!(out.status.success(), "{stderr}");
    let text = std::fs::read_to_string(&plan).unwrap();
    for key in [
        "[source]",
        "url_env",
        "aliases",
        "[[consumer]]",
        "health_url",
        "[decommission]",
        "destroy",
    ] {
        assert!(text.contains(key), "the template lacks {key}");
    }
    std::fs::write(&plan, "mine").unwrap();
    let (out, _, stderr) = output(cutover().arg("--plan").arg(&plan).arg("init"));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&plan).unwrap(),
        "mine",
        "nothing was overwritten"
    );
    let (out, _, _) = output(cutover().arg("--plan").arg(&plan).args(["init", "--force"]));
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&plan).unwrap(), text);
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
    for expected in [
        "split brain: the consumers use 2 different databases",
        "healthy: every consumer uses the same database",
        "verify: the target holds exactly the source's data.",
        "# Cutover report",
        "| production | yes |",
        "quarantined as app_retired_",
        "Both servers stopped and removed.",
    ] {
        assert!(
            stdout.contains(expected),
            "the demo lacks {expected:?}:\n{stdout}"
        );
    }
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

/// `--output json`: one object per line, every kind documented in docs/events.md.
#[test]
fn json_events_follow_the_documented_schema() {
    let s = crate::support::Scenario::seed();
    let (code, stdout, stderr) = s.run(&["run", "--yes", "--output", "json", "--until", "copy"]);
    assert_eq!(code, 0, "{stderr}");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md")).unwrap();
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for e in &events {
        let kind = e["event"]
            .as_str()
            .unwrap_or_else(|| panic!("no event field: {e}"));
        assert!(
            docs.contains(&format!("| `{kind}` |")),
            "event {kind} is not documented"
        );
    }
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"run_started"));
    assert_eq!(kinds.last(), Some(&"run_finished"));
    assert_eq!(events.last().unwrap()["status"], "paused");
    let done: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "stage_done")
        .map(|e| e["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        done,
        [
            "discover",
            "backup-target",
            "freeze-source",
            "clear-target",
            "copy"
        ]
    );
    let tables: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "table_progress" && e["done"] == true)
        .collect();
    assert_eq!(tables.len(), 17);
    let users = tables.iter().find(|e| e["table"] == "users").unwrap();
    assert_eq!(users["rows"], 22);
    assert!(users["bytes"].as_u64().unwrap() > 0 && users["estimated_bytes"].is_u64());
    assert!(kinds.contains(&"copy_started"));
    assert!(stderr.is_empty(), "JSON mode writes nothing else: {stderr}");
}

#[test]
fn init_scan_finds_the_consumers_of_both_databases() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (src, tgt) = (
        "postgresql://app:pw@db-old.internal:5432/app",
        "postgresql://app@db-new.internal:6432/app",
    );
    std::fs::create_dir_all(d.join("srv/backend")).unwrap();
    std::fs::create_dir_all(d.join(".git")).unwrap();
    std::fs::write(
        d.join("srv/backend/.env"),
        "PORT=1\nDATABASE_URL=postgresql://app:pw@db-old.internal:5432/app\n",
    )
    .unwrap();
    std::fs::write(d.join("srv/staging.env"), format!("DB={tgt}\n")).unwrap();
    std::fs::write(
        d.join("srv/backup.sh"),
        "pg_dump \"host=db-old.internal port=5432 dbname=app\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("srv/other.env"),
        "DATABASE_URL=postgresql://x@elsewhere:5432/app\n",
    )
    .unwrap();
    std::fs::write(d.join(".git/config"), format!("url = {src}\n")).unwrap();
    let plan = d.join("cutover.toml");
    let (out, _, stderr) = output(
        cutover()
            .arg("--plan")
            .arg(&plan)
            .args(["init", "--source", src, "--target", tgt, "--scan"])
            .arg(d),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("3 consumer(s) found"), "{stderr}");
    assert!(stderr.contains("holds a password"), "{stderr}");
    let text = std::fs::read_to_string(&plan).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&plan).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for expected in [
        format!("url = \"{src}\""),
        format!("url = \"{tgt}\""),
        "kind = \"env\"\npath = \"".to_string(),
        "srv/backend/.env\"\nkey = \"DATABASE_URL\"".to_string(),
        "srv/staging.env\"\nkey = \"DB\"".to_string(),
        "name = \"backup\"\nkind = \"text\"".to_string(),
    ] {
        assert!(text.contains(&expected), "{expected:?} missing:\n{text}");
    }
    assert!(!text.contains("other.env") && !text.contains(".git"), "{text}");
    assert!(
        !text.contains("production-backend"),
        "the example consumer is replaced"
    );
    // What init wrote is a valid plan.
    let (out, _, stderr) = output(
        cutover()
            .arg("--plan")
            .arg(&plan)
            .args(["doctor", "--output", "json"]),
    );
    assert!(
        !stderr.contains("line "),
        "the written plan does not parse: {stderr}"
    );
    let _ = out;
}

#[test]
fn completions_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let (out, stdout, _) = output(cutover().args(["completions", shell]));
        assert!(out.status.success());
        let plan_option = stdout.contains("--plan") || stdout.contains("-l plan");
        assert!(stdout.contains("rollback") && plan_option, "{shell}");
    }
}

/// What an operator sees at a terminal: after `cutover run`, each stage's
/// result line (the backup's path and proof, verify's verdict) is still on
/// the screen, with the copy's table lines; read from a real pseudo-terminal
/// (tmux), whose screen is what is left after the progress bars are gone.
#[test]
fn a_terminal_keeps_every_stage_result_on_screen() {
    let s = crate::support::Scenario::seed();
    let term = Terminal::start(&s, "run --yes");
    let screen = term.wait_for("EXIT:");
    drop(term);
    assert!(screen.contains("EXIT:0"), "{screen}");
    for expected in [
        "✓ discover",
        "✓ backup-target",
        "proven by a restore into a scratch database",
        "✓ freeze-source",
        "✓ clear-target",
        "✓ copy",
        "users: 22 rows, ",
        "✓ verify-data",
        "identical",
        "done in",
    ] {
        assert!(
            screen.contains(expected),
            "{expected:?} is not on the screen:\n{screen}"
        );
    }
    for pw in [s.pair.source.password(), s.pair.target.password()] {
        assert!(!screen.contains(pw), "a password is on the screen");
    }
}

/// A cutover command in a real pseudo-terminal (tmux), as an operator runs
/// it; `EXIT:<code>` is printed when it ends.
struct Terminal {
    socket: String,
}

impl Terminal {
    fn start(s: &crate::support::Scenario, args: &str) -> Terminal {
        let socket = format!("cutover-e2e-{}-{}", std::process::id(), args.len());
        let script = s.dir.path().join("run.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncd '{}'\n'{}' --plan '{}' {args}\necho \"EXIT:$?\"\nsleep 120\n",
                s.dir.path().display(),
                env!("CARGO_BIN_EXE_cutover"),
                s.plan_path().display()
            ),
        )
        .unwrap();
        let t = Terminal { socket };
        let started = t.tmux(&[
            "new-session",
            "-d",
            "-x",
            "220",
            "-y",
            "60",
            &format!("sh '{}'", script.display()),
        ]);
        assert!(
            started.status.success(),
            "{}",
            String::from_utf8_lossy(&started.stderr)
        );
        t
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux is needed for this test (Debian: apt-get install tmux)")
    }

    /// The screen once it shows `text` (at most 60 s).
    fn wait_for(&self, text: &str) -> String {
        let mut screen = String::new();
        for _ in 0..600 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let out = self.tmux(&["capture-pane", "-p", "-J", "-S", "-1000"]);
            screen = String::from_utf8_lossy(&out.stdout).into_owned();
            if screen.contains(text) {
                return screen;
            }
        }
        panic!("{text:?} never showed:\n{screen}");
    }

    fn type_line(&self, line: &str) {
        self.tmux(&["send-keys", "-l", line]);
        self.tmux(&["send-keys", "Enter"]);
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// The source's tables change while the operator reads the confirmation
/// prompt: the copy takes them as they are, and says which differ from the
/// plan it was given (a JSON warning and the copy's recorded artefacts).
#[test]
fn the_copy_names_the_tables_that_changed_since_the_plan() {
    let s = crate::support::Scenario::seed();
    let events = s.dir.path().join("events.jsonl");
    let term = Terminal::start(
        &s,
        &format!("run --until verify-data --output json > '{}'", events.display()),
    );
    let screen = term.wait_for("to go on: ");
    let db = screen
        .split("Type the target database's name (")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .expect("the prompt names the target database")
        .to_string();
    s.pair
        .source
        .sql(
            "app",
            "ALTER TABLE users ADD COLUMN nickname text; CREATE TABLE added (id int PRIMARY KEY)",
        )
        .unwrap();
    term.type_line(&db);
    let screen = term.wait_for("EXIT:");
    drop(term);
    assert!(screen.contains("EXIT:0"), "{screen}");
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let warning = events
        .iter()
        .filter(|e| e["event"] == "warning")
        .filter_map(|e| e["message"].as_str())
        .find(|m| m.contains("changed since the plan was built"))
        .unwrap_or_else(|| panic!("no warning about the plan: {events:#?}"));
    assert!(warning.contains("users: its columns changed"), "{warning}");
    assert!(
        warning.contains("added: on the source now, not in the plan"),
        "{warning}"
    );
    // Taken as it is now: the new table and column are on the target, and verified.
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "stage_done" && e["stage"] == "verify-data"),
        "{events:#?}"
    );
    assert_eq!(
        s.pair.target.sql("app", "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'nickname'").unwrap(),
        "1"
    );
    // The copy's artefacts in the journal name the same tables.
    let (code, stdout, _) = s.run(&["status", "--output", "json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let copy = status["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["stage"] == "copy")
        .unwrap();
    let differs = &copy["artefacts"]["differs_from_plan"];
    assert_eq!(differs.as_array().map(Vec::len), Some(2), "{copy:#}");
    assert_ne!(
        copy["artefacts"]["planned_fingerprint"],
        copy["artefacts"]["copied_fingerprint"]
    );
}
