//! The `yoink` binary: parses the command line and hands off to a service crate.
//!
//! Only dispatch lives here (and `anyhow` context for the operator); every behaviour
//! belongs to a library crate where tests can reach it.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use yoink_api::ApiArgs;
use yoink_core::backoff::Backoff;
use yoink_core::sales::{self, CreateSale};
use yoink_core::scripts::SaleTerms;
use yoink_core::{Keyspace, RedisConn, SaleId, StoreArgs, TelemetryArgs, db, readiness, shutdown};
use yoink_projector::{ProjectorArgs, RelayArgs};
use yoink_reconciler::ReconcileArgs;

#[derive(Debug, Parser)]
#[command(name = "yoink", version, about = "Flash-sale purchase backend")]
struct Cli {
    #[command(flatten)]
    stores: StoreArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database if needed and apply schema/ migrations (idempotent).
    Migrate,
    /// Run the HTTP API.
    Serve {
        #[command(flatten)]
        api: ApiArgs,
        /// Do not apply migrations on start.
        #[arg(long, env = "YOINK_NO_MIGRATE")]
        no_migrate: bool,
        /// This process's own metrics listener ("off" to disable). `/metrics` on the API
        /// port answers too, but with several `serve` processes sharing that port it
        /// reaches any of them; scrape this one. Taken by another process: a port the
        /// OS picks (logged, and published with --metrics-sd-dir).
        #[arg(
            long,
            env = "YOINK_API_METRICS_LISTEN",
            default_value = "127.0.0.1:9103"
        )]
        metrics_listen: String,
    },
    /// Run a projector: stream entries -> orders in PostgreSQL (and the outbox relay).
    Project {
        #[command(flatten)]
        args: ProjectorArgs,
    },
    /// Run only the outbox relay (publishes order events to the order-events stream).
    // The flags are `yoink project`'s; `--batch` and `--interval-ms`, this command's
    // names before, stay as hidden aliases so existing scripts keep working.
    #[command(
        mut_arg("relay_batch", |arg| arg.alias("batch")),
        mut_arg("relay_interval_ms", |arg| arg.alias("interval-ms"))
    )]
    Relay {
        #[command(flatten)]
        args: RelayArgs,
        /// Where this process serves /metrics and /readyz ("off" to disable); taken by
        /// another process: a port the OS picks (logged, and published with
        /// --metrics-sd-dir).
        #[arg(
            long,
            env = "YOINK_RELAY_METRICS_LISTEN",
            default_value = "127.0.0.1:9104"
        )]
        metrics_listen: String,
    },
    /// Compare Redis with PostgreSQL (an archived sale: PostgreSQL alone); exit 0
    /// consistent or archived, 1 diverged, oversold, recovering, data lost, holds overdue
    /// or an archived sale's books unbalanced, 2 a store could not be read, 3 no such
    /// sale, 64 a wrong command line.
    Reconcile {
        #[command(flatten)]
        args: ReconcileArgs,
    },
    /// A flash sale as a user sees it: buyers through the real API, a live display, the
    /// drain, a reconcile and the report. Exit 0 only if nothing was oversold or lost.
    /// Uses REDIS_URL/DATABASE_URL when they answer, else private throwaway instances.
    Demo {
        #[command(flatten)]
        args: yoink_demo::DemoArgs,
    },
    /// The case study's versions side by side under one load: naive (V1), db-atomic
    /// (V2), redis-sync (V3, a PostgreSQL insert per buy over --pg-pool connections) and
    /// stream (Yoink). Writes results.json and report.md to --out. The comparison
    /// strategies exist only here.
    Bench {
        #[command(flatten)]
        args: yoink_bench::BenchArgs,
    },
    /// Each sale at a glance: stock, reserved, confirmed, released, stream length, group
    /// lag, pending entries and the oldest one's age, consumers, dead letters, the outbox
    /// backlog. Read-only, bounded Redis work per call: safe during a live sale.
    Status {
        #[command(flatten)]
        args: yoink_status::StatusArgs,
    },
    /// Dead letters: list, show (with the reservation's fate in PostgreSQL), replay once
    /// their cause is fixed, purge.
    Dlq {
        #[command(flatten)]
        args: yoink_dlq::DlqArgs,
    },
    /// A bounded, seeded fault-injection run: process kills, store restarts, Redis from an
    /// older snapshot, forced redeliveries; then every reservation is checked. Exit 0
    /// only if nothing was lost, duplicated or oversold.
    Nemesis {
        #[command(flatten)]
        args: yoink_nemesis::NemesisArgs,
    },
    /// Manage sales.
    Sale {
        #[command(subcommand)]
        command: SaleCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SaleCommand {
    /// Create a sale (never resets an existing sale's stock).
    Create(CreateSaleArgs),
    /// Close a sale now: buys then answer `sale_closed`. Idempotent; a sale that has not
    /// started is closed too. Exit 0 done (or ended already), 2 a store could not be
    /// reached, 3 no such sale.
    End {
        /// The sale to close.
        #[arg(long, env = "YOINK_SALE_ID")]
        id: String,
    },
    /// Archive an ended, drained, reconciled sale: PostgreSQL keeps it, every Redis key
    /// of it goes. Prints the plan; changes nothing without --yes. Exit 0 done (or plan
    /// printed), 1 refused (the reasons are printed), 2 a store could not be reached, 3
    /// no such sale.
    Archive(yoink_reconciler::archived::ArchiveArgs),
}

#[derive(Debug, Args)]
struct CreateSaleArgs {
    /// The sale's id: 1-64 characters of [A-Za-z0-9_.:-].
    #[arg(long, env = "YOINK_SALE_ID")]
    id: String,
    /// Units on sale.
    #[arg(long, env = "YOINK_SALE_STOCK")]
    stock: i64,
    /// Most units one buyer may hold (0 = no limit).
    #[arg(long, env = "YOINK_SALE_LIMIT_PER_USER", default_value_t = 0)]
    limit_per_user: i64,
    /// Opening time: RFC 3339 or epoch milliseconds (default: now).
    #[arg(long, env = "YOINK_SALE_STARTS_AT")]
    starts_at: Option<String>,
    /// Closing time: RFC 3339 or epoch milliseconds (default: never).
    #[arg(long, env = "YOINK_SALE_ENDS_AT")]
    ends_at: Option<String>,
    /// Seconds a reservation is held for payment before it expires and its units go
    /// back on sale; confirm it with POST /reservations/{id}/confirm (0 = no holds:
    /// every reservation is an order at once).
    #[arg(long, env = "YOINK_SALE_HOLD_SECONDS", default_value_t = 0)]
    hold_seconds: i64,
    /// The latest an extended hold may expire, in seconds from its reservation
    /// (default: --hold-seconds, so holds cannot be extended).
    #[arg(long, env = "YOINK_SALE_MAX_HOLD_SECONDS", default_value_t = 0)]
    max_hold_seconds: i64,
}

#[tokio::main]
async fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|err| {
        // --help and --version are not errors; a wrong command line gets EX_USAGE, its
        // own exit code, apart from every code a command itself documents.
        let code = if err.use_stderr() {
            yoink_reconciler::error::exit::USAGE
        } else {
            0
        };
        let _ = err.print();
        std::process::exit(code);
    });
    // The demo draws its own display: its in-process services log warnings only.
    let default_level = match cli.command {
        Command::Demo { .. }
        | Command::Bench { .. }
        | Command::Status { .. }
        | Command::Dlq { .. }
        | Command::Nemesis { .. } => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .init();
    let checked = cli.stores.check().and_then(|()| match &cli.command {
        Command::Project { args } => args.check(),
        Command::Relay { args, .. } => args.check(),
        Command::Reconcile { args } => args.check(),
        Command::Serve { api, .. } => api.check().map_err(|e| e.to_string()),
        _ => Ok(()),
    });
    if let Err(why) = checked {
        eprintln!("Error: {why}");
        std::process::exit(yoink_reconciler::error::exit::USAGE);
    }
    let outcome = match cli.command {
        // The operators' tools document their own exit codes.
        Command::Status { args } => exit_with(
            yoink_status::run(&cli.stores, &args).await,
            yoink_status::StatusError::exit_code,
        ),
        Command::Dlq { args } => exit_with(
            yoink_dlq::run(&cli.stores, &args).await,
            yoink_dlq::DlqError::exit_code,
        ),
        Command::Nemesis { args } => exit_with(
            yoink_nemesis::run(&cli.stores, &args).await,
            yoink_nemesis::NemesisError::exit_code,
        ),
        Command::Migrate => migrate(&cli.stores).await,
        Command::Serve {
            api,
            no_migrate,
            metrics_listen,
        } => {
            serve(
                &cli.stores,
                &cli.telemetry,
                api,
                no_migrate,
                &metrics_listen,
            )
            .await
        }
        Command::Project { args } => project(&cli.stores, &cli.telemetry, args).await,
        Command::Relay {
            args,
            metrics_listen,
        } => relay(&cli.stores, &cli.telemetry, args, &metrics_listen).await,
        Command::Reconcile { args } => reconcile(&cli.stores, &cli.telemetry, args).await,
        Command::Sale {
            command: SaleCommand::Create(args),
        } => create_sale(&cli.stores, args).await,
        Command::Sale {
            command: SaleCommand::End { id },
        } => {
            migrate_or_exit(&cli.stores).await;
            exit_with(
                yoink_reconciler::archived::end(&cli.stores, &id, &mut std::io::stdout()).await,
                yoink_reconciler::archived::SaleCommandError::exit_code,
            )
        }
        Command::Sale {
            command: SaleCommand::Archive(args),
        } => {
            migrate_or_exit(&cli.stores).await;
            exit_with(
                yoink_reconciler::archived::archive(&cli.stores, &args, &mut std::io::stdout())
                    .await,
                yoink_reconciler::archived::SaleCommandError::exit_code,
            )
        }
        Command::Demo { args } => demo(&cli.stores, &args).await,
        Command::Bench { args } => yoink_bench::run(&cli.stores, &args)
            .await
            .map(|_| ())
            .context("bench"),
    };
    if let Err(err) = outcome {
        eprintln!("Error: {}", one_line(err.as_ref()));
        std::process::exit(1);
    }
}

