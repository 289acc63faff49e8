//! Bad input, table-driven: each case breaks one thing (plan file, URL,
//! server, privilege, tool, consumer, command line), runs a command, and must
//! get its documented exit code, a message naming the problem and the fix,
//! and leave both databases and every consumer file exactly as they were
//! (hashed before and after; the journal schema aside, which only records).

use std::collections::BTreeMap;
use std::path::Path;

use crate::support::{Scenario, output};

struct Case {
    name: &'static str,
    /// Changes the scenario (plan, files, servers); returns extra environment.
    setup: fn(&Scenario) -> Vec<(String, String)>,
    args: &'static [&'static str],
    code: i32,
    /// Every one of these must appear in stderr.
    says: &'static [&'static str],
}

fn plan(s: &Scenario, extra: &str) {
    s.write_plan(&s.pair.source.url("app"), &s.pair.target.url("app"), extra);
}

fn raw_plan(s: &Scenario, text: &str) {
    std::fs::write(s.plan_path(), text).unwrap();
}

fn env_consumer(s: &Scenario, file: &str, key: &str) {
    plan(
        s,
        &format!("\n[[consumer]]\nname = \"api\"\nkind = \"env\"\npath = \"{file}\"\nkey = \"{key}\"\n"),
    );
}

const NONE: fn(&Scenario) -> Vec<(String, String)> = |_| vec![];

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "malformed TOML",
            setup: |s| {
                raw_plan(s, "[source\nurl = \"x\"\n");
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["line 1"],
        },
        Case {
            name: "unknown key",
            setup: |s| {
                plan(s, "[options]\njbos = 2\n");
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["unknown field `jbos`", "jobs"],
        },
        Case {
            name: "missing target",
            setup: |s| {
                raw_plan(s, &format!("[source]\nurl = \"{}\"\n", s.pair.source.url("app")));
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["missing field `target`"],
        },
        Case {
            name: "max_pause -1",
            setup: |s| {
                plan(
                    s,
                    "[options]\nmode = \"online\"\n[options.online]\nmax_pause = -1.0\n",
                );
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["options.online.max_pause", "above 0 and at most 3600"],
        },
        Case {
            name: "max_pause 0",
            setup: |s| {
                plan(
                    s,
                    "[options]\nmode = \"online\"\n[options.online]\nmax_pause = 0\n",
                );
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["options.online.max_pause", "above 0 and at most 3600"],
        },
        Case {
            name: "max_pause nan",
            setup: |s| {
                plan(
                    s,
                    "[options]\nmode = \"online\"\n[options.online]\nmax_pause = nan\n",
                );
                vec![]
            },
            args: &["run", "--yes"],
            code: 2,
            says: &["options.online.max_pause", "above 0 and at most 3600"],
        },
        Case {
            name: "max_pause inf",
            setup: |s| {
                plan(
                    s,
                    "[options]\nmode = \"online\"\n[options.online]\nmax_pause = inf\n",
                );
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["options.online.max_pause", "above 0 and at most 3600"],
        },
        Case {
            name: "max_pause a string",
            setup: |s| {
                plan(
                    s,
                    "[options]\nmode = \"online\"\n[options.online]\nmax_pause = \"5\"\n",
                );
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["options.online.max_pause", "without quotes"],
        },
        Case {
            name: "fence neither a word nor roles",
            setup: |s| {
                plan(s, "[options]\nfence = \"everyone\"\n");
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["options.fence", "\"consumers\""],
        },
        Case {
            name: "fence naming a role the source lacks",
            setup: |s| {
                plan(s, "[options]\nfence = [\"no_such_role\"]\n");
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["options.fence names no_such_role", "fence = \"all\""],
        },
        Case {
            name: "wrong type",
            setup: |s| {
                plan(s, "[options]\nfreeze_source = \"yes\"\n");
                vec![]
            },
            args: &["run", "--yes"],
            code: 2,
            says: &["line 7, column 17", "invalid type", "expected a boolean"],
        },
        Case {
            name: "bad journal schema name",
            setup: |s| {
                plan(s, "[options]\njournal_schema = \"My Journal\"\n");
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["journal_schema", "lower-case"],
        },
        Case {
            name: "plan file missing",
            setup: |s| {
                std::fs::remove_file(s.plan_path()).unwrap();
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["cannot read the plan file", "cutover init"],
        },
        Case {
            name: "not a PostgreSQL URL",
            setup: |s| {
                s.write_plan("mysql://u:topsecret@h/db", &s.pair.target.url("app"), "");
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["postgresql://"],
        },
        Case {
            name: "URL without a database",
            setup: |s| {
                let url = s.pair.source.url("app").trim_end_matches("/app").to_string();
                s.write_plan(&url, &s.pair.target.url("app"), "");
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["names no database"],
        },
        Case {
            name: "url_env not set",
            setup: |s| {
                raw_plan(
                    s,
                    &format!(
                        "[source]\nurl_env = \"NO_SUCH_VARIABLE_FOR_CUTOVER\"\n[target]\nurl = \"{}\"\n",
                        s.pair.target.url("app")
                    ),
                );
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["NO_SUCH_VARIABLE_FOR_CUTOVER"],
        },
        Case {
            name: "unreachable server",
            setup: |s| {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                s.write_plan(
                    &format!("postgresql://u:p@127.0.0.1:{port}/app"),
                    &s.pair.target.url("app"),
                    "",
                );
                vec![]
            },
            args: &["plan"],
            code: 1,
            says: &["cannot connect to the source", "is the server running"],
        },
        Case {
            name: "wrong password",
            setup: |s| {
                let url = s
                    .pair
                    .target
                    .url("app")
                    .replace(s.pair.target.password(), "not-the-password");
                s.write_plan(&s.pair.source.url("app"), &url, "");
                vec![]
            },
            args: &["run", "--yes"],
            code: 1,
            says: &[
                "cannot connect to the target",
                "password authentication failed",
                "check the password",
            ],
        },
        Case {
            name: "missing database",
            setup: |s| {
                s.write_plan(&s.pair.source.url("nosuchdb"), &s.pair.target.url("app"), "");
                vec![]
            },
            args: &["plan"],
            code: 1,
            says: &[
                "does not exist",
                "SQLSTATE 3D000",
                "hint: check the database name",
            ],
        },
        Case {
            name: "the same database under two spellings",
            setup: |s| {
                let url = s.pair.source.url("app");
                s.write_plan(&url, &url.replace("127.0.0.1", "localhost"), "");
                vec![]
            },
            args: &["run", "--yes"],
            code: 5,
            says: &["are the same database"],
        },
        Case {
            name: "target holding what the source lacks (swapped plan)",
            setup: |s| {
                s.write_plan(&s.pair.target.url("app"), &s.pair.source.url("app"), "");
                vec![]
            },
            args: &["run", "--yes"],
            code: 5,
            says: &["looks like the live database", "--allow-target-ahead"],
        },
        Case {
            name: "no confirmation without a terminal",
            setup: |s| {
                plan(s, "");
                vec![]
            },
            args: &["run"],
            code: 5,
            says: &["pass --yes"],
        },
        Case {
            name: "a login without the rights it needs",
            setup: |s| {
                s.pair
                    .target
                    .sql("app", "CREATE ROLE weakling LOGIN PASSWORD 'weak-pw'; REVOKE CREATE ON SCHEMA public FROM PUBLIC")
                    .unwrap();
                let url = format!(
                    "postgresql://weakling:weak-pw@127.0.0.1:{}/app",
                    s.pair.target.port()
                );
                s.write_plan(&s.pair.source.url("app"), &url, "");
                vec![]
            },
            args: &["run", "--yes"],
            code: 1,
            says: &[
                "inspecting the target",
                "permission denied",
                "owner of the database or a superuser",
            ],
        },
        Case {
            name: "pg_dump not found",
            setup: |s| {
                plan(s, "");
                let empty = s.dir.path().join("no-tools");
                std::fs::create_dir_all(&empty).unwrap();
                vec![("CUTOVER_PG_BINDIR".into(), empty.display().to_string())]
            },
            args: &["run", "--yes"],
            code: 1,
            says: &[
                "no pg_dump of PostgreSQL 15 or newer, which the source (PostgreSQL 15) needs: none found",
                "CUTOVER_PG_BINDIR=",
                "no-tools",
                "hint: install the PostgreSQL 15 client tools",
            ],
        },
        Case {
            name: "run directory not writable",
            setup: |s| {
                plan(s, "[options]\nrun_dir = \"/proc/cutover-cannot-write-here\"\n");
                vec![]
            },
            args: &["run", "--yes"],
            code: 1,
            says: &["/proc/cutover-cannot-write-here"],
        },
        Case {
            name: "consumer file missing",
            setup: |s| {
                env_consumer(s, "missing.env", "DATABASE_URL");
                vec![]
            },
            args: &["run", "--yes"],
            code: 2,
            says: &["consumer api", "cannot read", "missing.env", "fix `path`"],
        },
        Case {
            name: "consumer key absent",
            setup: |s| {
                std::fs::write(
                    s.dir.path().join("api.env"),
                    format!("DB={}\n", s.pair.source.url("app")),
                )
                .unwrap();
                env_consumer(s, "api.env", "DATABASE_URL");
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["consumer api", "DATABASE_URL is not set", "fix `key`"],
        },
        Case {
            name: "consumer key set twice",
            setup: |s| {
                let u = s.pair.source.url("app");
                std::fs::write(
                    s.dir.path().join("api.env"),
                    format!("DATABASE_URL={u}\nDATABASE_URL={u}\n"),
                )
                .unwrap();
                env_consumer(s, "api.env", "DATABASE_URL");
                vec![]
            },
            args: &["run", "--yes"],
            code: 2,
            says: &["consumer api", "set 2 times", "remove all but one"],
        },
        Case {
            name: "YAML path absent",
            setup: |s| {
                std::fs::write(
                    s.dir.path().join("compose.yml"),
                    "services:\n  web:\n    image: x\n",
                )
                .unwrap();
                plan(
                    s,
                    "\n[[consumer]]\nname = \"dash\"\nkind = \"yaml\"\npath = \"compose.yml\"\nkey = \"services.web.environment.DATABASE_URL\"\n",
                );
                vec![]
            },
            args: &["run", "--yes"],
            code: 2,
            says: &[
                "consumer dash",
                "services.web.environment.DATABASE_URL is not set",
            ],
        },
        Case {
            name: "YAML that does not parse",
            setup: |s| {
                std::fs::write(s.dir.path().join("compose.yml"), "services: [unclosed\n").unwrap();
                plan(
                    s,
                    "\n[[consumer]]\nname = \"dash\"\nkind = \"yaml\"\npath = \"compose.yml\"\nkey = \"a.b\"\n",
                );
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["consumer dash", "not valid YAML"],
        },
        Case {
            name: "consumer value that is not a connection",
            setup: |s| {
                std::fs::write(s.dir.path().join("api.env"), "DATABASE_URL=hello world\n").unwrap();
                env_consumer(s, "api.env", "DATABASE_URL");
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["consumer api", "is not a PostgreSQL connection"],
        },
        Case {
            name: "consumer pointing at a third database",
            setup: |s| {
                std::fs::write(
                    s.dir.path().join("api.env"),
                    "DATABASE_URL=postgresql://u@elsewhere.invalid:5432/other\n",
                )
                .unwrap();
                env_consumer(s, "api.env", "DATABASE_URL");
                vec![]
            },
            args: &["run", "--yes"],
            code: 2,
            says: &["consumer api", "neither the source nor the target", "aliases"],
        },
        Case {
            name: "reload command that does not exist",
            setup: |s| {
                std::fs::write(
                    s.dir.path().join("api.env"),
                    format!("DATABASE_URL={}\n", s.pair.source.url("app")),
                )
                .unwrap();
                plan(
                    s,
                    "\n[[consumer]]\nname = \"api\"\nkind = \"env\"\npath = \"api.env\"\nkey = \"DATABASE_URL\"\nreload = \"no-such-reload-tool --now\"\n",
                );
                vec![]
            },
            args: &["run", "--yes"],
            code: 2,
            says: &["consumer api", "no-such-reload-tool", "cannot be found"],
        },
        Case {
            name: "target_url_env not set",
            setup: |s| {
                std::fs::write(
                    s.dir.path().join("api.env"),
                    format!("DATABASE_URL={}\n", s.pair.source.url("app")),
                )
                .unwrap();
                plan(
                    s,
                    "\n[[consumer]]\nname = \"api\"\nkind = \"env\"\npath = \"api.env\"\nkey = \"DATABASE_URL\"\ntarget_url_env = \"NO_SUCH_APP_URL\"\n",
                );
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["consumer api", "NO_SUCH_APP_URL"],
        },
        Case {
            name: "consumer name with a slash",
            setup: |s| {
                plan(
                    s,
                    "\n[[consumer]]\nname = \"a/b\"\nkind = \"text\"\npath = \"x\"\n",
                );
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["name \"a/b\""],
        },
        Case {
            name: "decommission without consumers",
            setup: |s| {
                plan(s, "\n[decommission]\ndriver = \"postgres\"\n");
                vec![]
            },
            args: &["run", "--yes"],
            code: 2,
            says: &["needs the [[consumer]] entries"],
        },
        Case {
            name: "docker decommission without a container",
            setup: |s| {
                plan(s, "\n[decommission]\ndriver = \"docker\"\n");
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["needs `container`"],
        },
        Case {
            name: "health_expect without health_url",
            setup: |s| {
                plan(
                    s,
                    "\n[[consumer]]\nname = \"a\"\nkind = \"text\"\npath = \"x\"\nhealth_expect = \"ok\"\n",
                );
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["health_expect needs health_url"],
        },
        Case {
            name: "malformed alias",
            setup: |s| {
                std::fs::write(
                    s.dir.path().join("api.env"),
                    format!("DATABASE_URL={}\n", s.pair.source.url("app")),
                )
                .unwrap();
                raw_plan(
                    s,
                    &format!(
                        "[source]\nurl = \"{}\"\naliases = [\"db:notaport\"]\n[target]\nurl = \"{}\"\n\n[[consumer]]\nname = \"api\"\nkind = \"env\"\npath = \"api.env\"\nkey = \"DATABASE_URL\"\n",
                        s.pair.source.url("app"),
                        s.pair.target.url("app")
                    ),
                );
                vec![]
            },
            args: &["plan"],
            code: 2,
            says: &["aliases", "db:notaport", "host:port"],
        },
        Case {
            name: "unknown stage for --until",
            setup: |s| {
                plan(s, "");
                vec![]
            },
            args: &["run", "--yes", "--until", "cpy"],
            code: 2,
            says: &["no stage \"cpy\"", "copy"],
        },
        Case {
            name: "--only with --until",
            setup: NONE,
            args: &["run", "--only", "copy", "--until", "copy"],
            code: 2,
            says: &["cannot be used with"],
        },
        Case {
            name: "rollback with no run",
            setup: |s| {
                plan(s, "");
                vec![]
            },
            args: &["rollback", "--yes"],
            code: 2,
            says: &["nothing to roll back"],
        },
        Case {
            name: "report with no run",
            setup: |s| {
                plan(s, "");
                vec![]
            },
            args: &["report"],
            code: 2,
            says: &["run `cutover run` first"],
        },
        Case {
            name: "doctor without consumers",
            setup: |s| {
                plan(s, "");
                vec![]
            },
            args: &["doctor"],
            code: 2,
            says: &["no [[consumer]] entries"],
        },
        Case {
            name: "init over an existing plan",
            setup: |s| {
                plan(s, "");
                vec![]
            },
            args: &["init"],
            code: 2,
            says: &["already exists", "--force"],
        },
    ]
}

/// Bytes of every consumer-like file in the folder (not the plan, not the run directory).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file() && e.file_name() != "cutover.toml")
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn each_bad_input_is_named_with_its_fix_and_changes_nothing() {
    let s = Scenario::seed();
    let (source_before, target_before) = (s.source_digest(), s.target_digest());
    let all = cases();
    assert!(all.len() >= 30, "{} cases", all.len());
    let mut failures = vec![];
    for case in &all {
        // Each case starts from a plain plan and an empty folder of consumers.
        for (name, _) in files(s.dir.path()) {
            let _ = std::fs::remove_file(s.dir.path().join(name));
        }
        plan(&s, "");
        let env = (case.setup)(&s);
        let files_before = files(s.dir.path());
        let mut cmd = s.cutover(case.args);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let (out, stdout, stderr) = output(&mut cmd);
        let code = out.status.code().unwrap_or(-1);
        let missing: Vec<&&str> = case.says.iter().filter(|w| !stderr.contains(**w)).collect();
        if code != case.code || !missing.is_empty() {
            failures.push(format!(
                "{}: exit {code} (expected {}), missing {missing:?}\n{stdout}{stderr}",
                case.name, case.code
            ));
        }
        for pw in [
            s.pair.source.password(),
            s.pair.target.password(),
            "topsecret",
            "weak-pw",
            "not-the-password",
        ] {
            if stderr.contains(pw) || stdout.contains(pw) {
                failures.push(format!("{}: a password is in the output", case.name));
            }
        }
        if s.source_digest() != source_before || s.target_digest() != target_before {
            failures.push(format!("{}: a database changed", case.name));
        }
        if files(s.dir.path()) != files_before {
            failures.push(format!("{}: a consumer file changed", case.name));
        }
        // A refused run may have recorded itself in the journal (that is all
        // it may change); the next case starts without one.
        s.pair
            .target
            .sql("app", "DROP SCHEMA IF EXISTS cutover CASCADE")
            .unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n\n")
    );
    println!("bad input cases refused as documented: {}", all.len());
}

/// A filesystem mounted for one case (tmpfs), unmounted on drop. These cases
/// need root, as CI has; a failed mount fails the test rather than skip it.
struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(path: &Path, options: &str) -> Mount {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs for this test failed (it needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(path.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Faults of the machine rather than of the plan: a disk too small for the
/// backup, a consumer file on a read-only filesystem, a pg_dump older than
/// the server. Each is named with its fix and changes nothing.
#[test]
fn machine_faults_are_named_and_change_nothing() {
    let s = Scenario::seed();
    let (source_before, target_before) = (s.source_digest(), s.target_digest());
    let d = s.dir.path();

    // 1. 1 MB of disk for the run directory; the target database is larger.
    let small = Mount::tmpfs(&d.join("small-disk"), "size=1m");
    plan(&s, &format!("[options]\nrun_dir = \"{}\"\n", small.0.display()));
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("too little disk space for the backup"),
        "{stderr}"
    );
    drop(small);
    s.pair
        .target
        .sql("app", "DROP SCHEMA IF EXISTS cutover CASCADE")
        .unwrap();

    // 2. The consumer's file on a read-only filesystem (root may write anywhere else).
    let ro_dir = d.join("ro");
    let staging = Mount::tmpfs(&ro_dir, "size=1m");
    std::fs::write(
        ro_dir.join("api.env"),
        format!("DATABASE_URL={}\n", s.pair.source.url("app")),
    )
    .unwrap();
    let remount = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&ro_dir)
        .status()
        .unwrap();
    assert!(remount.success());
    env_consumer(&s, &format!("{}/api.env", ro_dir.display()), "DATABASE_URL");
    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("consumer api") && stderr.contains("not writable"),
        "{stderr}"
    );
    drop(staging);

    // 3. A pg_dump older than the server.
    let old = d.join("old-tools");
    std::fs::create_dir_all(&old).unwrap();
    for tool in ["pg_dump", "pg_restore"] {
        let p = old.join(tool);
        std::fs::write(&p, "#!/bin/sh\necho \"$(basename $0) (PostgreSQL) 12.22\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    plan(&s, "");
    let mut cmd = s.cutover(&["run", "--yes"]);
    cmd.env("CUTOVER_PG_BINDIR", &old);
    let (out, _, stderr) = output(&mut cmd);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no pg_dump of PostgreSQL 15 or newer") && stderr.contains("old-tools/pg_dump (12)"),
        "{stderr}"
    );
    s.pair
        .target
        .sql("app", "DROP SCHEMA IF EXISTS cutover CASCADE")
        .unwrap();

    assert_eq!(s.source_digest(), source_before);
    assert_eq!(s.target_digest(), target_before);
}
