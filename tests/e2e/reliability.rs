//! Crash anywhere: the `cutover` process dies at every stage boundary
//! (`CUTOVER_CRASH_AT`, an abort on the spot) and at seeded random moments
//! (SIGKILL), on the seed scenario with consumers and decommission and on the
//! tricky fixture; each time the next `run` must converge to the same end
//! state, checked with the kit's independent hashing: the target holds
//! exactly the source's rows, sequences continue, consumer files point at the
//! target, the journal is consistent, no sentinel is left behind.
//!
//! `CUTOVER_CRASH_CASES` (default 20) sets the number of random kills and
//! `CUTOVER_CRASH_SEED` replays a failing case.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cutover_testkit::{Fixture, PgPair, PgServer, TableDigest};

use crate::support::{cutover, output};

/// A small, seedable generator (xorshift): a failing seed replays the same kills.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One cutover case: its own databases on the shared servers and its own folder.
struct Case<'a> {
    pair: &'a PgPair,
    db: String,
    dir: PathBuf,
    source_digest: BTreeMap<String, TableDigest>,
    source_sequence: String,
    consumers: bool,
}

const PLAN_CONSUMERS: &str = "\n[[consumer]]\nname = \"production\"\nkind = \"env\"\npath = \"production.env\"\n\
                              key = \"DATABASE_URL\"\n\n[[consumer]]\nname = \"staging\"\nkind = \"env\"\n\
                              path = \"staging.env\"\nkey = \"DATABASE_URL\"\n\n[decommission]\ndriver = \"postgres\"\n";

