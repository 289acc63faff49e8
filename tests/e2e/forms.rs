//! Every configuration form cutover repoints, one application each, written
//! the way the frameworks write them: `init --scan` finds them all (and says
//! what it skipped), `doctor` places each on the right database before and
//! after, `run` repoints all with nothing else changed in any file, and
//! `rollback` restores each byte for byte.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use base64::Engine;

use crate::support::{Scenario, output};

/// The applications' files, pointing at the server listening on `port`
/// with `password` (the test kit's servers share the user name).
fn apps(user: &str, port: u16, password: &str) -> Vec<(&'static str, String)> {
    let url = format!("postgresql://{user}:{password}@127.0.0.1:{port}/app");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&url);
    vec![
        // Laravel: the connection split over five keys, export and quotes.
        (
            "laravel/.env",
            format!(
                "APP_NAME=Shop\r\nAPP_ENV=production\r\nDB_CONNECTION=pgsql\r\nexport DB_HOST=127.0.0.1\r\n\
                 DB_PORT=\"{port}\"\r\nDB_DATABASE=app\r\nDB_USERNAME={user}\r\nDB_PASSWORD='{password}'\r\n\
                 REDIS_HOST=127.0.0.1\r\n"
            ),
        ),
        // Rails: per-environment sections, a merge key, a development database elsewhere.
        (
            "rails/config/database.yml",
            format!(
                "default: &default\n  adapter: postgresql\n  encoding: unicode\n  pool: 5\n\ndevelopment:\n  <<: \
                 *default\n  database: rails_development\n  host: localhost\n\nproduction:\n  <<: *default\n  host: \
                 127.0.0.1\n  port: {port}  # managed\n  database: app\n  username: {user}\n  password: \"{password}\"\n"
            ),
        ),
        // Django: the DATABASES dict, a number for the port.
        (
            "django/mysite/settings.py",
            format!(
                "import os\n\nDEBUG = False\nALLOWED_HOSTS = ['*']\n\nDATABASES = {{\n    'default': {{\n        \
                 'ENGINE': 'django.db.backends.postgresql',\n        'NAME': 'app',\n        'USER': '{user}',\n        \
                 'PASSWORD': '{password}',\n        'HOST': '127.0.0.1',\n        'PORT': {port},\n    }}\n}}\n"
            ),
        ),
        // Spring: a JDBC URL without a login, the login in its own keys.
        (
            "spring/src/main/resources/application.properties",
            format!(
                "# reports\nserver.port=8080\nspring.datasource.url=jdbc:postgresql://127.0.0.1:{port}/app?ApplicationName=reports\n\
                 spring.datasource.username={user}\nspring.datasource.password = {password}\nspring.jpa.open-in-view=false\n"
            ),
        ),
        // .NET: an Npgsql string in appsettings.json (comments allowed there).
        (
            "dotnet/appsettings.json",
            format!(
                "{{\n  // production\n  \"Logging\": {{ \"LogLevel\": {{ \"Default\": \"Warning\" }} }},\n  \
                 \"ConnectionStrings\": {{\n    \"Default\": \"Host=127.0.0.1;Port={port};Database=app;Username={user};Password={password};Pooling=true\"\n  \
                 }}\n}}\n"
            ),
        ),
        // A compose file in list form: the service names the consumer.
        (
            "stack/docker-compose.yml",
            format!(
                "services:\n  worker:\n    image: worker:3\n    environment:\n      - QUEUE=default\n      - \
                 DATABASE_URL={url}\n  cache:\n    image: redis:7\n"
            ),
        ),
        // A Kubernetes Secret: base64 in data.
        (
            "k8s/billing/secret.yaml",
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: billing-db\ntype: Opaque\ndata:\n  DATABASE_URL: {b64}\n  \
                 LOG_LEVEL: aW5mbw==\n"
            ),
        ),
        // A connection service file: no password (the application's
        // ~/.pgpass gives it).
        (
            "reports/pg_service.conf",
            format!("# services\n[reports]\nhost=127.0.0.1\nport={port}\ndbname=app\nuser={user}\n"),
        ),
        // A password file beside a cron job.
        (
            "cron/.pgpass",
            format!("# nightly export\n127.0.0.1:{port}:app:{user}:{password}\n"),
        ),
    ]
}

const NAMES: &[&str] = &[
    "laravel", "rails", "mysite", "spring", "dotnet", "worker", "billing", "reports", "cron",
];

