//! Every dashboard panel and every alert answers from live data: a real Prometheus
//! (the Debian package) scrapes real `yoink serve`, `yoink project` and `yoink
//! reconcile --watch` processes and the two store exporters through a short sale that
//! sells out, with a Redis outage (503s, transient projector errors, Redis coming back
//! empty: a rollback and a rebuild), a dead letter and holds. Then every PromQL
//! expression of `observability/grafana/dashboards/*.json` and of
//! `observability/alerts.yml` (as Prometheus loaded it) is evaluated over the sale's
//! window through the HTTP API; the test fails with the list of those that return no
//! data or do not evaluate. It never skips: without the Prometheus packages it fails
//! with the command that installs them.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use serde_json::{Value, json};
use yoink_core::SaleId;
use yoink_testkit::prometheus::{
    Exporter, PrivatePrometheus, QueryError, ScrapeJob, Series, dashboard_queries, inner_series,
    metric_names, or_branches, require_binary, substitute,
};
use yoink_testkit::{AppOptions, PrivateRedis, Spawned, eventually, free_port, spawn_app_with};

use crate::YOINK;

const TOKEN: &str = "observability-test-token";
/// Scrape and rule-evaluation interval of the test's Prometheus.
const SCRAPE: Duration = Duration::from_secs(1);
/// Grafana's `$__rate_interval` for that scrape interval and a 1 s step:
/// max(step + scrape interval, 4 × scrape interval).
const RATE_INTERVAL: &str = "4s";
/// The sale that sells out, and the sale with holds.
const FLASH: &str = "flash";
const HELD: &str = "held";

fn observability_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../observability")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// What one expression returned over the window.
#[derive(Debug)]
enum Outcome {
    /// Series with at least one number: how many series.
    Data(usize),
    /// No series at all.
    Empty,
    /// Series, but only NaN (a quantile of nothing): a panel draws no line.
    NanOnly,
    /// Prometheus refused it (or an unknown variable was left in it).
    Broken(String),
}

impl Outcome {
    fn of(result: Result<Vec<Series>, QueryError>) -> Self {
        match result {
            Err(err) => Outcome::Broken(err.to_string()),
            Ok(series) if series.is_empty() => Outcome::Empty,
            Ok(series) if !series.iter().any(Series::has_number) => Outcome::NanOnly,
            Ok(series) => Outcome::Data(series.len()),
        }
    }

    fn has_data(&self) -> bool {
        matches!(self, Outcome::Data(_))
    }

    fn describe(&self) -> String {
        match self {
            Outcome::Data(n) => format!("data ({n} series)"),
            Outcome::Empty => "EMPTY".into(),
            Outcome::NanOnly => "NaN only".into(),
            Outcome::Broken(why) => format!("BROKEN: {why}"),
        }
    }
}

/// The `yoink serve` under test, over HTTP.
struct Live {
    http: reqwest::Client,
    api: String,
}

impl Live {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let sent = self
            .http
            .post(format!("{}{path}", self.api))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    async fn buy(&self, sale: &str, user: &str) -> (u16, Value) {
        self.post(
            "/buy",
            json!({ "sale_id": sale, "user_id": user, "quantity": 1 }),
        )
        .await
    }

    /// `n` buys at once from new buyers; their statuses.
    async fn buy_many(&self, sale: &str, prefix: &str, n: usize) -> Vec<(u16, Value)> {
        join_all((0..n).map(|i| async move { self.buy(sale, &format!("{prefix}-{i}")).await }))
            .await
    }
}

