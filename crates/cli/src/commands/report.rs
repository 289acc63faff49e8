//! `cutover report`: a Markdown account of the latest run, built from facts:
//! the journal (stages, times, artefacts, proofs) and a live look at the
//! target. Before and after topology (text boxes and a Mermaid diagram), the
//! side-by-side comparison, every step, the verification proof, the backup
//! and how to restore it, what was decommissioned and how to undo it. No
//! secrets: every connection is shown without its password.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use cutover_core::artefacts::Artefacts;
use cutover_core::artefacts::{DecommissionResult, Retirement};
use cutover_core::endpoint::Endpoint;
use cutover_core::journal::{RunRecord, StageEvent, StageState};
use cutover_core::loaded::LoadedPlan;
use cutover_core::redact::redact_text;
use cutover_ops::consumer::Which;
use cutover_ops::online::resume::{RESUME, ResumeResult};
use cutover_ops::online::switch::{SWITCH, SwitchResult};
use cutover_ops::repoint::RepointResult;
use cutover_ops::sync::SyncResult;
use cutover_pg::backup::BackupResult;
use cutover_pg::discover::DiscoverResult;
use cutover_pg::inventory::Inventory;
use cutover_pg::online::replicate::ReplicateResult;
use cutover_pg::verify::VerifyResult;