/// Migrates, or ends the process with exit code 2 (a store could not be reached), the
/// code the sale commands document for it.
async fn migrate_or_exit(stores: &StoreArgs) {
    if let Err(err) = migrate(stores).await {
        eprintln!("Error: {}", one_line(err.as_ref()));
        std::process::exit(yoink_reconciler::error::exit::STORE);
    }
}

/// Exits with a tool's own code: its verdict, or its error's code after printing it.
fn exit_with<E: std::error::Error + 'static>(
    outcome: Result<i32, E>,
    code_of: impl Fn(&E) -> i32,
) -> ! {
    match outcome {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("Error: {}", one_line(&err));
            std::process::exit(code_of(&err));
        }
    }
}

/// An error and its causes in one line, each cause once: a cause whose text is empty or
/// already part of the line adds nothing (errors often print their source themselves).
fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.trim().is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace('\n', " ")
}

/// Applies `schema/` now if PostgreSQL answers, else in the background as soon as it
/// does: a long-running command starts with the stores that are up (its work waits and
/// retries on its own). Anything but "unreachable" (a migration that fails) is fatal.
async fn migrate_when_reachable(stores: &StoreArgs) -> anyhow::Result<()> {
    let Err(err) = migrate(stores).await else {
        return Ok(());
    };
    if !unreachable(&err) {
        return Err(err);
    }
    tracing::warn!(error = %one_line(err.as_ref()), "PostgreSQL unreachable: starting without it; the schema is applied when it answers.");
    let stores = stores.clone();
    tokio::spawn(async move {
        let mut backoff = Backoff::new();
        loop {
            tokio::time::sleep(backoff.next_delay()).await;
            match migrate(&stores).await {
                Ok(()) => return,
                Err(err) if unreachable(&err) => {}
                Err(err) => {
                    tracing::error!(error = %one_line(err.as_ref()), "Applying schema/ failed.");
                    return;
                }
            }
        }
    });
    Ok(())
}