impl<'a> Case<'a> {
    fn seed(pair: &'a PgPair, root: &Path, n: usize) -> Case<'a> {
        let db = format!("seed_{n}");
        pair.source.load_fixture(&db, Fixture::SeedSource).unwrap();
        pair.target.load_fixture(&db, Fixture::SeedTarget).unwrap();
        let case = Case::prepare(pair, root, db, true);
        std::fs::write(
            case.dir.join("production.env"),
            format!("DATABASE_URL={}\n", pair.source.url(&case.db)),
        )
        .unwrap();
        std::fs::write(
            case.dir.join("staging.env"),
            format!("DATABASE_URL={}\n", pair.target.url(&case.db)),
        )
        .unwrap();
        case
    }

    fn tricky(pair: &'a PgPair, root: &Path, n: usize) -> Case<'a> {
        let db = format!("tricky_{n}");
        pair.source.load_fixture(&db, Fixture::Tricky).unwrap();
        pair.target.create_database(&db).unwrap();
        Case::prepare(pair, root, db, false)
    }

    /// Every plain table's indexes and keys built during the copy (the
    /// tricky fixture is small): kills land inside those builds too.
    fn early_indexes(self) -> Case<'a> {
        let plan = self.dir.join("cutover.toml");
        let text = std::fs::read_to_string(&plan).unwrap();
        std::fs::write(&plan, format!("{text}\n[options]\nearly_index_bytes = 1\n")).unwrap();
        self
    }

    fn prepare(pair: &'a PgPair, root: &Path, db: String, consumers: bool) -> Case<'a> {
        let dir = root.join(&db);
        std::fs::create_dir_all(&dir).unwrap();
        let extra = if consumers { PLAN_CONSUMERS } else { "" };
        std::fs::write(
            dir.join("cutover.toml"),
            format!(
                "[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n{extra}",
                pair.source.url(&db),
                pair.target.url(&db)
            ),
        )
        .unwrap();
        let source_digest = pair.source.digest(&db, &["cutover"]).unwrap();
        let source_sequence = sequences(&pair.source, &db);
        Case {
            pair,
            db,
            dir,
            source_digest,
            source_sequence,
            consumers,
        }
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = cutover();
        cmd.current_dir(&self.dir)
            .arg("--plan")
            .arg(self.dir.join("cutover.toml"))
            .args(args)
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Runs to the end (a few attempts: a crash may leave a stage to redo).
    fn finish(&self, label: &str) {
        let (out, stdout, stderr) = output(&mut self.command(&["run", "--yes"]));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{label}: the run after the crash failed:\n{stdout}{stderr}"
        );
    }

    /// The end state, checked independently of cutover's own hashing.
    fn check(&self, label: &str) {
        let target = &self.pair.target;
        assert_eq!(
            target.digest(&self.db, &["cutover"]).unwrap(),
            self.source_digest,
            "{label}: the target does not hold exactly the source's rows"
        );
        assert_eq!(
            sequences(target, &self.db),
            self.source_sequence,
            "{label}: sequences differ"
        );
        let journal = target
            .sql(
                &self.db,
                "SELECT status || ' ' || (SELECT count(*) FROM cutover.sentinels) FROM cutover.runs \
                 ORDER BY started_at DESC LIMIT 1",
            )
            .unwrap();
        assert_eq!(journal, "done 0", "{label}: journal status, sentinels left");
        let not_done = target
            .sql(
                &self.db,
                "SELECT count(*) FROM (SELECT DISTINCT ON (stage) stage, event FROM cutover.stage_events \
                 WHERE run_id = (SELECT id FROM cutover.runs ORDER BY started_at DESC LIMIT 1) \
                 ORDER BY stage, id DESC) s WHERE event <> 'done'",
            )
            .unwrap();
        assert_eq!(not_done, "0", "{label}: a stage is not done in the journal");
        if !self.consumers {
            // Indexes, keys, triggers and comments too (the data digest does
            // not see them); the source is still there without decommission.
            assert_eq!(
                crate::cutover::normalised_schema_of(target, &self.db),
                crate::cutover::normalised_schema_of(&self.pair.source, &self.db),
                "{label}: the schema differs"
            );
        }
        if self.consumers {
            let prod = std::fs::read_to_string(self.dir.join("production.env")).unwrap();
            assert_eq!(
                prod,
                format!("DATABASE_URL={}\n", target.url(&self.db)),
                "{label}: production.env"
            );
            let retired = self
                .pair
                .source
                .sql(
                    "postgres",
                    &format!("SELECT count(*) FROM pg_database WHERE datname = '{}'", self.db),
                )
                .unwrap();
            assert_eq!(retired, "0", "{label}: the source is not quarantined");
        }
    }
}

/// Every sequence's position, as text.
fn sequences(server: &PgServer, db: &str) -> String {
    server
        .sql(
            db,
            "SELECT coalesce(string_agg(schemaname || '.' || sequencename || '=' || coalesce(last_value, 0), ',' \
             ORDER BY schemaname, sequencename), '') FROM pg_sequences WHERE schemaname <> 'cutover'",
        )
        .unwrap()
}

/// The stage names of the seed plan with consumers, from `cutover plan --output json`.
fn stage_names(case: &Case) -> Vec<String> {
    let (out, stdout, stderr) = output(&mut case.command(&["plan", "--output", "json"]));
    assert!(out.status.success(), "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_crash_at_every_stage_boundary_converges() {
    let pair = PgPair::start().unwrap();
    let root = tempfile::tempdir().unwrap();
    let probe = Case::seed(&pair, root.path(), 0);
    let stages = stage_names(&probe);
    assert!(stages.len() >= 10, "{stages:?}");
    let mut n = 1;
    let mut survived = 0;
    for stage in &stages {
        for point in ["before", "after"] {
            let case = Case::seed(&pair, root.path(), n);
            n += 1;
            let at = format!("{point}:{stage}");
            let (out, _, stderr) = output(case.command(&["run", "--yes"]).env("CUTOVER_CRASH_AT", &at));
            assert_eq!(
                out.status.code(),
                None,
                "{at}: the process should have crashed: {stderr}"
            );
            case.finish(&at);
            case.check(&at);
            survived += 1;
        }
    }
    // A crash point on the tricky schema's copy, before and after.
    for point in ["before:copy", "after:copy", "after:verify-data"] {
        let case = Case::tricky(&pair, root.path(), n).early_indexes();
        n += 1;
        let (out, _, _) = output(case.command(&["run", "--yes"]).env("CUTOVER_CRASH_AT", point));
        assert_eq!(out.status.code(), None, "{point}");
        case.finish(point);
        case.check(point);
        survived += 1;
    }
    println!("crash points survived: {survived}");
}

#[test]
fn seeded_random_kills_converge() {
    let cases: usize = std::env::var("CUTOVER_CRASH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("CUTOVER_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_c0de);
    let mut rng = Rng(seed);
    let pair = PgPair::start().unwrap();
    let root = tempfile::tempdir().unwrap();
    for n in 0..cases {
        let state = rng.0;
        // One case in four on the tricky schema; kills anywhere in the first 2.5 s.
        let tricky = rng.below(4) == 0;
        let delay = Duration::from_millis(rng.below(2500));
        let case = if tricky {
            Case::tricky(&pair, root.path(), 100 + n).early_indexes()
        } else {
            Case::seed(&pair, root.path(), 100 + n)
        };
        let label = format!(
            "case {n} ({}, kill after {} ms; replay with CUTOVER_CRASH_SEED={state} CUTOVER_CRASH_CASES=1)",
            if tricky { "tricky" } else { "seed" },
            delay.as_millis()
        );
        let mut child = case
            .command(&["run", "--yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        case.finish(&label);
        case.check(&label);
    }
    println!("random kills survived: {cases} (seed {seed})");
}

/// No password anywhere: every command, in text and JSON, at the most
/// verbose log level; then stdout, stderr, every file cutover wrote (run
/// directory, backups, dumps, report, consumer files and their backups) and
/// every journal table are searched for both servers' passwords.
#[test]
fn no_password_in_any_output_file_or_journal_row() {
    let s = crate::support::Scenario::seed();
    let (src, tgt) = (&s.pair.source, &s.pair.target);
    let d = s.dir.path();
    // Passwords come from the environment; the consumers' files carry none.
    std::fs::write(
        s.plan_path(),
        format!(
            "[source]\nurl = \"{}\"\npassword_env = \"SRC_PW\"\n[target]\nurl = \"{}\"\npassword_env = \"TGT_PW\"\n\
             [[consumer]]\nname = \"production\"\nkind = \"env\"\npath = \"production.env\"\nkey = \"DATABASE_URL\"\n\
             [[consumer]]\nname = \"backups\"\nkind = \"text\"\npath = \"backup.sh\"\n\
             [decommission]\ndriver = \"postgres\"\n",
            src.url_without_password("app"),
            tgt.url_without_password("app")
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("production.env"),
        format!("DATABASE_URL={}\n", src.url_without_password("app")),
    )
    .unwrap();
    std::fs::write(
        d.join("backup.sh"),
        format!(
            "pg_dump 'host=127.0.0.1 port={} dbname=app user={}'\n",
            src.port(),
            src.user()
        ),
    )
    .unwrap();
    let passwords = [src.password().to_string(), tgt.password().to_string()];
    let run = |args: &[&str], expect: &[i32]| {
        for json in [false, true] {
            let mut cmd = s.cutover(&["-vvv"]);
            cmd.args(args)
                .env("SRC_PW", &passwords[0])
                .env("TGT_PW", &passwords[1]);
            if json {
                cmd.args(["--output", "json"]);
            }
            let (out, stdout, stderr) = output(&mut cmd);
            let code = out.status.code().unwrap_or(-1);
            assert!(
                expect.contains(&code),
                "{args:?} json={json}: exit {code}\n{stdout}{stderr}"
            );
            for pw in &passwords {
                assert!(
                    !stdout.contains(pw.as_str()) && !stderr.contains(pw.as_str()),
                    "{args:?} json={json} leaked a password"
                );
            }
            // Only the first run of a changing command in each mode.
            if args.first() == Some(&"run") || args.first() == Some(&"rollback") {
                break;
            }
        }
    };
    run(&["inspect"], &[0]);
    run(&["doctor"], &[0]);
    run(&["plan"], &[0]);
    run(&["run", "--yes", "--until", "verify-sync"], &[0]);
    run(&["verify"], &[0]);
    run(&["run", "--yes"], &[0]);
    run(&["status"], &[0]);
    run(&["doctor"], &[0]);
    run(&["report", "--out", "report.md"], &[0]);
    run(&["report"], &[0]);

    // Every file under the scenario's folder, the plan file included.
    let mut files = vec![];
    let mut stack = vec![d.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    assert!(files.len() >= 8, "{files:?}");
    use std::os::unix::fs::PermissionsExt;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for pw in &passwords {
            assert!(
                !bytes.windows(pw.len()).any(|w| w == pw.as_bytes()),
                "{} holds a password",
                f.display()
            );
        }
        let name = f.display().to_string();
        if name.contains("cutover-run") || name.ends_with("report.md") {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name} is not private");
        }
    }
    for table in ["runs", "stage_events", "item_progress", "sentinels"] {
        let rows = tgt
            .sql(
                "app",
                &format!("SELECT coalesce(string_agg(t::text, ' '), '') FROM cutover.{table} t"),
            )
            .unwrap();
        for pw in &passwords {
            assert!(
                !rows.contains(pw.as_str()),
                "journal table {table} holds a password"
            );
        }
    }
    // The consumer was repointed without a password: it had none.
    let prod = std::fs::read_to_string(d.join("production.env")).unwrap();
    assert_eq!(
        prod,
        format!("DATABASE_URL={}\n", tgt.url_without_password("app"))
    );
    let (code, _, stderr) = {
        let mut cmd = s.cutover(&["rollback", "--yes", "-vvv"]);
        cmd.env("SRC_PW", &passwords[0]).env("TGT_PW", &passwords[1]);
        let (out, stdout, stderr) = output(&mut cmd);
        (out.status.code(), stdout, stderr)
    };
    assert_eq!(code, Some(0), "{stderr}");
    for pw in &passwords {
        assert!(!stderr.contains(pw.as_str()));
    }
}

/// A source with one large table, so the copy takes long enough to be hit.
fn large_pair_source() -> PgServer {
    let source = PgServer::start_on(cutover_testkit::Backend::Local).unwrap();
    source.create_database("app").unwrap();
    source
        .sql(
            "app",
            "CREATE TABLE big (id int PRIMARY KEY, payload text); \
             INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 800000) g; \
             CREATE TABLE small (id int PRIMARY KEY); INSERT INTO small SELECT generate_series(1, 10)",
        )
        .unwrap();
    source
}

fn large_pair() -> PgPair {
    let target = PgServer::start().unwrap();
    target.create_database("app").unwrap();
    PgPair {
        source: large_pair_source(),
        target,
    }
}

/// Whether a stage_failed event's error says `what`.
fn failed_on(event: &serde_json::Value, what: &str) -> bool {
    event["error"].as_str().is_some_and(|e| e.contains(what))
}

/// Starts `run`, waits until the copy streams data, then runs `fault`.
/// Returns the exit code, the stage_failed event and stderr.
fn fault_during_copy(s: &crate::support::Scenario, fault: impl FnOnce()) -> (i32, serde_json::Value, String) {
    // Events go to a file: a pipe nobody reads while the run goes on could fill.
    let events = s.dir.path().join("fault-events.jsonl");
    let child = s
        .cutover(&["run", "--yes", "--output", "json"])
        .stdout(std::fs::File::create(&events).unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        // The data phase: a COPY … FROM STDIN in flight on the target.
        let copying = s
            .pair
            .target
            .sql(
                "app",
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY %FROM STDIN%' AND state = 'active'",
            )
            .unwrap_or_default();
        if copying != "0" && !copying.is_empty() {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let mut child = child;
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the copy never started:\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&events).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    fault();
    // Never wait for ever: a run that hangs is a failure of this test.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("cutover did not finish within 180 s of the fault: it hangs");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = std::fs::read_to_string(&events).unwrap();
    let failed = crate::support::stage_failed(&stdout);
    (
        out.status.code().unwrap_or(-1),
        failed,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn target_crashed_and_restarted_mid_copy_fails_clearly_and_the_rerun_converges() {
    let s = crate::support::Scenario::with(large_pair(), "");
    let expected = s.source_digest();
    // A crash and restart of the target server (immediate shutdown, recovery).
    let (code, failed, stderr) = fault_during_copy(&s, || {
        s.pair.target.kill().unwrap();
        s.pair.target.restart().unwrap();
    });
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(failed["stage"], "copy", "{failed}");
    assert!(failed_on(&failed, "writing to the target"), "{failed}");
    assert!(stderr.contains("run the same command again"), "{stderr}");
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(s.target_digest(), expected);
}

#[test]
fn source_killed_mid_copy_fails_clearly_and_the_rerun_converges() {
    let s = crate::support::Scenario::with(large_pair(), "");
    let expected = s.source_digest();
    let (code, failed, stderr) = fault_during_copy(&s, || s.pair.source.kill().unwrap());
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(failed["stage"], "copy", "{failed}");
    assert!(failed_on(&failed, "reading from the source"), "{failed}");
    // While it is down, a run names the source and what to check.
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot connect to the source") && stderr.contains("is the server running"),
        "{stderr}"
    );
    s.pair.source.restart().unwrap();
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(s.target_digest(), expected);
}

/// A target that stops answering without closing the connection (a paused
/// container): the copy does not wait for ever; after `stall_timeout` it
/// fails naming the target, and once the server is back a re-run converges.
#[test]
fn target_paused_mid_copy_fails_after_the_stall_timeout() {
    use cutover_testkit::{Backend, PgServer};
    let source = large_pair_source();
    let target = PgServer::start_on(Backend::Docker).unwrap();
    target.create_database("app").unwrap();
    let s = crate::support::Scenario::with(
        PgPair { source, target },
        "\n[options]\nstall_timeout = 3\nconnect_timeout = 5\n",
    );
    let expected = s.source_digest();
    let started = std::time::Instant::now();
    let (code, failed, stderr) = fault_during_copy(&s, || s.pair.target.pause().unwrap());
    s.pair.target.unpause().unwrap();
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(failed["stage"], "copy", "{failed}");
    assert!(
        failed_on(&failed, "the target sent or took no data for 3 s") && failed_on(&failed, "paused"),
        "{failed}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(s.target_digest(), expected);
}

/// The network to the target cut mid-copy (docker network disconnect): a
/// clear error naming the target; after reconnecting, a re-run converges.
#[test]
fn network_cut_mid_copy_fails_clearly_and_the_rerun_converges() {
    use cutover_testkit::{Backend, PgServer};
    let source = large_pair_source();
    let target = PgServer::start_on(Backend::Docker).unwrap();
    target.create_database("app").unwrap();
    let s = crate::support::Scenario::with(
        PgPair { source, target },
        "\n[options]\nstall_timeout = 3\nconnect_timeout = 5\n",
    );
    let expected = s.source_digest();
    let (code, failed, stderr) = fault_during_copy(&s, || s.pair.target.disconnect_network().unwrap());
    s.pair.target.reconnect_network().unwrap();
    assert_eq!(code, 1, "{stderr}");
    // Through docker's port proxy the cut shows as a reset connection or as
    // silence (then the stall timeout fires): either way the target is named.
    assert_eq!(failed["stage"], "copy", "{failed}");
    assert!(
        failed_on(&failed, "the target sent or took no data for 3 s")
            || failed_on(&failed, "writing to the target"),
        "{failed}"
    );
    assert!(stderr.contains("run the same command again"), "{stderr}");
    // Docker's port proxy takes a moment to pass connections again after
    // the network is back: the re-run starts once the target answers.
    let started = std::time::Instant::now();
    while s.pair.target.sql("postgres", "SELECT 1").is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the target does not answer after the network came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(s.target_digest(), expected);
}
