//! `cutover demo`: the seed's story on two throwaway local PostgreSQL servers.
//!
//! Starts two servers from the installed PostgreSQL binaries, loads the seed
//! scenario (the live "local" source with 22 users, the stale "external"
//! target with 1), writes four consumers like the seed's (production env and
//! backup script on the source, staging env and dashboard config on the
//! target), then runs the real commands on them: doctor (the split brain),
//! plan, run (repointing the consumers, proving the sync, quarantining the
//! source), verify, doctor again and the report. Everything is removed at
//! the end unless `--keep` is given.

use clap::Args;
use cutover_testkit::{Backend, Fixture, PgPair, PgServer, SEED_DB};

use crate::args::GlobalArgs;
use crate::exit::Code;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Leave the two servers running at the end and print how to connect.
    #[arg(long)]
    pub keep: bool,
}

pub(crate) fn run(_global: &GlobalArgs, args: DemoArgs) -> anyhow::Result<Code> {
    println!(
        "Starting two throwaway PostgreSQL servers (source = the seed's \"local\", target = \"external\")..."
    );
    let pair = PgPair::start_on(Backend::Local)?;
    pair.source.load_fixture(SEED_DB, Fixture::SeedSource)?;
    pair.target.load_fixture(SEED_DB, Fixture::SeedTarget)?;
    println!();
    describe("source (local)", &pair.source)?;
    describe("target (external)", &pair.target)?;
    let only_source = pair.source.sql(
        SEED_DB,
        "SELECT string_agg(table_name, ', ' ORDER BY table_name) FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )?;
    let on_target = pair.target.sql(
        SEED_DB,
        "SELECT string_agg(table_name, ',') FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )?;
    let target_tables: Vec<&str> = on_target.split(',').collect();
    let missing: Vec<&str> = only_source
        .split(", ")
        .filter(|t| !target_tables.contains(t))
        .collect();
    println!("tables only on the source: {}", missing.join(", "));
    println!();
    // The rest is the real tool on these servers: a plan file in a private
    // temporary directory (mode 0600, it holds the throwaway passwords).
    let dir = tempfile::Builder::new().prefix("cutover-demo-").tempdir()?;
    let plan = dir.path().join("cutover.toml");
    let (src, tgt) = (&pair.source, &pair.target);
    write_private(
        &dir.path().join("production.env"),
        &format!(
            "# production backend\nPORT=8080\nDATABASE_URL={}\n",
            src.url(SEED_DB)
        ),
    )?;
    write_private(
        &dir.path().join("staging.env"),
        &format!("# staging backend\nDATABASE_URL={}\n", tgt.url(SEED_DB)),
    )?;
    write_private(
        &dir.path().join("dashboard.yml"),
        &format!(
            "# dashboard on :7777\ndashboard:\n  port: 7777\n  database:\n    url: \"{}\"\n",
            tgt.url(SEED_DB)
        ),
    )?;
    write_private(
        &dir.path().join("backup.sh"),
        &format!(
            "#!/bin/sh\n# nightly backup\npg_dump \"host=127.0.0.1 port={} dbname={SEED_DB} user={}\" > app.dump\n",
            src.port(),
            src.user()
        ),
    )?;
    write_private(
        &plan,
        &format!(
            "# Written by `cutover demo`.\n[source]\nurl = \"{}\"\n\n[target]\nurl = \"{}\"\n\n\
             [[consumer]]\nname = \"production\"\nkind = \"env\"\npath = \"production.env\"\nkey = \"DATABASE_URL\"\n\n\
             [[consumer]]\nname = \"staging\"\nkind = \"env\"\npath = \"staging.env\"\nkey = \"DATABASE_URL\"\n\n\
             [[consumer]]\nname = \"dashboard\"\nkind = \"yaml\"\npath = \"dashboard.yml\"\nkey = \"dashboard.database.url\"\n\n\
             [[consumer]]\nname = \"backups\"\nkind = \"text\"\npath = \"backup.sh\"\n\n\
             [decommission]\ndriver = \"postgres\"\n",
            src.url(SEED_DB),
            tgt.url(SEED_DB)
        ),
    )?;
    // (title, arguments, the exit codes that are the expected outcome)
    let steps: [(&str, &[&str], &[i32]); 8] = [
        (
            "doctor: which database each application really uses",
            &["doctor"],
            &[3],
        ),
        ("inspect: both databases side by side", &["inspect"], &[0]),
        (
            "plan: what the cutover will do (nothing is changed yet)",
            &["plan"],
            &[0],
        ),
        (
            "run --until verify-sync: back up, freeze, clear, copy, verify, repoint, prove the sync",
            &["run", "--yes", "--until", "verify-sync"],
            &[0],
        ),
        ("verify: the proof, table by table", &["verify"], &[0]),
        (
            "run: resume, and quarantine the source now that nothing uses it",
            &["run", "--yes"],
            &[0],
        ),
        ("doctor: every application on one database", &["doctor"], &[0]),
        ("report: the record of what was done", &["report"], &[0]),
    ];
    for (title, step, expected) in steps {
        println!("=== cutover {title}");
        let status = std::process::Command::new(std::env::current_exe()?)
            .arg("--plan")
            .arg(&plan)
            .args(step)
            .current_dir(dir.path())
            .status()?;
        println!();
        if !status.code().is_some_and(|c| expected.contains(&c)) {
            anyhow::bail!(
                "the demo's `cutover {}` failed ({status}); the output above says why",
                step.join(" ")
            );
        }
    }
    if args.keep {
        keep(pair)?;
    } else {
        drop(pair);
        println!("Both servers stopped and removed.");
    }
    Ok(Code::Success)
}

fn describe(label: &str, server: &PgServer) -> anyhow::Result<()> {
    let summary = server.sql(
        SEED_DB,
        "SELECT (SELECT system_identifier FROM pg_control_system()), \
                (SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'), \
                (SELECT count(*) FROM users)",
    )?;
    let f: Vec<&str> = summary.split('\t').collect();
    println!(
        "{label:<18} 127.0.0.1:{:<5}  database {SEED_DB}  system id {}  {} tables  {} users",
        server.port(),
        f[0],
        f[1],
        f[2]
    );
    Ok(())
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Leaves the servers running: their directories stay, and a password file
/// (mode 0600) lets psql connect without the password ever being printed.
fn keep(pair: PgPair) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir().join(format!("cutover-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pgpass = dir.join("pgpass");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&pgpass)?;
    for server in [&pair.source, &pair.target] {
        writeln!(
            file,
            "127.0.0.1:{}:*:{}:{}",
            server.port(),
            server.user(),
            server.password()
        )?;
    }
    println!("The servers keep running. Connect with:");
    for (label, server) in [("source", &pair.source), ("target", &pair.target)] {
        println!(
            "  {label}: PGPASSFILE={} psql '{}'",
            pgpass.display(),
            server.url_without_password(SEED_DB)
        );
    }
    println!("Stop them with: pkill -f cutover-testkit-");
    // Forgetting the pair skips its Drop: the servers and their files stay.
    std::mem::forget(pair);
    Ok(())
}
