//! The online case: pgbench's TPC-B-like write load runs through a real
//! PgBouncer (transaction pooling) for the whole online cutover of the
//! benchmark dataset. Measured, never asserted: failed client
//! transactions, the longest transaction latency around the switch, the
//! journaled write pause, the time in replicate, verify's result once the
//! writers stopped, and what replication left behind.
//!
//! pgbench runs in consecutive 5-second rounds (each prints its own summary
//! and flushes its per-transaction log when it ends): a round that starts
//! during the pause simply waits for PgBouncer, as an application's new
//! connection would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cutover_testkit::{PgBouncer, pg_bindir};

use crate::{Bench, set_mode};

/// One size's figures.
pub struct OnlineFigures {
    pub scale: u32,
    pub mb: f64,
    pub replicate_s: f64,
    pub pause_ms: u64,
    pub catch_up_ms: u64,
    pub longest_ms: f64,
    pub transactions: u64,
    pub failed: u64,
    pub verify: String,
    pub left_behind: String,
}

/// pgbench's rounds, their logs and summaries.
struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(u64, u64)>>,
    logs: PathBuf,
}

impl Load {
    fn start(url: String, clients: u32, logs: PathBuf) -> Result<Load> {
        std::fs::create_dir_all(&logs)?;
        let stop = Arc::new(AtomicBool::new(false));
        let pgbench = pg_bindir()?.join("pgbench");
        let flag = stop.clone();
        let dir = logs.clone();
        let thread = std::thread::spawn(move || -> Result<(u64, u64)> {
            let (mut done, mut failed) = (0, 0);
            let (mut round, mut failing) = (0, 0);
            while !flag.load(Ordering::SeqCst) && failing < 3 {
                round += 1;
                let out = Command::new(&pgbench)
                    .args(["-n", "-c", &clients.to_string(), "-j", "2", "-T", "5", "-l"])
                    .arg(format!("--log-prefix={}/r{round}", dir.display()))
                    .arg(&url)
                    .stdin(Stdio::null())
                    .output()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let errors = String::from_utf8_lossy(&out.stderr).into_owned();
                let number = |label: &str| -> u64 {
                    text.lines()
                        .find_map(|l| l.trim().strip_prefix(label))
                        .and_then(|r| r.trim().split(['/', ' ']).next()?.parse().ok())
                        .unwrap_or(0)
                };
                done += number("number of transactions actually processed:");
                failed += number("number of failed transactions:");
                if out.status.success() {
                    failing = 0;
                } else {
                    // An aborted client: counted as a failed transaction
                    // (the applications would have seen an error).
                    failed += 1;
                    failing += 1;
                    eprintln!("pgbench round {round} failed ({}): {}", out.status, errors.trim());
                }
            }
            Ok((done, failed))
        });
        Ok(Load { stop, thread, logs })
    }

    /// Stops after the current round: transactions done and failed.
    fn stop(self) -> Result<(u64, u64, PathBuf)> {
        self.stop.store(true, Ordering::SeqCst);
        let (done, failed) = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("pgbench thread panicked"))??;
        Ok((done, failed, self.logs))
    }
}

/// The longest latency (ms) of the transactions that were running at any
/// moment in [from, to] (epoch seconds), from pgbench's per-transaction logs
/// (`client txn latency_us script epoch_s epoch_us`).
fn longest_around(logs: &Path, from: f64, to: f64) -> Result<f64> {
    let mut longest: f64 = 0.0;
    for entry in std::fs::read_dir(logs)? {
        let text = std::fs::read_to_string(entry?.path())?;
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 {
                continue;
            }
            let (Ok(lat_us), Ok(s), Ok(us)) = (f[2].parse::<f64>(), f[4].parse::<f64>(), f[5].parse::<f64>())
            else {
                continue;
            };
            let end = s + us / 1e6;
            let start = end - lat_us / 1e6;
            if end >= from && start <= to {
                longest = longest.max(lat_us / 1000.0);
            }
        }
    }
    Ok(longest)
}

fn epoch(rfc3339: &str) -> Result<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339).with_context(|| format!("bad time {rfc3339:?}"))?;
    Ok(t.timestamp_millis() as f64 / 1000.0)
}