/// True when `err` says PostgreSQL could not be reached (as opposed to refusing).
fn unreachable(err: &anyhow::Error) -> bool {
    err.chain()
        .find_map(|e| e.downcast_ref::<db::DbError>())
        .is_some_and(db::is_unavailable)
}

/// The stores' probe (`/readyz` and `yoink_store_up` on the metrics listener), until
/// `stop` turns true.
fn probe_stores(
    redis: RedisConn,
    stores: &StoreArgs,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let pool = db::pool(&stores.database_url, 1)?;
    Ok(tokio::spawn(readiness::probe(
        redis,
        pool,
        std::time::Duration::from_secs(1),
        stop,
    )))
}

async fn project(
    stores: &StoreArgs,
    telemetry: &TelemetryArgs,
    args: ProjectorArgs,
) -> anyhow::Result<()> {
    migrate_when_reachable(stores).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let redis = RedisConn::open_waiting(stores)
        .await
        .context("opening Redis")?;
    let probe = probe_stores(redis, stores, stop_rx)?;
    let outcome = yoink_projector::run(
        stores,
        args,
        telemetry.metrics_sd_dir.as_deref(),
        shutdown::signal(),
    )
    .await
    .context("projector");
    let _ = stop_tx.send(true);
    let _ = probe.await;
    outcome
}

