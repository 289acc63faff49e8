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
        Scenario::with_dir(pair, extra_plan, tempfile::tempdir().unwrap())
    }

    pub fn with_dir(pair: cutover_testkit::PgPair, extra_plan: &str, dir: tempfile::TempDir) -> Scenario {
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
    /// A stage's artefacts in the latest run, as `status --output json`
    /// shows them (what the stage recorded in the journal).
    pub fn artefacts(&self, stage: &str) -> serde_json::Value {
        let (code, stdout, stderr) = self.run(&["status", "--output", "json"]);
        assert_eq!(code, 0, "{stderr}");
        let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        status["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == stage)
            .unwrap_or_else(|| panic!("no stage {stage} in {stdout}"))["artefacts"]
            .clone()
    }

    /// verify-sync's proof for one consumer.
    pub fn sync_proof(&self, consumer: &str) -> serde_json::Value {
        self.artefacts("verify-sync")["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["consumer"] == consumer)
            .unwrap_or_else(|| panic!("verify-sync did not probe {consumer}"))
            .clone()
    }

    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_with(args, &[], &[])
    }

    /// [`Scenario::run`] with more environment (what a consumer's secrets
    /// arrive in) and more `secrets` that must appear in no output either.
    pub fn run_with(&self, args: &[&str], env: &[(&str, String)], secrets: &[&str]) -> (i32, String, String) {
        let mut cmd = self.cutover(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (out, stdout, stderr) = output(&mut cmd);
        let passwords = [self.pair.source.password(), self.pair.target.password()];
        for pw in passwords.into_iter().chain(secrets.iter().copied()) {
            let leaked: Vec<String> = stdout
                .lines()
                .chain(stderr.lines())
                .filter(|l| l.contains(pw))
                .map(|l| l.replace(pw, "<PASSWORD>"))
                .collect();
            assert!(
                leaked.is_empty(),
                "a password leaked in `cutover {args:?}`: {leaked:#?}"
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

/// The database `app`'s privileges (as in effect: a default ACL shows as
/// its explicit equal) and the roles' settings in it: what the fence
/// changes and must put back exactly.
pub fn access(server: &cutover_testkit::PgServer) -> String {
    server
        .sql(
            "postgres",
            "SELECT coalesce(datacl, acldefault('d', datdba))::text || ' | ' || coalesce((SELECT \
             string_agg(coalesce(r.rolname, '*') || '=' || array_to_string(s.setconfig, ','), ';' ORDER BY r.rolname) \
             FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = d.oid), '') \
             FROM pg_database d WHERE datname = 'app'",
        )
        .unwrap()
}

/// Runs one query with the installed psql against `url`; its unaligned output.
pub fn psql(url: &str, sql: &str) -> Result<String, String> {
    let bin = cutover_testkit::pg_bindir()
        .map_err(|e| e.to_string())?
        .join("psql");
    let out = Command::new(bin)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, url])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A small consumer application: it connects with the `DATABASE_URL` of the
/// env file it loaded at its last reload (the reload copies the env file to
/// `loaded`), and answers `GET /health` with what it sees there:
/// `port=P users=N sentinels=S`. Every answer is kept for the test to read.
pub struct ConsumerApp {
    pub health_url: String,
    answers: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    port: u16,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConsumerApp {
    pub fn start(loaded: std::path::PathBuf) -> ConsumerApp {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let answers = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, st) = (answers.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf);
                let env = std::fs::read_to_string(&loaded).unwrap_or_default();
                let url = env
                    .lines()
                    .find_map(|l| l.strip_prefix("DATABASE_URL="))
                    .map(|v| v.split(" #").next().unwrap().trim().trim_matches('"').to_string())
                    .unwrap_or_default();
                let (status, body) =
                    match psql(&url, "SELECT inet_server_port() || ' ' || count(*) FROM users") {
                        Ok(seen) => {
                            let (p, users) = seen.split_once(' ').unwrap_or(("?", "?"));
                            let sentinels = psql(&url, "SELECT count(*) FROM cutover.sentinels")
                                .unwrap_or_else(|_| "none".into());
                            ("200 OK", format!("port={p} users={users} sentinels={sentinels}"))
                        }
                        Err(e) => ("503 Service Unavailable", format!("no database: {}", e.trim())),
                    };
                a.lock().unwrap().push(body.clone());
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        ConsumerApp {
            health_url: format!("http://127.0.0.1:{port}/health"),
            answers,
            stop,
            port,
            thread: Some(thread),
        }
    }

    pub fn answers(&self) -> Vec<String> {
        self.answers.lock().unwrap().clone()
    }
}

impl Drop for ConsumerApp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The JSON events of a command run with `--output json` (one per line).
/// The first `stage_failed` event of a `--output json` run (Null when none).
pub fn stage_failed(stdout: &str) -> serde_json::Value {
    events(stdout)
        .into_iter()
        .find(|e| e["event"] == "stage_failed")
        .unwrap_or(serde_json::Value::Null)
}

pub fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON event ({e}): {l}")))
        .collect()
}

/// An application on one connection: psql runs `sql` every `interval`
/// seconds (`\watch`, which stops at the first error), through `url`.
pub struct Watch {
    child: std::process::Child,
    _stdin: Option<std::process::ChildStdin>,
}

impl Watch {
    pub fn start(url: &str, sql: &str, interval: &str) -> Watch {
        use std::io::Write;
        let psql = cutover_testkit::pg_bindir().unwrap().join("psql");
        let mut child = Command::new(psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg(url)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{sql}\n\\watch {interval}\n").as_bytes())
            .unwrap();
        Watch {
            child,
            _stdin: Some(stdin),
        }
    }

    /// Stops it (its connection must still be up): what it printed and its
    /// errors. SIGINT ends `\watch` the way a person's Ctrl-C does (a query
    /// in flight is cancelled or, once committed, printed), then psql reads
    /// the end of its input and exits; a kill could lose the output of an
    /// insert the server had committed.
    pub fn stop(self) -> (String, String) {
        use std::io::Read;
        let Watch { mut child, _stdin } = self;
        let ended = child.try_wait().unwrap();
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        drop(_stdin);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let (mut out, mut err) = (String::new(), String::new());
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(
            ended.is_none(),
            "the application's connection ended ({ended:?}): {err}\n{out}"
        );
        // What the stop itself caused (a query in flight cancelled) is no
        // error of the application's.
        let err = err
            .lines()
            .filter(|l| {
                !l.contains("canceling statement due to user request") && !l.contains("Cancel request sent")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        (out, err)
    }
}