use crate::args::GlobalArgs;
use crate::exit::{Code, coded};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Write the report to this file (mode 0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub(crate) fn run(global: &GlobalArgs, args: ReportArgs) -> anyhow::Result<Code> {
    let loaded = LoadedPlan::load(&global.plan)?;
    let text = super::runtime()?.block_on(build(&loaded))?;
    match &args.out {
        Some(path) => {
            cutover_ops::files::write_private(path, text.as_bytes())?;
            eprintln!("wrote the report to {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(Code::Success)
}

/// The facts a report is made of.
struct Facts {
    run: RunRecord,
    stages: Vec<StageState>,
    source: std::sync::Arc<Endpoint>,
    target: std::sync::Arc<Endpoint>,
    after: Inventory,
}

async fn build(loaded: &LoadedPlan) -> anyhow::Result<String> {
    let opts = &loaded.file.options;
    let session = loaded.session().without_statement_timeout();
    let opened = cutover_pg::connect::target_journal(loaded, session, 2).await?;
    let (target, pool) = (opened.target, opened.pool);
    let source = loaded.source()?;
    let no_run = || {
        coded(
            cutover_core::ErrorKind::BadInput,
            format!(
                "the target {target} has no run of a cutover in its journal yet: run `cutover run` first"
            ),
        )
    };
    let (run, mut stages): (_, Vec<StageState>) = match opened.journal {
        Some(journal) => {
            let run = journal.latest_run().await?.ok_or_else(no_run)?;
            let stages = journal.stage_states(run.id).await?.into_values().collect();
            (run, stages)
        }
        // Archived (`cutover archive-journal`): the run directory has it.
        None => {
            let archive = crate::journal_archive::read_archive(loaded)?.ok_or_else(no_run)?;
            let latest = archive.runs.into_iter().next().ok_or_else(no_run)?;
            (latest.run, latest.stages)
        }
    };
    stages.sort_by_key(|s| s.first_started_at.unwrap_or(s.at));
    let after = Inventory::read(&pool, &opts.journal_schema, true).await?;
    let facts = Facts {
        run,
        stages,
        source,
        target,
        after,
    };
    // A stream that stopped is said loudly, here as everywhere in the window.
    let mut warnings = vec![];
    if opts.mode == cutover_core::plan_file::Mode::Online
        && let Ok(source_pool) = cutover_pg::connect::pool(&facts.source, session.glance(), 1).await
    {
        warnings = cutover_pg::online::subscription::health(&source_pool, &pool)
            .await
            .unwrap_or_default();
        source_pool.close().await;
    }
    let mut text = render(&facts);
    for w in warnings.iter().rev() {
        eprintln!("warning: {w}");
        let at = text.find('\n').map_or(text.len(), |i| i + 1);
        text.insert_str(at, &format!("\n> **Warning:** {w}\n"));
    }
    Ok(redact_text(&text))
}

/// A done stage's artefacts, as the stage wrote them.
fn artefacts<T: Artefacts>(facts: &Facts, stage: &str) -> Option<T> {
    facts
        .stages
        .iter()
        .find(|s| s.stage == stage && s.event == StageEvent::Done)
        .and_then(|s| s.artefacts.as_ref())
        .and_then(|v| T::from_value(v).ok())
}

fn render(f: &Facts) -> String {
    let mut out = String::new();
    let w = &mut out;
    let discover: Option<DiscoverResult> = artefacts(f, cutover_core::stage::names::DISCOVER);
    let retired: Option<DecommissionResult> = artefacts(f, cutover_ops::decommission::NAME);
    let consumers = Consumers::of(f);
    heading(w, f);
    before(w, f, &consumers, discover.as_ref());
    after(w, f, &consumers, retired.as_ref());
    if let Some(d) = &discover {
        side_by_side(w, f, &consumers, d);
    }
    steps(w, f);
    verification(w, f);
    online_pause(w, f);
    consumer_proofs(w, f);
    backup(w, f);
    the_source(w, f, retired.as_ref());
    out
}

/// The consumers, from the repoint artefacts: which side each used before,
/// and all of them on the target after.
struct Consumers<'a> {
    before: BTreeMap<&'a str, Vec<String>>,
    after: Vec<String>,
}

impl Consumers<'_> {
    fn of(f: &Facts) -> Consumers<'_> {
        let mut before: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut after: Vec<String> = vec![];
        for s in &f.stages {
            if let Some(name) = s.stage.strip_prefix(cutover_core::stage::names::REPOINT_PREFIX)
                && s.event == StageEvent::Done
            {
                let repointed = s
                    .artefacts
                    .as_ref()
                    .and_then(|a| RepointResult::from_value(a).ok());
                let side = match repointed.map(|r| r.before) {
                    Some(Which::Source) => "source",
                    _ => "target",
                };
                before.entry(side).or_default().push(name.to_string());
                after.push(name.to_string());
            }
        }
        Consumers { before, after }
    }

    /// How many used `side` before.
    fn on(&self, side: &str) -> usize {
        self.before.get(side).map(|v| v.len()).unwrap_or(0)
    }
}

fn heading(w: &mut String, f: &Facts) {
    let run = &f.run;
    let _ = writeln!(w, "# Cutover report: {} → {}\n", f.source, f.target);
    let finished = run
        .finished_at
        .map(|t| format!(", finished {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
        .unwrap_or_default();
    let _ = writeln!(
        w,
        "Run `{}`: **{}**. Began {} by {}@{}{finished}. Plan file `{}` (sha256 `{}…`).\n",
        run.id,
        run.status,
        run.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        run.operator_user,
        run.operator_host,
        run.plan_path,
        &run.plan_fingerprint[..12.min(run.plan_fingerprint.len())]
    );
}

/// "N tables, M rows" of a side as discover saw it.
fn described(discover: Option<&DiscoverResult>, side: &str) -> String {
    let Some(d) = discover else { return String::new() };
    let s = if side == "source" { &d.source } else { &d.target };
    format!("{} tables, {} rows", s.tables, s.rows)
}

fn before(w: &mut String, f: &Facts, consumers: &Consumers, discover: Option<&DiscoverResult>) {
    let describe = |side: &str| described(discover, side);
    let before = &consumers.before;
    let _ = writeln!(w, "## Before\n");
    let _ = writeln!(w, "```");
    let _ = writeln!(
        w,
        "{}",
        boxed(&format!("SOURCE {}", f.source), &describe("source"))
    );
    let _ = writeln!(w, "      ▲ {}", list(before.get("source")));
    let _ = writeln!(
        w,
        "{}",
        boxed(&format!("TARGET {}", f.target), &describe("target"))
    );
    let _ = writeln!(w, "      ▲ {}", list(before.get("target")));
    let _ = writeln!(w, "```\n");
    let _ = writeln!(w, "```mermaid\nflowchart LR");
    let _ = writeln!(w, "  S[(\"source {}<br/>{}\")]", f.source, describe("source"));
    let _ = writeln!(w, "  T[(\"target {}<br/>{}\")]", f.target, describe("target"));
    for (side, names) in before {
        for n in names {
            let _ = writeln!(
                w,
                "  {}[\"{n}\"] --> {}",
                mermaid_id(n),
                if *side == "source" { "S" } else { "T" }
            );
        }
    }
    let _ = writeln!(w, "```\n");
}

fn after(w: &mut String, f: &Facts, consumers: &Consumers, retired: Option<&DecommissionResult>) {
    let after_desc = format!("{} tables, {} rows", f.after.tables.len(), f.after.total_rows());
    let after_consumers = &consumers.after;
    let _ = writeln!(w, "## After\n");
    let _ = writeln!(w, "```");
    let _ = writeln!(
        w,
        "{}",
        boxed(
            &format!("TARGET {} (single source of truth)", f.target),
            &after_desc
        )
    );
    let _ = writeln!(
        w,
        "      ▲ {}",
        if after_consumers.is_empty() {
            "(no consumers in the plan)".to_string()
        } else {
            after_consumers.join(", ")
        }
    );
    let source_after = source_after(retired);
    let _ = writeln!(w, "SOURCE {}: {source_after}", f.source);
    let _ = writeln!(w, "```\n");
    let _ = writeln!(w, "```mermaid\nflowchart LR");
    let _ = writeln!(w, "  T[(\"target {}<br/>{after_desc}\")]", f.target);
    for n in after_consumers {
        let _ = writeln!(w, "  {}[\"{n}\"] --> T", mermaid_id(n));
    }
    let _ = writeln!(w, "```\n");
}

/// What became of the source, in a few words.
fn source_after(retired: Option<&DecommissionResult>) -> String {
    match retired.map(|r| (r, &r.retirement)) {
        Some((_, Some(r))) if r.destroyed => "destroyed (final dump kept)".to_string(),
        Some((
            _,
            Some(Retirement {
                retired_as: Some(name),
                ..
            }),
        )) => format!("quarantined as {name}"),
        Some((
            _,
            Some(Retirement {
                container: Some(c), ..
            }),
        )) => format!("container {c} stopped"),
        Some((_, Some(r))) if !r.final_dump.path.is_empty() => "retired".to_string(),
        Some((r, _)) => r.summary.clone(),
        None => "left as it was (no decommission in the plan)".to_string(),
    }
}

fn side_by_side(w: &mut String, f: &Facts, consumers: &Consumers, d: &DiscoverResult) {
    let _ = writeln!(w, "## Side by side\n");
    let _ = writeln!(w, "| | source before | target before | target after |");
    let _ = writeln!(w, "| --- | ---: | ---: | ---: |");
    let _ = writeln!(
        w,
        "| tables | {} | {} | {} |",
        d.source.tables,
        d.target.tables,
        f.after.tables.len()
    );
    let _ = writeln!(
        w,
        "| rows | {} | {} | {} |",
        d.source.rows,
        d.target.rows,
        f.after.total_rows()
    );
    let _ = writeln!(
        w,
        "| consumers | {} | {} | {} |",
        consumers.on("source"),
        consumers.on("target"),
        consumers.after.len()
    );
    let mut main: Vec<(String, i64)> = d.source.table_rows.clone();
    main.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (table, n) in main.iter().take(8) {
        let tgt = d
            .target
            .rows_of(table)
            .map(|x| x.to_string())
            .unwrap_or_else(|| "—".into());
        let now = f
            .after
            .storage_tables()
            .find(|t| &t.display() == table)
            .map(|t| t.rows.to_string())
            .unwrap_or_else(|| "—".into());
        let estimated = d.source.rows_estimated.contains(table);
        let n = if estimated {
            format!("about {n}")
        } else {
            n.to_string()
        };
        let _ = writeln!(w, "| rows of {table} | {n} | {tgt} | {now} |");
    }
    let _ = writeln!(w);
}

fn steps(w: &mut String, f: &Facts) {
    let _ = writeln!(w, "## Steps\n");
    let _ = writeln!(w, "| # | stage | state | started | seconds | result |");
    let _ = writeln!(w, "| ---: | --- | --- | --- | ---: | --- |");
    for (i, s) in f.stages.iter().enumerate() {
        let detail = s.detail().replace('|', "\\|");
        let _ = writeln!(
            w,
            "| {} | `{}` | {} | {} | {} | {detail} |",
            i + 1,
            s.stage,
            s.event,
            s.last_started_at
                .map(|t| t.format("%H:%M:%S").to_string())
                .unwrap_or_default(),
            s.seconds().map(|x| format!("{x:.1}")).unwrap_or_default()
        );
    }
    let _ = writeln!(w);
}

fn verification(w: &mut String, f: &Facts) {
    let _ = writeln!(w, "## Verification\n");
    // The online mode verifies inside replicate, under the slot's snapshot.
    let online = artefacts::<ReplicateResult>(f, cutover_pg::online::replicate::NAME).and_then(|r| r.verify);
    let under_snapshot = online.is_some();
    match artefacts::<VerifyResult>(f, cutover_core::stage::names::VERIFY_DATA).or(online) {
        Some(v) => {
            let hash = v.report.row_hash.describe();
            let _ = writeln!(
                w,
                "Every table compared by exact row count and {hash}, on both servers{}:\n",
                if under_snapshot {
                    " (by replicate, the source read under the replication slot's snapshot that the copy read; \
                     sequences are set at the switch)"
                } else {
                    ""
                }
            );
            let _ = writeln!(w, "| table | source rows | target rows | content hash | result |");
            let _ = writeln!(w, "| --- | ---: | ---: | --- | --- |");
            for t in &v.report.tables {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | `{}` | {} |",
                    t.table,
                    t.source_rows,
                    t.target_rows
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "null".into()),
                    t.source_hash,
                    if t.matches { "identical" } else { "DIFFERS" }
                );
            }
            let _ = writeln!(
                w,
                "\nSequences compared: {}; large objects: {}.\n",
                v.report.sequences_compared, v.report.large_objects.0
            );
        }
        None => {
            let _ = writeln!(w, "verify-data has not passed in this run.\n");
        }
    }
}

/// The online mode's write pause, as switch and resume recorded it.
fn online_pause(w: &mut String, f: &Facts) {
    if let Some(resume) = artefacts::<ResumeResult>(f, RESUME) {
        let switch = artefacts::<SwitchResult>(f, SWITCH).unwrap_or_default();
        let _ = writeln!(
            w,
            "The applications' write pause (online mode): from {} to {}, {} ms; pausing took {} ms, the target \
             caught up {} ms into it (source at {}), {} sequences set.\n",
            resume.pause_started,
            resume.pause_ended,
            resume.pause_millis,
            switch.pausing_millis,
            switch.catch_up_millis,
            switch.source_lsn,
            switch.sequences
        );
    }
}

/// The sentinel read through each consumer, and the fence through each login.
fn consumer_proofs(w: &mut String, f: &Facts) {
    if let Some(sync) = artefacts::<SyncResult>(f, cutover_core::stage::names::VERIFY_SYNC) {
        let _ = writeln!(
            w,
            "A sentinel row was written on the target and read through each consumer's connection:\n"
        );
        let _ = writeln!(w, "| consumer | sees the sentinel | reached | ms |");
        let _ = writeln!(w, "| --- | --- | --- | ---: |");
        for c in &sync.consumers {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} |",
                c.consumer,
                if c.sees_sentinel { "yes" } else { "NO" },
                c.reached.as_deref().unwrap_or("—"),
                c.millis
            );
        }
        let _ = writeln!(w);
        if !sync.fence.is_empty() {
            let _ = writeln!(
                w,
                "The fence, proved through each consumer's own login on the source (a role it lets in could \
                 write on both databases):\n"
            );
            let _ = writeln!(
                w,
                "| consumer | role | kept off the source | what the source answered |"
            );
            let _ = writeln!(w, "| --- | --- | --- | --- |");
            for p in &sync.fence {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} |",
                    p.consumer,
                    p.role,
                    if p.holds { "yes" } else { "NO" },
                    p.answer
                );
            }
            let _ = writeln!(w);
        }
    }
}

