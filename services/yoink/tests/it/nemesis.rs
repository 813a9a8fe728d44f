//! `yoink nemesis` as an operator runs it: a short seeded run with every fault kind on
//! private stores exits 0 with a report that counts what happened; the same seed draws
//! the same schedule; and a fault planted mid-run (an order row deleted, a unit taken
//! from stock with no event) fails the run, named, with its seed.
//!
//! Each run starts its own private Redis and PostgreSQL: nothing here touches the
//! shared stores.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::YOINK;

/// `yoink nemesis <args> --out <dir>`, to the end.
fn nemesis(out: &Path, args: &[&str]) -> Output {
    std::process::Command::new(YOINK)
        .arg("nemesis")
        .args(args)
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "warn")
        // Its projectors trim as fast as they can: every fault meets the trimmer.
        .env("YOINK_TRIM_INTERVAL_MS", "100")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run yoink nemesis")
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn report(out: &Path) -> Value {
    let raw = std::fs::read_to_string(out.join("report.json")).expect("report.json is written");
    serde_json::from_str(&raw).expect("report.json is JSON")
}

fn number(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("report.{field} is a number: {report}"))
}

#[test]
fn a_short_run_with_every_fault_kind_exits_0_and_counts_what_happened() {
    let out = tempfile::tempdir().expect("temp dir");
    let output = nemesis(
        out.path(),
        &[
            "--seconds",
            "16",
            "--seed",
            "11",
            "--rate",
            "80",
            "--stock",
            "500",
        ],
    );
    let all = text(&output);
    assert_eq!(output.status.code(), Some(0), "{all}");

    let report = report(out.path());
    assert_eq!(report["verdict"], "ok", "{all}");
    assert_eq!(report["seed"], 11);
    for field in ["lost", "duplicated", "oversold"] {
        assert_eq!(number(&report, field), 0, "{field}: {all}");
    }
    assert!(number(&report, "accepted") > 100, "{all}");
    assert_eq!(
        number(&report, "confirmed") + number(&report, "released"),
        number(&report, "accepted")
            + report["check"]["indefinite_took_effect"]
                .as_u64()
                .unwrap_or(0),
        "every 202 and every indefinite outcome that took effect has one fate: {all}"
    );
    let kinds = report["faults_by_kind"]
        .as_object()
        .expect("faults_by_kind is an object");
    let faults: u64 = kinds.values().filter_map(Value::as_u64).sum();
    assert!(kinds.len() >= 4 && faults >= 5, "{kinds:?}\n{all}");
    assert_eq!(report["check"]["indefinite_unresolved"], 0, "{all}");
    assert_eq!(report["reconcile"]["exit_code"], 0, "{all}");
    // Every 202 appended an entry; the projectors trimmed what PostgreSQL took, through
    // the faults, and nothing above was lost for it.
    let left = report["drain"]["stream_length"]
        .as_u64()
        .unwrap_or_else(|| panic!("no stream length: {all}"));
    assert!(
        left < number(&report, "accepted"),
        "{left} entries left: {all}"
    );
    // The sale sold out and the limit bit: the run exercised both.
    let failed = &report["check"]["failed"];
    assert!(failed["sold_out"].as_u64().unwrap_or(0) > 0, "{all}");
    assert!(failed["limit_exceeded"].as_u64().unwrap_or(0) > 0, "{all}");

    // One invoke line and one outcome line per request.
    let history = std::fs::read_to_string(out.path().join("history.jsonl")).expect("history");
    let lines: Vec<Value> = history
        .lines()
        .map(|l| serde_json::from_str(l).expect("each history line is JSON"))
        .collect();
    let requests = report["check"]["requests"].as_u64().expect("requests") as usize;
    assert_eq!(lines.len(), 2 * requests);
    let invokes = lines.iter().filter(|l| l["type"] == "invoke").count();
    assert_eq!(invokes, requests);
    assert!(
        lines
            .iter()
            .filter(|l| l["type"] == "ok")
            .all(|l| l["reservation_id"].is_string())
    );
}

#[test]
fn the_same_seed_prints_the_same_schedule() {
    let out = tempfile::tempdir().expect("temp dir");
    let schedule = |seed: &str| {
        let output = nemesis(
            out.path(),
            &["--print-schedule", "--seconds", "60", "--seed", seed],
        );
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let first = schedule("1234");
    assert!(first.contains("seed 1234"), "{first}");
    assert!(first.contains("redis-older-snapshot"), "{first}");
    assert_eq!(first, schedule("1234"));
    assert_ne!(first, schedule("1235"));
}

/// A run of 8 s with `plant` planted mid-run (and two fault kinds beside it): it must
/// fail, name what it found, give its seed, and count the unit lost.
fn planted_fault_fails_the_run(plant: &str, seed: &str, faults: &str, named: &str) {
    let out = tempfile::tempdir().expect("temp dir");
    let output = nemesis(
        out.path(),
        &[
            "--seconds",
            "8",
            "--seed",
            seed,
            "--rate",
            "80",
            "--faults",
            faults,
            "--plant",
            plant,
            // A planted loss never drains (a deleted order leaves a 202 without a
            // fate for good): do not wait the default minute for it.
            "--drain-secs",
            "15",
        ],
    );
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(all.contains(named), "{all}");
    assert!(all.contains(&format!("FAILED with seed {seed}")), "{all}");
    let report = report(out.path());
    assert_eq!(report["verdict"], "failed");
    assert_eq!(number(&report, "lost"), 1, "{all}");
}

#[test]
fn a_deleted_order_row_fails_the_run_and_names_it() {
    planted_fault_fails_the_run(
        "delete-order",
        "5",
        "kill-projector,claim-to-ghost",
        "have no fate",
    );
}

#[test]
fn a_unit_taken_from_stock_with_no_event_fails_the_run_and_names_it() {
    planted_fault_fails_the_run(
        "steal-unit",
        "6",
        "kill-api,rewind-cursor",
        "taken from stock with no event",
    );
}

#[test]
fn against_given_stores_it_injects_only_the_faults_that_need_no_process_control() {
    let out = tempfile::tempdir().expect("temp dir");
    let output = nemesis(
        out.path(),
        &[
            "--stores",
            "given",
            "--seconds",
            "6",
            "--seed",
            "3",
            "--rate",
            "50",
        ],
    );
    let all = text(&output);
    assert_eq!(output.status.code(), Some(0), "{all}");
    let report = report(out.path());
    let kinds = report["faults_by_kind"]
        .as_object()
        .expect("faults_by_kind is an object");
    assert!(!kinds.is_empty(), "{all}");
    assert!(
        kinds
            .keys()
            .all(|k| k == "rewind-cursor" || k == "claim-to-ghost"),
        "{kinds:?}"
    );
    assert!(number(&report, "accepted") > 0, "{all}");
}

#[test]
fn a_fault_that_needs_process_control_is_refused_against_given_stores() {
    let out = tempfile::tempdir().expect("temp dir");
    let output = nemesis(
        out.path(),
        &[
            "--stores",
            "given",
            "--faults",
            "kill-api",
            "--print-schedule",
        ],
    );
    assert_eq!(output.status.code(), Some(64), "{}", text(&output));
    assert!(text(&output).contains("kill-api"));
}
