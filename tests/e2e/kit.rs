//! The test kit itself: servers start and stop on each backend, are
//! independent, hold the fixtures they claim, and leave nothing behind.

use cutover_testkit::{Backend, Fixture, PgPair, PgServer, SEED_DB};

use crate::support::{container_exists, process_alive};

fn count(server: &PgServer, db: &str, sql: &str) -> i64 {
    server.sql(db, sql).unwrap().trim().parse().unwrap()
}

const PUBLIC_TABLES: &str = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'";

#[test]
fn pair_servers_are_independent_and_password_protected() {
    let pair = PgPair::start().unwrap();
    let (a, b) = (
        pair.source.system_identifier().unwrap(),
        pair.target.system_identifier().unwrap(),
    );
    assert!(
        !a.is_empty() && a.chars().all(|c| c.is_ascii_digit()),
        "system identifier {a:?}"
    );
    assert_ne!(a, b, "the two servers must be separate clusters");
    assert_ne!(pair.source.port(), pair.target.port());
    assert_ne!(pair.source.password(), pair.target.password());
    // Password authentication over TCP: a wrong password is refused.
    let out = std::process::Command::new(cutover_testkit::pg_bindir().unwrap().join("psql"))
        .args(["-X", "-c", "SELECT 1"])
        .arg(format!(
            "postgresql://{}:wrong@127.0.0.1:{}/postgres",
            pair.source.user(),
            pair.source.port()
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
}

#[test]
fn seed_fixture_holds_the_seed_story() {
    let pair = PgPair::seed().unwrap();
    assert_eq!(count(&pair.source, SEED_DB, PUBLIC_TABLES), 17);
    assert_eq!(count(&pair.target, SEED_DB, PUBLIC_TABLES), 13);
    assert_eq!(count(&pair.source, SEED_DB, "SELECT count(*) FROM users"), 22);
    assert_eq!(count(&pair.target, SEED_DB, "SELECT count(*) FROM users"), 1);
    // Related rows in every source table.
    let source = pair.source.digest(SEED_DB, &[]).unwrap();
    let empty: Vec<_> = source
        .iter()
        .filter(|(_, d)| d.rows == 0 && !d.md5.is_empty())
        .map(|(t, _)| t)
        .collect();
    assert_eq!(empty, vec!["pg_largeobject"], "every seed table holds rows");
    // The protection triggers work: deleting a user is refused.
    let err = pair
        .source
        .sql(SEED_DB, "DELETE FROM users WHERE id = 5")
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("deleting users is disabled"),
        "{err:#}"
    );
    assert_eq!(
        count(&pair.source, SEED_DB, "SELECT count(*) FROM user_deletion_audit"),
        1
    );
    // The stale target user is not the source's user 1.
    assert_eq!(
        pair.target.sql(SEED_DB, "SELECT email FROM users").unwrap(),
        "stale@tovplay.example"
    );
}

#[test]
fn tricky_fixture_loads_and_digests_stably() {
    let server = PgServer::start().unwrap();
    server.load_fixture("tricky", Fixture::Tricky).unwrap();
    let digest = server.digest("tricky", &[]).unwrap();
    for table in [
        "\"Billing Dept\".\"Mixed Case Table\"",
        "inventory.items",
        "inventory.events_2024",
        "inventory.events_2025",
        "public.no_pk_log",
        "public.audit_trail",
    ] {
        assert!(
            digest.get(table).is_some_and(|d| d.rows > 0),
            "{table} missing or empty in {digest:?}"
        );
    }
    assert_eq!(digest["pg_largeobject"].rows, 1);
    assert_eq!(
        digest["public.audit_trail"].rows, 1,
        "the trigger fired once while the fixture loaded"
    );
    assert_eq!(
        count(&server, "tricky", "SELECT last_value FROM public.invoice_numbers"),
        1042
    );
    // The digest does not depend on physical row order.
    server
        .sql(
            "tricky",
            "CLUSTER inventory.items USING items_pkey; VACUUM FULL public.no_pk_log",
        )
        .unwrap();
    assert_eq!(server.digest("tricky", &[]).unwrap(), digest);
    // ...but it does see a one-character change.
    server
        .sql(
            "tricky",
            "UPDATE public.no_pk_log SET line = 'y' WHERE line = 'x'",
        )
        .unwrap();
    assert_ne!(
        server.digest("tricky", &[]).unwrap()["public.no_pk_log"],
        digest["public.no_pk_log"]
    );
}

#[test]
fn local_server_stop_kill_restart_keep_data() {
    let server = PgServer::start_on(Backend::Local).unwrap();
    server
        .sql(
            "postgres",
            "CREATE TABLE kept (n int); INSERT INTO kept VALUES (1), (2)",
        )
        .unwrap();
    let port = server.port();
    server.stop().unwrap();
    assert!(
        server.sql("postgres", "SELECT 1").is_err(),
        "a stopped server must refuse connections"
    );
    server.restart().unwrap();
    assert_eq!(server.port(), port);
    server.kill().unwrap();
    assert!(server.postmaster_pid().is_none());
    server.restart().unwrap();
    assert_eq!(count(&server, "postgres", "SELECT count(*) FROM kept"), 2);
}

#[test]
fn local_server_leaves_nothing_behind_even_after_a_panic() {
    let server = PgServer::start_on(Backend::Local).unwrap();
    let pid = server.postmaster_pid().expect("postmaster pid");
    let dir = server.data_dir().unwrap();
    assert!(process_alive(pid) && dir.exists());
    drop(server);
    assert!(!process_alive(pid), "postmaster {pid} still runs after drop");
    assert!(!dir.exists(), "{} still exists after drop", dir.display());

    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let server = PgServer::start_on(Backend::Local).unwrap();
        tx.send(server.postmaster_pid().unwrap()).unwrap();
        panic!("a test fails while its server runs");
    })
    .join();
    assert!(result.is_err());
    let pid = rx.recv().unwrap();
    assert!(!process_alive(pid), "postmaster {pid} outlived a panicking test");
}

#[test]
fn docker_backend_faults_and_cleanup() {
    let server = PgServer::start_on(Backend::Docker).unwrap();
    let id = server.container_id().unwrap().to_string();
    server
        .sql(
            "postgres",
            "CREATE TABLE kept (n int); INSERT INTO kept VALUES (1)",
        )
        .unwrap();

    server.pause().unwrap();
    let started = std::time::Instant::now();
    assert!(
        server.sql("postgres", "SELECT 1").is_err(),
        "a paused server must not answer"
    );
    assert!(started.elapsed().as_secs() < 30);
    server.unpause().unwrap();
    assert_eq!(count(&server, "postgres", "SELECT count(*) FROM kept"), 1);

    server.disconnect_network().unwrap();
    assert!(
        server.sql("postgres", "SELECT 1").is_err(),
        "a disconnected server must not answer"
    );
    server.reconnect_network().unwrap();
    server.restart().unwrap();

    server.kill().unwrap();
    assert!(server.sql("postgres", "SELECT 1").is_err());
    server.restart().unwrap();
    assert_eq!(count(&server, "postgres", "SELECT count(*) FROM kept"), 1);

    drop(server);
    assert!(!container_exists(&id), "container {id} still exists after drop");
}