async fn migrate(stores: &StoreArgs) -> anyhow::Result<()> {
    db::ensure_database(&stores.database_url)
        .await
        .with_context(|| format!("creating database {}", stores.database_url_for_logs()))?;
    let pool = db::pool(&stores.database_url, 1)?;
    db::migrate(&pool).await.context("applying schema/")?;
    tracing::info!(database = %stores.database_url_for_logs(), "Schema is up to date.");
    Ok(())
}

async fn serve(
    stores: &StoreArgs,
    telemetry: &TelemetryArgs,
    api: ApiArgs,
    no_migrate: bool,
    metrics_listen: &str,
) -> anyhow::Result<()> {
    let listener = bind_shared(api.listen).with_context(|| format!("binding {}", api.listen))?;
    let (metrics_stop, metrics_stopped) = tokio::sync::watch::channel(false);
    let metrics = OwnMetrics::start(metrics_listen, "api", telemetry, metrics_stopped).await?;
    if !no_migrate {
        migrate_when_reachable(stores).await?;
    }
    let state = yoink_api::state(stores, &api).await?;
    let mut redis = state.redis.clone();
    yoink_api::durability::check_at_start(&state.durability, &mut redis)
        .await
        .with_context(|| format!("--durability {}", api.durability.as_str()))?;
    tracing::info!(
        listen = %api.listen,
        redis = %stores.redis_url_for_logs(),
        database = %stores.database_url_for_logs(),
        key_prefix = %stores.key_prefix,
        max_in_flight = api.max_in_flight,
        admin = api.admin_token.is_some(),
        checkout = api.checkout_token.is_some() || api.admin_token.is_some(),
        durability = api.durability.as_str(),
        "Serving the API."
    );
    yoink_api::run(listener, state, api, shutdown::signal()).await;
    let _ = metrics_stop.send(true);
    metrics.stopped().await;
    tracing::info!("API stopped.");
    Ok(())
}

/// A process's own metrics listener (`/metrics`, `/readyz`) and its published address,
/// for the commands whose library does not open one itself.
struct OwnMetrics {
    task: Option<tokio::task::JoinHandle<()>>,
    _published: Option<yoink_core::telemetry::ScrapeTarget>,
}

impl OwnMetrics {
    async fn start(
        listen: &str,
        role: &str,
        telemetry: &TelemetryArgs,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let Some(listener) = yoink_core::telemetry::bind_metrics(listen, role).await? else {
            return Ok(Self {
                task: None,
                _published: None,
            });
        };
        let published = match (&telemetry.metrics_sd_dir, listener.local_addr()) {
            (Some(dir), Ok(addr)) => Some(
                yoink_core::telemetry::ScrapeTarget::publish(dir, role, addr)
                    .context("publishing the metrics address")?,
            ),
            _ => None,
        };
        let task = tokio::spawn(yoink_core::telemetry::serve_metrics(listener, async move {
            let _ = stop.changed().await;
        }));
        Ok(Self {
            task: Some(task),
            _published: published,
        })
    }

