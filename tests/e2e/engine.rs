//! The engine with test-only stages, against a real journal in a real
//! PostgreSQL server: resume skips done stages and redoes the interrupted one,
//! a failed stage is retried, a finished run is a no-op, rollback goes in
//! reverse and stops at an irreversible stage, a refused confirmation runs
//! nothing.
//!
//! "Killed mid-way" is the run's future dropped while the stage awaits: from
//! the journal's point of view that is a process that died at that instruction
//! (the `started` row is written, nothing after it). Real SIGKILLs of the
//! binary are in `cutover::kill_*`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::engine::{self, Selection};
use cutover_core::event::{Event, EventSink};
use cutover_core::identity::ServerIdentity;
use cutover_core::journal::Journal;
use cutover_core::loaded::LoadedPlan;
use cutover_core::stage::{CancelFlag, Check, Description, Plan, RunContext, Stage, Undo};
use cutover_core::{Error, ErrorKind, Result};
use cutover_testkit::PgServer;
use sqlx::PgPool;

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Succeeds,
    /// Fails the first time it runs.
    FailsOnce,
    /// The first time, does half its work and then never returns (the test
    /// drops the run there, as a kill would).
    HangsOnce,
}

/// Shared between the stages and the test: how often each ran, what was undone.
#[derive(Default)]
struct Log {
    runs: Mutex<BTreeMap<String, usize>>,
    undone: Mutex<Vec<String>>,
}

impl Log {
    fn runs(&self, stage: &str) -> usize {
        self.runs.lock().unwrap().get(stage).copied().unwrap_or(0)
    }
    fn undone(&self) -> Vec<String> {
        self.undone.lock().unwrap().clone()
    }
}

struct TestStage {
    name: &'static str,
    behaviour: Behaviour,
    undo: Undo,
    description: Description,
    log: Arc<Log>,
}

fn stage(
    name: &'static str,
    behaviour: Behaviour,
    undo: Undo,
    destructive: bool,
    log: &Arc<Log>,
) -> Box<dyn Stage> {
    Box::new(TestStage {
        name,
        behaviour,
        undo,
        description: Description {
            summary: format!("test stage {name}"),
            destructive,
            ..Default::default()
        },
        log: log.clone(),
    })
}

#[async_trait]
impl Stage for TestStage {
    fn name(&self) -> String {
        self.name.to_string()
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        self.undo.clone()
    }
    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        let attempt = {
            let mut runs = self.log.runs.lock().unwrap();
            let n = runs.entry(self.name.to_string()).or_default();
            *n += 1;
            *n
        };
        if attempt == 1 && self.behaviour == Behaviour::FailsOnce {
            return Err(Error::failure(format!("{} fails the first time", self.name)));
        }
        // Idempotent: a partial row from an interrupted attempt is replaced.
        sqlx::query("DELETE FROM effects WHERE stage = $1")
            .bind(self.name)
            .execute(&ctx.target)
            .await?;
        if attempt == 1 && self.behaviour == Behaviour::HangsOnce {
            sqlx::query("INSERT INTO effects VALUES ($1, 'partial')")
                .bind(self.name)
                .execute(&ctx.target)
                .await?;
            std::future::pending::<()>().await;
        }
        sqlx::query("INSERT INTO effects VALUES ($1, 'complete')")
            .bind(self.name)
            .execute(&ctx.target)
            .await?;
        Ok(serde_json::json!({ "summary": format!("{} done", self.name) }))
    }
    async fn check(&self, ctx: &RunContext) -> Result<Check> {
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM effects WHERE stage = $1")
            .bind(self.name)
            .fetch_optional(&ctx.target)
            .await?;
        Ok(match state.as_deref() {
            Some("complete") => Check::Holds,
            other => Check::Fails(format!("effect is {other:?}")),
        })
    }
    async fn undo(&self, ctx: &RunContext) -> Result<String> {
        sqlx::query("DELETE FROM effects WHERE stage = $1")
            .bind(self.name)
            .execute(&ctx.target)
            .await?;
        self.log.undone.lock().unwrap().push(self.name.to_string());
        Ok(format!("{} undone", self.name))
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<Event>>);

