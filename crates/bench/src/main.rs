//! cutover's benchmark: the same dataset copied into a fresh empty database
//! by `pg_dump | psql`, `pg_dump -Fd -j` + `pg_restore -j`, `pgcopydb clone`
//! (when installed) and cutover's copy stage, in alternating order, on two
//! local servers with PostgreSQL's default durability; then cutover's
//! verify-data over the result. Prints medians, MB/s, ratios and cutover's
//! peak RSS.
//!
//! `cargo run --release -p cutover-bench -- --scale 64` (about 1 GB); see
//! docs/performance.md. The binary embeds the cutover CLI (`cutover-bench
//! __cutover …`) so that the copy runs as its own process, measured alone.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use cutover_testkit::{PgServer, pg_bindir};

mod online;

#[derive(Debug, Parser)]
#[command(name = "cutover-bench")]
struct Args {
    /// pgbench scale of the dataset (1 ≈ 34 MB on disk with the extra tables; 32 ≈ 1.1 GB).
    #[arg(long, default_value_t = 32)]
    scale: u32,
    /// Repetitions per tool (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Parallel jobs for every tool.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Also time cutover alone at 2× and 4× the scale (seconds per GB).
    #[arg(long)]
    series: bool,
    /// cutover's options.split_bytes (tables larger than this go as parallel ranges).
    #[arg(long, default_value_t = 1 << 30)]
    split_bytes: u64,
    /// Also the many-tables case: this many small tables (pg_dump | psql vs cutover).
    #[arg(long, default_value_t = 0)]
    many_tables: usize,
    /// Which copies to time, as letters of the table (a, b, c, d); cutover
    /// (d, with its verify e) always runs.
    #[arg(long, default_value = "abcd")]
    tools: String,
    /// cutover's options.row_hash for verify: "auto" or "text" (the slower
    /// text form of every row, to compare).
    #[arg(long, default_value = "auto")]
    row_hash: String,
    /// Instead of the copies: the online case (pgbench writing through
    /// PgBouncer during an online cutover) at --scale and at 4× it.
    #[arg(long)]
    online: bool,
    /// pgbench clients in the online case.
    #[arg(long, default_value_t = 4)]
    online_clients: u32,
    /// The online case at --scale only (a smoke pass).
    #[arg(long)]
    online_one_size: bool,
}

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let program = args.next();
    let rest: Vec<_> = args.collect();
    if rest.first().is_some_and(|a| a == "__cutover") {
        return cutover_cli::main_from(program.into_iter().chain(rest.into_iter().skip(1)));
    }
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cutover-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Two durable servers, a password file for the PostgreSQL tools, a scratch folder.
struct Bench {
    source: PgServer,
    target: PgServer,
    dir: tempfile::TempDir,
    pgpass: PathBuf,
    jobs: usize,
    split_bytes: u64,
    row_hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    DumpPsql,
    DumpRestoreJobs,
    Pgcopydb,
    Cutover,
}

impl Tool {
    fn label(self, jobs: usize) -> String {
        match self {
            Tool::DumpPsql => "a. pg_dump | psql".into(),
            Tool::DumpRestoreJobs => format!("b. pg_dump -Fd -j{jobs} + pg_restore -j{jobs}"),
            Tool::Pgcopydb => format!("c. pgcopydb clone (-j{jobs})"),
            Tool::Cutover => format!("d. cutover copy (jobs {jobs})"),
        }
    }
}

/// One timed run: seconds, and peak RSS in MB for cutover.
struct Timing {
    seconds: f64,
    rss_mb: Option<f64>,
}

