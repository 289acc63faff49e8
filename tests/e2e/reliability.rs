//! Crash anywhere: the `cutover` process dies at every stage boundary
//! (`CUTOVER_CRASH_AT`, an abort on the spot) and at seeded random moments
//! (SIGKILL), on the seed scenario with consumers and decommission and on the
//! tricky fixture; each time the next `run` must converge to the same end
//! state, checked with the kit's independent hashing: the target holds
//! exactly the source's rows, sequences continue, consumer files point at the
//! target, the journal is consistent, no sentinel is left behind.
//!
//! `CUTOVER_CRASH_CASES` (default 20) sets the number of random kills and
//! `CUTOVER_CRASH_SEED` replays a failing case.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cutover_testkit::{Fixture, PgPair, PgServer, TableDigest};

use crate::support::{cutover, output};

/// A small, seedable generator (xorshift): a failing seed replays the same kills.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One cutover case: its own databases on the shared servers and its own folder.
struct Case<'a> {
    pair: &'a PgPair,
    db: String,
    dir: PathBuf,
    source_digest: BTreeMap<String, TableDigest>,
    source_sequence: String,
    consumers: bool,
}

const PLAN_CONSUMERS: &str = "\n[[consumer]]\nname = \"production\"\nkind = \"env\"\npath = \"production.env\"\n\
                              key = \"DATABASE_URL\"\n\n[[consumer]]\nname = \"staging\"\nkind = \"env\"\n\
                              path = \"staging.env\"\nkey = \"DATABASE_URL\"\n\n[decommission]\ndriver = \"postgres\"\n";

