//! `options.mode = "online"` is not in this version: the plan says so,
//! lists what the servers need for it (each with its fix), and changes
//! nothing.

use cutover_testkit::{PgPair, PgServer, ServerOptions};

use crate::support::Scenario;

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
    assert_eq!(code, 6, "{stderr}");
    for expected in [
        "is not in this version; nothing was changed",
        "the source has wal_level = replica; fix: ALTER SYSTEM SET wal_level = logical on the source",
        "the target has wal_level = replica",
        "have neither a primary key nor a replica identity",
        "public.no_key",
        "note: DDL is not replicated",
        "hint: remove options.mode",
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
    assert_eq!(code, 6, "{stderr}");
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
    let (code, _, stderr) = s.run(&["plan"]);
    assert_eq!(code, 6, "{stderr}");
    assert!(
        !stderr.contains("wal_level") && !stderr.contains("replica identity:"),
        "{stderr}"
    );
    assert!(stderr.contains("note: DDL is not replicated"), "{stderr}");
}