fn run(args: Args) -> Result<()> {
    println!("Starting two local PostgreSQL servers with default durability (fsync on)...");
    // The online case needs logical WAL (PostgreSQL's default is replica,
    // which the copies are timed with).
    let opts = cutover_testkit::ServerOptions {
        wal_level: args.online.then(|| "logical".to_string()),
        ..Default::default()
    };
    let source = PgServer::start_durable_with(&opts)?;
    let target = PgServer::start_durable_with(&opts)?;
    let dir = tempfile::Builder::new().prefix("cutover-bench-").tempdir()?;
    let pgpass = dir.path().join("pgpass");
    std::fs::write(
        &pgpass,
        format!(
            "127.0.0.1:{}:*:{}:{}\n127.0.0.1:{}:*:{}:{}\n",
            source.port(),
            source.user(),
            source.password(),
            target.port(),
            target.user(),
            target.password()
        ),
    )?;
    set_mode(&pgpass, 0o600)?;
    let bench = Bench {
        source,
        target,
        dir,
        pgpass,
        jobs: args.jobs,
        split_bytes: args.split_bytes,
        row_hash: args.row_hash.clone(),
    };
    if args.online {
        let scales = if args.online_one_size {
            vec![args.scale]
        } else {
            vec![args.scale, args.scale * 4]
        };
        return online::run(&bench, &scales, args.online_clients);
    }
    let pgcopydb = which("pgcopydb");
    if pgcopydb.is_none() {
        println!("note: pgcopydb is not installed (Debian: apt-get install pgcopydb); its column is skipped");
    }

    let db = "bench";
    let bytes = bench.generate(db, args.scale)?;
    let mb = bytes as f64 / 1e6;
    println!(
        "dataset: pgbench scale {} plus docs and events tables with secondary indexes: {:.0} MB on disk\n",
        args.scale, mb
    );
    let mut tools = vec![];
    if args.tools.contains('a') {
        tools.push(Tool::DumpPsql);
    }
    if args.tools.contains('b') {
        tools.push(Tool::DumpRestoreJobs);
    }
    if pgcopydb.is_some() && args.tools.contains('c') {
        tools.push(Tool::Pgcopydb);
    }
    tools.push(Tool::Cutover);
    let mut times: Vec<(Tool, Vec<f64>)> = tools.iter().map(|t| (*t, vec![])).collect();
    let mut verify_times = vec![];
    let mut rss: f64 = 0.0;
    for rep in 0..args.reps {
        // Alternate the order: each tool goes first once in a while.
        let mut order = tools.clone();
        order.rotate_left(rep % tools.len());
        for tool in order {
            let target_db = format!("bench_copy_{}", rep);
            let t = bench.time_copy(tool, db, &target_db)?;
            if tool == Tool::Cutover {
                rss = rss.max(t.rss_mb.unwrap_or(0.0));
                let v = bench.time_verify(db, &target_db)?;
                verify_times.push(v.seconds);
                rss = rss.max(v.rss_mb.unwrap_or(0.0));
            }
            println!(
                "  rep {} {:<40} {:>8.1} s",
                rep + 1,
                tool.label(args.jobs),
                t.seconds
            );
            times
                .iter_mut()
                .find(|(x, _)| *x == tool)
                .unwrap()
                .1
                .push(t.seconds);
            bench.target.sql(
                "postgres",
                &format!("DROP DATABASE IF EXISTS {target_db} WITH (FORCE)"),
            )?;
        }
    }
    println!();
    println!("{:<44} {:>10} {:>10}", "tool (median of reps)", "seconds", "MB/s");
    let median_of = |tool: Tool| times.iter().find(|(t, _)| *t == tool).map(|(_, v)| median(v));
    for (tool, v) in &times {
        let m = median(v);
        println!("{:<44} {:>10.2} {:>10.1}", tool.label(args.jobs), m, mb / m);
    }
    let verify = median(&verify_times);
    println!(
        "{:<44} {:>10.2} {:>10.1}",
        "e. cutover verify-data",
        verify,
        mb / verify
    );
    let d = median_of(Tool::Cutover).unwrap_or(f64::NAN);
    println!();
    println!("d/a = {:.2}", d / median_of(Tool::DumpPsql).unwrap_or(f64::NAN));
    println!(
        "d/b = {:.2}",
        d / median_of(Tool::DumpRestoreJobs).unwrap_or(f64::NAN)
    );
    match median_of(Tool::Pgcopydb) {
        Some(c) => println!("d/c = {:.2}", d / c),
        None => println!("d/c = (pgcopydb not installed)"),
    }
    println!("e/d = {:.2}", verify / d);
    println!("cutover peak RSS: {rss:.0} MB");
    println!(
        "cutover seconds per GB at scale {}: {:.1}",
        args.scale,
        d / (mb / 1000.0)
    );

    if args.series {
        // The three sizes exist at once and their copies take turns, rep by
        // rep (like the tools above): this machine's speed drifts by ±20 %
        // within minutes, and timing one size after the other measured that
        // drift as much as the scaling.
        let mut sizes = vec![(args.scale, db.to_string(), mb)];
        for factor in [2, 4] {
            let scale = args.scale * factor;
            let name = format!("bench_x{factor}");
            let bytes = bench.generate(&name, scale)?;
            sizes.push((scale, name, bytes as f64 / 1e6));
        }
        let mut secs: Vec<Vec<f64>> = vec![vec![]; sizes.len()];
        let mut peaks: Vec<f64> = vec![0.0; sizes.len()];
        for rep in 0..args.reps {
            let mut order: Vec<usize> = (0..sizes.len()).collect();
            order.rotate_left(rep % sizes.len());
            for i in order {
                let t = bench.time_copy(Tool::Cutover, &sizes[i].1, "bench_series")?;
                println!("  rep {} scale {:<33} {:>8.1} s", rep + 1, sizes[i].0, t.seconds);
                secs[i].push(t.seconds);
                peaks[i] = peaks[i].max(t.rss_mb.unwrap_or(0.0));
                bench
                    .target
                    .sql("postgres", "DROP DATABASE IF EXISTS bench_series WITH (FORCE)")?;
            }
        }
        println!(
            "\nscaling (cutover copy only, the sizes taking turns, medians of {} each):",
            args.reps
        );
        println!(
            "{:>8} {:>10} {:>10} {:>12} {:>10}",
            "scale", "MB", "seconds", "s per GB", "RSS MB"
        );
        for (i, (scale, _, mb)) in sizes.iter().enumerate() {
            let m = median(&secs[i]);
            println!(
                "{:>8} {:>10.0} {:>10.2} {:>12.1} {:>10.0}",
                scale,
                mb,
                m,
                m / (mb / 1000.0),
                peaks[i]
            );
        }
        for (_, name, _) in &sizes[1..] {
            bench.source.sql(
                "postgres",
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )?;
        }
    }

    if args.many_tables > 0 {
        let n = args.many_tables;
        bench.source.sql("postgres", "CREATE DATABASE many")?;
        // In batches: one transaction for thousands of tables would exceed
        // the server's lock table.
        for start in (1..=n).step_by(500) {
            let end = (start + 499).min(n);
            bench.source.sql(
                "many",
                &format!(
                    "DO $$ BEGIN FOR i IN {start}..{end} LOOP \
                     EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text)', i); \
                     EXECUTE format('INSERT INTO t%s SELECT g, md5(g::text) FROM generate_series(1, 10) g', i); \
                     END LOOP; END $$"
                ),
            )?;
        }
        let a = bench.time_copy(Tool::DumpPsql, "many", "many_a")?;
        let d = bench.time_copy(Tool::Cutover, "many", "many_d")?;
        println!(
            "\n{n} small tables: pg_dump | psql {:.1} s, cutover {:.1} s (d/a = {:.2})",
            a.seconds,
            d.seconds,
            d.seconds / a.seconds
        );
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Bench {
    fn tool(&self, name: &str) -> Result<Command> {
        let mut cmd = Command::new(pg_bindir()?.join(name));
        cmd.env("PGPASSFILE", &self.pgpass).stdin(Stdio::null());
        Ok(cmd)
    }

    fn url(server: &PgServer, db: &str) -> String {
        server.url_without_password(db)
    }

    /// The dataset in database `db` on the source; returns its size in bytes.
    fn generate(&self, db: &str, scale: u32) -> Result<i64> {
        self.source.sql("postgres", &format!("CREATE DATABASE {db}"))?;
        let status = self
            .tool("pgbench")?
            .args(["-i", "-q", "-s", &scale.to_string(), "--foreign-keys"])
            .arg(Self::url(&self.source, db))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("pgbench -i failed ({status})");
        }
        let docs = 20_000 * scale as i64;
        let events = 50_000 * scale as i64;
        self.source.sql(
            db,
            &format!(
                "CREATE TABLE docs (id bigserial PRIMARY KEY, title text NOT NULL, body text, meta jsonb, \
                                    created timestamptz NOT NULL); \
                 INSERT INTO docs (title, body, meta, created) \
                   SELECT 'doc ' || g, repeat(md5(g::text), 8), \
                          jsonb_build_object('kind', g % 7, 'tags', jsonb_build_array(g % 3, g % 5), 'n', g), \
                          timestamptz '2024-01-01' + g * interval '1 minute' \
                   FROM generate_series(1, {docs}) g; \
                 CREATE INDEX docs_created ON docs (created); \
                 CREATE INDEX docs_kind ON docs ((meta->>'kind')); \
                 CREATE TABLE events (id bigint PRIMARY KEY, doc_id bigint REFERENCES docs, at timestamptz NOT NULL, \
                                      payload jsonb); \
                 INSERT INTO events SELECT g, 1 + g % {docs}, timestamptz '2024-01-01' + g * interval '1 second', \
                          jsonb_build_object('v', g, 's', md5(g::text)) FROM generate_series(1, {events}) g; \
                 CREATE INDEX events_at ON events (at); \
                 VACUUM ANALYZE"
            ),
        )?;
        let size: i64 = self
            .source
            .sql(db, "SELECT pg_database_size(current_database())")?
            .trim()
            .parse()?;
        Ok(size)
    }

    /// Copies source `db` into a new empty target database with `tool`.
    fn time_copy(&self, tool: Tool, db: &str, target_db: &str) -> Result<Timing> {
        self.target.sql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {target_db} WITH (FORCE)"),
        )?;
        self.target
            .sql("postgres", &format!("CREATE DATABASE {target_db}"))?;
        // Every tool starts from clean servers: nothing left for the
        // checkpointer to write from the dataset's generation or an earlier run.
        self.source.sql("postgres", "CHECKPOINT")?;
        self.target.sql("postgres", "CHECKPOINT")?;
        let (src, tgt) = (Self::url(&self.source, db), Self::url(&self.target, target_db));
        let work = self.dir.path().join(format!("work-{target_db}"));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let bin = pg_bindir()?;
        let j = self.jobs.to_string();
        let t0 = Instant::now();
        let busy0 = cpu_busy();
        let mut rss_mb = None;
        match tool {
            Tool::DumpPsql => {
                let script = format!(
                    "set -o pipefail; '{}' --no-owner --no-privileges '{src}' | '{}' -q -X -v ON_ERROR_STOP=1 '{tgt}' >/dev/null",
                    bin.join("pg_dump").display(),
                    bin.join("psql").display()
                );
                let mut cmd = Command::new("bash");
                cmd.args(["-c", &script]).env("PGPASSFILE", &self.pgpass);
                check(cmd, "pg_dump | psql")?;
            }
            Tool::DumpRestoreJobs => {
                let out = work.join("dump");
                let mut dump = self.tool("pg_dump")?;
                dump.args(["-Fd", "-j", &j, "--no-owner", "--no-privileges", "-f"])
                    .arg(&out)
                    .arg(&src);
                check(dump, "pg_dump -Fd")?;
                let mut restore = self.tool("pg_restore")?;
                restore
                    .args(["-j", &j, "--no-owner", "--no-privileges", "-d", &tgt])
                    .arg(&out);
                check(restore, "pg_restore -j")?;
            }
            Tool::Pgcopydb => {
                let mut cmd = Command::new("pgcopydb");
                cmd.args([
                    "clone",
                    "--no-owner",
                    "--no-acl",
                    "--table-jobs",
                    &j,
                    "--index-jobs",
                    &j,
                ])
                .args(["--source", &src, "--target", &tgt, "--dir"])
                .arg(work.join("pgcopydb"))
                .env("PGPASSFILE", &self.pgpass)
                .env("PGCOPYDB_SOURCE_PGURI", &src)
                .env("PGCOPYDB_TARGET_PGURI", &tgt);
                check(cmd, "pgcopydb clone")?;
            }
            Tool::Cutover => {
                let plan = self.plan(db, target_db, &work)?;
                rss_mb = Some(self.cutover(&plan, &["run", "--yes", "--until", "copy"])?);
            }
        }
        if let (Some(a), Some(b)) = (busy0, cpu_busy()) {
            let (busy, total) = (b.0 - a.0, b.1 - a.1);
            println!(
                "      machine CPU busy during {}: {:.0} %",
                tool.label(self.jobs),
                100.0 * busy as f64 / total.max(1) as f64
            );
        }
        Ok(Timing {
            seconds: t0.elapsed().as_secs_f64(),
            rss_mb,
        })
    }

    fn time_verify(&self, db: &str, target_db: &str) -> Result<Timing> {
        let work = self.dir.path().join(format!("work-{target_db}"));
        let plan = self.plan(db, target_db, &work)?;
        let t0 = Instant::now();
        let rss = self.cutover(&plan, &["verify"])?;
        Ok(Timing {
            seconds: t0.elapsed().as_secs_f64(),
            rss_mb: Some(rss),
        })
    }

    fn plan(&self, db: &str, target_db: &str, work: &Path) -> Result<PathBuf> {
        let plan = work.join("cutover.toml");
        std::fs::write(
            &plan,
            format!(
                "[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n[options]\nfreeze_source = false\njobs = {}\n\
                 split_bytes = {}\nrow_hash = \"{}\"\n",
                self.source.url(db),
                self.target.url(target_db),
                self.jobs,
                self.split_bytes,
                self.row_hash
            ),
        )?;
        set_mode(&plan, 0o600)?;
        Ok(plan)
    }

    /// Runs this binary as the cutover CLI; returns the child's peak RSS in MB.
    fn cutover(&self, plan: &Path, args: &[&str]) -> Result<f64> {
        let child = Command::new(std::env::current_exe()?)
            .arg("__cutover")
            .arg("--plan")
            .arg(plan)
            .args(["--output", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start cutover")?;
        let pid = child.id() as libc::pid_t;
        let mut stdout = child.stdout.expect("piped");
        let mut events = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut events)?;
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid value; wait4 fills it for our child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            bail!("cutover {} failed (wait status {status})", args.join(" "));
        }
        let stages: Vec<String> = events
            .lines()
            .filter(|l| l.contains("\"event\":\"stage_done\""))
            .filter_map(|l| {
                let stage = l.split("\"stage\":\"").nth(1)?.split('"').next()?;
                let secs: f64 = l
                    .split("\"seconds\":")
                    .nth(1)?
                    .split([',', '}'])
                    .next()?
                    .parse()
                    .ok()?;
                Some(format!("{stage} {secs:.1}s"))
            })
            .collect();
        if !stages.is_empty() {
            println!("      cutover stages: {}", stages.join(", "));
        }
        // What users pay by default and pg_dump does not: the schema
        // rehearsal, on its own line (its time is inside discover's).
        for l in events.lines().filter(|l| {
            l.contains("\"message\":\"copy: ") || l.contains("\"message\":\"discover: the schema rehearsal")
        }) {
            if let Some(m) = l.split("\"message\":\"").nth(1) {
                println!("      {}", m.trim_end_matches("\"}"));
            }
        }
        let cpu = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let (user, system) = (cpu(usage.ru_utime), cpu(usage.ru_stime));
        // Named by its command, to the millisecond: `cutover verify` hashes
        // on the servers and spends a few ms itself, which one decimal
        // printed as "0.0 s". No usage at all means none was reported.
        let command = args.first().copied().unwrap_or("cutover");
        if usage.ru_maxrss == 0 && user == 0.0 && system == 0.0 {
            println!(
                "      cutover {command} process CPU: not measured (the kernel reported no usage for it)"
            );
        } else {
            println!(
                "      cutover {command} process CPU (with its pg_dump and pg_restore): {user:.3} s user, \
                 {system:.3} s system"
            );
        }
        Ok(usage.ru_maxrss as f64 / 1024.0)
    }
}

/// Busy and total CPU ticks of the whole machine (Linux `/proc/stat`).
fn cpu_busy() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = ticks.iter().sum();
    // idle and iowait
    let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

fn check(mut cmd: Command, what: &str) -> Result<()> {
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}
