//! Applications that connect as their own roles keep what they could do:
//! owners, grants, column grants, default privileges, policies and database
//! settings arrive as on the source, and each application's own login is
//! checked there (verify-sync's privilege parity) and by the test itself.

use cutover_testkit::{Fixture, PgPair, PgServer, SEED_DB};

use crate::support::{Scenario, output};

const RO_PW: &str = "app-ro-pw-8c4";
const RW_PW: &str = "app-rw-pw-5d2";

/// What each application does, through its own login: (role, password, SQL).
const PROBES: &[(&str, &str, &str)] = &[
    ("app_ro", RO_PW, "SELECT id, email FROM accounts ORDER BY id"),
    ("app_ro", RO_PW, "SELECT secret FROM shop.accounts"),
    ("app_ro", RO_PW, "SELECT count(*) FROM shop.orders"),
    ("app_ro", RO_PW, "SELECT shop.order_total()"),
    ("app_ro", RO_PW, "SELECT body FROM reports"),
    ("app_ro", RO_PW, "SHOW statement_timeout"),
    (
        "app_ro",
        RO_PW,
        "BEGIN; INSERT INTO shop.orders (account_id, total) VALUES (1, 1); ROLLBACK",
    ),
    (
        "app_rw",
        RW_PW,
        "BEGIN; INSERT INTO orders (account_id, total) VALUES (2, 5) RETURNING total; ROLLBACK",
    ),
    ("app_rw", RW_PW, "SELECT secret FROM accounts ORDER BY id"),
    ("app_rw", RW_PW, "SELECT shop.order_total()"),
    (
        "app_rw",
        RW_PW,
        "BEGIN; DELETE FROM reports WHERE id = 1; ROLLBACK",
    ),
    ("app_rw", RW_PW, "SHOW search_path"),
];

/// Each probe's outcome on `server`: its output, or "denied" for an error.
fn outcomes(server: &PgServer) -> Vec<String> {
    outcomes_as(server, &[])
}

/// The same, logging in as other roles (`app_ro` → (`shop_ro`, password)),
/// the lines still labelled with the source's role names.
fn outcomes_as(server: &PgServer, logins: &[(&str, &str, &str)]) -> Vec<String> {
    PROBES
        .iter()
        .map(|(role, pw, sql)| {
            let (login, pw) = logins
                .iter()
                .find(|(r, _, _)| r == role)
                .map(|(_, l, p)| (*l, *p))
                .unwrap_or((role, pw));
            let url = format!("postgresql://{login}:{pw}@127.0.0.1:{}/{SEED_DB}", server.port());
            match crate::support::psql(&url, sql) {
                Ok(out) => format!("{role}: {sql} -> {out}"),
                Err(_) => format!("{role}: {sql} -> denied"),
            }
        })
        .collect()
}

