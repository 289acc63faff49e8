//! End to end through the binary: plan, run, verify, status and rollback on
//! the seed scenario and the tricky schema, with resume, refusals and locks.

use std::time::Duration;

use cutover_testkit::{Fixture, PgPair};

use crate::support::{Scenario, output};

fn q(server: &cutover_testkit::PgServer, sql: &str) -> String {
    server.sql("app", sql).unwrap()
}

#[test]
fn seed_cutover_plan_run_verify_rerun_rollback() {
    let s = Scenario::seed();
    let source_before = s.source_digest();
    let target_before = s.target_digest();

    // plan: writes nothing anywhere.
    let (code, stdout, stderr) = s.run(&["plan"]);
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        "1. discover",
        "2. backup-target",
        "4. clear-target",
        "5. copy",
        "6. verify-data",
    ] {
        assert!(stdout.contains(expected), "plan lacks {expected}:\n{stdout}");
    }
    assert!(
        stdout.contains("1 row of users that the source lacks (id=1, stale@tovplay.example)"),
        "{stdout}"
    );
    assert_eq!(
        q(
            &s.pair.target,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'cutover'"
        ),
        "0"
    );
    // The only file plan writes: the record of its passed rehearsal,
    // private, which the run's discover reuses.
    let written: Vec<_> = walk(&s.run_dir());
    assert_eq!(
        written,
        vec![s.run_dir().join("rehearsal").join("passed.json")],
        "plan wrote more than its rehearsal's record"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&written[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (code, json, _) = s.run(&["plan", "--output", "json"]);
    assert_eq!(code, 0);
    let plan: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(plan["stages"].as_array().unwrap().len(), 6);

    // run without --yes and without a terminal: refused, nothing destroyed.
    let (code, _, stderr) = s.run(&["run"]);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("pass --yes"), "{stderr}");
    assert_eq!(s.target_digest(), target_before);

    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    // The target had tables: its backup is proven by a restore that counts them.
    assert_eq!(
        s.artefacts("backup-target")["proof"],
        "proven by a restore into a scratch database: 13 tables, 6 rows match"
    );
    // The target now holds exactly the source's data (independent digest).
    assert_eq!(s.target_digest(), source_before);
    assert_eq!(q(&s.pair.target, "SELECT count(*) FROM users"), "22");
    // The change-log trigger did not fire during the load.
    assert_eq!(q(&s.pair.target, "SELECT count(*) FROM row_change_log"), "23");
    // The source is frozen for writes.
    let err = s
        .pair
        .source
        .sql("app", "INSERT INTO protection_settings VALUES ('k', 'v')")
        .unwrap_err();
    assert!(format!("{err:#}").contains("read-only transaction"), "{err:#}");
    // The backup is private and recorded.
    let backups: Vec<_> = std::fs::read_dir(s.run_dir().join("backups"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(backups.len(), 1);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(backups[0].metadata().unwrap().permissions().mode() & 0o777, 0o600);

    let (code, stdout, _) = s.run(&["verify"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("the target holds exactly the source's data"),
        "{stdout}"
    );

    // Re-running a finished run is a no-op: it says so, and no stage starts.
    let (code, stdout, stderr) = s.run(&["run", "--yes", "--output", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let events = crate::support::events(&stdout);
    assert_eq!(
        events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["run_already_finished"],
        "{stdout}"
    );
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("nothing to do"), "{stderr}");

    let (code, stdout, _) = s.run(&["status"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("(done)") && stdout.matches(" done ").count() >= 6,
        "{stdout}"
    );
    let (code, stdout, _) = s.run(&["status", "--output", "json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["run"]["status"], "done");

    // Sequences and triggers are right on the target: a new user gets id 24 and a change-log row.
    assert_eq!(
        q(
            &s.pair.target,
            "INSERT INTO users (email, username, created_at) VALUES ('new@x', 'new', now()) RETURNING id"
        ),
        "24"
    );
    assert_eq!(q(&s.pair.target, "SELECT count(*) FROM row_change_log"), "24");
    q(
        &s.pair.target,
        "DELETE FROM row_change_log WHERE row_id = 24; SET app.allow_user_delete = 'on'; DELETE FROM users WHERE id = 24; DELETE FROM user_deletion_audit WHERE user_id = 24",
    );

    // Rollback: the target holds its stale data again, the source takes writes.
    let (code, _, stderr) = s.run(&["rollback", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    let order: Vec<usize> = ["undoing copy", "undoing clear-target", "undoing freeze-source"]
        .iter()
        .map(|m| {
            stderr
                .find(m)
                .unwrap_or_else(|| panic!("{m} missing in {stderr}"))
        })
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "rollback order wrong:\n{stderr}"
    );
    assert_eq!(s.target_digest(), target_before);
    q(
        &s.pair.source,
        "INSERT INTO protection_settings VALUES ('after-rollback', 'ok')",
    );

    // Nothing in the journal or the run directory holds a password.
    let journal = q(
        &s.pair.target,
        "SELECT string_agg(t::text, ' ') FROM cutover.stage_events t",
    );
    let runs = q(
        &s.pair.target,
        "SELECT string_agg(t::text, ' ') FROM cutover.runs t",
    );
    for pw in [s.pair.source.password(), s.pair.target.password()] {
        assert!(!journal.contains(pw) && !runs.contains(pw));
        for f in walk(&s.run_dir()) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !bytes.windows(pw.len()).any(|w| w == pw.as_bytes()),
                "password in {}",
                f.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

fn normalised_schema(server: &cutover_testkit::PgServer) -> String {
    normalised_schema_of(server, "app")
}

/// The schema of `db` as `pg_dump --schema-only` prints it, without comments
/// (object order is pg_dump's own, whatever the creation order).
pub(crate) fn normalised_schema_of(server: &cutover_testkit::PgServer, db: &str) -> String {
    let out = std::process::Command::new(cutover_testkit::pg_bindir().unwrap().join("pg_dump"))
        .args([
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--exclude-schema=cutover",
        ])
        .arg(server.url_without_password(db))
        .env("PGPASSWORD", server.password())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("--") && !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn tricky_schema_copies_exactly_and_verify_localises_a_change() {
    let pair = PgPair::start().unwrap();
    pair.source.load_fixture("app", Fixture::Tricky).unwrap();
    pair.target.create_database("app").unwrap();
    let s = Scenario::with(pair, "");
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    // An empty target: its backup is read back whole, no scratch database.
    let proof = s.artefacts("backup-target")["proof"].clone();
    assert!(
        proof.as_str().is_some_and(
            |p| p.starts_with("the target holds no tables: proven by reading the whole archive back")
        ),
        "{proof}"
    );
    assert_eq!(s.target_digest(), s.source_digest());
    assert_eq!(
        q(&s.pair.target, "SELECT count(*) FROM public.audit_trail"),
        "1",
        "the audit trigger fired during the load"
    );
    assert_eq!(
        q(&s.pair.target, "SELECT last_value FROM public.invoice_numbers"),
        "1042"
    );
    assert_eq!(
        q(
            &s.pair.target,
            "SELECT convert_from(lo_get(oid), 'UTF8') FROM pg_largeobject_metadata"
        ),
        "large object payload"
    );
    assert_eq!(
        q(&s.pair.target, "SELECT sum(n) FROM inventory.event_counts"),
        "400",
        "materialized view not populated"
    );
    assert_eq!(
        normalised_schema(&s.pair.source),
        normalised_schema(&s.pair.target)
    );
    // Identity ALWAYS continues after the copied values.
    assert_eq!(
        q(
            &s.pair.target,
            "INSERT INTO \"Billing Dept\".\"Mixed Case Table\" (\"Weird Col\") VALUES ('n') RETURNING \"Id\""
        ),
        "5"
    );
    q(
        &s.pair.target,
        "DELETE FROM \"Billing Dept\".\"Mixed Case Table\" WHERE \"Id\" = 5; SELECT setval(pg_get_serial_sequence('\"Billing Dept\".\"Mixed Case Table\"', 'Id'), 4)",
    );

    let (code, stdout, _) = s.run(&["verify"]);
    assert_eq!(code, 0, "{stdout}");
    q(
        &s.pair.target,
        "UPDATE inventory.items SET price = 2 WHERE id = 3",
    );
    let (code, stdout, _) = s.run(&["verify"]);
    assert_eq!(code, 3, "{stdout}");
    assert!(
        stdout.contains("inventory.items: 5 rows on the source, 5 on the target, contents differ (in id 3)"),
        "{stdout}"
    );
}

#[test]
fn refusals_leave_everything_as_it_was() {
    let s = Scenario::seed();
    let (source_before, target_before) = (s.source_digest(), s.target_digest());

    // The same database under two spellings.
    let port = s.pair.source.port();
    let (user, pw) = (s.pair.source.user(), s.pair.source.password());
    s.write_plan(
        &format!("postgresql://{user}:{pw}@localhost:{port}/app"),
        &format!("postgresql://{user}:{pw}@127.0.0.1:{port}/app"),
        "",
    );
    let (code, _, stderr) = s.run(&["plan"]);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("are the same database"), "{stderr}");

    // Swapped direction: the "target" (the live database) holds data the "source" lacks.
    s.write_plan(&s.pair.target.url("app"), &s.pair.source.url("app"), "");
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("looks like the live database"), "{stderr}");
    assert!(stderr.contains("--allow-target-ahead"), "{stderr}");

    // The right direction, but applications have been writing to the target:
    // its statistics count more updates and deletes than the source's.
    s.pair
        .target
        .sql(
            "app",
            "DO $$ BEGIN FOR i IN 1..20 LOOP UPDATE users SET email = email; END LOOP; END $$",
        )
        .unwrap();
    s.write_plan(&s.pair.source.url("app"), &s.pair.target.url("app"), "");
    let (code, stdout, _) = s.run(&["plan"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("rows updated or deleted in the tables both have"),
        "{stdout}"
    );
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 5, "{stderr}");
    assert!(
        stderr.contains("the target's statistics count 20 rows updated or deleted"),
        "{stderr}"
    );

    // A typo in a safety setting is an error with its line, not a silent default.
    std::fs::write(
        s.plan_path(),
        format!(
            "[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n[options]\nfreeze_sorce = false\n",
            s.pair.source.url("app"),
            s.pair.target.url("app")
        ),
    )
    .unwrap();
    let (code, _, stderr) = s.run(&["plan"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("line 6, column 1") && stderr.contains("unknown field `freeze_sorce`"),
        "{stderr}"
    );

    // Wrong password: named, redacted.
    s.write_plan(
        &s.pair
            .source
            .url("app")
            .replace(s.pair.source.password(), "wrong-pw"),
        &s.pair.target.url("app"),
        "",
    );
    let (code, _, stderr) = s.run(&["plan"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("password authentication failed") && !stderr.contains("wrong-pw"),
        "{stderr}"
    );

    assert_eq!(s.source_digest(), source_before);
    assert_eq!(s.target_digest(), target_before);
}

#[test]
fn resume_after_kill_converges_and_drift_is_refused() {
    let s = Scenario::seed();
    let expected = s.source_digest();
    // Kill the run at several points; every re-run picks up where it stopped.
    for delay_ms in [150u64, 400, 700] {
        let mut child = s
            .cutover(&["run", "--yes"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
    }
    // A changed plan file stops a resume and says what changed (an
    // unfinished run for certain: this one stops after the backup).
    let (code, _, stderr) = s.run(&["run", "--yes", "--until", "backup-target"]);
    assert_eq!(code, 0, "{stderr}");
    let original = std::fs::read_to_string(s.plan_path()).unwrap();
    std::fs::write(s.plan_path(), format!("{original}# edited\n")).unwrap();
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("the plan file changed"), "{stderr}");
    std::fs::write(s.plan_path(), &original).unwrap();
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(s.target_digest(), expected);
    // A finished run stays finished, whatever changed since; --restart
    // starts a new one.
    std::fs::write(s.plan_path(), format!("{original}# edited\n")).unwrap();
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("nothing to do"), "{stderr}");
    let (code, _, stderr) = s.run(&["run", "--yes", "--restart"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(s.target_digest(), expected);
}

#[test]
fn run_lock_is_exclusive_and_freed_when_the_holder_dies() {
    let s = Scenario::with(PgPair::seed().unwrap(), "\n[options]\nlock_timeout = 120\n");
    // Hold a lock on a target table so the first run waits inside clear-target.
    let mut blocker = std::process::Command::new(cutover_testkit::pg_bindir().unwrap().join("psql"))
        .arg(s.pair.target.url_without_password("app"))
        .env("PGPASSWORD", s.pair.target.password())
        .args(["-X", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(
        blocker.stdin.as_mut().unwrap(),
        "BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE;"
    )
    .unwrap();
    blocker.stdin.as_mut().unwrap().flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut holder = s
        .cutover(&["run", "--yes"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the holder is stuck behind the table lock.
    let mut waited = 0;
    while q(
        &s.pair.target,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
    ) == "0"
    {
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
        assert!(waited < 200, "the first run never reached the locked table");
    }
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains(&format!("cutover run lock (pid {}", holder.id())),
        "{stderr}"
    );

    holder.kill().unwrap();
    holder.wait().unwrap();
    drop(blocker.stdin.take());
    blocker.wait().unwrap();
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(s.target_digest(), s.source_digest());
}

#[test]
fn freeze_blocks_source_writes_until_rollback() {
    let s = Scenario::seed();
    let (code, _, stderr) = s.run(&["run", "--yes", "--until", "freeze-source"]);
    assert_eq!(code, 0, "{stderr}");
    let err = s
        .pair
        .source
        .sql("app", "UPDATE games SET genre = 'x' WHERE id = 1")
        .unwrap_err();
    assert!(format!("{err:#}").contains("read-only transaction"), "{err:#}");
    let (code, _, stderr) = s.run(&["rollback", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    q(&s.pair.source, "UPDATE games SET genre = 'board' WHERE id = 1");
    let (out, _, _) = output(&mut s.cutover(&["run", "--only", "no-such-stage", "--yes"]));
    assert_eq!(out.status.code(), Some(2));
}

/// Post-data runs in parallel (pg_restore --jobs), so it is not one
/// transaction: an attempt interrupted half-way leaves some indexes and
/// constraints. The next run drops those and restores post-data again.
#[test]
fn an_interrupted_parallel_post_data_is_redone_cleanly() {
    let pair = PgPair::start().unwrap();
    pair.source.load_fixture("app", Fixture::Tricky).unwrap();
    pair.target.create_database("app").unwrap();
    let s = Scenario::with(pair, "\n[options]\njobs = 3\n");
    let (code, _, stderr) = s.run(&["run", "--yes", "--until", "copy"]);
    assert_eq!(code, 0, "{stderr}");
    let schema = normalised_schema(&s.pair.source);
    assert_eq!(normalised_schema(&s.pair.target), schema);

    // The state a kill in the middle of post-data leaves: the copy started
    // again in the journal, post-data not marked done, some of its objects
    // missing on the target, others present.
    q(
        &s.pair.target,
        "DELETE FROM cutover.item_progress WHERE item = 'post-data'; \
         INSERT INTO cutover.stage_events (run_id, stage, event) SELECT id, 'copy', 'started' FROM cutover.runs; \
         ALTER TABLE inventory.items DROP CONSTRAINT items_pkey CASCADE; \
         DROP TRIGGER items_audit ON inventory.items",
    );
    assert_ne!(normalised_schema(&s.pair.target), schema);
    let (code, _, stderr) = s.run(&["run", "--yes", "--until", "copy"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(normalised_schema(&s.pair.target), schema);
    let (code, stdout, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(s.target_digest(), s.source_digest());
}

/// Large tables' indexes and keys, and the foreign keys between large
/// tables, are built during the copy, each with its journal item in one
/// transaction; the rest of post-data follows from the archive without them.
/// An interruption leaves an entry built and journaled or neither: the next
/// run builds only what is missing and the schema ends up identical.
#[test]
fn early_index_builds_overlap_the_copy_and_survive_an_interruption() {
    let pair = PgPair::start().unwrap();
    pair.source.create_database("app").unwrap();
    pair.source
        .sql(
            "app",
            "CREATE TABLE parent (id int PRIMARY KEY, code text UNIQUE, during tsrange, \
                                  EXCLUDE USING gist (during WITH &&)); \
             INSERT INTO parent SELECT g, 'c' || g, tsrange(timestamp '2024-01-01' + g * interval '1 day', \
                                                           timestamp '2024-01-01' + (g + 1) * interval '1 day') \
               FROM generate_series(1, 2000) g; \
             CREATE TABLE kind (id int PRIMARY KEY, label text); \
             INSERT INTO kind VALUES (1, 'a'), (2, 'b'), (3, 'c'); \
             CREATE TABLE child (id bigint PRIMARY KEY, parent_id int NOT NULL REFERENCES parent, \
                                 kind_id int REFERENCES kind, note text); \
             INSERT INTO child SELECT g, 1 + g % 2000, 1 + g % 3, repeat(md5(g::text), 4) \
               FROM generate_series(1, 20000) g; \
             CREATE INDEX child_parent ON child (parent_id); \
             COMMENT ON INDEX child_parent IS 'lookups by parent'; \
             CREATE TABLE small (id int PRIMARY KEY, parent_id int REFERENCES parent); \
             INSERT INTO small VALUES (1, 1); \
             CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$; \
             CREATE TRIGGER child_touch BEFORE UPDATE ON child FOR EACH ROW EXECUTE FUNCTION touch(); \
             ANALYZE",
        )
        .unwrap();
    pair.target.create_database("app").unwrap();
    // child (about 3 MB) goes as block ranges: its entries wait for the last one.
    let s = Scenario::with(
        pair,
        "\n[options]\njobs = 3\nsplit_bytes = 1000000\nearly_index_bytes = 100000\nanalyze_bytes = 1000000\n",
    );
    let (code, _, stderr) = s.run(&["run", "--yes", "--until", "copy"]);
    assert_eq!(code, 0, "{stderr}");
    // child (about 3 MB) has planner statistics, from cutover's ANALYZE
    // (journaled in its transaction); small and kind are left to autovacuum.
    assert_eq!(
        q(
            &s.pair.target,
            "SELECT string_agg(item, ' ' ORDER BY item) FROM cutover.item_progress WHERE item LIKE 'analyze:%'"
        ),
        "analyze:public.child"
    );
    assert_eq!(
        q(
            &s.pair.target,
            "SELECT string_agg(DISTINCT tablename, ' ') FROM pg_stats WHERE schemaname = 'public' \
             AND tablename IN ('child', 'small', 'kind')"
        ),
        "child"
    );
    let schema = normalised_schema(&s.pair.source);
    assert_eq!(normalised_schema(&s.pair.target), schema);
    let early =
        "SELECT string_agg(item, ' ' ORDER BY item) FROM cutover.item_progress WHERE item LIKE 'early:%'";
    // small is below early_index_bytes: its key and foreign key come after
    // the copy; kind is small too, but child's foreign key to it is checked
    // during the copy, so kind's key is built early.
    assert_eq!(
        q(&s.pair.target, early),
        "early:public.child.child_kind_id_fkey early:public.child.child_parent \
         early:public.child.child_parent_id_fkey early:public.child.child_pkey early:public.kind.kind_pkey \
         early:public.parent.parent_code_key early:public.parent.parent_during_excl early:public.parent.parent_pkey"
    );
    assert!(
        q(
            &s.pair.target,
            "SELECT count(*) FROM cutover.item_progress WHERE item LIKE 'table:public.child#%'"
        )
        .parse::<i32>()
        .unwrap()
            > 1,
        "child was not copied in ranges"
    );

    // What a kill leaves: one early entry never committed (not built, not
    // journaled), the final restore half done, post-data not marked.
    q(
        &s.pair.target,
        "DELETE FROM cutover.item_progress WHERE item IN ('post-data', 'early:public.child.child_parent_id_fkey'); \
         INSERT INTO cutover.stage_events (run_id, stage, event) SELECT id, 'copy', 'started' FROM cutover.runs; \
         ALTER TABLE child DROP CONSTRAINT child_parent_id_fkey; \
         DROP TRIGGER child_touch ON child",
    );
    assert_ne!(normalised_schema(&s.pair.target), schema);
    let (code, _, stderr) = s.run(&["run", "--yes", "--until", "copy"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(normalised_schema(&s.pair.target), schema);
    assert_eq!(
        q(&s.pair.target, early).split(' ').count(),
        8,
        "the missing entry was not journaled again"
    );
    let (code, stdout, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(s.target_digest(), s.source_digest());
}

/// Each table is emptied in its own copy transaction, so rows an earlier
/// attempt left are replaced, never doubled: a large table by TRUNCATE,
/// which lets COPY write its rows frozen, a small one by DELETE (a TRUNCATE
/// costs more than copying a small table whole).
#[test]
fn each_table_is_emptied_in_its_copy_transaction_and_large_ones_load_frozen() {
    let pair = PgPair::start().unwrap();
    pair.source.create_database("app").unwrap();
    pair.source
        .sql(
            "app",
            "CREATE TABLE big (id int PRIMARY KEY, note text); \
             INSERT INTO big SELECT g, repeat(md5(g::text), 2) FROM generate_series(1, 20000) g; \
             CREATE TABLE tiny (id int PRIMARY KEY, label text); \
             INSERT INTO tiny VALUES (1, 'a'), (2, 'b'), (3, 'c'); \
             ANALYZE",
        )
        .unwrap();
    pair.target.create_database("app").unwrap();
    let s = Scenario::with(pair, "");
    let (code, _, stderr) = s.run(&["run", "--yes", "--until", "copy"]);
    assert_eq!(code, 0, "{stderr}");
    // big (about 2 MB) was loaded with COPY … FREEZE: every page all-frozen;
    // tiny was not.
    let frozen = "SELECT all_frozen = pg_relation_size('{t}') / 8192 AND all_frozen > 0 \
                  FROM pg_visibility_map_summary('{t}')";
    q(&s.pair.target, "CREATE EXTENSION pg_visibility");
    assert_eq!(q(&s.pair.target, &frozen.replace("{t}", "big")), "t");
    assert_eq!(q(&s.pair.target, &frozen.replace("{t}", "tiny")), "f");
    q(&s.pair.target, "DROP EXTENSION pg_visibility");

    // What a kill between a table's load and its journal entry would leave
    // if the two were not one transaction: rows in place, the table not
    // journaled. The re-run must replace them (the primary keys, already
    // built, would refuse a second copy of any row).
    q(
        &s.pair.target,
        "DELETE FROM cutover.item_progress WHERE item IN ('table:public.big', 'table:public.tiny'); \
         INSERT INTO cutover.stage_events (run_id, stage, event) SELECT id, 'copy', 'started' FROM cutover.runs; \
         INSERT INTO tiny VALUES (99, 'left over')",
    );
    let (code, _, stderr) = s.run(&["run", "--yes", "--until", "copy"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(q(&s.pair.target, "SELECT count(*) FROM big"), "20000");
    assert_eq!(
        q(
            &s.pair.target,
            "SELECT string_agg(label, ' ' ORDER BY id) FROM tiny"
        ),
        "a b c"
    );
    let (code, stdout, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(s.target_digest(), s.source_digest());
}

/// When every index, key and foreign key is built during the copy, the rest
/// of post-data (here a comment on an index and a materialized view's data)
/// still runs: the shortcut for "post-data already there" applies only to a
/// final restore that an earlier attempt started.
#[test]
fn post_data_beyond_the_early_builds_is_restored() {
    let pair = PgPair::start().unwrap();
    pair.source.create_database("app").unwrap();
    pair.source
        .sql(
            "app",
            "CREATE TABLE a (id int PRIMARY KEY); INSERT INTO a SELECT generate_series(1, 100); \
             CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a, note text); \
             INSERT INTO b SELECT g, 1 + g % 100, 'n' || g FROM generate_series(1, 1000) g; \
             CREATE INDEX b_a ON b (a_id); COMMENT ON INDEX b_a IS 'lookups by a'; \
             CREATE MATERIALIZED VIEW b_count AS SELECT count(*) AS n FROM b",
        )
        .unwrap();
    pair.target.create_database("app").unwrap();
    let s = Scenario::with(pair, "\n[options]\nearly_index_bytes = 1\n");
    let (code, _, stderr) = s.run(&["run", "--yes", "--until", "copy"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        q(
            &s.pair.target,
            "SELECT count(*) FROM cutover.item_progress WHERE item LIKE 'early:%'"
        ),
        "4"
    );
    assert_eq!(
        normalised_schema(&s.pair.target),
        normalised_schema(&s.pair.source)
    );
    assert_eq!(q(&s.pair.target, "SELECT n FROM b_count"), "1000");
}

/// Planning reads every row only where it compares: a large table the target
/// lacks shows the statistics' estimate, said to be one ("about"), while a
/// large table on both sides is counted on both; the copy and verify count
/// everything anyway.
#[test]
fn planning_counts_rows_only_where_it_compares() {
    let pair = PgPair::start().unwrap();
    pair.source.create_database("app").unwrap();
    // At least 8192 pages each (fillfactor 10: one or two rows a page).
    let big = |name: &str, rows: i32| {
        format!(
            "CREATE TABLE {name} (id int PRIMARY KEY, pad text) WITH (fillfactor = 10); \
             INSERT INTO {name} SELECT g, repeat(md5(g::text), 12) FROM generate_series(1, {rows}) g; \
             ANALYZE {name};"
        )
    };
    pair.source
        .sql(
            "app",
            &format!("{} {}", big("only_here", 16384), big("on_both", 16384)),
        )
        .unwrap();
    pair.target.create_database("app").unwrap();
    pair.target
        .sql(
            "app",
            "CREATE TABLE on_both (id int PRIMARY KEY, pad text); INSERT INTO on_both VALUES (1, 'x')",
        )
        .unwrap();
    let s = Scenario::with(pair, "\n[options]\nfreeze_source = false\n");
    let (code, stdout, stderr) = s.run(&["plan"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("only_here: about 16384 rows"), "{stdout}");
    assert!(stdout.contains("on_both: 16384 rows"), "{stdout}");
    assert!(stdout.contains("about 32768 rows"), "{stdout}");
    let (code, stdout, stderr) = s.run(&["run", "--yes", "--until", "copy", "--allow-target-ahead"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        q(
            &s.pair.target,
            "SELECT (SELECT count(*) FROM only_here) + (SELECT count(*) FROM on_both)"
        ),
        "32768"
    );
    let (code, stdout, _) = s.run(&["verify"]);
    assert_eq!(code, 0, "{stdout}");
}

/// verify-data sees every difference a row's text form shows, with either
/// row hash: values swapped between rows (a sum of hashes linear in the
/// columns would not), a numeric's scale, a float's sign of zero, a jsonb
/// number's spelling, '1 day' against '24 hours', case under a
/// nondeterministic collation, a microsecond, NULL against '', an array's
/// bounds, a char(n)'s case.
#[test]
fn verify_sees_every_difference_the_text_form_shows() {
    let pair = PgPair::start().unwrap();
    pair.source.create_database("app").unwrap();
    pair.source
        .sql(
            "app",
            "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false); \
             CREATE TABLE kinds (id int PRIMARY KEY, name text COLLATE ci, label varchar(20), code char(4), \
                                 amount numeric, ratio float8, doc jsonb, span interval, at timestamptz, \
                                 day date, flag boolean, uid uuid, raw bytea, tags int[], note text); \
             INSERT INTO kinds VALUES \
               (1, 'Alpha', 'a1', 'ab', 1.0, 0, '{\"n\": 1.0}', '1 day', '2024-01-01 00:00:00+00', '2024-01-01', \
                true, '00000000-0000-0000-0000-000000000001', '\\x01', '{1,2}', 'x'), \
               (2, 'Beta', 'b1', 'cd', 2.5, 1.5, '{\"n\": 2}', '2 hours', '2024-01-02 00:00:00+00', '2024-01-02', \
                false, '00000000-0000-0000-0000-000000000002', '\\x02', '{3}', '')",
        )
        .unwrap();
    pair.target.create_database("app").unwrap();
    let s = Scenario::with(pair, "\n[options]\nfreeze_source = false\n");
    let (code, stdout, stderr) = s.run(&["run", "--yes", "--until", "copy"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // (change on the target, undo)
    let changes = [
        (
            // 'a1' and 'b1': for these rows a sum of hash_record_extended
            // (linear in the columns' hashes) comes out exactly the same.
            "UPDATE kinds SET label = CASE id WHEN 1 THEN 'b1' ELSE 'a1' END",
            "UPDATE kinds SET label = CASE id WHEN 1 THEN 'a1' ELSE 'b1' END",
        ),
        (
            "UPDATE kinds SET amount = 1.00 WHERE id = 1",
            "UPDATE kinds SET amount = 1.0 WHERE id = 1",
        ),
        (
            "UPDATE kinds SET ratio = '-0' WHERE id = 1",
            "UPDATE kinds SET ratio = 0 WHERE id = 1",
        ),
        (
            "UPDATE kinds SET doc = '{\"n\": 1.00}' WHERE id = 1",
            "UPDATE kinds SET doc = '{\"n\": 1.0}' WHERE id = 1",
        ),
        (
            "UPDATE kinds SET span = '24 hours' WHERE id = 1",
            "UPDATE kinds SET span = '1 day' WHERE id = 1",
        ),
        (
            "UPDATE kinds SET name = 'ALPHA' WHERE id = 1",
            "UPDATE kinds SET name = 'Alpha' WHERE id = 1",
        ),
        (
            "UPDATE kinds SET at = at + interval '1 microsecond' WHERE id = 1",
            "UPDATE kinds SET at = at - interval '1 microsecond' WHERE id = 1",
        ),
        (
            "UPDATE kinds SET note = NULL WHERE id = 2",
            "UPDATE kinds SET note = '' WHERE id = 2",
        ),
        (
            "UPDATE kinds SET tags = '[0:1]={1,2}' WHERE id = 1",
            "UPDATE kinds SET tags = '{1,2}' WHERE id = 1",
        ),
        (
            "UPDATE kinds SET code = 'AB' WHERE id = 1",
            "UPDATE kinds SET code = 'ab' WHERE id = 1",
        ),
    ];
    for (row_hash, method) in [
        ("auto", "64-bit hash of each row's values"),
        ("text", "hashtextextended"),
    ] {
        s.write_plan(
            &s.pair.source.url("app"),
            &s.pair.target.url("app"),
            &format!("\n[options]\nfreeze_source = false\nrow_hash = \"{row_hash}\"\n"),
        );
        let (code, stdout, _) = s.run(&["verify"]);
        assert_eq!(code, 0, "{stdout}");
        assert!(stdout.contains(method), "{row_hash}: {stdout}");
        for (change, undo) in changes {
            q(&s.pair.target, change);
            let (code, stdout, _) = s.run(&["verify"]);
            assert_eq!(code, 3, "{row_hash}: `{change}` went unseen: {stdout}");
            assert!(
                stdout.contains("kinds: 2 rows on the source, 2 on the target, contents differ"),
                "{row_hash}: {stdout}"
            );
            q(&s.pair.target, undo);
        }
        let (code, stdout, _) = s.run(&["verify"]);
        assert_eq!(code, 0, "{row_hash}: {stdout}");
    }
}

/// A table larger than `split_bytes` is copied as parallel block ranges, each
/// its own journal item in the same transaction as its rows: a range that
/// never committed is recopied alone, the others are left as they are.
#[test]
fn large_tables_are_copied_in_ranges_and_resume_per_range() {
    let pair = PgPair::start().unwrap();
    pair.source.create_database("app").unwrap();
    pair.source
        .sql(
            "app",
            "CREATE TABLE big (id int PRIMARY KEY, payload text); \
             INSERT INTO big SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 20000) g",
        )
        .unwrap();
    pair.target.create_database("app").unwrap();
    // big is below early_index_bytes: its key comes with the final restore,
    // and its ANALYZE after that.
    let s = Scenario::with(
        pair,
        "\n[options]\njobs = 3\nsplit_bytes = 1000000\nanalyze_bytes = 1000000\n",
    );
    let (code, stdout, _) = s.run(&["plan"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("block ranges, then ANALYZE"), "{stdout}");
    let (code, _, stderr) = s.run(&["run", "--yes", "--until", "copy"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(s.target_digest(), s.source_digest());
    assert_eq!(
        q(
            &s.pair.target,
            "SELECT (SELECT count(*) FROM cutover.item_progress WHERE item = 'analyze:public.big') \
                  + (SELECT count(DISTINCT attname) FROM pg_stats WHERE tablename = 'big')"
        ),
        "3",
        "big's ANALYZE is journaled and its two columns have statistics"
    );
    let ranges = |s: &Scenario| {
        q(
            &s.pair.target,
            "SELECT string_agg(item || ' ' || finished_at, E'\\n' ORDER BY item) FROM cutover.item_progress \
             WHERE item LIKE 'table:public.big#%'",
        )
    };
    let before = ranges(&s);
    let n = before.lines().count();
    assert!(n >= 3, "{before}");

    // Range 2 never committed: its rows and its journal item are absent.
    let pages: i64 = q(&s.pair.source, "SELECT pg_relation_size('big') / 8192")
        .parse()
        .unwrap();
    let step = (pages + n as i64 - 1) / n as i64;
    let ids = q(
        &s.pair.source,
        &format!(
            "SELECT string_agg(id::text, ',') FROM big WHERE ctid >= '({},0)'::tid AND ctid < '({},0)'::tid",
            step,
            2 * step
        ),
    );
    assert!(!ids.is_empty());
    q(
        &s.pair.target,
        &format!(
            "DELETE FROM big WHERE id IN ({ids}); \
             DELETE FROM cutover.item_progress WHERE item = 'table:public.big#2/{n}'; \
             INSERT INTO cutover.stage_events (run_id, stage, event) SELECT id, 'copy', 'started' FROM cutover.runs"
        ),
    );
    assert_ne!(s.target_digest(), s.source_digest());
    let (code, _, stderr) = s.run(&["run", "--yes", "--until", "copy"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(s.target_digest(), s.source_digest());
    let after = ranges(&s);
    let changed: Vec<_> = before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(after.lines().count(), n);
    assert_eq!(
        changed,
        vec![format!("table:public.big#2/{n}")],
        "only the missing range was recopied"
    );

    // verify hashes the big table in key ranges and still finds a change.
    let (code, stdout, _) = s.run(&["verify"]);
    assert_eq!(code, 0, "{stdout}");
    q(
        &s.pair.target,
        "UPDATE big SET payload = 'changed' WHERE id = 12345",
    );
    let (code, stdout, _) = s.run(&["verify"]);
    assert_eq!(code, 3, "{stdout}");
    let marker = "big: 20000 rows on the source, 20000 on the target, contents differ (in id ";
    let at = stdout.find(marker).unwrap_or_else(|| panic!("{stdout}")) + marker.len();
    let range = stdout[at..].split(')').next().unwrap();
    let (a, b) = range.split_once("..").unwrap_or((range, range));
    let (a, b): (i64, i64) = (a.parse().unwrap(), b.parse().unwrap());
    assert!(a <= 12345 && 12345 <= b && b - a < 100, "narrowed to {range}");
}

/// The offline freeze is a fence, not a default: an application's own
/// login cannot write on the source after verify-data however it asks
/// (`BEGIN READ WRITE`, a new connection per statement), nor can a role the
/// plan does not know; a write by a role no fence stops (cutover's own
/// superuser) is caught by the source's write counters before the source is
/// retired; rollback puts every privilege and setting back exactly.
#[test]
fn the_offline_fence_holds_after_verify_data_and_a_late_write_stops_retirement() {
    let pair = PgPair::seed().unwrap();
    for server in [&pair.source, &pair.target] {
        server
            .sql(
                "postgres",
                "CREATE ROLE shop LOGIN PASSWORD 'shop-secret-7'; CREATE ROLE nightly LOGIN PASSWORD 'nightly-secret-3'",
            )
            .unwrap();
    }
    pair.source
        .sql(
            "app",
            "GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO shop, nightly; \
             GRANT CONNECT ON DATABASE app TO nightly; CREATE ROLE auditor LOGIN SUPERUSER",
        )
        .unwrap();
    let (src, tgt) = (pair.source.port(), pair.target.port());
    let plan = "\n[[consumer]]\nname = \"shop\"\nkind = \"env\"\npath = \"shop.env\"\nkey = \"DATABASE_URL\"\n\
                target_url_env = \"SHOP_TARGET_URL\"\n\n[decommission]\ndriver = \"postgres\"\n";
    let s = Scenario::with(pair, plan);
    std::fs::write(
        s.dir.path().join("shop.env"),
        format!("DATABASE_URL=postgresql://shop:shop-secret-7@127.0.0.1:{src}/app\n"),
    )
    .unwrap();
    let env = [(
        "SHOP_TARGET_URL",
        format!("postgresql://shop:shop-secret-7@127.0.0.1:{tgt}/app"),
    )];
    let secrets = ["shop-secret-7", "nightly-secret-3"];
    let access_before = crate::support::access(&s.pair.source);
    let as_role = |user: &str, pw: &str| format!("postgresql://{user}:{pw}@127.0.0.1:{src}/app");
    let insert = "BEGIN READ WRITE; INSERT INTO protection_settings VALUES ('late', 'write'); COMMIT";

    // The plan names who the fence keeps off, and who no fence stops.
    let (code, stdout, stderr) = s.run_with(&["plan"], &env, &secrets);
    assert_eq!(code, 0, "{stderr}");
    let fenced = stdout
        .lines()
        .find(|l| l.contains("fenced (CONNECT taken away"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(fenced.contains("nightly") && fenced.contains("shop"), "{fenced}");
    assert!(
        stdout.contains(
            "no fence keeps these off the source for sure (name them in your checks): auditor (a superuser"
        ),
        "{stdout}"
    );

    // verify-data has passed and the application is repointed: a write on
    // the source now would be lost.
    let (code, stdout, stderr) = s.run_with(&["run", "--yes", "--until", "repoint:shop"], &env, &secrets);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // The application's own login, asking for a read-write transaction,
    // and a writer the plan does not know: the source does not let them in.
    for (user, pw) in [("shop", "shop-secret-7"), ("nightly", "nightly-secret-3")] {
        let refused = crate::support::psql(&as_role(user, pw), insert).unwrap_err();
        assert!(
            refused.contains("permission denied for database \"app\""),
            "{user}: {refused}"
        );
    }
    // cutover's own superuser is beyond any fence: its late write is caught.
    q(&s.pair.source, insert);
    let (code, stdout, stderr) = s.run_with(&["run", "--yes", "--output", "json"], &env, &secrets);
    assert_eq!(code, 3, "{stdout}{stderr}");
    let failed = crate::support::stage_failed(&stdout);
    assert_eq!(failed["stage"], "verify-sync", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("the source took writes after the fence went up")
            && error.contains("public.protection_settings: 1 row(s) written")
            && error.contains("nothing was retired"),
        "{error}"
    );
    // The proof through shop's own login was made before that.
    assert!(
        stdout.contains("consumer shop logging in on the source as shop: refused by the source")
            && stdout.contains("42501"),
        "{stdout}"
    );
    // Not retired.
    assert_eq!(
        s.pair
            .source
            .sql(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname = 'app'"
            )
            .unwrap(),
        "1"
    );
    let (code, stdout, stderr) = s.run_with(&["rollback", "--yes"], &env, &secrets);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(crate::support::access(&s.pair.source), access_before);
    crate::support::psql(
        &as_role("shop", "shop-secret-7"),
        "BEGIN READ WRITE; INSERT INTO protection_settings VALUES ('after', 'rollback'); COMMIT",
    )
    .unwrap();
}

/// A CONNECT grant given WITH GRANT OPTION cannot be taken back alone:
/// the freeze refuses, naming the role and the fix, with nothing changed;
/// a role renamed while the fence stands gets its CONNECT back under its
/// new name.
#[test]
fn the_fence_refuses_a_grant_option_and_survives_a_rename() {
    let s = Scenario::seed();
    s.pair
        .target
        .sql("postgres", "CREATE ROLE delegate LOGIN")
        .unwrap();
    q(
        &s.pair.source,
        "CREATE ROLE delegate LOGIN; GRANT CONNECT ON DATABASE app TO delegate WITH GRANT OPTION",
    );
    let before = crate::support::access(&s.pair.source);
    let (code, stdout, stderr) = s.run(&["run", "--yes", "--until", "freeze-source"]);
    assert_eq!(code, 5, "{stdout}{stderr}");
    assert!(
        stderr.contains("would take CONNECT from delegate, which may grant it on (WITH GRANT OPTION)")
            && stderr.contains("REVOKE GRANT OPTION FOR CONNECT"),
        "{stderr}"
    );
    assert_eq!(crate::support::access(&s.pair.source), before);
    // Without the grant option: fenced, renamed meanwhile, lifted exactly.
    q(
        &s.pair.source,
        "REVOKE GRANT OPTION FOR CONNECT ON DATABASE app FROM delegate",
    );
    let before = crate::support::access(&s.pair.source);
    let (code, stdout, stderr) = s.run(&["run", "--yes", "--until", "freeze-source"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        q(
            &s.pair.source,
            "SELECT has_database_privilege('delegate', 'app', 'CONNECT')"
        ),
        "f"
    );
    // (a role is renamed on both servers: the plan needs it on the target)
    q(
        &s.pair.source,
        "SET default_transaction_read_only = off; ALTER ROLE delegate RENAME TO deputy",
    );
    s.pair
        .target
        .sql("postgres", "ALTER ROLE delegate RENAME TO deputy")
        .unwrap();
    let (code, stdout, stderr) = s.run(&["rollback", "--yes"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        crate::support::access(&s.pair.source),
        before.replace("delegate", "deputy")
    );
}

/// An extension's own objects stay as CREATE EXTENSION makes them: PostGIS
/// in a schema of its own keeps spatial_ref_sys's primary key. The rows an
/// operator added to its configuration table (a custom SRID, referenced by
/// a foreign key of the application's) are carried as pg_dump carries them,
/// and verify-data proves them; a row added later is named by verify.
#[test]
fn an_extensions_own_table_keeps_its_key_and_its_added_rows_are_carried() {
    let pair = PgPair::start().unwrap();
    for server in [&pair.source, &pair.target] {
        server.create_database("app").unwrap();
    }
    let installed = pair.source.sql(
        "app",
        "CREATE SCHEMA extensions; CREATE EXTENSION postgis SCHEMA extensions",
    );
    assert!(
        installed.is_ok(),
        "PostGIS is missing (Debian: apt-get install postgresql-15-postgis-3; bash tests/prepare.sh installs it): {installed:?}"
    );
    q(
        &pair.source,
        "INSERT INTO extensions.spatial_ref_sys (srid, auth_name, auth_srid, srtext, proj4text) \
         VALUES (990001, 'local', 990001, '', '+proj=longlat +datum=WGS84'); \
         CREATE TABLE places (id int PRIMARY KEY, geom extensions.geometry(Point, 4326), \
                              local_srid int REFERENCES extensions.spatial_ref_sys (srid)); \
         INSERT INTO places SELECT i, extensions.ST_SetSRID(extensions.ST_MakePoint(i, i), 4326), 990001 \
         FROM generate_series(1, 10) i",
    );
    let s = Scenario::with(pair, "");
    let (code, stdout, stderr) = s.run(&["run", "--yes", "--until", "verify-data"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        q(
            &s.pair.target,
            "SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint \
             WHERE conrelid = 'extensions.spatial_ref_sys'::regclass"
        ),
        "spatial_ref_sys_pkey,spatial_ref_sys_srid_check"
    );
    // The extension's own rows once (not twice), the operator's row carried.
    let rows =
        "SELECT count(*) FILTER (WHERE srid = 990001) || ' ' || count(*) FROM extensions.spatial_ref_sys";
    assert_eq!(q(&s.pair.target, rows), q(&s.pair.source, rows));
    assert!(
        q(&s.pair.target, rows).starts_with("1 "),
        "{}",
        q(&s.pair.target, rows)
    );
    assert_eq!(
        q(
            &s.pair.target,
            "SELECT count(*) FROM places WHERE local_srid = 990001"
        ),
        "10"
    );
    q(
        &s.pair.source,
        "SET default_transaction_read_only = off; \
         INSERT INTO extensions.spatial_ref_sys (srid, auth_name, auth_srid, srtext, proj4text) \
         VALUES (990002, 'local', 990002, '', '+proj=longlat +datum=WGS84')",
    );
    let (code, stdout, _) = s.run(&["verify"]);
    assert_eq!(code, 3, "{stdout}");
    assert!(
        stdout.contains(
            "the rows of extension configuration table extensions.spatial_ref_sys that pg_dump dumps (2 row(s) on \
             the source, 1 on the target"
        ),
        "{stdout}"
    );
}