impl Bench {
    /// One online cutover of a fresh `scale` dataset under pgbench's load.
    pub fn online(&self, scale: u32, clients: u32) -> Result<OnlineFigures> {
        let db = format!("online_s{scale}");
        for server in [&self.source, &self.target] {
            server.sql("postgres", &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))?;
        }
        let bytes = self.generate(&db, scale)?;
        self.target.sql("postgres", &format!("CREATE DATABASE {db}"))?;
        let entry = |s: &cutover_testkit::PgServer| {
            format!(
                "host=127.0.0.1 port={} dbname={db} user={} password={} pool_size={}",
                s.port(),
                s.user(),
                s.password(),
                clients + 2
            )
        };
        let bouncer = PgBouncer::start(&[(&db, entry(&self.source))], "transaction")?;
        let work = self.dir.path().join(format!("online-{scale}"));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let plan = work.join("cutover.toml");
        std::fs::write(
            &plan,
            format!(
                "[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n[options]\nmode = \"online\"\njobs = {}\n\
                 split_bytes = {}\n[options.online]\nmax_pause = 5\n\
                 replica_identity_full = [\"public.pgbench_history\"]\n\
                 [[consumer]]\nname = \"bouncer\"\nkind = \"pgbouncer\"\npath = \"{}\"\nkey = \"{db}\"\n\
                 admin_url_env = \"BENCH_BOUNCER_ADMIN\"\npause_timeout = 5\n",
                self.source.url(&db),
                self.target.url(&db),
                self.jobs,
                self.split_bytes,
                bouncer.ini().display()
            ),
        )?;
        set_mode(&plan, 0o600)?;
        let load = Load::start(bouncer.url(&db), clients, work.join("pgbench"))?;
        std::thread::sleep(std::time::Duration::from_secs(3));
        let cutover = |args: &[&str]| -> Result<String> {
            let out = Command::new(std::env::current_exe()?)
                .arg("__cutover")
                .arg("--plan")
                .arg(&plan)
                .args(["--output", "json"])
                .args(args)
                .env("BENCH_BOUNCER_ADMIN", bouncer.admin_url())
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()?;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            if !out.status.success() {
                bail!("cutover {} failed ({}):\n{stdout}", args.join(" "), out.status);
            }
            Ok(stdout)
        };
        // The rollback window stays open while the writers go on.
        let events = cutover(&["run", "--yes", "--until", "verify-sync"])?;
        std::thread::sleep(std::time::Duration::from_secs(3));
        let (transactions, failed, logs) = load.stop()?;
        let status: serde_json::Value = serde_json::from_str(&cutover(&["status"])?)?;
        let artefacts = |stage: &str| -> serde_json::Value {
            status["stages"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["stage"] == stage))
                .map(|s| s["artefacts"].clone())
                .unwrap_or_default()
        };
        let (switch, resume) = (artefacts("switch"), artefacts("resume"));
        let replicate_s = events
            .lines()
            .filter(|l| l.contains("\"stage_done\"") && l.contains("\"stage\":\"replicate\""))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|e| e["seconds"].as_f64())
            .sum();
        let from = epoch(resume["pause_started"].as_str().unwrap_or_default())?;
        let to = epoch(resume["pause_ended"].as_str().unwrap_or_default())?;
        let longest_ms = longest_around(&logs, from, to)?;
        // The reverse stream brings the last writes back; then both sides
        // must be equal.
        let count = |s: &cutover_testkit::PgServer| s.sql(&db, "SELECT count(*) FROM pgbench_history");
        let started = Instant::now();
        while count(&self.source)? != count(&self.target)? && started.elapsed().as_secs() < 60 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let verify = match cutover(&["verify"]) {
            Ok(_) => "equal".to_string(),
            Err(e) => format!("DIFFERS: {e}"),
        };
        cutover(&["run", "--yes"])?;
        let left = |s: &cutover_testkit::PgServer| {
            s.sql(
                &db,
                "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication) \
                 + (SELECT count(*) FROM pg_subscription)",
            )
        };
        let left_behind = format!("{}+{}", left(&self.source)?, left(&self.target)?);
        for server in [&self.source, &self.target] {
            server.sql("postgres", &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))?;
        }
        drop(bouncer);
        Ok(OnlineFigures {
            scale,
            mb: bytes as f64 / 1e6,
            replicate_s,
            pause_ms: resume["pause_millis"].as_u64().unwrap_or(0),
            catch_up_ms: switch["catch_up_millis"].as_u64().unwrap_or(0),
            longest_ms,
            transactions,
            failed,
            verify,
            left_behind,
        })
    }
}

/// The online case at each scale, printed as one table.
pub fn run(bench: &Bench, scales: &[u32], clients: u32) -> Result<()> {
    let mut rows = vec![];
    for &scale in scales {
        println!(
            "online case, pgbench scale {scale}: {clients} pgbench clients through PgBouncer (transaction pooling)..."
        );
        let f = bench.online(scale, clients)?;
        println!(
            "  replicate {:.1} s, pause {} ms, {} transactions, {} failed",
            f.replicate_s, f.pause_ms, f.transactions, f.failed
        );
        rows.push(f);
    }
    println!();
    println!(
        "{:>6} {:>8} {:>12} {:>10} {:>11} {:>16} {:>8} {:>7} {:>8} {:>12}",
        "scale",
        "MB",
        "replicate s",
        "pause ms",
        "catch-up ms",
        "longest txn ms",
        "txns",
        "failed",
        "verify",
        "left behind"
    );
    for f in &rows {
        println!(
            "{:>6} {:>8.0} {:>12.1} {:>10} {:>11} {:>16.0} {:>8} {:>7} {:>8} {:>12}",
            f.scale,
            f.mb,
            f.replicate_s,
            f.pause_ms,
            f.catch_up_ms,
            f.longest_ms,
            f.transactions,
            f.failed,
            f.verify,
            f.left_behind
        );
    }
    println!(
        "(pause: journaled, from PAUSE to the last consumer repointed; longest txn: the longest pgbench transaction \
         that was running at any moment of the pause; left behind: cutover's slots, publications and subscriptions \
         on source+target after the run)"
    );
    // Times are figures; a failed transaction, a difference or a leftover
    // is a broken guarantee, and the benchmark says so by its exit status.
    let broken: Vec<String> = rows
        .iter()
        .filter(|f| f.failed > 0 || f.verify != "equal" || f.left_behind != "0+0")
        .map(|f| {
            format!(
                "scale {}: {} failed transaction(s), verify {}, left behind {}",
                f.scale, f.failed, f.verify, f.left_behind
            )
        })
        .collect();
    if !broken.is_empty() {
        bail!("the online cutover broke a guarantee: {}", broken.join("; "));
    }
    Ok(())
}
