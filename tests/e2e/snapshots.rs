//! Snapshots of what operators read: `plan`, `status` and `report` on the
//! seed scenario with consumers, with ports, times, paths, ids, sizes and
//! hashes redacted (they change from run to run; the words must not).
//! Update with `INSTA_UPDATE=always cargo test --test e2e snapshots` and
//! review the diff.

use std::fs;

use crate::support::Scenario;

fn redactions() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path("snapshots");
    s.set_prepend_module_to_snapshot(false);
    for (pattern, replacement) in [
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
        (r"/tmp/[^\s)`'|,]+", "[PATH]"),
        (
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "[UUID]",
        ),
        (r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}( UTC)?", "[TIME]"),
        (r"\b\d{2}:\d{2}:\d{2}\b", "[HMS]"),
        (r"app_retired_\d{8}", "app_retired_[DATE]"),
        (r"\b[0-9a-f]{12,64}\b", "[SHA]"),
        (r"-?\d{15,}", "[HASH]"),
        (r"`-?\d+`", "`[HASH]`"),
        (r"\d+\.\d+ s\b", "[SECS] s"),
        (r"(\[TIME\]\s+)\d+\.\d\b", "$1[SECS]"),
        (r"PostgreSQL \d+\.\d+( \([^)]*\))?", "PostgreSQL [VERSION]"),
        (r"\| \d+\.\d \|", "| [SECS] |"),
        (r"\d+(\.\d)? (B|KiB|MiB|GiB)\b", "[SIZE]"),
        (r"\d+ kB", "[KB]"),
        (r"\d+ MB", "[MB]"),
        (r"\(\d+ bytes", "([BYTES] bytes"),
        (r"in \d+ ms", "in [MS] ms"),
        (r"(/app \| )\d+ \|", "$1[MS] |"),
        (r"by [^\s@]+@[^\s,]+", "by [OPERATOR]"),
    ] {
        s.add_filter(pattern, replacement);
    }
    s
}

#[test]
fn plan_status_and_report_read_the_same_every_time() {
    let plan = "\n[[consumer]]\nname = \"production\"\nkind = \"env\"\npath = \"production.env\"\nkey = \"DATABASE_URL\"\n\n\
                [[consumer]]\nname = \"staging\"\nkind = \"env\"\npath = \"staging.env\"\nkey = \"DATABASE_URL\"\n\n\
                [decommission]\ndriver = \"postgres\"\n";
    let s = Scenario::with(cutover_testkit::PgPair::seed().unwrap(), plan);
    let d = s.dir.path();
    fs::write(
        d.join("production.env"),
        format!("# prod\nDATABASE_URL={}\n", s.pair.source.url("app")),
    )
    .unwrap();
    fs::write(
        d.join("staging.env"),
        format!("DATABASE_URL={}\n", s.pair.target.url("app")),
    )
    .unwrap();
    let settings = redactions();

    let (code, plan_out, stderr) = s.run(&["plan"]);
    assert_eq!(code, 0, "{stderr}");
    settings.bind(|| insta::assert_snapshot!("plan", plan_out));

    let (code, _, stderr) = s.run(&["run", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, status, stderr) = s.run(&["status"]);
    assert_eq!(code, 0, "{stderr}");
    settings.bind(|| insta::assert_snapshot!("status", status));
    let (code, report, stderr) = s.run(&["report"]);
    assert_eq!(code, 0, "{stderr}");
    settings.bind(|| insta::assert_snapshot!("report", report));
}