fn write_all(root: &Path, files: &[(&str, String)]) {
    for (p, text) in files {
        let p = root.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
}

/// `init --scan apps` writing the scenario's plan: what it printed (it
/// must succeed).
fn init_scan(s: &Scenario) -> String {
    let (src, tgt) = (&s.pair.source, &s.pair.target);
    let (out, _, stderr) = output(
        crate::support::cutover()
            .current_dir(s.dir.path())
            .args(["--plan", "cutover.toml", "init", "--force", "--source"])
            .arg(src.url("app"))
            .arg("--target")
            .arg(tgt.url("app"))
            .arg("--scan")
            .arg("apps"),
    );
    assert!(out.status.success(), "{stderr}");
    stderr
}

fn read_all(root: &Path, files: &[(&str, String)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(p, _)| (p.to_string(), fs::read_to_string(root.join(p)).unwrap()))
        .collect()
}

/// Asserts that doctor places every application on `which` ("source", "target").
fn assert_all_on(s: &Scenario, which: &str) {
    let placed = placements(s);
    for name in NAMES {
        assert_eq!(
            placed.get(*name),
            Some(&vec![which.to_string()]),
            "{name}: {placed:?}"
        );
    }
}

/// doctor's placement of each consumer: name -> the databases its connections point at.
fn placements(s: &Scenario) -> BTreeMap<String, Vec<String>> {
    let (out, stdout, stderr) = output(&mut s.cutover(&["doctor", "--output", "json"]));
    assert!(out.status.code().is_some(), "{stderr}");
    let v: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"));
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "{stdout}");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in v["consumers"].as_array().unwrap() {
        out.entry(row["consumer"].as_str().unwrap().to_string())
            .or_default()
            .push(row["points_at"].as_str().unwrap().to_string());
    }
    out
}