    async fn stopped(self) {
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

/// The API's listener, with SO_REUSEPORT: several `serve` processes on one host share
/// the port and the kernel spreads connections among them (one process per core, or a
/// rolling restart with no refused connection). Only processes of the same user can
/// join a port this way.
fn bind_shared(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn create_sale(stores: &StoreArgs, args: CreateSaleArgs) -> anyhow::Result<()> {
    migrate(stores).await?;
    let sale_id = SaleId::parse(&args.id).with_context(|| format!("sale id {:?}", args.id))?;
    let time = |raw: &Option<String>| -> anyhow::Result<i64> {
        raw.as_deref()
            .map(sales::parse_time)
            .transpose()
            .map(|t| t.unwrap_or(0))
            .map_err(anyhow::Error::from)
    };
    let sale = CreateSale {
        sale_id,
        terms: SaleTerms {
            initial_stock: args.stock,
            limit_per_user: args.limit_per_user,
            starts_at_ms: time(&args.starts_at)?,
            ends_at_ms: time(&args.ends_at)?,
            hold_seconds: args.hold_seconds,
            max_hold_seconds: args.max_hold_seconds,
        },
    };
    let mut redis = RedisConn::open(stores).await.context("opening Redis")?;
    let pool = db::pool(&stores.database_url, 2)?;
    let keys = Keyspace::new(stores.key_prefix.clone());
    sales::create_sale(&mut redis, &keys, &pool, &sale)
        .await
        .with_context(|| format!("creating sale {}", sale.sale_id))?;
    let view = sales::view_sale(&mut redis, &keys, &pool, &sale.sale_id).await?;
    println!("{}", serde_json::to_string_pretty(&view)?);
    Ok(())
}

async fn relay(
    stores: &StoreArgs,
    telemetry: &TelemetryArgs,
    args: RelayArgs,
    metrics_listen: &str,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics = OwnMetrics::start(metrics_listen, "relay", telemetry, stop_rx.clone()).await?;
    migrate_when_reachable(stores).await?;
    let redis = RedisConn::open_waiting(stores)
        .await
        .context("opening Redis")?;
    let pool = db::pool(&stores.database_url, 2)?;
    let keys = Keyspace::new(stores.key_prefix.clone());
    let probe = probe_stores(redis.clone(), stores, stop_rx.clone())?;
    let relay = tokio::spawn(yoink_projector::relay::run(
        pool, redis, keys, args, stop_rx,
    ));
    shutdown::signal().await;
    let _ = stop_tx.send(true);
    relay.await.context("relay task")?;
    let _ = probe.await;
    metrics.stopped().await;
    Ok(())
}

/// The demo's exit code is its verdict: 0 nothing oversold or lost, 1 otherwise (or
/// when it could not run).
async fn demo(stores: &StoreArgs, args: &yoink_demo::DemoArgs) -> anyhow::Result<()> {
    let report = yoink_demo::run(stores, args).await?;
    println!("{report}");
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}

/// Exit codes are the interface here (0 consistent, 1 flagged, 2 a store could not be
/// read, 3 unknown sale; 64 for a wrong command line), so this ends the process itself.
async fn reconcile(
    stores: &StoreArgs,
    telemetry: &TelemetryArgs,
    args: ReconcileArgs,
) -> anyhow::Result<()> {
    let outcome = match args.watch {
        Some(secs) => {
            // A watcher starts whatever the stores' state; each pass opens them again.
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let redis = RedisConn::open_waiting(stores)
                .await
                .context("opening Redis")?;
            let probe = probe_stores(redis, stores, stop_rx)?;
            let watched = yoink_reconciler::watch(
                stores,
                &args,
                std::time::Duration::from_secs(secs.max(1)),
                telemetry.metrics_sd_dir.as_deref(),
                shutdown::signal(),
            )
            .await
            .map(|()| yoink_reconciler::Verdict::Consistent);
            let _ = stop_tx.send(true);
            let _ = probe.await;
            watched
        }
        None => yoink_reconciler::run_once(stores, &args, &mut std::io::stdout()).await,
    };
    match outcome {
        Ok(verdict) => std::process::exit(verdict.exit_code()),
        Err(err) => {
            eprintln!("yoink reconcile: {}", one_line(&err));
            std::process::exit(err.exit_code());
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every flag of every subcommand can also come from the environment, except the
    /// repair confirmation, which must be typed.
    #[test]
    fn every_flag_is_also_read_from_the_environment() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version" | "yes") || arg.is_positional() {
                    continue;
                }
                if arg.get_env().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "yoink", &mut missing);
        assert!(missing.is_empty(), "flags without env: {missing:?}");
    }

    #[test]
    fn an_error_chain_prints_each_cause_once_and_never_an_empty_one() {
        #[derive(Debug, thiserror::Error)]
        #[error("")]
        struct Silent;
        #[derive(Debug, thiserror::Error)]
        #[error("cannot reach PostgreSQL: {0}")]
        struct Outer(#[source] std::io::Error);
        let repeated = Outer(std::io::Error::other("connection refused"));
        assert_eq!(
            super::one_line(&repeated),
            "cannot reach PostgreSQL: connection refused"
        );
        let err = anyhow::Error::new(Silent).context("creating database");
        let line = super::one_line(err.as_ref());
        assert_eq!(line, "creating database");
        assert!(!line.ends_with(": "), "{line}");
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