impl<'a> Case<'a> {
    fn seed(pair: &'a PgPair, root: &Path, n: usize) -> Case<'a> {
        let db = format!("seed_{n}");
        pair.source.load_fixture(&db, Fixture::SeedSource).unwrap();
        pair.target.load_fixture(&db, Fixture::SeedTarget).unwrap();
        let case = Case::prepare(pair, root, db, true);
        std::fs::write(
            case.dir.join("production.env"),
            format!("DATABASE_URL={}\n", pair.source.url(&case.db)),
        )
        .unwrap();
        std::fs::write(
            case.dir.join("staging.env"),
            format!("DATABASE_URL={}\n", pair.target.url(&case.db)),
        )
        .unwrap();
        case
    }

    fn tricky(pair: &'a PgPair, root: &Path, n: usize) -> Case<'a> {
        let db = format!("tricky_{n}");
        pair.source.load_fixture(&db, Fixture::Tricky).unwrap();
        pair.target.create_database(&db).unwrap();
        Case::prepare(pair, root, db, false)
    }

    fn prepare(pair: &'a PgPair, root: &Path, db: String, consumers: bool) -> Case<'a> {
        let dir = root.join(&db);
        std::fs::create_dir_all(&dir).unwrap();
        let extra = if consumers { PLAN_CONSUMERS } else { "" };
        std::fs::write(
            dir.join("cutover.toml"),
            format!(
                "[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n{extra}",
                pair.source.url(&db),
                pair.target.url(&db)
            ),
        )
        .unwrap();
        let source_digest = pair.source.digest(&db, &["cutover"]).unwrap();
        let source_sequence = sequences(&pair.source, &db);
        Case {
            pair,
            db,
            dir,
            source_digest,
            source_sequence,
            consumers,
        }
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = cutover();
        cmd.current_dir(&self.dir)
            .arg("--plan")
            .arg(self.dir.join("cutover.toml"))
            .args(args)
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Runs to the end (a few attempts: a crash may leave a stage to redo).
    fn finish(&self, label: &str) {
        let (out, stdout, stderr) = output(&mut self.command(&["run", "--yes"]));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{label}: the run after the crash failed:\n{stdout}{stderr}"
        );
    }

    /// The end state, checked independently of cutover's own hashing.
    fn check(&self, label: &str) {
        let target = &self.pair.target;
        assert_eq!(
            target.digest(&self.db, &["cutover"]).unwrap(),
            self.source_digest,
            "{label}: the target does not hold exactly the source's rows"
        );
        assert_eq!(
            sequences(target, &self.db),
            self.source_sequence,
            "{label}: sequences differ"
        );
        let journal = target
            .sql(
                &self.db,
                "SELECT status || ' ' || (SELECT count(*) FROM cutover.sentinels) FROM cutover.runs \
                 ORDER BY started_at DESC LIMIT 1",
            )
            .unwrap();
        assert_eq!(journal, "done 0", "{label}: journal status, sentinels left");
        let not_done = target
            .sql(
                &self.db,
                "SELECT count(*) FROM (SELECT DISTINCT ON (stage) stage, event FROM cutover.stage_events \
                 WHERE run_id = (SELECT id FROM cutover.runs ORDER BY started_at DESC LIMIT 1) \
                 ORDER BY stage, id DESC) s WHERE event <> 'done'",
            )
            .unwrap();
        assert_eq!(not_done, "0", "{label}: a stage is not done in the journal");
        if self.consumers {
            let prod = std::fs::read_to_string(self.dir.join("production.env")).unwrap();
            assert_eq!(
                prod,
                format!("DATABASE_URL={}\n", target.url(&self.db)),
                "{label}: production.env"
            );
            let retired = self
                .pair
                .source
                .sql(
                    "postgres",
                    &format!("SELECT count(*) FROM pg_database WHERE datname = '{}'", self.db),
                )
                .unwrap();
            assert_eq!(retired, "0", "{label}: the source is not quarantined");
        }
    }
}

/// Every sequence's position, as text.
fn sequences(server: &PgServer, db: &str) -> String {
    server
        .sql(
            db,
            "SELECT coalesce(string_agg(schemaname || '.' || sequencename || '=' || coalesce(last_value, 0), ',' \
             ORDER BY schemaname, sequencename), '') FROM pg_sequences WHERE schemaname <> 'cutover'",
        )
        .unwrap()
}

/// The stage names of the seed plan with consumers, from `cutover plan --output json`.
fn stage_names(case: &Case) -> Vec<String> {
    let (out, stdout, stderr) = output(&mut case.command(&["plan", "--output", "json"]));
    assert!(out.status.success(), "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_crash_at_every_stage_boundary_converges() {
    let pair = PgPair::start().unwrap();
    let root = tempfile::tempdir().unwrap();
    let probe = Case::seed(&pair, root.path(), 0);
    let stages = stage_names(&probe);
    assert!(stages.len() >= 10, "{stages:?}");
    let mut n = 1;
    let mut survived = 0;
    for stage in &stages {
        for point in ["before", "after"] {
            let case = Case::seed(&pair, root.path(), n);
            n += 1;
            let at = format!("{point}:{stage}");
            let (out, _, stderr) = output(case.command(&["run", "--yes"]).env("CUTOVER_CRASH_AT", &at));
            assert_eq!(
                out.status.code(),
                None,
                "{at}: the process should have crashed: {stderr}"
            );
            case.finish(&at);
            case.check(&at);
            survived += 1;
        }
    }
    // A crash point on the tricky schema's copy, before and after.
    for point in ["before:copy", "after:copy", "after:verify-data"] {
        let case = Case::tricky(&pair, root.path(), n);
        n += 1;
        let (out, _, _) = output(case.command(&["run", "--yes"]).env("CUTOVER_CRASH_AT", point));
        assert_eq!(out.status.code(), None, "{point}");
        case.finish(point);
        case.check(point);
        survived += 1;
    }
    println!("crash points survived: {survived}");
}

#[test]
fn seeded_random_kills_converge() {
    let cases: usize = std::env::var("CUTOVER_CRASH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("CUTOVER_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_c0de);
    let mut rng = Rng(seed);
    let pair = PgPair::start().unwrap();
    let root = tempfile::tempdir().unwrap();
    for n in 0..cases {
        let state = rng.0;
        // One case in four on the tricky schema; kills anywhere in the first 2.5 s.
        let tricky = rng.below(4) == 0;
        let delay = Duration::from_millis(rng.below(2500));
        let case = if tricky {
            Case::tricky(&pair, root.path(), 100 + n)
        } else {
            Case::seed(&pair, root.path(), 100 + n)
        };
        let label = format!(
            "case {n} ({}, kill after {} ms; replay with CUTOVER_CRASH_SEED={state} CUTOVER_CRASH_CASES=1)",
            if tricky { "tricky" } else { "seed" },
            delay.as_millis()
        );
        let mut child = case
            .command(&["run", "--yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        case.finish(&label);
        case.check(&label);
    }
    println!("random kills survived: {cases} (seed {seed})");
}
