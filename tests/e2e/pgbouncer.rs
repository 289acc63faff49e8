//! A PgBouncer `[databases]` entry as a consumer, with a real PgBouncer: the
//! applications behind it keep their connections through the switch (and
//! through the rollback) and see a pause, not errors; a PAUSE that cannot
//! finish is abandoned, the applications resumed and nothing changed.

use std::time::Duration;

use cutover_testkit::{PgBouncer, PgPair, PgServer};

use crate::support::{Scenario, Watch};

/// The entry as a deployment writes it: the server login in the entry.
fn entry(server: &PgServer) -> String {
    format!(
        "host=127.0.0.1 port={} dbname=app user={} password={} pool_size=5",
        server.port(),
        server.user(),
        server.password()
    )
}

fn plan(bouncer: &PgBouncer, pause_timeout: u64) -> String {
    format!(
        "\n[[consumer]]\nname = \"bouncer\"\nkind = \"pgbouncer\"\npath = \"{}\"\nkey = \"app\"\n\
         admin_url_env = \"BOUNCER_ADMIN_URL\"\npause_timeout = {pause_timeout}\n",
        bouncer.ini().display()
    )
}

/// The servers' passwords and the admin console's (given in the
/// environment) in no output.
fn cutover(s: &Scenario, bouncer: &PgBouncer, args: &[&str]) -> (i32, String, String) {
    s.run_with(
        args,
        &[("BOUNCER_ADMIN_URL", bouncer.admin_url())],
        &[bouncer.admin_password()],
    )
}

/// An application on one connection through PgBouncer, asking ten times a
/// second which server answers.
struct App(Watch);

impl App {
    fn start(bouncer: &PgBouncer) -> App {
        App(Watch::start(
            &bouncer.url("app"),
            "SELECT 'on ' || inet_server_port() || ' users ' || count(*) FROM users",
            "0.1",
        ))
    }

    /// Stops it: the ports it saw in order (deduplicated) and its errors.
    fn stop(self) -> (Vec<u16>, String) {
        let (out, err) = self.0.stop();
        let mut ports: Vec<u16> = vec![];
        for l in out.lines() {
            if let Some(p) = l.strip_prefix("on ").and_then(|r| r.split(' ').next()) {
                let p: u16 = p.parse().unwrap();
                if ports.last() != Some(&p) {
                    ports.push(p);
                }
            }
        }
        (ports, err)
    }
}

#[test]
fn a_pgbouncer_entry_switches_with_a_pause_and_the_applications_see_no_error() {
    let pair = PgPair::seed().unwrap();
    let bouncer = PgBouncer::start(&[("app", entry(&pair.source))], "transaction").unwrap();
    let s = Scenario::with(pair, &plan(&bouncer, 5));
    let (src, tgt) = (s.pair.source.port(), s.pair.target.port());
    let before = std::fs::read(bouncer.ini()).unwrap();
    let app = App::start(&bouncer);
    std::thread::sleep(Duration::from_millis(500));

    // The plan shows the entry's change, its password hidden.
    let (code, stdout, stderr) = cutover(&s, &bouncer, &["plan"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("[databases] app in") && stdout.contains("(pgbouncer)"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("port={tgt}")), "{stdout}");

    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes", "--output", "json"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}\n{}", bouncer.log());
    std::thread::sleep(Duration::from_millis(500));

    // PgBouncer now sends the database to the target, unpaused.
    let shown = bouncer.admin("SHOW DATABASES").unwrap();
    let row = shown.lines().find(|l| l.starts_with("app|")).unwrap().to_string();
    assert!(row.contains(&format!("|{tgt}|app|")), "{row}");
    let repoint = s.artefacts("repoint:bouncer");
    assert_eq!(repoint["changed"], true, "{repoint}");
    let pause = repoint["pause_millis"].as_u64().expect("the pause is recorded");
    assert!(pause < 5000, "{pause} ms");
    // The file is the one PgBouncer would have been given for the target:
    // only the port and the password changed, PgBouncer's own keys kept.
    let after = std::fs::read_to_string(bouncer.ini()).unwrap();
    let expected = String::from_utf8(before.clone())
        .unwrap()
        .replace(&entry(&s.pair.source), &entry(&s.pair.target));
    assert_eq!(after, expected);
    // verify-sync read the sentinel through the entry's connection.
    assert_eq!(s.sync_proof("bouncer")["sees_sentinel"], true);

    // Rollback switches it back the same way, byte for byte.
    let (code, _, stderr) = cutover(&s, &bouncer, &["rollback", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read(bouncer.ini()).unwrap(), before);
    let shown = bouncer.admin("SHOW DATABASES").unwrap();
    assert!(shown.contains(&format!("app|127.0.0.1|{src}|app|")), "{shown}");

    // One connection all along: source, then target, then source again.
    let (ports, errors) = app.stop();
    assert_eq!(ports, [src, tgt, src], "{errors}");
    assert!(
        !errors.contains("ERROR") && !errors.contains("closed"),
        "{errors}"
    );
}

#[test]
fn a_pause_that_cannot_finish_is_abandoned_and_nothing_changes() {
    let pair = PgPair::seed().unwrap();
    // Session pooling: a connected client keeps its server connection, so
    // PAUSE waits for it to leave.
    let bouncer = PgBouncer::start(&[("app", entry(&pair.source))], "session").unwrap();
    // Not frozen: the freeze would end the session PgBouncer holds for it.
    let s = Scenario::with(
        pair,
        &format!("\n[options]\nfreeze_source = false\n{}", plan(&bouncer, 2)),
    );
    let before = std::fs::read(bouncer.ini()).unwrap();
    let app = App::start(&bouncer);
    std::thread::sleep(Duration::from_millis(500));

    let (code, stdout, stderr) = cutover(&s, &bouncer, &["run", "--yes", "--output", "json"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let failed = crate::support::stage_failed(&stdout);
    assert_eq!(failed["stage"], "repoint:bouncer", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("did not finish `PAUSE app` within 2 s") && error.contains("nothing was changed"),
        "{error}"
    );
    assert!(
        failed["hint"].as_str().unwrap().contains("pause_timeout"),
        "{failed}"
    );
    // Unchanged and not paused; the application still answers on the source.
    assert_eq!(std::fs::read(bouncer.ini()).unwrap(), before);
    let shown = bouncer.admin("SHOW DATABASES").unwrap();
    let row = shown.lines().find(|l| l.starts_with("app|")).unwrap().to_string();
    let cols: Vec<&str> = row.split('|').collect();
    assert_eq!(cols[cols.len() - 2], "0", "still paused: {row}");
    std::thread::sleep(Duration::from_millis(500));
    let (ports, errors) = app.stop();
    assert_eq!(ports, [s.pair.source.port()], "{errors}");
    assert!(!errors.contains("ERROR"), "{errors}");
    // The run rolls back cleanly.
    let (code, _, stderr) = cutover(&s, &bouncer, &["rollback", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
}
