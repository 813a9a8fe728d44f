//! `yoink status`: each sale at a glance, the human form of `XINFO` and `XPENDING`.
//!
//! For each sale (the union of PostgreSQL's `sales` and the Redis registry, or only
//! `--sale`): stock, reserved, confirmed and released; the stream's length and the
//! group's lag; the pending count and the age of the oldest pending entry; the
//! consumers, with idle time and pending count; the dead letters, with count and the
//! oldest; the outbox backlog. `--json` prints one object per sale per line (fields:
//! `model::SaleStatus`, durations in ms), `--watch SECS` prints again every SECS
//! seconds until Ctrl-C.
//!
//! It never writes to either store, and is safe during a live sale: Redis is read with one bounded script
//! call per sale (`redis_side`: the pending list is never walked), PostgreSQL from one
//! read-only snapshot under a statement timeout (`postgres_side`). A store that cannot
//! be read never hangs the command: what the other store says is printed, the missing
//! figures are `null` (`?` for people) and the reason is in `errors`.
//!
//! Exit codes (`error::exit`, the same numbers as `yoink reconcile`):
//! - 0: every figure was read;
//! - 2: a store could not be read (the other store's figures were printed, if any);
//! - 3: `--sale` names a sale neither store knows;
//! - 64: a wrong command line (`--sale` not a sale id, `--watch 0`).
//!
//! With `--watch`, a failing pass (an outage, even of both stores) prints its error and
//! watching goes on; Ctrl-C ends it with 0.

pub mod error;
pub mod model;
mod pass;
pub mod postgres_side;
pub mod redis_side;
pub mod render;

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use yoink_core::{SaleId, StoreArgs};

pub use crate::error::{StatusError, StoreError, exit};
pub use crate::model::{ConsumerStatus, SaleStatus};
use crate::pass::{Stores, local_now_ms};
use crate::postgres_side::OutboxTotal;
pub use crate::render::render;

/// `yoink status` settings.
///
/// Exit codes: 0 ok, 2 a store could not be read (what the other store says is still
/// printed), 3 no such sale (`--sale` unknown to both stores), 64 wrong flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(
    after_help = "Exit codes: 0 ok, 2 a store could not be read (the other store's figures are still printed), 3 no such sale, 64 wrong flags."
)]
pub struct StatusArgs {
    /// Only this sale (exit 3 when neither store knows it).
    #[arg(long, value_name = "ID", env = "YOINK_STATUS_SALE")]
    pub sale: Option<String>,
    /// One JSON object per sale, one per line (durations in ms; a figure a store could
    /// not give is null, and the reason is in "errors").
    #[arg(long, env = "YOINK_STATUS_JSON")]
    pub json: bool,
    /// Print again every SECS seconds until Ctrl-C; a store outage is printed and
    /// watching goes on.
    #[arg(long, value_name = "SECS", env = "YOINK_STATUS_WATCH")]
    pub watch: Option<u64>,
}

impl StatusArgs {
    /// Checks the flags; the sale asked for, if any.
    pub fn check(&self) -> Result<Option<SaleId>, StatusError> {
        if self.watch == Some(0) {
            return Err(StatusError::BadFlag(
                "--watch must be at least 1 (seconds between prints)",
            ));
        }
        self.sale
            .as_deref()
            .map(|raw| {
                SaleId::parse(raw).map_err(|source| StatusError::BadSaleId {
                    raw: raw.to_owned(),
                    source,
                })
            })
            .transpose()
    }
}

/// Everything one pass read.
#[derive(Debug, Clone, Default)]
pub struct StatusReport {
    /// Sorted by sale id.
    pub sales: Vec<SaleStatus>,
    /// Every sale's unpublished outbox rows (`None`: PostgreSQL could not be read).
    pub outbox: Option<OutboxTotal>,
    /// Stores that could not be read at all (also in each sale's `errors`).
    pub errors: Vec<String>,
}

impl StatusReport {
    /// 0 when every figure was read, 2 when any is missing.
    pub fn exit_code(&self) -> i32 {
        if self.errors.is_empty() && self.sales.iter().all(|s| s.errors.is_empty()) {
            exit::OK
        } else {
            exit::STORE
        }
    }
}

/// One pass: every sale's status (or only `args.sale`'s).
pub async fn collect(stores: &StoreArgs, args: &StatusArgs) -> Result<StatusReport, StatusError> {
    let only = args.check()?;
    Stores::new(stores).collect(only.as_ref()).await
}

/// One pass written to `out`; the exit code (0, or 2 when a store could not be read).
pub async fn run_once(
    stores: &StoreArgs,
    args: &StatusArgs,
    out: &mut impl Write,
) -> Result<i32, StatusError> {
    let report = collect(stores, args).await?;
    let mut text = Vec::new();
    render(&mut text, &report, args.json)?;
    out.write_all(&text)?;
    out.flush()?;
    Ok(report.exit_code())
}

/// `--watch`: a pass every `every` until `shutdown`, written to `out` (after clearing
/// the screen when `clear_screen`). A pass that fails (an outage of both stores, an
/// unknown sale) prints its error (human form: into `out`; JSON: on stderr, so `out`
/// stays one sale object per line) and watching goes on. Returns 0 once `shutdown`
/// resolves; only a wrong flag or a broken `out` ends it early.
pub async fn watch(
    stores: &StoreArgs,
    args: &StatusArgs,
    every: Duration,
    out: &mut impl Write,
    clear_screen: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<i32, StatusError> {
    let only = args.check()?;
    let mut open = Stores::new(stores);
    tokio::pin!(shutdown);
    loop {
        let pass = tokio::select! {
            pass = open.collect(only.as_ref()) => pass,
            () = &mut shutdown => break,
        };
        let mut text = Vec::new();
        if clear_screen {
            // Cursor home, clear screen: each pass replaces the last, as watch(1) does.
            text.extend_from_slice(b"\x1b[H\x1b[2J");
        }
        if !args.json {
            writeln!(
                text,
                "yoink status at {}, every {} s (Ctrl-C stops)",
                clock(local_now_ms()),
                every.as_secs_f64()
            )?;
        }
        match pass {
            Ok(report) => render(&mut text, &report, args.json)?,
            Err(err) if args.json => eprintln!("Error: {err}"),
            Err(err) => writeln!(text, "! {err}")?,
        }
        out.write_all(&text)?;
        out.flush()?;
        tokio::select! {
            () = tokio::time::sleep(every) => {},
            () = &mut shutdown => break,
        }
    }
    Ok(exit::OK)
}

/// Epoch milliseconds as `2026-11-26 18:05:00 UTC`.
fn clock(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// Runs `yoink status`, printing to stdout; returns the exit code (see `StatusArgs`).
pub async fn run(stores: &StoreArgs, args: &StatusArgs) -> Result<i32, StatusError> {
    args.check()?;
    let mut stdout = std::io::stdout();
    match args.watch {
        None => run_once(stores, args, &mut stdout).await,
        Some(secs) => {
            let clear_screen = !args.json && stdout.is_terminal();
            watch(
                stores,
                args,
                Duration::from_secs(secs),
                &mut stdout,
                clear_screen,
                yoink_core::shutdown::signal(),
            )
            .await
        }
    }
}