fn backup(w: &mut String, f: &Facts) {
    let _ = writeln!(w, "## Backup of the target before it was cleared\n");
    match artefacts::<BackupResult>(f, cutover_core::stage::names::BACKUP_TARGET) {
        Some(b) => {
            let _ = writeln!(
                w,
                "`{}` ({} bytes, sha256 `{}`), {}.\n\nTo restore it by hand into an empty database:\n\n```sh\n{}\n```\n\n`cutover rollback` does this for you.\n",
                b.path.display(),
                b.bytes,
                b.sha256,
                b.proof,
                b.restore
            );
        }
        None => {
            let _ = writeln!(w, "No backup was taken in this run.\n");
        }
    }
}

fn the_source(w: &mut String, f: &Facts, retired: Option<&DecommissionResult>) {
    let _ = writeln!(w, "## The source\n");
    match retired {
        Some(r) => {
            let _ = writeln!(w, "{}.", r.summary);
            let retirement = r.retirement.clone().unwrap_or_default();
            if !retirement.final_dump.path.is_empty() {
                let _ = writeln!(
                    w,
                    "Its final dump: `{}` (sha256 `{}`).",
                    retirement.final_dump.path, retirement.final_dump.sha256
                );
            }
            let _ = writeln!(
                w,
                "{}\n",
                if retirement.destroyed {
                    "It was destroyed: this cannot be undone; restore the final dump to bring it back."
                } else {
                    "Undo: `cutover rollback` brings it back."
                }
            );
        }
        None => {
            let _ = writeln!(w, "{}: {}.\n", f.source, source_after(None));
        }
    }
}