#[test]
fn application_roles_keep_their_owners_grants_policies_and_settings() {
    let pair = PgPair::start().unwrap();
    pair.source.sql("postgres", Fixture::APP_ROLES).unwrap();
    pair.source.load_fixture(SEED_DB, Fixture::Apps).unwrap();
    // The target: a stale copy without the roles (a new managed server).
    pair.target.create_database(SEED_DB).unwrap();
    pair.target.sql(SEED_DB, "CREATE TABLE legacy (id int)").unwrap();
    let s = Scenario::with(pair, "");
    let before = outcomes(&s.pair.source);
    // The fixture is what the test says (else equal outcomes prove nothing).
    for expected in [
        "app_ro: SELECT secret FROM shop.accounts -> denied",
        "app_ro: SELECT count(*) FROM shop.orders -> 2",
        "app_ro: SELECT shop.order_total() -> 60",
        "app_ro: SHOW statement_timeout -> 5s",
        "app_rw: SELECT shop.order_total() -> denied",
        "app_rw: SHOW search_path -> shop, public",
    ] {
        assert!(
            before.iter().any(|o| o == expected),
            "{expected:?} not in {before:#?}"
        );
    }
    let dir = s.dir.path();
    let src_port = s.pair.source.port();
    let tgt_port = s.pair.target.port();
    std::fs::write(
        dir.join("dashboard.env"),
        format!("DATABASE_URL=postgresql://app_ro:{RO_PW}@127.0.0.1:{src_port}/app\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("backend.env"),
        format!("DATABASE_URL=postgresql://app_rw:{RW_PW}@127.0.0.1:{src_port}/app\n"),
    )
    .unwrap();
    // A Java application: a JDBC URL, its login in the query.
    let properties = format!(
        "# reports service\nspring.datasource.url=jdbc:postgresql://127.0.0.1:{src_port}/app?user=app_ro&password={RO_PW}&ApplicationName=reports\nserver.port=8080\n"
    );
    std::fs::write(dir.join("application.properties"), &properties).unwrap();
    let consumers = "\n[[consumer]]\nname = \"reports\"\nkind = \"text\"\npath = \"application.properties\"\n\
        target_url_env = \"DASHBOARD_TARGET\"\n\n[[consumer]]\nname = \"dashboard\"\nkind = \"env\"\npath = \"dashboard.env\"\nkey = \"DATABASE_URL\"\n\
        target_url_env = \"DASHBOARD_TARGET\"\n\n[[consumer]]\nname = \"backend\"\nkind = \"env\"\npath = \"backend.env\"\n\
        key = \"DATABASE_URL\"\ntarget_url_env = \"BACKEND_TARGET\"\n";
    let source_url = s.pair.source.url(SEED_DB);
    let target_url = s.pair.target.url(SEED_DB);
    let run = |args: &[&str]| {
        let mut cmd = s.cutover(args);
        cmd.env(
            "DASHBOARD_TARGET",
            format!("postgresql://app_ro:{RO_PW}@127.0.0.1:{tgt_port}/app"),
        )
        .env(
            "BACKEND_TARGET",
            format!("postgresql://app_rw:{RW_PW}@127.0.0.1:{tgt_port}/app"),
        );
        let (out, stdout, stderr) = output(&mut cmd);
        for pw in [s.pair.source.password(), s.pair.target.password(), RO_PW, RW_PW] {
            assert!(
                !stdout.contains(pw) && !stderr.contains(pw),
                "a password leaked in {args:?}"
            );
        }
        (out.status.code().unwrap_or(-1), stdout, stderr)
    };
    let target_before = s.target_digest();
    let source_before = s.source_digest();

    // The target lacks the roles: refused, naming each, nothing changed.
    s.write_plan(&source_url, &target_url, consumers);
    let (code, _, stderr) = run(&["run", "--yes"]);
    assert_eq!(code, 5, "{stderr}");
    assert!(
        stderr.contains("lacks 3 role(s)") && stderr.contains("app_owner, app_ro, app_rw"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint:") && stderr.contains("[roles] create_missing = true"),
        "{stderr}"
    );
    assert_eq!(s.target_digest(), target_before);
    assert_eq!(s.source_digest(), source_before);
    assert_eq!(
        s.pair
            .target
            .sql(
                "postgres",
                "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'app\\_%'"
            )
            .unwrap(),
        "0"
    );
    // Not a file left behind (the rehearsal's work files are removed).
    let mut left = vec![];
    let mut dirs = vec![s.run_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                dirs.push(entry.path());
            } else {
                left.push(entry.path());
            }
        }
    }
    assert_eq!(left, Vec::<std::path::PathBuf>::new());

    // Created from the source's attributes, with their password hashes.
    let extra = format!("{consumers}\n[roles]\ncreate_missing = true\ncopy_passwords = true\n");
    s.write_plan(&source_url, &target_url, &extra);
    let (code, stdout, stderr) = run(&["plan"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("create-roles") && stdout.contains("creates role app_ro (NOSUPERUSER"),
        "{stdout}"
    );
    assert!(
        stdout.contains("keeps owners and privileges as on the source: objects owned by app_owner"),
        "{stdout}"
    );
    let (code, _, stderr) = run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    // The JDBC URL stays a JDBC URL: host, port and login in their places,
    // no userinfo (the driver refuses one), every other byte as it was.
    let rewritten = std::fs::read_to_string(dir.join("application.properties")).unwrap();
    assert_eq!(
        rewritten,
        properties.replace(
            &format!("127.0.0.1:{src_port}/"),
            &format!("127.0.0.1:{tgt_port}/")
        ),
        "{rewritten}"
    );
    for line in [
        "dashboard: role app_ro,",
        "backend: role app_rw,",
        "reports: role app_ro,",
    ] {
        let l = stderr
            .lines()
            .find(|l| l.contains(line))
            .unwrap_or_else(|| panic!("{line} missing:\n{stderr}"));
        assert!(l.contains("privilege(s) as on the source"), "{l}");
    }
    // Owners and privileges: verify compares them too.
    let (code, stdout, stderr) = run(&["verify"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // Each application's own login does on the target what it did on the
    // source (after verify: the backend's rolled-back insert moves its
    // sequence, as any application write after the cutover would).
    assert_eq!(outcomes(&s.pair.target), before);
    let owner = |srv: &PgServer| {
        srv.sql(SEED_DB, "SELECT string_agg(tablename || ':' || tableowner, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'shop'")
            .unwrap()
    };
    assert_eq!(owner(&s.pair.target), owner(&s.pair.source));
    // The sentinel proof's grants were taken back.
    assert_eq!(
        s.pair
            .target
            .sql(
                SEED_DB,
                "SELECT has_schema_privilege('app_ro', 'cutover', 'USAGE') OR has_schema_privilege('app_rw', 'cutover', 'USAGE') \
                 OR has_schema_privilege('public', 'cutover', 'USAGE')"
            )
            .unwrap(),
        "f"
    );
    // A change to a grant on the target is named by verify.
    s.pair
        .target
        .sql(SEED_DB, "SELECT setval('shop.orders_id_seq', 4)")
        .unwrap();
    s.pair
        .target
        .sql(SEED_DB, "GRANT INSERT ON shop.reports TO app_ro")
        .unwrap();
    let (code, stdout, stderr) = run(&["verify"]);
    assert_eq!(code, 3, "{stdout}\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("table shop.reports"),
        "{stdout}\n{stderr}"
    );
    s.pair
        .target
        .sql(SEED_DB, "REVOKE INSERT ON shop.reports FROM app_ro")
        .unwrap();

    // Rollback: the roles this run created are gone, the target as it was.
    let (code, _, stderr) = run(&["rollback", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(s.target_digest(), target_before);
    assert_eq!(
        s.pair
            .target
            .sql(
                "postgres",
                "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'app\\_%'"
            )
            .unwrap(),
        "0",
        "{stderr}"
    );
}

/// Types without binary I/O move in text format (and the plan says so), the
/// database's search_path arrives, an enum of another schema compares equal
/// whatever the search_path, large objects (one of several slices) arrive
/// whole; and a finished run stays finished after the applications write.
#[test]
fn schemas_pg_dump_round_trips_copy_and_verify_equal_and_a_finished_run_stays_finished() {
    let pair = PgPair::start().unwrap();
    pair.source.load_fixture(SEED_DB, Fixture::Special).unwrap();
    pair.target.create_database(SEED_DB).unwrap();
    // List settings whose elements the server quotes (GUC_LIST_QUOTE): a
    // schema whose name holds a quote and a comma, a tablespace list, and a
    // role's own search_path in the database. And explicit owner-only ACLs
    // (a GRANT, then its REVOKE) on a table, a view, a sequence and a
    // column: the same privileges as the defaults, so verify finds them equal.
    for server in [&pair.source, &pair.target] {
        server.sql("postgres", "CREATE ROLE reader LOGIN").unwrap();
    }
    pair.source
        .sql(
            SEED_DB,
            "CREATE SCHEMA \"q\"\"s,t\"; \
             ALTER DATABASE app SET search_path TO public, abc, \"q\"\"s,t\"; \
             ALTER DATABASE app SET temp_tablespaces TO pg_default, \"Other TS\"; \
             ALTER ROLE reader IN DATABASE app SET search_path TO \"q\"\"s,t\", public; \
             CREATE VIEW plain_notes AS SELECT note FROM plain; CREATE SEQUENCE counter; \
             GRANT SELECT ON plain, plain_notes TO reader; GRANT USAGE ON SEQUENCE counter TO reader; \
             GRANT SELECT (note) ON plain TO reader; \
             REVOKE SELECT ON plain, plain_notes FROM reader; REVOKE USAGE ON SEQUENCE counter FROM reader; \
             REVOKE SELECT (note) ON plain FROM reader; \
             CREATE TABLE sealed (id int); REVOKE ALL ON sealed FROM CURRENT_USER",
        )
        .unwrap();
    let s = Scenario::with(pair, "");
    let source_before = s.source_digest();
    let (code, stdout, stderr) = s.run(&["plan"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("books: 50 rows")
            && stdout.contains("text format (type public.isbn has no binary send/receive)"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("plain: 20 rows") && !l.contains("text format")),
        "{stdout}"
    );
    assert!(
        stdout.contains("database settings: search_path=public, abc, \"q\"\"s,t\""),
        "{stdout}"
    );
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("301 large objects"), "{stderr}");
    assert_eq!(s.target_digest(), source_before);
    // The settings of the database app on the target, for `role` (0: its own).
    let settings = |role: &str| {
        s.pair
            .target
            .sql(
                "postgres",
                &format!(
                    "SELECT array_to_string(setconfig, ';') FROM pg_db_role_setting s JOIN pg_database d \
                     ON d.oid = s.setdatabase WHERE d.datname = 'app' AND s.setrole = {role}"
                ),
            )
            .unwrap()
    };
    assert_eq!(
        settings("0"),
        "search_path=public, abc, \"q\"\"s,t\";temp_tablespaces=pg_default, \"Other TS\""
    );
    assert_eq!(settings("'reader'::regrole"), "search_path=\"q\"\"s,t\", public");
    let (code, stdout, stderr) = s.run(&["verify"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    // The applications write to the target: the finished run does nothing.
    s.pair
        .target
        .sql(SEED_DB, "INSERT INTO plain VALUES (21, 'after the cutover')")
        .unwrap();
    let target_after = s.target_digest();
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("finished on") && stderr.contains("nothing to do"),
        "{stderr}"
    );
    assert_eq!(s.target_digest(), target_after);
    let (code, stdout, _) = s.run(&["run", "--yes", "--output", "json"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("\"event\":\"run_already_finished\""), "{stdout}");
    let (code, stdout, _) = s.run(&["verify"]);
    assert_eq!(code, 3, "{stdout}");
    assert!(
        stdout.contains("plain: 20 rows on the source, 21 on the target"),
        "{stdout}"
    );
    assert!(stdout.contains("are expected differences"), "{stdout}");

    // The journal leaves the production database once no rollback is needed.
    let journal_there = || {
        s.pair
            .target
            .sql(
                SEED_DB,
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'cutover'",
            )
            .unwrap()
    };
    let (code, _, stderr) = s.run(&["archive-journal"]);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("pass --yes"), "{stderr}");
    assert_eq!(journal_there(), "1");
    let (code, stdout, stderr) = s.run(&["archive-journal", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("archived 1 run(s)"), "{stdout}");
    assert_eq!(journal_there(), "0");
    let archive = s.run_dir().join("journal-archive.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (code, stdout, stderr) = s.run(&["status"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("(from the archive") && stdout.contains("verify-data"),
        "{stdout}"
    );
    let (code, stdout, stderr) = s.run(&["report"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("verify-data"), "{stdout}");
    // Archived, the run is still finished: nothing runs again.
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("nothing to do"), "{stderr}");
    assert_eq!(journal_there(), "0");
    assert_eq!(s.target_digest(), target_after);
}

/// A schema object the target server cannot recreate (here a table in a
/// tablespace only the source server has) is found by discover's rehearsal
/// in a scratch database, before anything is frozen, cleared or copied.
#[test]
fn a_schema_the_target_cannot_recreate_is_refused_before_anything_changes() {
    let pair = PgPair::start().unwrap();
    let space = tempfile::tempdir().unwrap();
    if let Ok(out) = std::process::Command::new("id").args(["-u", "postgres"]).output()
        && out.status.success()
        && unsafe_is_root()
    {
        let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        std::os::unix::fs::chown(space.path(), Some(uid), None).unwrap();
    }
    pair.source
        .sql(
            "postgres",
            &format!("CREATE TABLESPACE fast LOCATION '{}'", space.path().display()),
        )
        .unwrap();
    pair.source.create_database(SEED_DB).unwrap();
    pair.source
        .sql(
            SEED_DB,
            "CREATE TABLE hot (id int PRIMARY KEY) TABLESPACE fast; INSERT INTO hot VALUES (1), (2), (3)",
        )
        .unwrap();
    pair.target.create_database(SEED_DB).unwrap();
    pair.target
        .sql(
            SEED_DB,
            "CREATE TABLE hot (id int PRIMARY KEY); INSERT INTO hot VALUES (1)",
        )
        .unwrap();
    let s = Scenario::with(pair, "");
    let (source_before, target_before) = (s.source_digest(), s.target_digest());
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 5, "{stderr}");
    assert!(
        stderr.contains("the source's schema does not restore on the target server"),
        "{stderr}"
    );
    assert!(stderr.contains("Tablespace \"fast\" does not exist"), "{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(s.target_digest(), target_before);
    assert_eq!(s.source_digest(), source_before);
    // Not frozen, not cleared, no scratch database left.
    s.pair
        .source
        .sql(
            SEED_DB,
            "INSERT INTO hot VALUES (4); DELETE FROM hot WHERE id = 4",
        )
        .unwrap();
    assert_eq!(
        s.pair
            .target
            .sql(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname LIKE 'cutover\\_%'"
            )
            .unwrap(),
        "0"
    );
    s.pair.source.sql(SEED_DB, "DROP TABLE hot").unwrap();
    s.pair.source.sql("postgres", "DROP TABLESPACE fast").unwrap();
}

fn unsafe_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The second way out: a role map. The target server has its own roles
/// (`shop_owner`, `shop_rw`, `shop_ro`); the source's owners, grants,
/// default privileges, policies and settings arrive under those names, and
/// each application's target login can do what its source login could.
#[test]
fn a_role_map_gives_the_source_s_owners_and_grants_to_the_target_s_roles() {
    let pair = PgPair::start().unwrap();
    pair.source.sql("postgres", Fixture::APP_ROLES).unwrap();
    pair.source.load_fixture(SEED_DB, Fixture::Apps).unwrap();
    pair.target
        .sql(
            "postgres",
            "CREATE ROLE shop_owner NOLOGIN; CREATE ROLE shop_rw LOGIN PASSWORD 'shop-rw-pw-61'; \
             CREATE ROLE shop_ro LOGIN PASSWORD 'shop-ro-pw-93'",
        )
        .unwrap();
    pair.target.create_database(SEED_DB).unwrap();
    let s = Scenario::with(pair, "");
    let before = outcomes(&s.pair.source);
    let tgt_port = s.pair.target.port();
    let src_port = s.pair.source.port();
    let dir = s.dir.path();
    std::fs::write(
        dir.join("dashboard.env"),
        format!("DATABASE_URL=postgresql://app_ro:{RO_PW}@127.0.0.1:{src_port}/app\n"),
    )
    .unwrap();
    let extra = "\n[[consumer]]\nname = \"dashboard\"\nkind = \"env\"\npath = \"dashboard.env\"\nkey = \"DATABASE_URL\"\n\
        target_url_env = \"DASHBOARD_TARGET\"\n\n[roles.map]\napp_owner = \"shop_owner\"\napp_rw = \"shop_rw\"\napp_ro = \"shop_ro\"\n";
    s.write_plan(&s.pair.source.url(SEED_DB), &s.pair.target.url(SEED_DB), extra);
    let run = |args: &[&str]| {
        let mut cmd = s.cutover(args);
        cmd.env(
            "DASHBOARD_TARGET",
            format!("postgresql://shop_ro:shop-ro-pw-93@127.0.0.1:{tgt_port}/app"),
        );
        let (out, stdout, stderr) = output(&mut cmd);
        (out.status.code().unwrap_or(-1), stdout, stderr)
    };
    let (code, stdout, stderr) = run(&["plan"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("shop_owner (7)")
            && stdout.contains("roles named: pg_database_owner, shop_owner, shop_ro, shop_rw"),
        "{stdout}"
    );
    let (code, _, stderr) = run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    let l = stderr
        .lines()
        .find(|l| l.contains("dashboard: role shop_ro,"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(l.contains("privilege(s) as on the source"), "{l}");
    let (code, stdout, stderr) = run(&["verify"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let owners = s
        .pair
        .target
        .sql(
            SEED_DB,
            "SELECT string_agg(DISTINCT tableowner, ',') FROM pg_tables WHERE schemaname = 'shop'",
        )
        .unwrap();
    assert_eq!(owners, "shop_owner");
    // Function bodies are copied as they are, even a line that reads like a GRANT.
    let body = |srv: &PgServer| {
        srv.sql(
            SEED_DB,
            "SELECT prosrc FROM pg_proc WHERE proname = 'grant_dashboard'",
        )
        .unwrap()
    };
    assert_eq!(body(&s.pair.target), body(&s.pair.source));
    assert!(body(&s.pair.target).contains("TO app_ro;"));
    let after = outcomes_as(
        &s.pair.target,
        &[
            ("app_ro", "shop_ro", "shop-ro-pw-93"),
            ("app_rw", "shop_rw", "shop-rw-pw-61"),
        ],
    );
    assert_eq!(after, before);
}