#[test]
fn every_configuration_form_is_scanned_repointed_and_restored() {
    let s = Scenario::seed();
    let (src, tgt) = (&s.pair.source, &s.pair.target);
    let root = s.dir.path().join("apps");
    let before = apps(src.user(), src.port(), src.password());
    let after = apps(tgt.user(), tgt.port(), tgt.password());
    write_all(&root, &before);
    // A connection naming neither database: listed as skipped, not offered.
    fs::create_dir_all(root.join("legacy")).unwrap();
    fs::write(
        root.join("legacy/.env"),
        "DATABASE_URL=postgresql://old@legacy-db.internal:5432/app\n",
    )
    .unwrap();

    // init --scan: every form found, split keys grouped, named after the application.
    let stderr = init_scan(&s);
    assert!(stderr.contains("9 consumer(s) found"), "{stderr}");
    assert!(
        stderr.contains("skipped apps/legacy/.env: DATABASE_URL names legacy-db.internal:5432/app, neither"),
        "{stderr}"
    );
    assert!(
        stderr.contains("development.host, development.database name localhost:5432/rails_development"),
        "{stderr}"
    );
    let plan = fs::read_to_string(s.plan_path()).unwrap();
    for expected in [
        "name = \"laravel\"\nkind = \"env\"\npath = \"apps/laravel/.env\"\nkeys = { host = \"DB_HOST\", port = \
         \"DB_PORT\", dbname = \"DB_DATABASE\", user = \"DB_USERNAME\", password = \"DB_PASSWORD\" }",
        "name = \"rails\"\nkind = \"yaml\"",
        "keys = { host = \"production.host\", port = \"production.port\", dbname = \"production.database\"",
        "name = \"mysite\"\nkind = \"python\"",
        "keys = { host = \"DATABASES.default.HOST\", port = \"DATABASES.default.PORT\", dbname = \
         \"DATABASES.default.NAME\", user = \"DATABASES.default.USER\", password = \"DATABASES.default.PASSWORD\" }",
        "name = \"spring\"\nkind = \"properties\"",
        "key = \"spring.datasource.url\"\nkeys = { user = \"spring.datasource.username\", password = \
         \"spring.datasource.password\" }",
        "name = \"dotnet\"\nkind = \"json\"\npath = \"apps/dotnet/appsettings.json\"\nkey = \"ConnectionStrings.Default\"",
        "name = \"worker\"\nkind = \"yaml\"\npath = \"apps/stack/docker-compose.yml\"\nkey = \
         \"services.worker.environment.DATABASE_URL\"",
        "name = \"billing\"\nkind = \"yaml\"\npath = \"apps/k8s/billing/secret.yaml\"\nkey = \
         \"data.DATABASE_URL\"\nencoding = \"base64\"",
        "name = \"reports\"\nkind = \"pg_service\"\npath = \"apps/reports/pg_service.conf\"\nkey = \"reports\"",
        "name = \"cron\"\nkind = \"text\"\npath = \"apps/cron/.pgpass\"",
    ] {
        assert!(plan.contains(expected), "{expected:?} missing from:\n{plan}");
    }
    assert!(!plan.contains("legacy"), "{plan}");

    // doctor: every application on the source.
    assert_all_on(&s, "source");

    // plan: a diff per consumer, passwords redacted.
    let (code, stdout, stderr) = s.run(&["plan"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("+DB_PORT=\"{}\"", tgt.port())) && stdout.contains("DB_PASSWORD=***"),
        "{stdout}"
    );
    // The Secret's diff shows the decoded value, its password redacted.
    assert!(
        stdout.contains(&format!(
            "+  DATABASE_URL: postgresql://{}:***@127.0.0.1:{}/app",
            tgt.user(),
            tgt.port()
        )),
        "{stdout}"
    );

    let (code, stdout, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for name in NAMES {
        let proof = s.sync_proof(name);
        assert_eq!(proof["sees_sentinel"], true, "{proof}");
        assert_eq!(proof["points_at"], "target", "{proof}");
    }
    // The service file holds no password: the proof says how it logged in.
    let proof = s.sync_proof("reports");
    let login = proof["login"].as_str().unwrap_or_default();
    assert!(
        login.starts_with(&format!(
            "the file holds no password: logged in as {} with the plan's password",
            tgt.user()
        )),
        "{proof}"
    );
    // Each file is exactly what the application would have written for the
    // target: only the port and password changed, in each form's syntax.
    let now = read_all(&root, &before);
    for ((path, got), (_, want)) in now.iter().zip(&after) {
        assert_eq!(got, want, "{path}");
    }
    assert_eq!(
        fs::read_to_string(root.join("legacy/.env")).unwrap(),
        "DATABASE_URL=postgresql://old@legacy-db.internal:5432/app\n"
    );

    assert_all_on(&s, "target");

    let (code, stdout, stderr) = s.run(&["rollback", "--yes"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let now = read_all(&root, &before);
    for ((path, got), (_, want)) in now.iter().zip(&before) {
        assert_eq!(got, want, "{path} not restored byte for byte");
    }
    assert_all_on(&s, "source");
}

/// The configuration files of widely used applications, each written as
/// its documentation writes it, pointing at the server on `port`.
fn widely_used(user: &str, port: u16, password: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "airflow/airflow.cfg",
            format!(
                "[core]\ndags_folder = /opt/airflow/dags\nexecutor = LocalExecutor\n\n[database]\n\
                 # The SQLAlchemy connection string to the metadata database.\n\
                 sql_alchemy_conn = postgresql+psycopg2://{user}:{password}@127.0.0.1:{port}/app\n\
                 sql_alchemy_pool_size = 5\n"
            ),
        ),
        (
            "superset/superset_config.py",
            format!(
                "ROW_LIMIT = 5000\nSECRET_KEY = 'change-me'\n\
                 SQLALCHEMY_DATABASE_URI = \"postgresql+psycopg2://{user}:{password}@127.0.0.1:{port}/app\"\n"
            ),
        ),
        (
            "api/.env",
            format!(
                "APP_ENV=production\nDATABASE_URL=postgresql+asyncpg://{user}:{password}@127.0.0.1:{port}/app?ssl=disable\n"
            ),
        ),
        (
            "grafana/grafana.ini",
            format!(
                "[server]\r\nhttp_port = 3000\r\n\r\n[database]\r\n;type = sqlite3\r\ntype = postgres\r\n\
                 host = 127.0.0.1:{port}\r\nname = app\r\nuser = {user}\r\n\
                 # If the password contains # or ; you have to wrap it with triple quotes.\r\n\
                 password = \"\"\"{password}\"\"\"\r\nssl_mode = disable\r\n"
            ),
        ),
        (
            "gitea/app.ini",
            format!(
                "APP_NAME = Gitea: Git with a cup of tea\nRUN_MODE = prod\n\n[database]\nDB_TYPE  = postgres\n\
                 HOST     = 127.0.0.1:{port}\nNAME     = app\nUSER     = {user}\nPASSWD   = `{password}`\n\
                 SSL_MODE = disable\n\n[mailer]\nENABLED = false\n"
            ),
        ),
        (
            "mastodon/.env.production",
            format!(
                "LOCAL_DOMAIN=social.example.com\nREDIS_HOST=127.0.0.1\nDB_HOST=127.0.0.1\nDB_PORT={port}\n\
                 DB_NAME=app\nDB_USER={user}\nDB_PASS={password}\n"
            ),
        ),
        (
            "keycloak/conf/keycloak.conf",
            format!(
                "# The database vendor.\ndb=postgres\n# The username of the database user.\ndb-username={user}\n\
                 db-password={password}\ndb-url=jdbc:postgresql://127.0.0.1:{port}/app\n\
                 hostname=auth.example.com\nhttp-enabled=true\n"
            ),
        ),
        (
            "nextcloud/config/config.php",
            format!(
                "<?php\n$CONFIG = array (\n  'instanceid' => 'oc8c0fd71e03',\n  'trusted_domains' =>\n  array (\n    \
                 0 => 'cloud.example.com',\n  ),\n  'datadirectory' => '/var/www/nextcloud/data',\n  \
                 'dbtype' => 'pgsql',\n  'version' => '29.0.0.19',\n  'dbname' => 'app',\n  \
                 'dbhost' => '127.0.0.1:{port}',\n  'dbtableprefix' => 'oc_',\n  'dbuser' => '{user}',\n  \
                 'dbpassword' => '{password}',\n  'installed' => true,\n);\n"
            ),
        ),
        (
            "gosvc/config.toml",
            format!(
                "[server]\nlisten = \":8080\"\n\n[database]\n# libpq keywords\n\
                 dsn = \"host=127.0.0.1 port={port} dbname=app user={user} password={password}\"\nmax_conns = 10\n"
            ),
        ),
        (
            "stack/compose.yaml",
            format!(
                "services:\n  web:\n    image: web:1\n    environment:\n      POSTGRES_HOST: 127.0.0.1\n      \
                 POSTGRES_PORT: \"{port}\"\n      POSTGRES_DB: app\n      POSTGRES_USER: {user}\n      \
                 POSTGRES_PASSWORD: {password}\n"
            ),
        ),
    ]
}

const WIDELY_USED: &[&str] = &[
    "airflow",
    "superset",
    "api",
    "grafana",
    "gitea",
    "mastodon",
    "keycloak",
    "nextcloud",
    "gosvc",
    "web",
];

#[test]
fn widely_used_applications_files_are_scanned_repointed_and_restored() {
    let s = Scenario::seed();
    let (src, tgt) = (&s.pair.source, &s.pair.target);
    let root = s.dir.path().join("apps");
    let before = widely_used(src.user(), src.port(), src.password());
    let after = widely_used(tgt.user(), tgt.port(), tgt.password());
    write_all(&root, &before);
    // A MySQL section, which names the same address: not PostgreSQL.
    fs::create_dir_all(root.join("wiki")).unwrap();
    let wiki = format!(
        "[database]\ntype = mysql\nhost = 127.0.0.1:{}\nname = app\nuser = wiki\n",
        src.port()
    );
    fs::write(root.join("wiki/wiki.ini"), &wiki).unwrap();

    let stderr = init_scan(&s);
    assert!(stderr.contains("10 consumer(s) found"), "{stderr}");
    for pw in [src.password(), tgt.password()] {
        assert!(!stderr.contains(pw), "a password in init --scan's output");
    }
    assert!(
        stderr.contains(
            "skipped apps/wiki/wiki.ini: database.host, database.name, database.user: not PostgreSQL"
        ) && stderr.contains("hostname: a host with no database key beside it"),
        "{stderr}"
    );
    let plan = fs::read_to_string(s.plan_path()).unwrap();
    for expected in [
        "name = \"airflow\"\nkind = \"ini\"\npath = \"apps/airflow/airflow.cfg\"\nkey = \"database.sql_alchemy_conn\"",
        "name = \"grafana\"\nkind = \"ini\"",
        "keys = { host = \"database.host\", dbname = \"database.name\", user = \"database.user\", password = \
         \"database.password\" }",
        "name = \"nextcloud\"\nkind = \"php\"",
        "name = \"gosvc\"\nkind = \"toml\"\npath = \"apps/gosvc/config.toml\"\nkey = \"database.dsn\"",
        "name = \"keycloak\"\nkind = \"properties\"",
    ] {
        assert!(plan.contains(expected), "{expected:?} missing from:\n{plan}");
    }
    let placed = placements(&s);
    for name in WIDELY_USED {
        assert_eq!(
            placed.get(*name),
            Some(&vec!["source".to_string()]),
            "{name}: {placed:?}"
        );
    }

    let (code, stdout, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for name in WIDELY_USED {
        let proof = s.sync_proof(name);
        assert_eq!(proof["sees_sentinel"], true, "{proof}");
    }
    // Only the port and the password changed, each in its file's own syntax.
    let now = read_all(&root, &before);
    for ((path, got), (_, want)) in now.iter().zip(&after) {
        assert_eq!(got, want, "{path}");
    }
    assert_eq!(fs::read_to_string(root.join("wiki/wiki.ini")).unwrap(), wiki);

    let (code, stdout, stderr) = s.run(&["rollback", "--yes"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let now = read_all(&root, &before);
    for ((path, got), (_, want)) in now.iter().zip(&before) {
        assert_eq!(got, want, "{path} not restored byte for byte");
    }
}
