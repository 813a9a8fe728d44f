//! The command line: its definition as `yoink` mounts it, `--json` on every subcommand,
//! and the exit codes each documents.

use clap::{CommandFactory, Parser};
use yoink_core::events::SaleEvent;
use yoink_dlq::{DlqArgs, exit};

use crate::fixture::{Fixture, dead_lettered_sale, newer_reader};

/// `yoink dlq ...` as the binary declares it: the args flattened into a subcommand.
#[derive(Debug, Parser)]
#[command(name = "yoink")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Dlq {
        #[command(flatten)]
        args: DlqArgs,
    },
}

fn parse(line: &[&str]) -> DlqArgs {
    let argv = ["yoink", "dlq"].iter().chain(line);
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Dlq { args },
        }) => args,
        Err(err) => panic!("{line:?}: {err}"),
    }
}

/// Runs `yoink dlq <line>` on the fixture's stores: (exit code, stdout).
async fn run(f: &Fixture, line: &[&str]) -> (i32, String) {
    run_with(f, line, SaleEvent::from_fields).await
}

async fn run_with(f: &Fixture, line: &[&str], read: yoink_dlq::EventReader) -> (i32, String) {
    let args = parse(line);
    let mut dlq = f.dlq();
    let mut out = Vec::new();
    let code = match yoink_dlq::execute(&mut dlq, &args, read, &mut out).await {
        Ok(code) => code,
        Err(err) => err.exit_code(),
    };
    (code, String::from_utf8(out).expect("UTF-8 output"))
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|err| panic!("{err}: {out}"))
}

#[test]
fn the_command_line_is_consistent_and_every_flag_but_yes_reads_the_environment() {
    Cli::command().debug_assert();
    let mut missing = Vec::new();
    let cli = Cli::command();
    let dlq = cli.find_subcommand("dlq").expect("dlq");
    for sub in dlq.get_subcommands() {
        for arg in sub.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "yes") || arg.is_positional() {
                continue;
            }
            if arg.get_env().is_none() {
                missing.push(format!("{} --{id}", sub.get_name()));
            }
        }
    }
    assert!(missing.is_empty(), "flags without env: {missing:?}");
}

#[test]
fn wrong_flags_exit_64_before_any_store_is_opened() {
    for line in [
        &["replay"][..],
        &["replay", "s/1-0", "--all"],
        &["purge", "--all"],
        &["purge"],
        &["replay", "--all", "--limit", "0"],
        &["replay", "--all", "--max-replays", "0"],
        &["list", "--limit", "0"],
        &["show", "nosale"],
        &["show", "s/1-0", "--sale", "other"],
        &["replay", "s/not-an-id"],
        &["purge", "1-0"],
    ] {
        let err = yoink_dlq::check(&parse(line)).expect_err(&format!("{line:?}"));
        assert_eq!(err.exit_code(), exit::USAGE, "{line:?}");
    }
    yoink_dlq::check(&parse(&["purge", "--all", "--yes"])).expect("confirmed");
    yoink_dlq::check(&parse(&["replay", "s/1-0"])).expect("one entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_answers_json_and_exits_as_documented() {
    let f = dead_lettered_sale("cli").await;
    let sale = f.sale.as_str();

    let (code, out) = run(&f, &["list", "--sale", sale, "--json"]).await;
    assert_eq!(code, exit::DONE);
    let listing = json(&out);
    assert_eq!(
        listing["entries"].as_array().map(Vec::len),
        Some(4),
        "{listing}"
    );
    assert_eq!(listing["counts_by_reason"]["malformed"], 3);
    let (code, out) = run(&f, &["list", "--sale", sale]).await;
    assert_eq!(code, exit::DONE);
    assert!(
        out.contains("by reason: malformed 3, refused:23514 1"),
        "{out}"
    );

    let refused = f.letter(&f.original_of(f.refused).await).await.entry;
    let (code, out) = run(&f, &["show", &refused, "--json"]).await;
    assert_eq!(code, exit::DONE);
    let shown = json(&out);
    assert_eq!(shown["fate"]["fate"], "released", "{shown}");
    assert_eq!(shown["event"]["user_id"], "refused");
    let (code, out) = run(&f, &["show", &refused]).await;
    assert_eq!(code, exit::DONE);
    assert!(out.contains("released, final"), "{out}");

    let (code, out) = run(&f, &["replay", &refused, "--json"]).await;
    assert_eq!(code, exit::UNRESOLVED);
    assert_eq!(json(&out)["entries"][0]["outcome"], "released_final");

    let newer = f.letter(&f.newer_original).await;
    let id_only = newer.id.clone();
    let (code, out) = run_with(
        &f,
        &["replay", &id_only, "--sale", sale, "--dry-run", "--json"],
        newer_reader,
    )
    .await;
    assert_eq!(code, exit::DONE, "{out}");
    let report = json(&out);
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["entries"][0]["outcome"], "projected");
    assert_eq!(f.orders_of(f.newer).await, 0);
    let (code, out) = run_with(&f, &["replay", &newer.entry], newer_reader).await;
    assert_eq!(code, exit::DONE, "{out}");
    assert!(out.contains("projected, removed: order written"), "{out}");
    assert_eq!(f.orders_of(f.newer).await, 1);

    let (code, _) = run(&f, &["show", &newer.entry]).await;
    assert_eq!(code, exit::NOT_FOUND, "replayed entries are gone");
    let (code, _) = run(&f, &["list", "--sale", "no-such-sale"]).await;
    assert_eq!(code, exit::NOT_FOUND);
    let (code, _) = run(&f, &["show", "nosale"]).await;
    assert_eq!(code, exit::USAGE);

    let (code, _) = run(&f, &["purge", "--all", "--sale", sale]).await;
    assert_eq!(code, exit::USAGE, "--all needs --yes");
    assert_eq!(f.dead_copies().await, 3);
    let (code, out) = run(&f, &["purge", "--all", "--sale", sale, "--yes", "--json"]).await;
    assert_eq!(code, exit::DONE);
    assert_eq!(json(&out)["copies_removed"], 3);
    let (code, out) = run(&f, &["list", "--json"]).await;
    assert_eq!(code, exit::DONE);
    assert_eq!(json(&out)["entries"].as_array().map(Vec::len), Some(0));
}