fn list(names: Option<&Vec<String>>) -> String {
    match names {
        Some(v) if !v.is_empty() => v.join(", "),
        _ => "(no consumer)".into(),
    }
}

fn mermaid_id(name: &str) -> String {
    format!(
        "c_{}",
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>()
    )
}

/// A text box: a title line and a detail line.
fn boxed(title: &str, detail: &str) -> String {
    let width = title.chars().count().max(detail.chars().count()) + 2;
    let line = "─".repeat(width);
    format!(
        "┌{line}┐\n│ {title:<w$} │\n│ {detail:<w$} │\n└{line}┘",
        w = width - 2
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::artefacts::FinalDump;

    #[test]
    fn what_became_of_the_source_is_said_from_its_retirement() {
        assert_eq!(source_after(None), "left as it was (no decommission in the plan)");
        let retired = |r: Retirement| DecommissionResult {
            summary: "retired".into(),
            retirement: Some(r),
        };
        let dump = FinalDump {
            path: "/runs/final.dump".into(),
            sha256: "ab".into(),
        };
        let destroyed = Retirement {
            destroyed: true,
            final_dump: dump.clone(),
            ..Default::default()
        };
        assert_eq!(
            source_after(Some(&retired(destroyed))),
            "destroyed (final dump kept)"
        );
        let renamed = Retirement {
            retired_as: Some("app_retired".into()),
            final_dump: dump,
            ..Default::default()
        };
        assert_eq!(
            source_after(Some(&retired(renamed))),
            "quarantined as app_retired"
        );
        let nothing = DecommissionResult {
            summary: "the source was already retired".into(),
            retirement: None,
        };
        assert_eq!(source_after(Some(&nothing)), "the source was already retired");
    }
}