fn count(answers: &[(u16, Value)], status: u16) -> usize {
    answers.iter().filter(|(s, _)| *s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_panel_and_alert_returns_data_from_a_live_sale() {
    let began = Instant::now();
    for binary in [
        "prometheus",
        "prometheus-redis-exporter",
        "prometheus-postgres-exporter",
    ] {
        require_binary(binary);
    }
    let dir = observability_dir();
    let local_config = std::fs::read_to_string(dir.join("prometheus.local.yml"))
        .expect("observability/prometheus.local.yml");

    // Stores: a private Redis (it is stopped below) with a replica (`serve
    // --durability replica` waits for it), and the test's own database.
    let mut redis = PrivateRedis::start().await;
    let _replica = PrivateRedis::start_replica_of(&redis).await;
    let app = spawn_app_with(AppOptions {
        redis_url: Some(redis.url()),
        ..AppOptions::default()
    })
    .await;

    // The three long-running roles, as an operator runs them, on free ports.
    let (api_port, projector_port, reconciler_port) = (free_port(), free_port(), free_port());
    let mut processes = [
        Spawned::start(
            app.yoink_command(YOINK)
                .args(["serve", "--listen", &format!("127.0.0.1:{api_port}")])
                .args(["--durability", "replica", "--durability-timeout-ms", "300"])
                .args(["--fence-refresh-ms", "200"])
                .env("YOINK_ADMIN_TOKEN", TOKEN),
        ),
        Spawned::start(
            app.yoink_command(YOINK)
                .args(["project", "--consumer", "live"])
                .args(["--metrics-listen", &format!("127.0.0.1:{projector_port}")])
                .args(["--block-ms", "100", "--claim-idle-ms", "500"])
                .args([
                    "--claim-interval-ms",
                    "100",
                    "--discover-interval-ms",
                    "100",
                ])
                .args(["--max-deliveries", "2", "--expiry-interval-ms", "100"]),
        ),
        Spawned::start(
            app.yoink_command(YOINK)
                .args(["reconcile", "--all", "--watch", "1"])
                .args(["--metrics-listen", &format!("127.0.0.1:{reconciler_port}")]),
        ),
    ];
    let redis_exporter = Exporter::redis(&redis.url()).await;
    let postgres_exporter = Exporter::postgres(&app.db.url).await;

    // The jobs of observability/prometheus.local.yml, on this test's ports.
    let jobs = [
        ScrapeJob::new("yoink-api", format!("127.0.0.1:{api_port}")),
        ScrapeJob::new("yoink-projector", format!("127.0.0.1:{projector_port}")),
        ScrapeJob::new("yoink-reconciler", format!("127.0.0.1:{reconciler_port}")),
        ScrapeJob::new("redis", redis_exporter.target.clone()),
        ScrapeJob::new("postgres", postgres_exporter.target.clone()),
    ];
    for job in &jobs {
        assert!(
            local_config.contains(&format!("job_name: {}\n", job.job)),
            "observability/prometheus.local.yml has no job {:?}: the test scrapes what the \
             dashboards' users scrape",
            job.job
        );
    }
    let prometheus = PrivatePrometheus::start(&jobs, &[dir.join("alerts.yml")], SCRAPE).await;
    if let Err(down) = prometheus.wait_targets_up(Duration::from_secs(20)).await {
        let mut logs: Vec<String> = processes.iter().map(Spawned::output).collect();
        logs.push(redis_exporter.output());
        logs.push(postgres_exporter.output());
        panic!(
            "targets not up: {down:?}\noutput of serve, project, reconcile, exporters: {logs:#?}"
        );
    }
    let window_start = unix_now();

    let live = Live {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client"),
        api: format!("http://127.0.0.1:{api_port}"),
    };
    let (status, body) = live
        .post("/sales", json!({ "sale_id": FLASH, "stock": 300 }))
        .await;
    assert_eq!(status, 201, "create {FLASH}: {body}");
    let (status, body) = live
        .post(
            "/sales",
            json!({ "sale_id": HELD, "stock": 10, "hold_seconds": 1 }),
        )
        .await;
    assert_eq!(status, 201, "create {HELD}: {body}");

    // 1. Half the sale sells.
    let first = live.buy_many(FLASH, "early", 150).await;
    assert!(
        count(&first, 202) > 0,
        "no 202 before the outage: {first:?}"
    );

    // 2. Redis goes away for a second (503s, transient projector errors, the exporter
    //    sees it down) and comes back empty: Redis went back in time, the sale is
    //    suspended and rebuilt from PostgreSQL.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    redis.stop();
    let mut during = Vec::new();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_millis(1_200) {
        during.extend(
            live.buy_many(FLASH, &format!("outage-{}", during.len()), 10)
                .await,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.start_again().await;
    assert!(
        count(&during, 503) > 0,
        "no 503 while Redis was down: {during:?}"
    );

    // 3. The rest sells out (through 503 sale_recovering while the sale is rebuilt).
    let mut after = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !after
        .iter()
        .any(|(s, b): &(u16, Value)| *s == 409 && b["error"] == "sold_out")
    {
        assert!(
            Instant::now() < deadline,
            "the sale never sold out after Redis came back: last answers {:?}",
            after.iter().rev().take(5).collect::<Vec<_>>()
        );
        after.extend(
            live.buy_many(FLASH, &format!("late-{}", after.len()), 25)
                .await,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // (A 503 not_durable keeps its reservation: the units are sold all the same.)
    let sale_now: Value = match live
        .http
        .get(format!("{}/sales/{FLASH}", live.api))
        .send()
        .await
    {
        Ok(response) => response.json().await.unwrap_or(Value::Null),
        Err(err) => panic!("GET /sales/{FLASH}: {err}"),
    };
    assert_eq!(sale_now["remaining"], 0, "the sale sold out: {sale_now}");

    // 4. A dead letter: an entry no projector can parse, in the sale's stream.
    let flash = SaleId::parse(FLASH).expect("a valid sale id");
    let client = redis::Client::open(redis.url()).expect("valid URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the private Redis");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let _: String = redis::cmd("XADD")
        .arg(app.keys().events(&flash))
        .arg("*")
        .arg("type")
        .arg("reserved")
        .arg("note")
        .arg("not an event: written by the observability test")
        .query_async(&mut conn)
        .await
        .expect("XADD a malformed entry");
    let dead_key = app.keys().dead_letters(&flash);
    let dead_lettered = eventually(Duration::from_secs(20), || {
        let (mut conn, key) = (conn.clone(), dead_key.clone());
        async move {
            let len: i64 = redis::cmd("XLEN")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap_or(0);
            len >= 1
        }
    })
    .await;
    assert!(dead_lettered, "the malformed entry was never dead-lettered");

    // 5. Holds: one confirmed, one cancelled, two left to expire.
    let holds = live.buy_many(HELD, "holder", 4).await;
    let ids: Vec<String> = holds
        .iter()
        .filter(|(s, _)| *s == 202)
        .filter_map(|(_, b)| b["reservation_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 4, "four holds: {holds:?}");
    let (status, body) = live
        .post(&format!("/reservations/{}/confirm", ids[0]), json!({}))
        .await;
    assert_eq!(status, 200, "confirm: {body}");
    let (status, body) = live
        .post(&format!("/reservations/{}/cancel", ids[1]), json!({}))
        .await;
    assert_eq!(status, 200, "cancel: {body}");
    let held = SaleId::parse(HELD).expect("a valid sale id");
    let holds_key = app.keys().holds(&held);
    let expired = eventually(Duration::from_secs(15), || {
        let (mut conn, key) = (conn.clone(), holds_key.clone());
        async move {
            let waiting: i64 = redis::cmd("ZCARD")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap_or(-1);
            waiting == 0
        }
    })
    .await;
    assert!(expired, "the two unconfirmed holds never expired");

    // Let a reconcile pass and a few scrapes see the end state.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let window_end = unix_now();
    for (i, p) in processes.iter_mut().enumerate() {
        assert!(p.alive(), "process {i} exited:\n{}", p.output());
    }

    // Every expression, over the window.
    let range = format!("{}s", (window_end - window_start).ceil());
    let sales = format!("{FLASH}|{HELD}");
    let variables = [
        ("sale", sales.as_str()),
        ("__rate_interval", RATE_INTERVAL),
        ("__interval", "1s"),
        ("__range", range.as_str()),
    ];
    let evaluate = |expr: String| {
        let prometheus = &prometheus;
        async move {
            if expr.contains('$') {
                return Outcome::Broken("a variable the test does not know".into());
            }
            Outcome::of(
                prometheus
                    .query_range(&expr, window_start, window_end, 1.0)
                    .await,
            )
        }
    };
    let mut table = String::new();
    let mut failures = Vec::new();
    let (mut panel_exprs, mut panel_ok) = (0, 0);
    for query in dashboard_queries(&dir.join("grafana/dashboards")) {
        let expr = substitute(&query.expr, &variables);
        let whole = evaluate(expr.clone()).await;
        // Each `or` branch on its own: `x or vector(0)` draws 0 when x is missing.
        let mut parts = Vec::new();
        let branches = or_branches(&expr);
        if branches.len() > 1 || branches.first().is_some_and(|b| *b != expr.trim()) {
            for branch in branches {
                let outcome = evaluate(branch.clone()).await;
                parts.push((branch, outcome));
            }
        }
        let ok = whole.has_data() && parts.iter().all(|(_, o)| o.has_data());
        panel_exprs += 1;
        panel_ok += usize::from(ok);
        let _ = writeln!(
            table,
            "{:<4} {:<12} {:<48} {:<18} {}",
            if ok { "ok" } else { "FAIL" },
            query.dashboard,
            short(&query.panel, 48),
            short(&whole.describe(), 18),
            short(&expr, 110)
        );
        if !whole.has_data() {
            failures.push((
                format!(
                    "{} / {:?} [{}]: {}",
                    query.dashboard,
                    query.panel,
                    query.legend,
                    whole.describe()
                ),
                expr.clone(),
            ));
        }
        for (branch, outcome) in parts.iter().filter(|(_, o)| !o.has_data()) {
            let _ = writeln!(table, "       `or` branch {}: {branch}", outcome.describe());
            failures.push((
                format!(
                    "{} / {:?} [{}]: its `or` branch returned {}",
                    query.dashboard,
                    query.panel,
                    query.legend,
                    outcome.describe()
                ),
                branch.clone(),
            ));
        }
    }

    // The alerts, as Prometheus loaded them from observability/alerts.yml.
    let rules = prometheus
        .alerting_rules()
        .await
        .expect("Prometheus lists its rules");
    assert!(
        !rules.is_empty(),
        "Prometheus loaded no alert from alerts.yml:\n{}",
        prometheus.output()
    );
    let (mut inner_total, mut inner_ok) = (0, 0);
    for rule in &rules {
        let whole = evaluate(rule.query.clone()).await;
        if let Outcome::Broken(why) = &whole {
            failures.push((
                format!("alert {} does not evaluate: {why}", rule.name),
                rule.query.clone(),
            ));
        }
        let fired = match &whole {
            Outcome::Data(_) => "fired",
            Outcome::Broken(_) => "BROKEN",
            _ => "quiet",
        };
        for inner in inner_series(&rule.query) {
            let outcome = evaluate(inner.clone()).await;
            inner_total += 1;
            inner_ok += usize::from(outcome.has_data());
            let _ = writeln!(
                table,
                "{:<4} {:<12} {:<48} {:<18} {}",
                if outcome.has_data() { "ok" } else { "FAIL" },
                "alerts.yml",
                short(&format!("{} ({fired})", rule.name), 48),
                short(&outcome.describe(), 18),
                short(&inner, 110)
            );
            if !outcome.has_data() {
                failures.push((
                    format!(
                        "alert {} ({}): inner series returned {}",
                        rule.name,
                        rule.group,
                        outcome.describe()
                    ),
                    inner.clone(),
                ));
            }
        }
    }

    // The first dead letter is an increase of 1 on the dead-letter panel (a counter
    // born at its first event would show nothing).
    let dead_letter_panel = dashboard_queries(&dir.join("grafana/dashboards"))
        .into_iter()
        .find(|q| q.expr.contains("increase(yoink_dead_letters_total"))
        .expect("a dashboard panel shows the increase of yoink_dead_letters_total");
    let panel_expr = substitute(
        &dead_letter_panel.expr,
        &[("sale", FLASH), ("__rate_interval", RATE_INTERVAL)],
    );
    let series = prometheus
        .query_range(&panel_expr, window_start, window_end, 1.0)
        .await
        .unwrap_or_default();
    let peak = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(_, v)| *v))
        .filter(|v| !v.is_nan())
        .fold(f64::NAN, f64::max);
    let dead_letter_shown = (0.9..2.0).contains(&peak);
    if !dead_letter_shown {
        failures.push((
            format!(
                "the dead-letter panel {:?} peaked at {peak} for the first dead letter, not 1",
                dead_letter_panel.panel
            ),
            panel_expr.clone(),
        ));
    }

    println!(
        "\nLive check over {:.0} s of a sale ({} /buy answers: 202 {}, 409 {}, 503 {}):\n{table}",
        window_end - window_start,
        first.len() + during.len() + after.len(),
        count(&first, 202) + count(&during, 202) + count(&after, 202),
        count(&first, 409) + count(&during, 409) + count(&after, 409),
        count(&first, 503) + count(&during, 503) + count(&after, 503),
    );
    println!(
        "dashboard expressions: {panel_exprs}, returned data: {panel_ok}; alert rules: {}, \
         inner series: {inner_total}, returned data: {inner_ok}; dead-letter panel peak: {peak} \
         (wall time {:.0} s)",
        rules.len(),
        began.elapsed().as_secs_f64()
    );
    let mut report = String::new();
    for (what, expr) in &failures {
        let _ = writeln!(report, "  {what}\n      {expr}");
        for line in diagnose(&prometheus, expr, window_start, window_end).await {
            let _ = writeln!(report, "      - {line}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} expressions returned no data or did not evaluate:\n{report}",
        failures.len()
    );
}

/// For each metric `expr` reads: absent over the window, or when it first appeared
/// and with what value (summed over its series). A histogram is read through its
/// `_count`. A counter that first appears at 1 has no increase to show.
async fn diagnose(prometheus: &PrivatePrometheus, expr: &str, start: f64, end: f64) -> Vec<String> {
    let mut lines = Vec::new();
    for name in metric_names(expr) {
        let read = name
            .strip_suffix("_bucket")
            .map_or_else(|| name.clone(), |base| format!("{base}_count"));
        let series = prometheus
            .query_range(&format!("sum({read})"), start, end, 1.0)
            .await
            .unwrap_or_default();
        let points: Vec<(f64, f64)> = series.into_iter().flat_map(|s| s.points).collect();
        lines.push(match (points.first(), points.last()) {
            (Some((t0, v0)), Some((_, v1))) => format!(
                "{read}: first seen {:.0} s into the window at {v0}, last {v1}",
                t0 - start
            ),
            _ => format!("{read}: no series at all in the window"),
        });
    }
    lines
}

/// `text` cut to `width` characters, on one line.
fn short(text: &str, width: usize) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= width {
        line
    } else {
        let cut: String = line.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}