impl EventSink for Events {
    fn emit(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

impl Events {
    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    fn skipped(&self) -> Vec<String> {
        self.take()
            .into_iter()
            .filter_map(|e| match e {
                Event::StageSkipped { stage, .. } => Some(stage),
                _ => None,
            })
            .collect()
    }
}

/// A server with a database, a journal, a run and a context around them.
// Fields drop in order: connections before the server.
struct Bench {
    ctx: RunContext,
    events: Arc<Events>,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    _server: PgServer,
}

impl Bench {
    fn new() -> Bench {
        let server = PgServer::start().unwrap();
        server.create_database("engine").unwrap();
        server
            .sql(
                "engine",
                "CREATE TABLE effects (stage text PRIMARY KEY, state text NOT NULL)",
            )
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let plan_path = dir.path().join("cutover.toml");
        std::fs::write(
            &plan_path,
            format!(
                "[source]\nurl = \"{0}\"\n[target]\nurl = \"{0}\"\n",
                server.url("engine")
            ),
        )
        .unwrap();
        let loaded = LoadedPlan::load(&plan_path).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let events = Arc::new(Events::default());
        let url = server.url("engine");
        let ctx = rt.block_on(async {
            let pool = PgPool::connect(&url).await.unwrap();
            let journal = Journal::ensure(&pool, "cutover").await.unwrap();
            let identity = ServerIdentity::of(&pool).await.unwrap();
            let run_id = journal
                .create_run("cutover.toml", &loaded.fingerprint, &identity, &identity)
                .await
                .unwrap();
            RunContext {
                source: pool.clone(),
                target: pool,
                journal,
                run_id,
                run_dir: dir.path().join("run"),
                events: events.clone(),
                cancel: CancelFlag::default(),
            }
        });
        Bench {
            ctx,
            events,
            rt,
            _dir: dir,
            _server: server,
        }
    }

    fn run(&self, plan: &Plan, selection: Selection) -> Result<()> {
        self.rt
            .block_on(engine::run(plan, &self.ctx, &selection, &|_: &[String]| Ok(())))
    }

    /// Runs until the plan has been busy for `after`, then drops the run.
    fn run_and_kill(&self, plan: &Plan, after: Duration) {
        let outcome = self.rt.block_on(async {
            tokio::time::timeout(
                after,
                engine::run(plan, &self.ctx, &Selection::default(), &|_: &[String]| Ok(())),
            )
            .await
        });
        assert!(
            outcome.is_err(),
            "the run should still have been busy when killed"
        );
    }

    fn rollback(&self, plan: &Plan, force: bool) -> Result<()> {
        self.rt.block_on(engine::rollback(plan, &self.ctx, force))
    }

    /// Each stage's last journal event.
    fn states(&self) -> BTreeMap<String, String> {
        self.rt
            .block_on(self.ctx.journal.stage_states(self.ctx.run_id))
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.event.to_string()))
            .collect()
    }

    fn run_status(&self) -> String {
        self.rt
            .block_on(self.ctx.journal.latest_run())
            .unwrap()
            .unwrap()
            .status
            .to_string()
    }

