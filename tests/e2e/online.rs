//! `options.mode = "online"`: servers that are not ready are refused with
//! what each needs (nothing changed); ready ones cut over while an
//! application keeps writing through a real PgBouncer, with a pause, not
//! errors; a rollback after the switch brings every write made on the
//! target back to the source; nothing of the replication is left behind.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cutover_testkit::{PgBouncer, PgPair, PgServer, ServerOptions};

use crate::support::{Scenario, Watch};

/// Two servers (`wal_level` given, else the kit's `logical`) with a table
/// of each kind: keyed, keyless, keyed by a replica-identity index.
fn pair(wal_level: Option<&str>) -> PgPair {
    let opts = ServerOptions {
        wal_level: wal_level.map(str::to_string),
        ..Default::default()
    };
    let (source, target) = std::thread::scope(|s| {
        let a = s.spawn(|| PgServer::start_with(&opts).unwrap());
        let b = s.spawn(|| PgServer::start_with(&opts).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    for server in [&source, &target] {
        server.create_database("app").unwrap();
    }
    source
        .sql(
            "app",
            "CREATE TABLE with_key (id int PRIMARY KEY, v text); CREATE TABLE no_key (v text); \
             CREATE TABLE by_index (id int NOT NULL, v text); CREATE UNIQUE INDEX by_index_id ON by_index (id); \
             ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_id; \
             INSERT INTO with_key SELECT g, 'x' FROM generate_series(1, 10) g",
        )
        .unwrap();
    PgPair { source, target }
}

const ONLINE: &str = "\n[options]\nmode = \"online\"\n";

#[test]
fn online_mode_is_refused_with_what_the_servers_need_and_nothing_changes() {
    let s = Scenario::with(pair(Some("replica")), ONLINE);
    let (code, _, stderr) = s.run(&["plan"]);
    assert_eq!(code, 5, "{stderr}");
    for expected in [
        "the servers are not ready for logical replication; nothing was changed",
        "the source has wal_level = replica; fix: ALTER SYSTEM SET wal_level = logical on the source",
        "the target has wal_level = replica",
        "have neither a primary key nor a replica identity",
        "public.no_key",
        "note: DDL is not replicated",
        "hint: or remove options.mode",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing:\n{stderr}");
    }
    // Keyed tables, by primary key or by a replica-identity index, are fine.
    assert!(
        !stderr.contains("with_key") && !stderr.contains("by_index"),
        "{stderr}"
    );
    // run refuses the same way before anything: not even the journal.
    let target_before = s.target_digest();
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 5, "{stderr}");
    assert_eq!(s.target_digest(), target_before);
    assert_eq!(
        s.pair
            .target
            .sql(
                "app",
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'cutover'"
            )
            .unwrap(),
        "0"
    );
}

#[test]
fn with_logical_servers_only_what_is_left_is_named() {
    let s = Scenario::with(pair(None), ONLINE);
    s.pair
        .source
        .sql("app", "ALTER TABLE no_key REPLICA IDENTITY FULL")
        .unwrap();
    // Ready servers: the plan is the online one (with what replication
    // does not carry as a warning); without consumers it says it needs them.
    let (code, _, stderr) = s.run(&["plan"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("options.mode = \"online\" needs the [[consumer]] entries"),
        "{stderr}"
    );
    assert!(!stderr.contains("wal_level"), "{stderr}");
}

/// The seed's servers with what an online cutover meets in production: an
/// application role (`app_rw`, its grants on the source) and a table the
/// application keeps writing to.
fn online_pair() -> PgPair {
    prepare(PgPair::seed().unwrap())
}

/// [`online_pair`]'s role and table on a pair holding the seed.
fn prepare(pair: PgPair) -> PgPair {
    for server in [&pair.source, &pair.target] {
        server
            .sql("postgres", "CREATE ROLE app_rw LOGIN PASSWORD 'app-rw-secret-9'")
            .unwrap();
    }
    pair.source
        .sql(
            "app",
            "CREATE TABLE online_writes (id bigserial PRIMARY KEY, server text NOT NULL, at timestamptz DEFAULT now()); \
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_rw; \
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app_rw",
        )
        .unwrap();
    pair
}

/// The PgBouncer entry as a deployment writes it (the server login in it).
fn entry(server: &PgServer) -> String {
    format!(
        "host=127.0.0.1 port={} dbname=app user={} password={} pool_size=5",
        server.port(),
        server.user(),
        server.password()
    )
}

/// An online plan: the PgBouncer entry and an env file whose application
/// logs in as app_rw.
fn online_plan(bouncer: &PgBouncer, extra: &str) -> String {
    format!(
        "\n[options]\nmode = \"online\"\n[options.online]\nmax_pause = 5\n{extra}\n\
         [[consumer]]\nname = \"bouncer\"\nkind = \"pgbouncer\"\npath = \"{}\"\nkey = \"app\"\n\
         admin_url_env = \"BOUNCER_ADMIN_URL\"\npause_timeout = 5\n\
         [[consumer]]\nname = \"worker\"\nkind = \"env\"\npath = \"worker.env\"\nkey = \"DATABASE_URL\"\n\
         target_url_env = \"WORKER_TARGET_URL\"\n",
        bouncer.ini().display()
    )
}

fn setup(extra: &str) -> (Scenario, PgBouncer) {
    setup_on(online_pair(), extra)
}

fn setup_on(pair: PgPair, extra: &str) -> (Scenario, PgBouncer) {
    let bouncer = PgBouncer::start(&[("app", entry(&pair.source))], "transaction").unwrap();
    let port = pair.source.port();
    // On the docker backend each server reaches the other on Docker's network.
    let mut extra = extra.to_string();
    for (key, server) in [("source_address", &pair.source), ("target_address", &pair.target)] {
        if let Some(a) = server.address_for_peers() {
            extra.push_str(&format!("{key} = \"{a}\"\n"));
        }
    }
    let s = Scenario::with(pair, &online_plan(&bouncer, &extra));
    std::fs::write(
        s.dir.path().join("worker.env"),
        format!("DATABASE_URL=postgresql://app_rw:app-rw-secret-9@127.0.0.1:{port}/app\n"),
    )
    .unwrap();
    (s, bouncer)
}

fn cutover(s: &Scenario, bouncer: &PgBouncer, args: &[&str]) -> (i32, String, String) {
    cutover_with(s, bouncer, args, &[])
}

/// The servers', the admin console's and app_rw's passwords in no output.
fn cutover_with(
    s: &Scenario,
    bouncer: &PgBouncer,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut vars = vec![
        ("BOUNCER_ADMIN_URL", bouncer.admin_url()),
        (
            "WORKER_TARGET_URL",
            format!(
                "postgresql://app_rw:app-rw-secret-9@127.0.0.1:{}/app",
                s.pair.target.port()
            ),
        ),
    ];
    vars.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    s.run_with(args, &vars, &[bouncer.admin_password(), "app-rw-secret-9"])
}

/// An application writing through PgBouncer on one connection, fifty times
/// a second; each committed insert prints its id and the server's system
/// identifier.
struct Writer(Watch);

impl Writer {
    fn start(bouncer: &PgBouncer) -> Writer {
        Writer(Watch::start(
            &bouncer.url("app"),
            "INSERT INTO online_writes (server) SELECT system_identifier::text FROM pg_control_system() \
             RETURNING 'w ' || id || ' ' || server",
            "0.02",
        ))
    }

    /// Stops it: the ids it committed, the servers (system identifiers) in
    /// order (deduplicated), its errors.
    fn stop(self) -> (Vec<i64>, Vec<String>, String) {
        let (out, err) = self.0.stop();
        let (mut ids, mut servers) = (vec![], vec![]);
        for l in out.lines() {
            let mut w = l.split(' ');
            if w.next() != Some("w") {
                continue;
            }
            ids.push(w.next().unwrap().parse::<i64>().unwrap());
            let server = w.next().unwrap().to_string();
            if servers.last() != Some(&server) {
                servers.push(server);
            }
        }
        (ids, servers, err)
    }
}

/// Rows in online_writes on a server.
fn writes(server: &PgServer) -> i64 {
    server
        .sql("app", "SELECT count(*) FROM online_writes")
        .unwrap()
        .parse()
        .unwrap()
}

/// Every insert the writer saw committed is on `server`, and at most one
/// more beside the `others` rows written otherwise: the insert in flight
/// when the writer was stopped (committed, its answer never read).
fn assert_writes_on(server: &PgServer, ids: &[i64], others: i64) {
    let missing = server
        .sql(
            "app",
            &format!(
                "SELECT count(*) FROM unnest('{{{}}}'::bigint[]) i \
                 WHERE NOT EXISTS (SELECT 1 FROM online_writes w WHERE w.id = i)",
                ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
            ),
        )
        .unwrap();
    assert_eq!(missing, "0", "inserts the application saw committed are missing");
    let extra = writes(server) - ids.len() as i64 - others;
    assert!((0..=1).contains(&extra), "{extra} rows beyond the application's");
}

/// Waits until the reverse stream has brought the target's rows to the source.
fn wait_for_reverse(s: &Scenario) {
    wait_for("the reverse stream", || {
        writes(&s.pair.source) == writes(&s.pair.target)
    });
}

/// Stops the writer (no error; the servers it wrote to, in order), checks
/// its rows on the target and, through the reverse stream, on the source,
/// then closes the rollback window and checks nothing is left.
fn finish(
    s: &Scenario,
    bouncer: &PgBouncer,
    writer: Writer,
    servers: &[String],
    others: i64,
    env: &[(&str, &str)],
) {
    std::thread::sleep(Duration::from_millis(500));
    let (ids, seen, errors) = writer.stop();
    assert_eq!(seen, servers, "{errors}");
    assert!(errors.is_empty(), "{errors}");
    assert_writes_on(&s.pair.target, &ids, others);
    wait_for_reverse(s);
    assert_writes_on(&s.pair.source, &ids, others);
    let (code, stdout, stderr) = cutover_with(s, bouncer, &["run", "--yes"], env);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_nothing_left(s);
}

/// No slot, publication or subscription on either server.
fn assert_nothing_left(s: &Scenario) {
    for server in [&s.pair.source, &s.pair.target] {
        assert_eq!(
            replication_objects(server),
            "0 slots, 0 publications, 0 subscriptions"
        );
    }
}

/// Whether PgBouncer's entry `app` is paused (`SHOW DATABASES`, column `paused`).
fn entry_paused(bouncer: &PgBouncer) -> bool {
    let rows = bouncer.admin_rows("SHOW DATABASES").unwrap();
    let app = rows.iter().find(|r| r["name"] == "app").expect("entry app");
    app["paused"] == "1"
}

/// cutover's slots, publications and subscriptions on a server.
fn replication_objects(server: &PgServer) -> String {
    server
        .sql(
            "app",
            "SELECT (SELECT count(*) FROM pg_replication_slots) || ' slots, ' || \
                    (SELECT count(*) FROM pg_publication) || ' publications, ' || \
                    (SELECT count(*) FROM pg_subscription) || ' subscriptions'",
        )
        .unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A session on the target holding a lock the apply worker needs (the
/// target cannot catch up while it lives); returned once the lock is held.
fn block_apply(s: &Scenario) -> std::process::Child {
    let psql = cutover_testkit::pg_bindir().unwrap().join("psql");
    let mut blocker = Command::new(psql)
        .args(["-X", "-q"])
        .arg(s.pair.target.url("app"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = blocker.stdin.as_mut().unwrap();
        stdin
            .write_all(b"BEGIN;\nLOCK TABLE online_writes IN SHARE MODE;\n")
            .unwrap();
        stdin.flush().unwrap();
    }
    wait_for("the lock", || {
        s.pair
            .target
            .sql("app", "SELECT count(*) FROM pg_locks WHERE mode = 'ShareLock' AND relation = 'online_writes'::regclass")
            .unwrap()
            == "1"
    });
    blocker
}

/// What app_rw may do on a server, through its own login.
fn app_rw_insert(server: &PgServer) -> Result<String, String> {
    let psql = cutover_testkit::pg_bindir().unwrap().join("psql");
    let out = Command::new(psql)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg("INSERT INTO online_writes (server) VALUES ('app_rw') RETURNING id")
        .arg(format!(
            "postgresql://app_rw:app-rw-secret-9@127.0.0.1:{}/app",
            server.port()
        ))
        .env("LC_MESSAGES", "C")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn an_online_cutover_pauses_the_writers_for_seconds_and_loses_nothing() {
    let (s, bouncer) = setup("");
    let tgt = s.pair.target.port();
    let (src_id, tgt_id) = (
        s.pair.source.system_identifier().unwrap(),
        s.pair.target.system_identifier().unwrap(),
    );
    let writer = Writer::start(&bouncer);
    std::thread::sleep(Duration::from_millis(500));

    let (code, stdout, stderr) = cutover(&s, &bouncer, &["plan"]);
    assert_eq!(code, 0, "{stderr}");
    for stage in [
        "replicate",
        "switch",
        "repoint:bouncer",
        "repoint:worker",
        "resume",
        "verify-sync",
        "end-replication",
    ] {
        assert!(stdout.contains(stage), "{stage} missing:\n{stdout}");
    }
    assert!(!stdout.contains("freeze-source"), "{stdout}");

    // A first attempt killed while it copies under the slot's snapshot.
    let (code, _, _) = cutover_with(
        &s,
        &bouncer,
        &["run", "--yes"],
        &[("CUTOVER_CRASH_AT", "replicate:copying")],
    );
    assert_ne!(code, 0);
    // The rollback window stays open: stop before end-replication.
    let (code, stdout, stderr) = cutover(
        &s,
        &bouncer,
        &["run", "--yes", "--until", "verify-sync", "--output", "json"],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}\n{}", bouncer.log());
    assert!(stdout.contains("its snapshot is gone"), "{stdout}");
    std::thread::sleep(Duration::from_millis(500));

    // The switch's pause is journaled; the data was verified under the snapshot.
    let switch = s.artefacts("switch");
    let resume = s.artefacts("resume");
    let pause = resume["pause_millis"].as_u64().unwrap();
    assert!(pause > 0 && pause < 10_000, "{resume}");
    assert!(switch["pause_started"].as_str().unwrap() == resume["pause_started"].as_str().unwrap());
    let replicate = s.artefacts("replicate");
    assert!(replicate["verify"]["report"]["ok"] == true, "{replicate}");
    // The worker's file points at the target; app_rw may not write on the
    // source any more (the fence), and may on the target.
    let env = std::fs::read_to_string(s.dir.path().join("worker.env")).unwrap();
    assert!(env.contains(&format!(":{tgt}/app")), "{env}");
    let refused = app_rw_insert(&s.pair.source).unwrap_err();
    assert!(
        refused.contains("permission denied for database \"app\""),
        "{refused}"
    );
    let on_target: i64 = app_rw_insert(&s.pair.target).unwrap().parse().unwrap();

    // Writes on the target come back to the source (the rollback window).
    std::thread::sleep(Duration::from_millis(500));
    let (ids, ports, errors) = writer.stop();
    assert_eq!(ports, [src_id, tgt_id], "{errors}");
    assert!(errors.is_empty(), "{errors}");
    assert_writes_on(&s.pair.target, &ids, 1);
    wait_for_reverse(&s);
    assert_writes_on(&s.pair.source, &ids, 1);
    // The sequence was carried inside the pause: the ids the target gave
    // (app_rw's and the writer's after the switch) follow the source's (a
    // reused id would have failed the writer's insert on the primary key).
    let max = s
        .pair
        .target
        .sql("app", "SELECT max(id) FROM online_writes")
        .unwrap();
    assert!(max.parse::<i64>().unwrap() >= on_target.max(*ids.iter().max().unwrap()));
    assert_eq!(
        s.pair.target.digest("app", &["cutover"]).unwrap(),
        s.pair.source.digest("app", &["cutover"]).unwrap()
    );

    // The report has the proof (verified under the snapshot) and the pause.
    let report = s.dir.path().join("report.md");
    let (code, _, stderr) = cutover(&s, &bouncer, &["report", "--out", report.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let report = std::fs::read_to_string(report).unwrap();
    assert!(
        report.contains("under the replication slot's snapshot"),
        "{report}"
    );
    assert!(report.contains("| online_writes |"), "{report}");
    assert!(
        report.contains(&format!(
            "The applications' write pause (online mode): from {}",
            resume["pause_started"].as_str().unwrap()
        )),
        "{report}"
    );
    // verify agrees (the applications' fence on the source is no difference).
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["verify"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // status tells what replication exists now, and the WAL a slot keeps.
    let (code, stdout, _) = cutover(&s, &bouncer, &["status"]);
    assert_eq!(code, 0);
    for line in [
        "replication: slot cutover_reverse on the target: keeps ",
        "replication: subscription cutover_reverse on the source: streaming",
    ] {
        assert!(stdout.contains(line), "{line:?} missing:\n{stdout}");
    }
    // Closing the window leaves nothing of the replication behind.
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let (_, stdout, _) = cutover(&s, &bouncer, &["status"]);
    assert!(
        stdout.contains("replication: none of cutover's slots, publications or subscriptions exists"),
        "{stdout}"
    );
    assert_nothing_left(&s);
    // Of cutover's schema on the source only the fence's saved privileges
    // are left: the source stays fenced until it is retired.
    assert_eq!(
        s.pair
            .source
            .sql(
                "app",
                "SELECT string_agg(c.relname, ',') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = 'cutover'"
            )
            .unwrap(),
        "fence"
    );
    assert!(
        app_rw_insert(&s.pair.source)
            .unwrap_err()
            .contains("permission denied for database")
    );
}

#[test]
fn a_rollback_after_the_switch_brings_every_write_back_to_the_source() {
    let (s, bouncer) = setup("");
    let src = s.pair.source.port();
    let (src_id, tgt_id) = (
        s.pair.source.system_identifier().unwrap(),
        s.pair.target.system_identifier().unwrap(),
    );
    let before = std::fs::read(bouncer.ini()).unwrap();
    let writer = Writer::start(&bouncer);
    std::thread::sleep(Duration::from_millis(300));
    // Killed inside the pause: the next run resumes the applications on
    // the source, then switches.
    let (code, _, _) = cutover_with(
        &s,
        &bouncer,
        &["run", "--yes", "--until", "verify-sync"],
        &[("CUTOVER_CRASH_AT", "switch:paused")],
    );
    assert_ne!(code, 0);
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes", "--until", "verify-sync"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}\n{}", bouncer.log());
    // The applications write on the target for a while.
    std::thread::sleep(Duration::from_millis(1000));
    app_rw_insert(&s.pair.target).unwrap();

    let (code, stdout, stderr) = cutover(&s, &bouncer, &["rollback", "--yes"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}\n{}", bouncer.log());
    std::thread::sleep(Duration::from_millis(500));
    let (ids, ports, errors) = writer.stop();
    assert_eq!(ports, [src_id.clone(), tgt_id, src_id], "{errors}");
    assert!(errors.is_empty(), "{errors}");
    // Every write, made on either side, is on the source.
    assert_writes_on(&s.pair.source, &ids, 1);
    // The configurations are back, the fence lifted, nothing left behind.
    assert_eq!(std::fs::read(bouncer.ini()).unwrap(), before);
    let env = std::fs::read_to_string(s.dir.path().join("worker.env")).unwrap();
    assert!(env.contains(&format!(":{src}/app")), "{env}");
    app_rw_insert(&s.pair.source).unwrap();
    for server in [&s.pair.source, &s.pair.target] {
        assert_eq!(
            replication_objects(server),
            "0 slots, 0 publications, 0 subscriptions"
        );
        assert_eq!(
            server.sql("postgres", "SELECT count(*) FROM pg_db_role_setting WHERE 'default_transaction_read_only=on' = ANY (setconfig)").unwrap(),
            "0"
        );
    }
}

#[test]
fn an_apply_error_is_reported_with_its_fix_while_the_applications_stay_on_the_source() {
    let (s, bouncer) = setup("");
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes", "--until", "replicate"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // A row written on the target since the copy collides with the source's.
    s.pair
        .target
        .sql(
            "app",
            "INSERT INTO online_writes (id, server) VALUES (1000000, 'target')",
        )
        .unwrap();
    s.pair
        .source
        .sql(
            "app",
            "INSERT INTO online_writes (id, server) VALUES (1000000, 'source')",
        )
        .unwrap();
    wait_for("the subscription to stop on the conflict", || {
        s.pair
            .target
            .sql("app", "SELECT subenabled FROM pg_subscription")
            .unwrap()
            == "f"
    });
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes", "--output", "json"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let failed = crate::support::stage_failed(&stdout);
    assert_eq!(failed["stage"], "replicate", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("the target refused a change replicated from the source"),
        "{error}"
    );
    assert!(
        failed["hint"]
            .as_str()
            .unwrap()
            .contains("delete or correct that row on the target"),
        "{failed}"
    );
    // The applications still write to the source.
    app_rw_insert(&s.pair.source).unwrap();
    let shown = bouncer.admin("SHOW DATABASES").unwrap();
    assert!(
        shown.contains(&format!("app|127.0.0.1|{}|app|", s.pair.source.port())),
        "{shown}"
    );
    // Fixed on the target, the next run goes on where the stream stopped.
    s.pair
        .target
        .sql("app", "DELETE FROM online_writes WHERE id = 1000000")
        .unwrap();
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(
        s.pair
            .target
            .sql("app", "SELECT server FROM online_writes WHERE id = 1000000")
            .unwrap(),
        "source"
    );
    assert_nothing_left(&s);
}

#[test]
fn a_source_restarted_during_replicate_streams_again_and_nothing_is_lost() {
    let (s, bouncer) = setup("");
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes", "--until", "replicate"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    s.pair.source.restart().unwrap();
    s.pair
        .source
        .sql(
            "app",
            "INSERT INTO online_writes (server) SELECT 'after restart' FROM generate_series(1, 50)",
        )
        .unwrap();
    // The subscription reconnects by itself; the switch catches up with
    // what the source took after its restart.
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(
        s.pair
            .target
            .sql(
                "app",
                "SELECT count(*) FROM online_writes WHERE server = 'after restart'"
            )
            .unwrap(),
        "50"
    );
    assert_eq!(
        s.pair.target.digest("app", &["cutover"]).unwrap(),
        s.pair.source.digest("app", &["cutover"]).unwrap()
    );
    assert_nothing_left(&s);
}

#[test]
fn a_switch_that_cannot_catch_up_in_time_resumes_the_applications_on_the_source() {
    let (s, bouncer) = setup("");
    let (src_id, tgt_id) = (
        s.pair.source.system_identifier().unwrap(),
        s.pair.target.system_identifier().unwrap(),
    );
    let writer = Writer::start(&bouncer);
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes", "--until", "replicate"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // A session on the target holds a lock the apply worker needs: the
    // switch cannot catch up.
    let mut blocker = block_apply(&s);
    let started = Instant::now();
    let (code, stdout, stderr) = cutover(
        &s,
        &bouncer,
        &["run", "--yes", "--until", "verify-sync", "--output", "json"],
    );
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let failed = crate::support::stage_failed(&stdout);
    assert_eq!(failed["stage"], "switch", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("did not catch up within options.online.max_pause (5 s)")
            && error.contains("resumed on the source"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // The applications are back on the source, writing: PgBouncer unpaused,
    // app_rw's role writable there again.
    let shown = bouncer.admin("SHOW DATABASES").unwrap();
    let row = shown.lines().find(|l| l.starts_with("app|")).unwrap().to_string();
    assert!(row.contains(&format!("|{}|app|", s.pair.source.port())), "{row}");
    assert!(!entry_paused(&bouncer));
    app_rw_insert(&s.pair.source).unwrap();
    // The lock goes: the next run switches.
    blocker.kill().unwrap();
    blocker.wait().unwrap();
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes", "--until", "verify-sync"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    finish(&s, &bouncer, writer, &[src_id, tgt_id], 1, &[]);
}

#[test]
fn a_subscription_that_cannot_connect_fails_with_no_password_in_any_log_and_no_slot_left() {
    // The target server cannot reach the source at this address.
    let (s, bouncer) = setup("source_address = \"127.0.0.1:1\"\n");
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes", "--until", "replicate"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("creating subscription cutover_forward"),
        "{stderr}"
    );
    assert!(stderr.contains("source_address"), "{stderr}");
    // The failing statement carried the source's password: the target
    // server did not log it.
    if let Some(log) = s.pair.target.server_log() {
        assert!(log.contains("could not connect to the publisher"), "{log}");
        assert!(
            !log.contains(s.pair.source.password()),
            "the password is in the target's log"
        );
    }
    // Nothing keeps WAL on the source.
    assert_eq!(
        s.pair
            .source
            .sql("app", "SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "0"
    );
}

#[test]
fn a_switch_killed_past_the_point_of_no_return_finishes_and_reports_the_whole_pause() {
    let (s, bouncer) = setup("");
    let (src_id, tgt_id) = (
        s.pair.source.system_identifier().unwrap(),
        s.pair.target.system_identifier().unwrap(),
    );
    let writer = Writer::start(&bouncer);
    std::thread::sleep(Duration::from_millis(300));
    // Killed once the forward stream is gone: the target has every write,
    // the applications are still paused, nothing streams back yet.
    let (code, _, _) = cutover_with(
        &s,
        &bouncer,
        &["run", "--yes", "--until", "verify-sync"],
        &[("CUTOVER_CRASH_AT", "switch:forward-dropped")],
    );
    assert_ne!(code, 0);
    assert!(entry_paused(&bouncer), "the entry should still be paused");
    std::thread::sleep(Duration::from_millis(1500));
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes", "--until", "verify-sync"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // The pause is counted from the killed attempt's PAUSE.
    let pause = s.artefacts("resume")["pause_millis"].as_u64().unwrap();
    assert!(pause >= 1500, "{pause} ms");
    finish(&s, &bouncer, writer, &[src_id, tgt_id], 0, &[]);
}

#[test]
fn a_table_created_on_the_source_after_the_copy_stops_the_switch_before_any_pause() {
    let (s, bouncer) = setup("");
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes", "--until", "replicate"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    s.pair
        .source
        .sql(
            "app",
            "CREATE TABLE added_later (id int PRIMARY KEY); INSERT INTO added_later VALUES (1)",
        )
        .unwrap();
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes"]);
    assert_eq!(code, 5, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("table(s) public.added_later were created on the source after the copy"),
        "{stderr}"
    );
    assert!(stderr.contains("cutover rollback"), "{stderr}");
    assert!(!entry_paused(&bouncer));
    app_rw_insert(&s.pair.source).unwrap();
    // Rolled back and run again, the new copy takes it.
    let (code, _, stderr) = cutover(&s, &bouncer, &["rollback", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert_nothing_left(&s);
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes", "--restart"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(
        s.pair
            .target
            .sql("app", "SELECT count(*) FROM added_later")
            .unwrap(),
        "1"
    );
}

#[test]
fn an_online_cutover_from_postgresql_14_to_17() {
    let start = |major: u32| {
        PgServer::start_with(&ServerOptions {
            major: Some(major),
            ..Default::default()
        })
    };
    let (source, target) = std::thread::scope(|s| {
        let a = s.spawn(|| start(14));
        let b = s.spawn(|| start(17));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    source
        .load_fixture("app", cutover_testkit::Fixture::SeedSource)
        .unwrap();
    target
        .load_fixture("app", cutover_testkit::Fixture::SeedTarget)
        .unwrap();
    let (s, bouncer) = setup_on(prepare(PgPair { source, target }), "");
    let (src_id, tgt_id) = (
        s.pair.source.system_identifier().unwrap(),
        s.pair.target.system_identifier().unwrap(),
    );
    // The client tools of the newer server first on PATH, as an operator has them.
    let path = format!(
        "{}:{}",
        cutover_testkit::pg_bindir_for(17).unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [("PATH", path.as_str())];
    let writer = Writer::start(&bouncer);
    std::thread::sleep(Duration::from_millis(300));
    // 14 creates the slot with the older EXPORT_SNAPSHOT; 17 subscribes; 14
    // takes the reverse subscription.
    let (code, stdout, stderr) =
        cutover_with(&s, &bouncer, &["run", "--yes", "--until", "verify-sync"], &env);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    finish(&s, &bouncer, writer, &[src_id, tgt_id], 0, &env);
}

/// A write on `server` as `user`, the way the least convenient client
/// makes it: a new connection, a read-write transaction asked for.
fn write_as(server: &PgServer, user: &str, password: &str) -> Result<String, String> {
    crate::support::psql(
        &format!("postgresql://{user}:{password}@127.0.0.1:{}/app", server.port()),
        "BEGIN READ WRITE; INSERT INTO online_writes (server) VALUES ('direct'); COMMIT",
    )
}

/// After the switch nothing but cutover may write on the source: neither
/// the PgBouncer entry's own role (which had no session when the switch
/// came: PgBouncer's PAUSE had closed its server connections), nor the
/// worker's, nor a cron job's role the plan does not know, however they ask.
/// verify-sync proves it through the consumers' own logins; rollback puts
/// every privilege and setting back exactly.
#[test]
fn after_the_switch_no_role_but_cutovers_can_write_on_the_source_and_rollback_lifts_the_fence_exactly() {
    let pair = online_pair();
    for server in [&pair.source, &pair.target] {
        server
            .sql(
                "postgres",
                "CREATE ROLE nightly LOGIN PASSWORD 'nightly-secret-3'",
            )
            .unwrap();
    }
    pair.source
        .sql(
            "app",
            "GRANT INSERT ON online_writes TO nightly; GRANT USAGE ON SEQUENCE online_writes_id_seq TO nightly",
        )
        .unwrap();
    // The entry logs in as app_rw, as deployments that give PgBouncer the
    // application's own role write it.
    let as_app_rw = |server: &PgServer| {
        format!(
            "host=127.0.0.1 port={} dbname=app user=app_rw password=app-rw-secret-9 pool_size=5",
            server.port()
        )
    };
    let bouncer = PgBouncer::start(&[("app", as_app_rw(&pair.source))], "transaction").unwrap();
    let extra = match (pair.source.address_for_peers(), pair.target.address_for_peers()) {
        (Some(a), Some(b)) => format!("source_address = \"{a}\"\ntarget_address = \"{b}\"\n"),
        _ => String::new(),
    };
    let s = Scenario::with(pair, &online_plan(&bouncer, &extra));
    std::fs::write(
        s.dir.path().join("worker.env"),
        format!(
            "DATABASE_URL=postgresql://app_rw:app-rw-secret-9@127.0.0.1:{}/app\n",
            s.pair.source.port()
        ),
    )
    .unwrap();
    let before = crate::support::access(&s.pair.source);
    // No session of app_rw or nightly on the source.
    assert_eq!(
        s.pair
            .source
            .sql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE usename IN ('app_rw', 'nightly')"
            )
            .unwrap(),
        "0"
    );

    let (code, stdout, stderr) = cutover(&s, &bouncer, &["plan"]);
    assert_eq!(code, 0, "{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains("may not connect to the database any more"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("app_rw") && line.contains("nightly"), "{line}");

    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes", "--until", "verify-sync"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}\n{}", bouncer.log());
    for (user, pw) in [("app_rw", "app-rw-secret-9"), ("nightly", "nightly-secret-3")] {
        let refused = write_as(&s.pair.source, user, pw).unwrap_err();
        assert!(
            refused.contains("permission denied for database \"app\""),
            "{user}: {refused}"
        );
    }
    write_as(&s.pair.target, "app_rw", "app-rw-secret-9").unwrap();
    // verify in the rollback window says who may still connect there.
    let (_, _, stderr) = cutover(&s, &bouncer, &["verify"]);
    let fence = stderr
        .lines()
        .find(|l| l.starts_with("fence: up on the source"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(!fence.contains("app_rw") && !fence.contains("nightly"), "{fence}");
    // Proved by verify-sync through the consumers' logins, and reported.
    let fence = s.artefacts("verify-sync")["fence"].clone();
    let proofs = fence.as_array().unwrap();
    assert!(!proofs.is_empty(), "{fence}");
    // The worker logs in as app_rw: refused. PgBouncer was repointed with
    // the plan's target user (cutover's own), which no fence stops: named.
    let worker = proofs.iter().find(|p| p["consumer"] == "worker").unwrap();
    assert_eq!(worker["role"], "app_rw", "{worker}");
    assert_eq!(worker["holds"], true, "{worker}");
    assert!(
        worker["answer"].as_str().unwrap().contains("SQLSTATE 42501"),
        "{worker}"
    );
    let pooled = proofs.iter().find(|p| p["consumer"] == "bouncer").unwrap();
    assert!(
        pooled["answer"].as_str().unwrap().contains("beyond any fence"),
        "{pooled}"
    );
    let report = s.dir.path().join("report.md");
    let (code, _, stderr) = cutover(&s, &bouncer, &["report", "--out", report.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let report = std::fs::read_to_string(report).unwrap();
    assert!(
        report.contains("| worker | app_rw | yes | refused by the source"),
        "{report}"
    );

    let (code, stdout, stderr) = cutover(&s, &bouncer, &["rollback", "--yes"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(crate::support::access(&s.pair.source), before);
    for (user, pw) in [("app_rw", "app-rw-secret-9"), ("nightly", "nightly-secret-3")] {
        write_as(&s.pair.source, user, pw).unwrap();
    }
    assert_nothing_left(&s);
}

/// SIGTERM while the switch waits inside the pause: the applications
/// resume on the source (PgBouncer unpaused, the fence lifted) before
/// cutover exits, and the next run switches.
#[test]
fn sigterm_inside_the_pause_resumes_the_applications_on_the_source() {
    let (s, bouncer) = setup("");
    s.write_plan(
        &s.pair.source.url("app"),
        &s.pair.target.url("app"),
        &online_plan(&bouncer, "").replace("max_pause = 5", "max_pause = 60"),
    );
    let before = crate::support::access(&s.pair.source);
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes", "--until", "replicate"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // The apply worker waits behind a lock: the switch waits inside the pause.
    let mut blocker = block_apply(&s);
    app_rw_insert(&s.pair.source).unwrap();
    let mut run = s.cutover(&["run", "--yes", "--until", "verify-sync", "--output", "json"]);
    run.env("BOUNCER_ADMIN_URL", bouncer.admin_url())
        .env(
            "WORKER_TARGET_URL",
            format!(
                "postgresql://app_rw:app-rw-secret-9@127.0.0.1:{}/app",
                s.pair.target.port()
            ),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = run.spawn().unwrap();
    wait_for("the pause", || entry_paused(&bouncer));
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(signalled.elapsed() < Duration::from_secs(10));
    assert_ne!(out.status.code(), Some(0), "{stdout}");
    let failed = crate::support::stage_failed(&stdout);
    assert_eq!(failed["stage"], "switch", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("the applications resumed on the source"),
        "{failed}"
    );
    assert!(!entry_paused(&bouncer));
    assert_eq!(crate::support::access(&s.pair.source), before);
    app_rw_insert(&s.pair.source).unwrap();
    blocker.kill().unwrap();
    blocker.wait().unwrap();
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_nothing_left(&s);
}

/// A row written on the source during the rollback window (by a role no
/// fence stops) breaks the reverse stream: status and verify say so;
/// rollback refuses before pausing anything, while an application keeps
/// writing through PgBouncer without an error; once the row is fixed,
/// rollback enables the stream again and brings every write back.
#[test]
fn a_broken_reverse_stream_is_named_and_rollback_waits_for_it_before_pausing_anyone() {
    let (s, bouncer) = setup("");
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes", "--until", "verify-sync"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // cutover's own superuser writes id 1000000 on the source; the
    // application writes the same id on the target: the reverse stream
    // stops on the duplicate key.
    s.pair
        .source
        .sql(
            "app",
            "INSERT INTO online_writes (id, server) VALUES (1000000, 'stray')",
        )
        .unwrap();
    s.pair
        .target
        .sql(
            "app",
            "INSERT INTO online_writes (id, server) VALUES (1000000, 'application')",
        )
        .unwrap();
    wait_for("the reverse stream to stop", || {
        s.pair
            .source
            .sql("app", "SELECT count(*) FROM pg_subscription WHERE NOT subenabled")
            .unwrap()
            == "1"
    });
    let (code, stdout, _) = cutover(&s, &bouncer, &["status"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains(
            "WARNING: the target -> source stream (subscription cutover_reverse on the source) is DISABLED"
        ),
        "{stdout}"
    );
    // The sequences' state in the window is explicit.
    assert!(
        stdout.contains("replication: sequences: the source's are level with the target's"),
        "{stdout}"
    );
    let (_, _, stderr) = cutover(&s, &bouncer, &["verify"]);
    assert!(stderr.contains("is DISABLED after"), "{stderr}");
    let report = s.dir.path().join("window.md");
    let (code, _, stderr) = cutover(&s, &bouncer, &["report", "--out", report.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        std::fs::read_to_string(&report)
            .unwrap()
            .contains("> **Warning:** the target -> source stream"),
        "{stderr}"
    );

    let writer = Writer::start(&bouncer);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["rollback", "--yes"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("does not bring the target's writes back")
            && stderr.contains("nothing was paused and nothing rolled back"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!entry_paused(&bouncer));
    // The stall the application saw: none over 2 s (it kept committing).
    std::thread::sleep(Duration::from_millis(300));
    // Fixed on the source: the next rollback enables the stream itself.
    s.pair
        .source
        .sql("app", "DELETE FROM online_writes WHERE id = 1000000")
        .unwrap();
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["rollback", "--yes"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("enabled it again") || stdout.contains("enabled it again"),
        "{stdout}{stderr}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (ids, _, errors) = writer.stop();
    assert!(errors.is_empty(), "{errors}");
    // Every write the application made, on either side, is on the source;
    // the application's conflicting row too.
    assert_writes_on(&s.pair.source, &ids, 1);
    // The longest stall it saw, from its own rows' commit times: the refused
    // rollback paused nothing, the real one briefly.
    let stall: f64 = s
        .pair
        .source
        .sql(
            "app",
            &format!(
                "SELECT coalesce(extract(epoch FROM max(d)), 0) FROM (SELECT at - lag(at) OVER (ORDER BY id) d \
                 FROM online_writes WHERE id = ANY('{{{}}}'::bigint[])) x",
                ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
            ),
        )
        .unwrap()
        .parse()
        .unwrap();
    assert!(stall < 2.0, "the application stalled for {stall} s");
    assert_eq!(
        s.pair
            .source
            .sql("app", "SELECT server FROM online_writes WHERE id = 1000000")
            .unwrap(),
        "application"
    );
    assert_nothing_left(&s);
}
