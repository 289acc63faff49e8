//! Servers set up the way production ones are: TLS only (a throwaway CA,
//! `hostssl` lines only), messages in another language, other major
//! versions. Each test makes its own servers (their settings differ).

use std::path::Path;

use cutover_testkit::{Fixture, PgPair, PgServer, SEED_DB, ServerOptions, TestCa};

use crate::support::Scenario;

fn seed_pair(source: PgServer, target: PgServer) -> PgPair {
    source.load_fixture(SEED_DB, Fixture::SeedSource).unwrap();
    target.load_fixture(SEED_DB, Fixture::SeedTarget).unwrap();
    PgPair { source, target }
}

fn tls_url(server: &PgServer, host: &str, ca: &Path, mode: &str) -> String {
    format!(
        "postgresql://{}:{}@{host}:{}/{SEED_DB}?sslmode={mode}&sslrootcert={}",
        server.user(),
        server.password(),
        server.port(),
        ca.display()
    )
}

fn journal_schemas(server: &PgServer) -> String {
    server
        .sql(
            SEED_DB,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'cutover'",
        )
        .unwrap()
}

#[test]
fn tls_only_servers_cutover_over_verify_full_and_bad_tls_is_refused_untouched() {
    let ca = TestCa::new("cutover test CA").unwrap();
    let other_ca = TestCa::new("some other CA").unwrap();
    // Certificates for the address only: "localhost" is a wrong host name.
    let start = |stem: &str| {
        let cert = ca.server_cert(stem, &["127.0.0.1"]).unwrap();
        PgServer::start_with(&ServerOptions {
            tls: Some(cert),
            ..Default::default()
        })
    };
    let (source, target) = std::thread::scope(|s| {
        let a = s.spawn(|| start("source"));
        let b = s.spawn(|| start("target"));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    let s = Scenario::with(seed_pair(source, target), "");
    let (source_before, target_before) = (s.source_digest(), s.target_digest());
    // Exit 1 for a server that refuses, 2 for a plan that names bad files.
    let refused = |source_url: &str, target_url: &str, exit: i32, expect: &[&str]| {
        s.write_plan(source_url, target_url, "");
        let (code, _, stderr) = s.run(&["run", "--yes"]);
        assert_eq!(code, exit, "{stderr}");
        for e in expect {
            assert!(stderr.contains(e), "expected {e:?} in:\n{stderr}");
        }
        assert_eq!(
            s.target_digest(),
            target_before,
            "a refused run changed the target"
        );
        assert_eq!(
            s.source_digest(),
            source_before,
            "a refused run changed the source"
        );
        assert_eq!(journal_schemas(&s.pair.target), "0");
        assert!(!s.run_dir().join("backups").exists());
    };
    let good_source = tls_url(&s.pair.source, "127.0.0.1", &ca.cert, "verify-full");
    let good_target = tls_url(&s.pair.target, "127.0.0.1", &ca.cert, "verify-full");

    // A plain connection to a TLS-only server.
    let plain = format!("{}?sslmode=disable", s.pair.target.url(SEED_DB));
    refused(
        &good_source,
        &plain,
        1,
        &[
            "the server accepts only TLS connections from this address",
            "hint: set sslmode=require or stronger",
        ],
    );
    // A certificate signed by another CA than the one the plan trusts.
    refused(
        &good_source,
        &tls_url(&s.pair.target, "127.0.0.1", &other_ca.cert, "verify-full"),
        1,
        &["is not signed by the CA in sslrootcert=", "(unknown CA)"],
    );
    // The right CA, the wrong host name (verify-ca would accept it).
    refused(
        &tls_url(&s.pair.source, "localhost", &ca.cert, "verify-full"),
        &good_target,
        1,
        &["not valid for the host name", "(wrong host name"],
    );
    // A client certificate that is not there.
    refused(
        &format!("{good_source}&sslcert=/nonexistent/client.crt&sslkey=/nonexistent/client.key"),
        &good_target,
        2,
        &["the client certificate sslcert = /nonexistent/client.crt cannot be read"],
    );

    // verify-full on both sides: cutover's connections and its pg_dump and
    // pg_restore (only TLS gets through these servers' pg_hba.conf).
    s.write_plan(&good_source, &good_target, "");
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("proven by a restore into a scratch database"),
        "{stderr}"
    );
    assert_eq!(s.target_digest(), source_before);
    let (code, _, stderr) = s.run(&["verify"]);
    assert_eq!(code, 0, "{stderr}");
    // cutover's own sessions used TLS.
    let tls_sessions = s
        .pair
        .target
        .sql(
            "postgres",
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND usename = 'kit_admin'",
        )
        .unwrap();
    assert_ne!(tls_sessions, "0");
    // verify-ca accepts the wrong host name: it checks the CA only.
    s.write_plan(
        &tls_url(&s.pair.source, "localhost", &ca.cert, "verify-ca"),
        &good_target,
        "",
    );
    let (code, _, stderr) = s.run(&["verify"]);
    assert_eq!(code, 0, "{stderr}");
    // sslmode=allow: refused in plain text, then tried over TLS, as libpq does.
    s.write_plan(
        &format!("{}?sslmode=allow", s.pair.source.url(SEED_DB)),
        &good_target,
        "",
    );
    let (code, _, stderr) = s.run(&["verify"]);
    assert_eq!(code, 0, "{stderr}");
}

/// A server that speaks German gets the same classification, exit code and
/// hint as one that speaks English: cutover reads SQLSTATEs, not texts.
#[test]
fn errors_are_classified_by_sqlstate_when_the_server_speaks_german() {
    let german = ServerOptions {
        lc_messages: Some("de_DE.UTF-8".into()),
        ..Default::default()
    };
    let (source, target) = std::thread::scope(|s| {
        let a = s.spawn(|| PgServer::start_with(&german));
        let b = s.spawn(|| PgServer::start_with(&german));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    let s = Scenario::with(seed_pair(source, target), "");
    // The server really speaks German (else this test would prove nothing).
    let err = s.pair.target.sql(SEED_DB, "SELECT 1/0").unwrap_err();
    assert!(format!("{err:#}").contains("Division durch Null"), "{err:#}");
    let target = &s.pair.target;
    target
        .sql(
            SEED_DB,
            "CREATE ROLE outsider LOGIN PASSWORD 'outsider-pw'; REVOKE CONNECT ON DATABASE app FROM PUBLIC",
        )
        .unwrap();
    let source_url = s.pair.source.url(SEED_DB);
    let target_before = s.target_digest();
    let cases = [
        (
            format!(
                "postgresql://{}:wrong-pw@127.0.0.1:{}/app",
                target.user(),
                target.port()
            ),
            "SQLSTATE 28P01",
            "hint: check the password",
            "Passwort-Authentifizierung",
        ),
        (
            format!(
                "postgresql://{}:{}@127.0.0.1:{}/nosuchdb",
                target.user(),
                target.password(),
                target.port()
            ),
            "SQLSTATE 3D000",
            "hint: check the database name",
            "existiert nicht",
        ),
        (
            format!(
                "postgresql://outsider:outsider-pw@127.0.0.1:{}/app",
                target.port()
            ),
            "SQLSTATE 42501",
            "hint: the user may not connect to this database: GRANT CONNECT ON DATABASE app TO outsider",
            "keine Berechtigung",
        ),
    ];
    for (url, code_text, hint, german_text) in cases {
        s.write_plan(&source_url, &url, "");
        let (code, _, stderr) = s.run(&["plan"]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(code_text), "{code_text} missing:\n{stderr}");
        assert!(stderr.contains(hint), "{hint} missing:\n{stderr}");
        // The server's own words are shown too, in its language.
        assert!(stderr.contains(german_text), "{german_text} missing:\n{stderr}");
        let hint_line = stderr.lines().find(|l| l.contains("hint:")).unwrap();
        assert!(
            hint_line.trim_start().starts_with("hint:"),
            "the hint is not on its own line:\n{stderr}"
        );
    }
    assert_eq!(s.target_digest(), target_before);
}

/// PATH with the given PostgreSQL majors' client tools first (as an operator
/// who installed them would have it).
fn path_with(majors: &[u32]) -> String {
    let mut dirs: Vec<String> = majors
        .iter()
        .map(|m| cutover_testkit::pg_bindir_for(*m).unwrap().display().to_string())
        .collect();
    dirs.push(std::env::var("PATH").unwrap_or_default());
    dirs.join(":")
}

/// A source and a target server of these majors, started side by side.
fn servers_of(source_major: u32, target_major: u32) -> (PgServer, PgServer) {
    let start = |major: u32| {
        PgServer::start_with(&ServerOptions {
            major: Some(major),
            ..Default::default()
        })
    };
    std::thread::scope(|s| {
        let a = s.spawn(|| start(source_major));
        let b = s.spawn(|| start(target_major));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    })
}

fn cross_version(source_major: u32, target_major: u32, tools: &[u32]) {
    let (source, target) = servers_of(source_major, target_major);
    assert_eq!(
        (source.major().unwrap(), target.major().unwrap()),
        (source_major, target_major)
    );
    let s = Scenario::with(seed_pair(source, target), "");
    let source_before = s.source_digest();
    let path = path_with(tools);
    let run = |args: &[&str]| {
        let mut cmd = s.cutover(args);
        cmd.env("PATH", &path).env_remove("CUTOVER_PG_BINDIR");
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&["plan"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!(
            "the source runs PostgreSQL {source_major}, the target {target_major}"
        )),
        "{stdout}"
    );
    let (code, _, stderr) = run(&["run", "--yes"]);
    assert_eq!(code, 0, "{source_major} -> {target_major}:\n{stderr}");
    assert_eq!(
        s.target_digest(),
        source_before,
        "{source_major} -> {target_major}"
    );
    let (code, stdout, stderr) = run(&["verify"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // The schema arrived whole: indexes, keys and triggers of the post-data section.
    let count = |srv: &PgServer| {
        srv.sql(
            SEED_DB,
            "SELECT (SELECT count(*) FROM pg_indexes WHERE schemaname = 'public') || '/' || \
             (SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace \
              WHERE n.nspname = 'public') || '/' || (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal)",
        )
        .unwrap()
    };
    assert_eq!(count(&s.pair.target), count(&s.pair.source));
}

#[test]
fn cutover_from_14_to_15() {
    cross_version(14, 15, &[14]);
}

#[test]
fn cutover_from_15_to_17() {
    cross_version(15, 17, &[17]);
}

/// A downgrade: pg_dump 17 for the source, whose pg_restore sets
/// transaction_timeout, unknown to the 15 target.
#[test]
fn cutover_from_17_to_15() {
    cross_version(17, 15, &[17]);
}

/// No pg_dump for the source's major: refused before anything changes,
/// naming both versions and what to install.
#[test]
fn missing_client_tools_are_refused_before_anything_changes() {
    let source = PgServer::start_with(&ServerOptions {
        major: Some(17),
        ..Default::default()
    })
    .unwrap();
    let s = Scenario::with(seed_pair(source, PgServer::start().unwrap()), "");
    let target_before = s.target_digest();
    let mut cmd = s.cutover(&["run", "--yes"]);
    // Only the machine's PostgreSQL 15 tools.
    cmd.env("CUTOVER_PG_BINDIR", cutover_testkit::pg_bindir_for(15).unwrap());
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for e in [
        "no pg_dump of PostgreSQL 17 or newer, which the source (PostgreSQL 17) needs",
        "(15)",
        "hint: install the PostgreSQL 17 client tools",
    ] {
        assert!(stderr.contains(e), "{e:?} missing:\n{stderr}");
    }
    assert_eq!(s.target_digest(), target_before);
    assert_eq!(journal_schemas(&s.pair.target), "0");
}

const OPERATOR_PW: &str = "operator-pw-7c1e";

/// A server set up like a managed service's: the operator owns the database
/// and is a member of the application role, but is neither a superuser nor
/// allowed to create databases; the application's objects are its own.
fn managed(server: &PgServer, fixture: Fixture) {
    server
        .sql(
            "postgres",
            &format!(
                "CREATE ROLE operator LOGIN PASSWORD '{OPERATOR_PW}' CREATEROLE; \
                 CREATE ROLE app_rw LOGIN PASSWORD 'app-rw-pw'; GRANT app_rw TO operator; \
                 CREATE DATABASE app OWNER operator"
            ),
        )
        .unwrap();
    server
        .sql(SEED_DB, &format!("SET ROLE operator;\n{}", fixture.sql()))
        .unwrap();
}

/// The seed scenario on two managed-service servers.
fn managed_pair() -> PgPair {
    let (source, target) = std::thread::scope(|s| {
        let a = s.spawn(PgServer::start);
        let b = s.spawn(PgServer::start);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    managed(&source, Fixture::SeedSource);
    managed(&target, Fixture::SeedTarget);
    PgPair { source, target }
}

fn operator_url(server: &PgServer) -> String {
    format!(
        "postgresql://operator:{OPERATOR_PW}@127.0.0.1:{}/{SEED_DB}",
        server.port()
    )
}

/// A session that stays connected to `db` as `user` until killed.
fn hold_session(server: &PgServer, user: &str, password: &str) -> std::process::Child {
    let mut child = std::process::Command::new(cutover_testkit::pg_bindir().unwrap().join("psql"))
        .args(["-X", "-q", "-c", "SELECT pg_sleep(600)"])
        .arg(format!(
            "postgresql://{user}:{password}@127.0.0.1:{}/{SEED_DB}?application_name=held",
            server.port()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let query = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'held' AND usename = '{user}'"
    );
    for _ in 0..100 {
        if server.sql("postgres", &query).unwrap() == "1" {
            return child;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the held session did not connect");
}

/// The seed cutover by an operator that is not a superuser on either server:
/// the plan says what changes, a session it may not end is refused before
/// the source changes, and the whole run, its backup proof and verify work.
#[test]
fn a_managed_service_operator_cuts_over_without_superuser() {
    let s = Scenario::with(managed_pair(), "");
    s.write_plan(&operator_url(&s.pair.source), &operator_url(&s.pair.target), "");
    let source_before = s.source_digest();

    let (code, stdout, stderr) = s.run(&["plan"]);
    assert_eq!(code, 0, "{stderr}");
    for note in [
        "the target user operator is not a superuser",
        "the target user operator may not create databases: backup-target proves the backup by reading its data back",
        "the source user operator is not a superuser: freeze-source ends the sessions of roles whose privileges it has",
    ] {
        assert!(stdout.contains(note), "{note:?} missing:\n{stdout}");
    }

    // A superuser's session on the source: no non-superuser may end it.
    let mut held = hold_session(&s.pair.source, s.pair.source.user(), s.pair.source.password());
    let (code, stdout, _) = s.run(&["plan"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("may not end 1 session(s)"), "{stdout}");
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("the source user operator may not end 1 session(s)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: GRANT pg_signal_backend TO operator"),
        "{stderr}"
    );
    // The backup (non-destructive) came first, proven without CREATEDB.
    assert!(
        stderr.contains("proven by reading its data back: 13 tables, 6 rows match"),
        "{stderr}"
    );
    // Nothing changed on the source: still writable, same data.
    assert_eq!(s.source_digest(), source_before);
    s.pair
        .source
        .sql(
            SEED_DB,
            "SET ROLE operator; CREATE TABLE still_writable (); DROP TABLE still_writable",
        )
        .unwrap();
    held.kill().unwrap();
    held.wait().unwrap();
    // (Its backend sleeps on after its client is gone.)
    s.pair
        .source
        .sql(
            "postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'held'",
        )
        .unwrap();

    // An application role's session: the operator has its privileges and ends it.
    let mut app = hold_session(&s.pair.source, "app_rw", "app-rw-pw");
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        app.wait().unwrap().code() != Some(0),
        "the application's session was not ended"
    );
    assert_eq!(s.target_digest(), source_before);
    let (code, stdout, stderr) = s.run(&["verify"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // The target's objects belong to the operator (no superuser made them).
    assert_eq!(
        s.pair
            .target
            .sql(
                SEED_DB,
                "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
            )
            .unwrap(),
        "operator"
    );
    // And rollback, as the operator, restores the target's backup.
    let (code, _, stderr) = s.run(&["rollback", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
}

/// Quarantining the source renames its database: without CREATEDB that is
/// refused in the plan, before anything changes.
#[test]
fn a_quarantine_the_operator_may_not_do_is_refused_in_the_plan() {
    let s = Scenario::with(managed_pair(), "");
    std::fs::write(
        s.dir.path().join("app.env"),
        format!("DATABASE_URL={}\n", operator_url(&s.pair.source)),
    )
    .unwrap();
    s.write_plan(
        &operator_url(&s.pair.source),
        &operator_url(&s.pair.target),
        "\n[[consumer]]\nname = \"app\"\nkind = \"env\"\npath = \"app.env\"\nkey = \"DATABASE_URL\"\n\n\
         [decommission]\ndriver = \"postgres\"\n",
    );
    let target_before = s.target_digest();
    for args in [&["plan"][..], &["run", "--yes"][..]] {
        let (code, _, stderr) = s.run(args);
        assert_eq!(code, 5, "{stderr}");
        assert!(stderr.contains("renaming a database needs CREATEDB"), "{stderr}");
        assert!(stderr.contains("hint: ALTER ROLE operator CREATEDB"), "{stderr}");
    }
    assert_eq!(s.target_digest(), target_before);
    assert_eq!(journal_schemas(&s.pair.target), "0");
}

/// 15 -> 17: what the newer major no longer accepts is found by the dry
/// run. A child table whose column is generated while its parent's is not
/// (PostgreSQL 16 refuses it) is named with the fix; an `aclitem` column
/// (pg_upgrade refuses it: its binary form changed in 16) is no problem for
/// a copy that moves it as text, and verifies equal. Once the source is
/// fixed, the plan's passed rehearsal is reused by discover (the schema and
/// the target server unchanged), and a change to the schema makes discover
/// rehearse again.
#[test]
fn a_newer_target_refuses_a_generated_child_column_and_the_plans_rehearsal_is_reused() {
    let (source, target) = servers_of(15, 17);
    for server in [&source, &target] {
        server.create_database(SEED_DB).unwrap();
    }
    source
        .sql(
            SEED_DB,
            "CREATE TABLE perms (id int PRIMARY KEY, acl aclitem); \
             INSERT INTO perms VALUES (1, 'kit_admin=r/kit_admin'), (2, '=arw/kit_admin'); \
             CREATE TABLE readings (id int PRIMARY KEY, v int, doubled int); \
             CREATE TABLE readings_2026 (id int PRIMARY KEY, v int, doubled int GENERATED ALWAYS AS (v * 2) STORED); \
             ALTER TABLE readings_2026 INHERIT readings; INSERT INTO readings_2026 (id, v) VALUES (1, 21)",
        )
        .unwrap();
    let s = Scenario::with(PgPair { source, target }, "");
    let target_before = s.target_digest();
    let path = path_with(&[17]);
    let cutover = |args: &[&str]| {
        let mut cmd = s.cutover(args);
        cmd.env("PATH", &path).env_remove("CUTOVER_PG_BINDIR");
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, _, stderr) = cutover(&["plan"]);
    assert_eq!(code, Some(5), "{stderr}");
    for expected in [
        "1 object(s) fail; nothing was changed",
        "TABLE public.readings_2026 (owner kit_admin)",
        "(SQLSTATE 42611)",
        "which PostgreSQL 16 and newer refuse (the source runs 15)",
        "ALTER TABLE child NO INHERIT parent",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing:\n{stderr}");
    }
    assert!(
        !stderr.contains("perms"),
        "the aclitem column is no problem:\n{stderr}"
    );
    assert_eq!(s.target_digest(), target_before);
    // The fix the message gives, on the source.
    s.pair
        .source
        .sql(
            SEED_DB,
            "ALTER TABLE readings_2026 NO INHERIT readings; \
             ALTER TABLE readings_2026 ALTER COLUMN doubled DROP EXPRESSION; \
             ALTER TABLE readings_2026 INHERIT readings",
        )
        .unwrap();
    let (code, stdout, stderr) = cutover(&["plan"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("Schema rehearsal: the source's schema restored into a scratch database on the target server (15 -> 17)"),
        "{stdout}\n{stderr}"
    );
    let record = cutover_pg_record(&s);
    assert!(record.contains("\"by\": \"plan\""), "{record}");
    let discover_said = |s: &Scenario| {
        let (code, stdout, _) = s.run(&["status", "--output", "json"]);
        assert_eq!(code, 0);
        let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        status["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|st| st["stage"] == "discover")
            .map(|st| {
                st["artefacts"]["rehearsal"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default()
    };
    let (code, _, stderr) = cutover(&["run", "--yes", "--until", "discover"]);
    assert_eq!(code, Some(0), "{stderr}");
    let said = discover_said(&s);
    assert!(
        said.contains("by plan at") && said.contains("so it is not restored again"),
        "{said}"
    );
    // A schema change since: discover rehearses again (a new run).
    let (code, _, stderr) = cutover(&["rollback", "--yes"]);
    assert_eq!(code, Some(0), "{stderr}");
    s.pair
        .source
        .sql(SEED_DB, "CREATE INDEX readings_v ON readings (v)")
        .unwrap();
    let (code, _, stderr) = cutover(&["run", "--yes", "--until", "verify-data"]);
    assert_eq!(code, Some(0), "{stderr}");
    let said = discover_said(&s);
    assert!(
        said.starts_with("the source's schema restored into a scratch database")
            && !said.contains("not restored again"),
        "{said}"
    );
    assert!(cutover_pg_record(&s).contains("\"by\": \"discover\""));
    // The aclitem values moved as text, the same on the 17 target.
    assert_eq!(
        s.pair
            .target
            .sql(
                SEED_DB,
                "SELECT string_agg(acl::text, ' ' ORDER BY id) FROM perms"
            )
            .unwrap(),
        "kit_admin=r/kit_admin =arw/kit_admin"
    );
}

/// The record of the last rehearsal that passed, in the run directory.
fn cutover_pg_record(s: &Scenario) -> String {
    std::fs::read_to_string(s.run_dir().join("rehearsal").join("passed.json")).unwrap_or_default()
}

/// Two views that select from themselves (PostgREST's test database has
/// them: CREATE OR REPLACE VIEW allows it, querying them fails) and a role
/// the target lacks: `plan` names all three in one refusal, each with its
/// fix, and so does the run, at discover; nothing changed on the target.
#[test]
fn a_plan_names_self_recursive_views_and_a_missing_role_in_one_pass() {
    let pair = PgPair::start().unwrap();
    for server in [&pair.source, &pair.target] {
        server.create_database(SEED_DB).unwrap();
    }
    pair.source
        .sql(
            SEED_DB,
            "CREATE ROLE reporter; CREATE TABLE docs (id int PRIMARY KEY); INSERT INTO docs VALUES (1); \
             GRANT SELECT ON docs TO reporter; \
             CREATE VIEW loop_a AS SELECT 1 AS a; CREATE OR REPLACE VIEW loop_a AS SELECT a FROM loop_a; \
             CREATE VIEW loop_b AS SELECT 1 AS b; CREATE OR REPLACE VIEW loop_b AS SELECT b FROM loop_b",
        )
        .unwrap();
    let s = Scenario::with(pair, "");
    let (source_before, target_before) = (s.source_digest(), s.target_digest());
    for args in [&["plan"][..], &["run", "--yes"]] {
        let (code, _, stderr) = s.run(args);
        assert_eq!(code, 5, "{args:?}: {stderr}");
        for expected in [
            "the target server lacks 1 role(s) that the source's owners, privileges, policies or settings name: \
             reporter",
            "; and the source's schema does not restore on the target server: 2 object(s) fail; nothing was changed",
            "ROLE reporter (named by the source's owners, privileges, policies or settings)",
            "a role the target server lacks: create it there, or use [roles] create_missing",
            // Without owners: create-roles has yet to run.
            "VIEW public.loop_a: relation \"public.loop_a\" does not exist (SQLSTATE 42P01)",
            "VIEW public.loop_b: relation \"public.loop_b\" does not exist (SQLSTATE 42P01)",
            "[roles] create_missing = true",
            "a view that selects from itself",
        ] {
            assert!(
                stderr.contains(expected),
                "{args:?}: {expected:?} missing:\n{stderr}"
            );
        }
        // Each view once (the run prints its failure twice: the stage's
        // line and the final error).
        let times = if args[0] == "plan" { 2 } else { 4 };
        assert_eq!(
            stderr.matches("a view that selects from itself").count(),
            times,
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(s.target_digest(), target_before);
    assert_eq!(s.source_digest(), source_before);
    assert_eq!(
        s.pair
            .target
            .sql(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname LIKE 'cutover\\_rehearsal%'"
            )
            .unwrap(),
        "0"
    );
    // Without the rehearsal the role is still refused, alone.
    let (code, _, stderr) = s.run(&["plan", "--no-rehearse"]);
    assert_eq!(code, 5, "{stderr}");
    assert!(
        stderr.contains("the target server lacks 1 role(s) that the source's owners, privileges, policies or settings name: reporter"),
        "{stderr}"
    );
}

/// The schema rehearsal names every object the target server cannot
/// recreate in one pass (pg_upgrade --check's way), not the first only:
/// views using PostgreSQL 16's SYSTEM_USER and 17's JSON_TABLE, going to a
/// 15 target. Refused before anything destructive; the target unchanged.
#[test]
fn the_rehearsal_names_every_object_the_target_cannot_recreate_at_once() {
    let (source, target) = servers_of(17, 15);
    for server in [&source, &target] {
        server.create_database(SEED_DB).unwrap();
    }
    source
        .sql(
            SEED_DB,
            "CREATE TABLE docs (id int PRIMARY KEY, body jsonb); INSERT INTO docs VALUES (1, '[1, 2]'); \
             CREATE VIEW who AS SELECT SYSTEM_USER AS login; \
             CREATE VIEW who_else AS SELECT SYSTEM_USER AS login, 1 AS n; \
             CREATE VIEW items AS SELECT d.id, jt.v FROM docs d, \
               JSON_TABLE(d.body, '$[*]' COLUMNS (v int PATH '$')) jt",
        )
        .unwrap();
    let s = Scenario::with(PgPair { source, target }, "");
    let target_before = s.target_digest();
    let path = path_with(&[17]);
    // The dry run says it first (plan rehearses too), then the run.
    for args in [&["plan"][..], &["run", "--yes"]] {
        let mut cmd = s.cutover(args);
        cmd.env("PATH", &path).env_remove("CUTOVER_PG_BINDIR");
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {stderr}");
        for expected in [
            "the source's schema does not restore on the target server: 3 object(s) fail; nothing was changed",
            "VIEW public.who (owner kit_admin)",
            "VIEW public.who_else (owner kit_admin)",
            "VIEW public.items (owner kit_admin)",
            "the target's PostgreSQL 15 does not know (the source runs 17)",
        ] {
            assert!(stderr.contains(expected), "{expected:?} missing:\n{stderr}");
        }
        if args[0] == "plan" {
            assert!(
                !s.run_dir().exists(),
                "a plan that failed wrote the run directory"
            );
        }
    }
    assert_eq!(s.target_digest(), target_before);
    assert_eq!(
        s.pair
            .target
            .sql(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname LIKE 'cutover_rehearsal%'"
            )
            .unwrap(),
        "0"
    );
}

/// A target server whose packages leave a control file that does not read
/// (a dangling alternatives link, as a half-removed PostGIS package leaves
/// on Debian): `pg_available_extensions` fails there. The plan still
/// rehearses and passes, says why the rehearsal is not kept, and rehearses
/// again next time instead of trusting a fingerprint that missed a fact.
#[test]
fn a_target_that_cannot_list_its_extensions_is_rehearsed_every_time() {
    use cutover_testkit::Backend;
    let source = PgServer::start().unwrap();
    let target = PgServer::start_on(Backend::Docker).unwrap();
    let id = target.container_id().unwrap().to_string();
    let sharedir = target.sql(
        "postgres",
        "SELECT setting FROM pg_config WHERE name = 'SHAREDIR'",
    );
    let sharedir = sharedir.unwrap_or_else(|_| "/usr/share/postgresql/15".into());
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("broken_pkg.control");
    std::os::unix::fs::symlink("/etc/alternatives/broken_pkg.control", &link).unwrap();
    let copied = std::process::Command::new("docker")
        .arg("cp")
        .arg(&link)
        .arg(format!("{id}:{sharedir}/extension/"))
        .status()
        .unwrap();
    assert!(copied.success());
    let listed = target.sql("postgres", "SELECT count(*) FROM pg_available_extensions");
    assert!(listed.is_err(), "the control file reads: {listed:?}");
    source.load_fixture(SEED_DB, Fixture::SeedSource).unwrap();
    target.load_fixture(SEED_DB, Fixture::SeedTarget).unwrap();
    let s = Scenario::with(PgPair { source, target }, "");
    for _ in 0..2 {
        let (code, stdout, stderr) = s.run(&["plan"]);
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stdout.contains("Schema rehearsal: the source's schema restored into a scratch database")
                && !stdout.contains("not restored again"),
            "{stdout}"
        );
        assert!(
            stderr.contains("the target server cannot list the extensions its packages provide")
                && stderr.contains("broken_pkg"),
            "{stderr}"
        );
        assert_eq!(cutover_pg_record(&s), "", "no record is kept");
    }
}