    fn effects(&self) -> Vec<(String, String)> {
        self.rt.block_on(async {
            sqlx::query_as("SELECT stage, state FROM effects ORDER BY stage")
                .fetch_all(&self.ctx.target)
                .await
                .unwrap()
        })
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn resume_skips_done_stages_and_redoes_the_interrupted_one() {
    let bench = Bench::new();
    let log = Arc::new(Log::default());
    let undo = || Undo::Reversible("delete the effect".into());
    let plan = Plan {
        stages: vec![
            stage("a", Behaviour::Succeeds, undo(), false, &log),
            stage("b", Behaviour::HangsOnce, undo(), false, &log),
            stage("c", Behaviour::Succeeds, undo(), false, &log),
        ],
        warnings: vec![],
    };

    bench.run_and_kill(&plan, Duration::from_secs(2));
    let states = bench.states();
    assert_eq!(states["a"], "done");
    assert_eq!(states["b"], "started", "the kill left b started, nothing after");
    assert!(!states.contains_key("c"));
    assert_eq!(bench.effects(), owned(&[("a", "complete"), ("b", "partial")]));
    bench.events.take();

    bench.run(&plan, Selection::default()).unwrap();
    assert_eq!((log.runs("a"), log.runs("b"), log.runs("c")), (1, 2, 1));
    assert_eq!(bench.events.skipped(), vec!["a"]);
    assert_eq!(
        bench.effects(),
        owned(&[("a", "complete"), ("b", "complete"), ("c", "complete")]),
        "the interrupted stage converged: no partial effect left"
    );
    assert_eq!(bench.run_status(), "done");

    // A finished run again: a no-op.
    bench.run(&plan, Selection::default()).unwrap();
    assert_eq!((log.runs("a"), log.runs("b"), log.runs("c")), (1, 2, 1));
    assert_eq!(bench.events.skipped(), vec!["a", "b", "c"]);
}

#[test]
fn a_done_stage_whose_check_fails_runs_again_and_a_failed_stage_is_retried() {
    let bench = Bench::new();
    let log = Arc::new(Log::default());
    let plan = Plan {
        stages: vec![
            stage("a", Behaviour::Succeeds, Undo::Nothing, false, &log),
            stage("f", Behaviour::FailsOnce, Undo::Nothing, false, &log),
            stage("z", Behaviour::Succeeds, Undo::Nothing, false, &log),
        ],
        warnings: vec![],
    };
    let until_a = || Selection {
        until: Some("a".into()),
        only: None,
    };
    bench.run(&plan, until_a()).unwrap();
    assert_eq!(bench.run_status(), "paused");
    // Someone undid a's effect behind the tool's back: its check fails, it runs again.
    bench.rt.block_on(async {
        sqlx::query("DELETE FROM effects")
            .execute(&bench.ctx.target)
            .await
            .unwrap();
    });
    bench.events.take();
    bench.run(&plan, until_a()).unwrap();
    assert_eq!(log.runs("a"), 2);
    assert!(
        bench
            .events
            .take()
            .iter()
            .any(|e| matches!(e, Event::Warning { message } if message.contains("check fails now"))),
        "the re-run is announced"
    );

    let err = bench.run(&plan, Selection::default()).unwrap_err();
    assert!(err.message.contains("stage f failed"), "{}", err.message);
    assert!(err.message.contains("fails the first time"), "{}", err.message);
    assert_eq!(log.runs("z"), 0, "nothing runs after a failed stage");
    assert_eq!(bench.states()["f"], "failed");
    assert_eq!(bench.run_status(), "failed");

    bench.run(&plan, Selection::default()).unwrap();
    assert_eq!((log.runs("a"), log.runs("f"), log.runs("z")), (2, 2, 1));
    assert_eq!(bench.run_status(), "done");

    // An unknown stage name lists the stages.
    let err = bench
        .run(
            &plan,
            Selection {
                until: Some("nope".into()),
                only: None,
            },
        )
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadInput);
    assert!(err.message.contains("stages: a, f, z"), "{}", err.message);
}

#[test]
fn rollback_goes_in_reverse_and_stops_at_an_irreversible_stage() {
    let bench = Bench::new();
    let log = Arc::new(Log::default());
    let undo = || Undo::Reversible("delete the effect".into());
    let plan = Plan {
        stages: vec![
            stage("a", Behaviour::Succeeds, undo(), false, &log),
            stage(
                "i",
                Behaviour::Succeeds,
                Undo::Irreversible("it burns bridges".into()),
                true,
                &log,
            ),
            stage("b", Behaviour::Succeeds, undo(), false, &log),
            stage("c", Behaviour::Succeeds, undo(), false, &log),
        ],
        warnings: vec![],
    };
    bench.run(&plan, Selection::default()).unwrap();

    let err = bench.rollback(&plan, false).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Refused);
    assert!(
        err.message
            .contains("stage i cannot be undone (it burns bridges)")
            && err.message.contains("--force"),
        "{}",
        err.message
    );
    assert_eq!(
        log.undone(),
        vec!["c", "b"],
        "later stages undone in reverse order"
    );
    assert_eq!(bench.effects(), owned(&[("a", "complete"), ("i", "complete")]));
    let states = bench.states();
    assert_eq!((states["c"].as_str(), states["b"].as_str()), ("undone", "undone"));
    assert_eq!((states["i"].as_str(), states["a"].as_str()), ("done", "done"));

    // Again without --force: same refusal, nothing undone twice.
    assert!(bench.rollback(&plan, false).is_err());
    assert_eq!(log.undone(), vec!["c", "b"]);

    bench.rollback(&plan, true).unwrap();
    assert_eq!(
        log.undone(),
        vec!["c", "b", "a"],
        "--force goes past i and leaves it as is"
    );
    assert_eq!(bench.effects(), owned(&[("i", "complete")]));
    assert_eq!(bench.run_status(), "rolled_back");
}

#[test]
fn a_refused_confirmation_runs_nothing() {
    let bench = Bench::new();
    let log = Arc::new(Log::default());
    let plan = Plan {
        stages: vec![
            stage("a", Behaviour::Succeeds, Undo::Nothing, false, &log),
            stage("wipe", Behaviour::Succeeds, Undo::Nothing, true, &log),
        ],
        warnings: vec![],
    };
    let asked = Mutex::new(vec![]);
    let err = bench
        .rt
        .block_on(engine::run(
            &plan,
            &bench.ctx,
            &Selection::default(),
            &|stages: &[String]| {
                asked.lock().unwrap().extend_from_slice(stages);
                Err(Error::refused("no"))
            },
        ))
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Refused);
    assert_eq!(
        *asked.lock().unwrap(),
        vec!["wipe"],
        "only destructive stages are asked about"
    );
    assert_eq!(log.runs("a") + log.runs("wipe"), 0);
    assert!(bench.states().is_empty());
    assert!(bench.effects().is_empty());
}
