//! The seed's steps 5-10 end to end: four consumers like the seed's
//! (production env → source, staging env → target, dashboard compose YAML →
//! source, backup script → source), doctor's split-brain report, a run that
//! repoints three and verifies staging, the sentinel seen through each, the
//! source quarantined; then rollback returns every file byte for byte and
//! brings the source back.

use std::fs;

use crate::support::{ConsumerApp, Scenario};

struct Files {
    production: String,
    staging: String,
    compose: String,
    backup: String,
}

fn write_consumers(s: &Scenario) -> Files {
    let src = &s.pair.source;
    let tgt = &s.pair.target;
    let files = Files {
        // CRLF, a comment, quotes, another variable.
        production: format!(
            "# production backend\r\nPORT=8080\r\nDATABASE_URL=\"{}?sslmode=disable\" # the live one\r\nDEBUG=0\r\n",
            src.url("app")
        ),
        staging: format!("DATABASE_URL={}\nREDIS_URL=redis://cache:6379\n", tgt.url("app")),
        // Comments, an anchor and an alias elsewhere in the document, list form.
        compose: format!(
            "# dashboard stack\nx-logging: &logging\n  driver: json-file   # keep\nservices:\n  dashboard:\n    \
             image: dash:7777\n    logging: *logging\n    environment:\n      - PORT=7777\n      - \
             'DATABASE_URL={}'\n",
            src.url("app")
        ),
        // Keyword form without a password, as a backup script writes it.
        backup: format!(
            "#!/bin/sh\n# nightly backup\npg_dump \"host=127.0.0.1 port={} dbname=app user={}\" > /backups/app.dump\n",
            src.port(),
            src.user()
        ),
    };
    let d = s.dir.path();
    fs::write(d.join("production.env"), &files.production).unwrap();
    fs::write(d.join("staging.env"), &files.staging).unwrap();
    fs::write(d.join("compose.yml"), &files.compose).unwrap();
    fs::write(d.join("backup.sh"), &files.backup).unwrap();
    files
}

fn consumers(health_url: &str) -> String {
    format!(
        r#"
[[consumer]]
name = "production"
kind = "env"
path = "production.env"
key = "DATABASE_URL"
reload = "cp production.env production.loaded"
health_sql = "SELECT count(*) FROM users"
health_url = "{health_url}"
health_expect = "users=22"
timeout = 20

[[consumer]]
name = "secrets"
kind = "command"
get = "cat secret.url"
set = "printf '%s' \"$CUTOVER_VALUE\" > secret.url"

[[consumer]]
name = "staging"
kind = "env"
path = "staging.env"
key = "DATABASE_URL"

[[consumer]]
name = "dashboard"
kind = "yaml"
path = "compose.yml"
key = "services.dashboard.environment.DATABASE_URL"

[[consumer]]
name = "backups"
kind = "text"
path = "backup.sh"

[decommission]
driver = "postgres"
destroy = true
"#
    )
}

fn q(server: &cutover_testkit::PgServer, db: &str, sql: &str) -> String {
    server.sql(db, sql).unwrap()
}

#[test]
fn seed_consumers_doctor_repoint_sync_quarantine_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let app = ConsumerApp::start(dir.path().join("production.loaded"));
    let s = Scenario::with_dir(
        cutover_testkit::PgPair::seed().unwrap(),
        &consumers(&app.health_url),
        dir,
    );
    let before = write_consumers(&s);
    let target_before = s.target_digest();
    let d = s.dir.path();
    // The app has loaded its configuration: it is on the source.
    fs::copy(d.join("production.env"), d.join("production.loaded")).unwrap();
    fs::write(d.join("secret.url"), s.pair.source.url("app")).unwrap();

    // doctor: the seed's split brain.
    let (code, stdout, stderr) = s.run(&["doctor"]);
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(stdout.contains("split brain"), "{stdout}");
    assert!(
        stdout.contains("production, secrets, dashboard, backups → source")
            && stdout.contains("(17 tables, 506 rows)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("staging → target") && stdout.contains("(13 tables, 6 rows)"),
        "{stdout}"
    );

    // plan: a diff per repointed consumer, passwords redacted, the irreversible step named.
    let (code, stdout, stderr) = s.run(&["plan"]);
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        "repoint:production",
        "repoint:staging",
        "repoint:dashboard",
        "repoint:backups",
        "verify-sync",
        "decommission-source",
        "consumer staging already points at the target",
        "--destroy was not given",
    ] {
        assert!(stdout.contains(expected), "plan lacks {expected:?}:\n{stdout}");
    }
    assert!(
        stdout.contains("+DATABASE_URL=\"postgresql://kit_admin:***@"),
        "{stdout}"
    );

    let (code, stdout, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for name in ["production", "secrets", "staging", "dashboard", "backups"] {
        let proof = s.sync_proof(name);
        assert_eq!(proof["sees_sentinel"], true, "{proof}");
        assert_eq!(proof["points_at"], "target", "{proof}");
    }

    // Only the connection changed, in each file's own form.
    let tgt = &s.pair.target;
    let src = &s.pair.source;
    let read = |f: &str| fs::read_to_string(d.join(f)).unwrap();
    let new_url = tgt.url("app");
    assert_eq!(
        read("production.env"),
        before.production.replace(&src.url("app"), &new_url)
    );
    assert_eq!(
        read("staging.env"),
        before.staging,
        "staging was already on the target"
    );
    assert_eq!(
        read("compose.yml"),
        before.compose.replace(&src.url("app"), &new_url)
    );
    assert_eq!(
        read("backup.sh"),
        before.backup.replace(
            &format!("host=127.0.0.1 port={} dbname=app", src.port()),
            &format!("host={} port={} dbname=app", tgt.host(), tgt.port())
        )
    );
    assert_eq!(
        read("production.loaded"),
        read("production.env"),
        "the reload ran after the write"
    );
    assert_eq!(
        read("secret.url"),
        new_url,
        "the set command stored the new connection"
    );
    // The app, reloaded, reached the target and saw the sentinel there.
    let seen = format!("port={} users=22 sentinels=1", tgt.port());
    assert!(app.answers().contains(&seen), "{:?}", app.answers());
    // The sentinel is gone; the source is quarantined, not destroyed (no --destroy).
    assert_eq!(q(tgt, "app", "SELECT count(*) FROM cutover.sentinels"), "0");
    let retired = q(
        src,
        "postgres",
        "SELECT datname FROM pg_database WHERE datname LIKE 'app_retired_%'",
    );
    assert!(retired.starts_with("app_retired_"), "{retired:?}");
    assert_eq!(
        q(
            src,
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'app'"
        ),
        "0"
    );
    assert!(
        s.run_dir().join("final/source-app.dump").exists(),
        "a final dump precedes the decommission"
    );

    // Everyone on one database now.
    let (code, stdout, _) = s.run(&["doctor"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("healthy"), "{stdout}");
    // status works with the source retired.
    let (code, stdout, stderr) = s.run(&["status"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("decommission-source"), "{stdout}");

    // A write on the target after the repoint: rollback warns that it is lost.
    tgt.sql(
        "app",
        "INSERT INTO protection_settings VALUES ('after', 'repoint')",
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let (code, stdout, stderr) = s.run(&["rollback", "--yes"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("row writes since repoint:production"), "{stderr}");
    assert_eq!(read("production.env"), before.production);
    assert_eq!(read("staging.env"), before.staging);
    assert_eq!(read("compose.yml"), before.compose);
    assert_eq!(read("backup.sh"), before.backup);
    assert_eq!(read("secret.url"), src.url("app"));
    assert_eq!(
        read("production.loaded"),
        before.production,
        "the undo reloaded the app"
    );
    assert_eq!(
        q(src, "app", "SELECT count(*) FROM users"),
        "22",
        "the source is back"
    );
    assert_eq!(s.target_digest(), target_before);
}

#[test]
fn a_consumer_problem_stops_the_run_before_anything_changes() {
    let extra = "\n[[consumer]]\nname = \"api\"\nkind = \"env\"\npath = \"api.env\"\nkey = \"DB_URL\"\n";
    let s = Scenario::with(cutover_testkit::PgPair::seed().unwrap(), extra);
    let target_before = s.target_digest();
    fs::write(s.dir.path().join("api.env"), "DATABASE_URL=postgresql://a@h/d\n").unwrap();
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("consumer api: DB_URL is not set in") && stderr.contains("fix `key`"),
        "{stderr}"
    );
    assert_eq!(s.target_digest(), target_before);
    assert_eq!(
        q(
            &s.pair.target,
            "app",
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'cutover'"
        ),
        "0",
        "nothing was written, not even the journal"
    );
}

/// The `docker` driver against a real container of the kit's docker backend:
/// a final dump, `docker stop`; rollback starts it and the source answers again.
#[test]
fn docker_driver_stops_the_source_container_and_rollback_starts_it() {
    use cutover_testkit::{Backend, Fixture, PgPair, PgServer, SEED_DB};
    let pair = PgPair {
        source: PgServer::start_on(Backend::Docker).unwrap(),
        target: PgServer::start_on(Backend::Local).unwrap(),
    };
    pair.source.load_fixture(SEED_DB, Fixture::SeedSource).unwrap();
    pair.target.load_fixture(SEED_DB, Fixture::SeedTarget).unwrap();
    let container = pair.source.container_id().unwrap().to_string();
    let plan = format!(
        "\n[[consumer]]\nname = \"api\"\nkind = \"env\"\npath = \"api.env\"\nkey = \"DATABASE_URL\"\n\n\
         [decommission]\ndriver = \"docker\"\ncontainer = \"{container}\"\n"
    );
    let s = Scenario::with(pair, &plan);
    let env = format!("DATABASE_URL={}\n", s.pair.source.url("app"));
    fs::write(s.dir.path().join("api.env"), &env).unwrap();
    let running = || {
        let out = std::process::Command::new("docker")
            .args(["inspect", "--format", "{{.State.Running}}", &container])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    };

    let (code, stdout, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!running(), "the source's container is stopped");
    assert!(s.run_dir().join("final/source-app.dump").exists());
    let (code, stdout, stderr) = s.run(&["status"]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    let (code, stdout, stderr) = s.run(&["rollback", "--yes"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(running(), "rollback started the container again");
    assert_eq!(q(&s.pair.source, "app", "SELECT count(*) FROM users"), "22");
    assert_eq!(fs::read_to_string(s.dir.path().join("api.env")).unwrap(), env);
}

#[test]
fn destroy_needs_the_plan_and_the_flag() {
    let s = Scenario::with(
        cutover_testkit::PgPair::seed().unwrap(),
        "\n[decommission]\ndriver = \"postgres\"\ndestroy = true\n",
    );
    // Without consumers, decommission is refused: the sync cannot be proven.
    let (code, _, stderr) = s.run(&["plan"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("needs the [[consumer]] entries"), "{stderr}");
    fs::write(
        s.dir.path().join("api.env"),
        format!("DATABASE_URL={}\n", s.pair.source.url("app")),
    )
    .unwrap();
    let plan = "\n[[consumer]]\nname = \"api\"\nkind = \"env\"\npath = \"api.env\"\nkey = \"DATABASE_URL\"\n\n\
         [decommission]\ndriver = \"postgres\"\ndestroy = true\n";
    s.write_plan(&s.pair.source.url("app"), &s.pair.target.url("app"), plan);
    let (code, stdout, _) = s.run(&["plan", "--destroy"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("DESTROY the source database app") && stdout.contains("cannot be undone"),
        "{stdout}"
    );
    let (code, stdout, stderr) = s.run(&["run", "--yes", "--destroy"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        q(
            &s.pair.source,
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'app%'"
        ),
        "0"
    );
    assert!(
        s.run_dir().join("final/source-app.dump").exists(),
        "the final dump is the way back"
    );
    let (code, _, stderr) = s.run(&["rollback", "--yes"]);
    assert_eq!(code, 5, "{stderr}");
    assert!(
        stderr.contains("decommission-source cannot be undone"),
        "{stderr}"
    );
}
