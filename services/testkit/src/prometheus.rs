//! A real Prometheus for tests (the Debian package's `prometheus` binary) on a free
//! loopback port with a generated configuration, the two store exporters
//! (`prometheus-redis-exporter`, `prometheus-postgres-exporter`) on free ports, and what
//! a test needs to hold the dashboards and alert rules to live data: every PromQL
//! expression of the Grafana dashboards, the inner series of an alert, range queries
//! through the HTTP API.
//!
//! It must never touch a Prometheus or exporter it did not start (every process is its
//! own, on a port the OS picked, killed on drop), and never skip: a missing binary
//! fails the test with the command that installs it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::{Spawned, eventually, free_port};

/// What `scripts/ensure-services.sh` installs for the live observability test.
pub const INSTALL_HINT: &str = "YOINK_NEED=\"prometheus prometheus-redis-exporter \
    prometheus-postgres-exporter\" scripts/ensure-services.sh";

/// The path of `binary` on PATH; panics, naming the Debian package and the install
/// command, when it is not there (the live test never skips).
pub fn require_binary(binary: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(binary))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{binary}` is not installed: this test runs the Debian package of that name. \
             Install it with: {INSTALL_HINT}"
        )
    })
}

/// One scrape job of the generated configuration.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    pub job: String,
    /// `host:port`.
    pub target: String,
}

impl ScrapeJob {
    pub fn new(job: &str, target: impl Into<String>) -> Self {
        Self {
            job: job.to_owned(),
            target: target.into(),
        }
    }
}

/// A failed query: Prometheus unreachable, or it refused the expression.
#[derive(Debug)]
pub enum QueryError {
    /// The HTTP request failed or the answer was not JSON.
    Http(reqwest::Error),
    /// Prometheus answered `status: error` (a parse or evaluation error).
    Refused { kind: String, message: String },
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Http(err) => write!(f, "HTTP: {err}"),
            QueryError::Refused { kind, message } => write!(f, "{kind}: {message}"),
        }
    }
}

impl std::error::Error for QueryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QueryError::Http(err) => Some(err),
            QueryError::Refused { .. } => None,
        }
    }
}

/// One series of a range query: its labels and its `(unix time, value)` points.
#[derive(Debug, Clone)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// Whether any point is a number (NaN is what a quantile of nothing gives: a
    /// panel shows no line for it).
    pub fn has_number(&self) -> bool {
        self.points.iter().any(|(_, v)| !v.is_nan())
    }
}

/// An alerting rule as Prometheus loaded it.
#[derive(Debug, Clone)]
pub struct AlertRule {
    pub group: String,
    pub name: String,
    pub query: String,
}

/// A `prometheus` process of the test's own.
pub struct PrivatePrometheus {
    pub port: u16,
    process: Spawned,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl PrivatePrometheus {
    /// Starts Prometheus scraping `jobs` every `scrape_interval` (rules evaluated as
    /// often), loading `rule_files`, and waits until it is ready.
    pub async fn start(
        jobs: &[ScrapeJob],
        rule_files: &[PathBuf],
        scrape_interval: Duration,
    ) -> Self {
        let binary = require_binary("prometheus");
        let dir = tempfile::Builder::new()
            .prefix("yoink-prometheus-")
            .tempdir()
            .expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text(jobs, rule_files, scrape_interval))
            .expect("write the Prometheus config");
        let port = free_port();
        let process = Spawned::start(
            Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn"),
        );
        let prometheus = Self {
            port,
            process,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client"),
            _dir: dir,
        };
        let url = format!("{}/-/ready", prometheus.base());
        let client = prometheus.http.clone();
        let ready = eventually(Duration::from_secs(20), || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        assert!(
            ready,
            "Prometheus on port {port} never became ready:\n{}",
            prometheus.output()
        );
        prometheus
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything Prometheus printed (its log).
    pub fn output(&self) -> String {
        self.process.output()
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, QueryError> {
        let body: Value = self
            .http
            .get(format!("{}{path}", self.base()))
            .query(query)
            .send()
            .await
            .map_err(QueryError::Http)?
            .json()
            .await
            .map_err(QueryError::Http)?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(QueryError::Refused {
                kind: body["errorType"].as_str().unwrap_or("?").to_owned(),
                message: body["error"].as_str().unwrap_or("?").to_owned(),
            })
        }
    }

    /// Each scrape target's job, health (`up`, `down`, `unknown`) and last error.
    pub async fn targets(&self) -> Result<Vec<(String, String, String)>, QueryError> {
        let data = self.get("/api/v1/targets", &[]).await?;
        Ok(data["activeTargets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or("?").to_owned(),
                    t["health"].as_str().unwrap_or("?").to_owned(),
                    t["lastError"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect())
    }

    /// Waits until every target was scraped successfully; the targets that were not
    /// when `timeout` passed otherwise.
    pub async fn wait_targets_up(
        &self,
        timeout: Duration,
    ) -> Result<(), Vec<(String, String, String)>> {
        let last = std::cell::RefCell::new(Vec::new());
        let up = eventually(timeout, || {
            let last = &last;
            async move {
                match self.targets().await {
                    Ok(targets) => {
                        let all_up = !targets.is_empty() && targets.iter().all(|t| t.1 == "up");
                        *last.borrow_mut() = targets;
                        all_up
                    }
                    Err(_) => false,
                }
            }
        })
        .await;
        if up {
            Ok(())
        } else {
            Err(last
                .into_inner()
                .into_iter()
                .filter(|t| t.1 != "up")
                .collect())
        }
    }

    /// The alerting rules Prometheus loaded from its rule files.
    pub async fn alerting_rules(&self) -> Result<Vec<AlertRule>, QueryError> {
        let data = self
            .get("/api/v1/rules", &[("type", "alert".to_owned())])
            .await?;
        let mut rules = Vec::new();
        for group in data["groups"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            for rule in group["rules"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                rules.push(AlertRule {
                    group: group["name"].as_str().unwrap_or("?").to_owned(),
                    name: rule["name"].as_str().unwrap_or("?").to_owned(),
                    query: rule["query"].as_str().unwrap_or("").to_owned(),
                });
            }
        }
        Ok(rules)
    }

    /// `expr` evaluated from `start` to `end` (unix seconds) every `step` seconds.
    pub async fn query_range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> Result<Vec<Series>, QueryError> {
        let data = self
            .get(
                "/api/v1/query_range",
                &[
                    ("query", expr.to_owned()),
                    ("start", format!("{start:.3}")),
                    ("end", format!("{end:.3}")),
                    ("step", format!("{step}")),
                ],
            )
            .await?;
        Ok(data["result"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|s| Series {
                labels: s["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
                points: s["values"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|p| {
                        let t = p[0].as_f64()?;
                        let v = p[1].as_str()?.parse::<f64>().ok()?;
                        Some((t, v))
                    })
                    .collect(),
            })
            .collect())
    }
}

/// The configuration file: one job per target, `rule_files` by absolute path.
fn config_text(jobs: &[ScrapeJob], rule_files: &[PathBuf], scrape_interval: Duration) -> String {
    let interval = format!("{}ms", scrape_interval.as_millis().max(1));
    let mut text = format!(
        "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  \
         evaluation_interval: {interval}\nrule_files:\n"
    );
    for file in rule_files {
        text.push_str(&format!("  - {:?}\n", file.display().to_string()));
    }
    text.push_str("scrape_configs:\n");
    for job in jobs {
        text.push_str(&format!(
            "  - job_name: {:?}\n    static_configs:\n      - targets: [{:?}]\n",
            job.job, job.target
        ));
    }
    text
}

/// An exporter of the test's own and the `host:port` it serves /metrics on.
pub struct Exporter {
    pub target: String,
    process: Spawned,
}

impl Exporter {
    /// `prometheus-redis-exporter` on the Redis at `redis_url`.
    pub async fn redis(redis_url: &str) -> Self {
        let binary = require_binary("prometheus-redis-exporter");
        let port = free_port();
        let process = Spawned::start(
            Command::new(binary)
                .args(["-redis.addr", redis_url])
                .args(["-web.listen-address", &format!("127.0.0.1:{port}")])
                .args(["-connection-timeout", "1s"]),
        );
        Self::ready(format!("127.0.0.1:{port}"), process).await
    }

    /// `prometheus-postgres-exporter` on the database at `database_url`.
    pub async fn postgres(database_url: &str) -> Self {
        let binary = require_binary("prometheus-postgres-exporter");
        let port = free_port();
        let separator = if database_url.contains('?') { '&' } else { '?' };
        let process = Spawned::start(
            Command::new(binary)
                .env(
                    "DATA_SOURCE_NAME",
                    format!("{database_url}{separator}sslmode=disable"),
                )
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn"),
        );
        Self::ready(format!("127.0.0.1:{port}"), process).await
    }

    async fn ready(target: String, mut process: Spawned) -> Self {
        let url = format!("http://{target}/metrics");
        let answered = eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                reqwest::get(url)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        assert!(
            answered && process.alive(),
            "the exporter on {target} never served /metrics:\n{}",
            process.output()
        );
        Self { target, process }
    }

    pub fn output(&self) -> String {
        self.process.output()
    }
}

/// One PromQL expression of a Grafana dashboard.
#[derive(Debug, Clone)]
pub struct DashboardQuery {
    /// The dashboard file's name.
    pub dashboard: String,
    /// The panel's title (or `variable <name>` for a templating variable).
    pub panel: String,
    pub legend: String,
    pub expr: String,
}

/// Every PromQL expression of every `*.json` dashboard in `dir`, panels nested in
/// rows included, and each templating variable `label_values(metric, label)` as the
/// query `count by (label) (metric)` (what the variable lists).
pub fn dashboard_queries(dir: &Path) -> Vec<DashboardQuery> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("read {}: {err}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut queries = Vec::new();
    for file in files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|err| panic!("read {}: {err}", file.display()));
        let dashboard: Value = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{} is not JSON: {err}", file.display()));
        walk_panels(&name, dashboard["panels"].as_array(), &mut queries);
        for variable in dashboard["templating"]["list"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let query = variable["query"]["query"]
                .as_str()
                .or_else(|| variable["query"].as_str())
                .unwrap_or("");
            if let Some(expr) = label_values_query(query) {
                queries.push(DashboardQuery {
                    dashboard: name.clone(),
                    panel: format!("variable {}", variable["name"].as_str().unwrap_or("?")),
                    legend: query.to_owned(),
                    expr,
                });
            }
        }
    }
    queries
}

fn walk_panels(dashboard: &str, panels: Option<&Vec<Value>>, out: &mut Vec<DashboardQuery>) {
    for panel in panels.map(Vec::as_slice).unwrap_or_default() {
        walk_panels(dashboard, panel["panels"].as_array(), out);
        for target in panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some(expr) = target["expr"].as_str().filter(|e| !e.trim().is_empty()) {
                out.push(DashboardQuery {
                    dashboard: dashboard.to_owned(),
                    panel: panel["title"].as_str().unwrap_or("?").to_owned(),
                    legend: target["legendFormat"].as_str().unwrap_or("").to_owned(),
                    expr: expr.to_owned(),
                });
            }
        }
    }
}

/// `label_values(metric, label)` as `count by (label) (metric)`; None for other
/// variable queries (datasource pickers, custom lists).
fn label_values_query(query: &str) -> Option<String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (metric, label) = inner.rsplit_once(',')?;
    Some(format!("count by ({}) ({})", label.trim(), metric.trim()))
}

/// `expr` with Grafana's variables replaced by values (longest names first, so
/// `$__rate_interval` is not read as `$__rate` + text).
pub fn substitute(expr: &str, values: &[(&str, &str)]) -> String {
    let mut ordered: Vec<&(&str, &str)> = values.iter().collect();
    ordered.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut out = expr.to_owned();
    for (name, value) in ordered {
        out = out.replace(&format!("${{{name}}}"), value);
        out = out.replace(&format!("${name}"), value);
    }
    out
}

/// The parts of an expression that must each return data on a live system: every
/// branch of a top-level `or` that is not a constant (`… or vector(0)` would hide a
/// missing metric).
pub fn or_branches(expr: &str) -> Vec<String> {
    split_top_level_keyword(expr, "or")
        .into_iter()
        .map(|b| strip_leading_matching(&b))
        .filter(|b| !is_constant(b))
        .collect()
}

/// The inner series of an alert expression, which must return data whenever the
/// metrics exist, firing or not: for each `or` branch, the left side of `unless`,
/// both sides of `and`, then the left side of the top-level comparison (`x > 0` →
/// `x`), `absent(x)` → `x`, and the same inside an aggregation that holds one
/// (`sum by (sale) (x > 0 unless x offset 10m)` → `x`).
pub fn inner_series(expr: &str) -> Vec<String> {
    let mut parts = Vec::new();
    for branch in or_branches(expr) {
        let kept = split_top_level_keyword(&branch, "unless")
            .into_iter()
            .next()
            .unwrap_or_default();
        for side in split_top_level_keyword(&kept, "and") {
            let side = strip_leading_matching(&side);
            if let Some(lhs) = comparison_lhs(&side) {
                parts.push(lhs);
            } else if let Some(watched) = unwrap_call(&side, "absent") {
                parts.push(watched);
            } else if let Some(inner) = aggregation_body(&side).filter(|i| has_filter(i)) {
                parts.extend(inner_series(&inner));
            } else if !is_constant(&side) {
                parts.push(side.trim().to_owned());
            }
        }
    }
    parts
}

/// Whether `expr` filters its series at the top level (a comparison, `unless`, `and`,
/// `or`): then it is empty when healthy, and its inner series are what to check.
fn has_filter(expr: &str) -> bool {
    comparison_lhs(expr).is_some()
        || ["unless", "and", "or"]
            .iter()
            .any(|w| split_top_level_keyword(expr, w).len() > 1)
}

/// The body of an aggregation that is the whole expression: `sum by (l) (body)`,
/// `max(body) without (l)`.
fn aggregation_body(expr: &str) -> Option<String> {
    const AGGREGATIONS: [&str; 8] = [
        "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar",
    ];
    let expr = expr.trim();
    let name_end = expr
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(expr.len());
    if !AGGREGATIONS.contains(&expr[..name_end].to_ascii_lowercase().as_str()) {
        return None;
    }
    let mut rest = skip_grouping(expr[name_end..].trim_start());
    let body_and_after = rest.strip_prefix('(')?;
    let close = matching_close(body_and_after)?;
    let body = &body_and_after[..close];
    rest = skip_grouping(body_and_after[close + 1..].trim_start());
    rest.trim().is_empty().then(|| body.trim().to_owned())
}

/// `by (…)` / `without (…)` at the start of `text` skipped.
fn skip_grouping(text: &str) -> &str {
    for word in ["by", "without"] {
        if let Some(rest) = text.strip_prefix(word) {
            let rest = rest.trim_start();
            if let Some(list) = rest.strip_prefix('(')
                && let Some(close) = list.find(')')
            {
                return list[close + 1..].trim_start();
            }
        }
    }
    text
}

/// Walks `text` outside its string literals (`"`, `'`, `` ` ``, with `\` escapes),
/// calling `visit(offset, c, depth)` for every character there but the quotes, `depth`
/// being the bracket depth after `c` (from 0 at the start); stops when `visit` says
/// false. The one scanner behind `matching_close`, `top_level_positions`, `balanced`.
fn walk_outside_strings(text: &str, mut visit: impl FnMut(usize, char, i32) -> bool) {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => {
                quote = Some(c);
                continue;
            }
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
        if !visit(i, c, depth) {
            return;
        }
    }
}

fn is_bracket(c: char) -> bool {
    matches!(c, '(' | '[' | '{' | ')' | ']' | '}')
}

/// The offset of the `)` closing a `(` just before `text`.
fn matching_close(text: &str) -> Option<usize> {
    let mut close = None;
    walk_outside_strings(text, |i, _, depth| {
        if depth < 0 {
            close = Some(i);
        }
        close.is_none()
    });
    close
}

/// The metric names `expr` reads (identifiers outside label matchers and grouping
/// lists that are not functions or keywords), to say which metric an empty
/// expression lacks.
pub fn metric_names(expr: &str) -> Vec<String> {
    // Words whose `( … )` that follows is a label list, not an expression.
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Other keywords, and aggregations (`sum by (l) (…)` has no `(` right after `sum`).
    const KEYWORDS: [&str; 17] = [
        "offset", "bool", "and", "or", "unless", "inf", "nan", "sum", "min", "max", "avg", "count",
        "group", "stddev", "stdvar", "topk", "bottomk",
    ];
    let bytes = expr.as_bytes();
    let is_start = |b: u8| b.is_ascii_alphabetic() || b == b'_' || b == b':';
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut names: Vec<String> = Vec::new();
    let (mut i, mut braces, mut quote) = (0, 0i32, None::<u8>);
    let mut after_grouping = false;
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' | b'\'' | b'`' => quote = Some(c),
            b'{' => braces += 1,
            b'}' => braces -= 1,
            b'(' if after_grouping => {
                // Skip the label list of by / without / on / ignoring / group_*.
                let close = expr[i + 1..].find(')').map_or(bytes.len(), |c| i + 1 + c);
                i = close;
                after_grouping = false;
            }
            b'[' => {
                // A range or subquery duration, not names.
                i = expr[i..].find(']').map_or(bytes.len(), |c| i + c);
            }
            _ if braces == 0 && is_start(c) && (i == 0 || !is_ident(bytes[i - 1])) => {
                let end = expr[i..]
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == ':'))
                    .map_or(bytes.len(), |e| i + e);
                let word = &expr[i..end];
                let next = expr[end..].trim_start().chars().next();
                let lower = word.to_ascii_lowercase();
                if GROUPING.contains(&lower.as_str()) {
                    after_grouping = true;
                } else if next != Some('(')
                    && !KEYWORDS.contains(&lower.as_str())
                    && !names.iter().any(|n| n == word)
                {
                    names.push(word.to_owned());
                }
                i = end;
                continue;
            }
            _ => {}
        }
        if !c.is_ascii_whitespace() && c != b'(' {
            after_grouping = false;
        }
        i += 1;
    }
    // Durations (`10m`) and numbers never start with a letter: what remains are metrics.
    names
}

/// Byte offsets in `expr` that are at nesting depth 0 and outside string literals.
fn top_level_positions(expr: &str) -> Vec<bool> {
    let mut top = vec![false; expr.len()];
    walk_outside_strings(expr, |i, c, depth| {
        if !is_bracket(c) && depth == 0 {
            top[i..i + c.len_utf8()].fill(true);
        }
        true
    });
    top
}

/// `expr` split on the binary keyword `word` (`or`, `and`, `unless`) at depth 0.
fn split_top_level_keyword(expr: &str, word: &str) -> Vec<String> {
    let top = top_level_positions(expr);
    let bytes = expr.as_bytes();
    let lower = expr.to_ascii_lowercase();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + word.len() <= bytes.len() {
        let end = i + word.len();
        let matches = lower[i..end] == *word
            && top[i..end].iter().all(|t| *t)
            && (i == 0 || !is_ident(bytes[i - 1]))
            && (end == bytes.len() || !is_ident(bytes[end]));
        if matches {
            parts.push(expr[start..i].trim().to_owned());
            start = end;
            i = end;
        } else {
            i += 1;
        }
    }
    parts.push(expr[start..].trim().to_owned());
    parts
}

/// Drops a leading vector-matching modifier (`on(…)`, `ignoring(…)`), left over after
/// splitting `a or on() b`.
fn strip_leading_matching(part: &str) -> String {
    let trimmed = part.trim();
    for word in ["on", "ignoring"] {
        if let Some(rest) = trimmed.strip_prefix(word) {
            let rest = rest.trim_start();
            if rest.starts_with('(')
                && let Some(close) = rest.find(')')
            {
                return rest[close + 1..].trim().to_owned();
            }
        }
    }
    trimmed.to_owned()
}

/// The left side of the first comparison operator at depth 0.
fn comparison_lhs(expr: &str) -> Option<String> {
    let top = top_level_positions(expr);
    let bytes = expr.as_bytes();
    for i in 0..bytes.len() {
        if !top[i] {
            continue;
        }
        let next = bytes.get(i + 1).copied();
        let is_comparison = match bytes[i] {
            b'>' | b'<' => true,
            b'=' => {
                next == Some(b'=') && (i == 0 || !matches!(bytes[i - 1], b'!' | b'<' | b'>' | b'='))
            }
            b'!' => next == Some(b'='),
            _ => false,
        };
        if is_comparison {
            return Some(expr[..i].trim().to_owned());
        }
    }
    None
}

/// `f(x)` → `x` when the whole expression is that one call.
fn unwrap_call(expr: &str, function: &str) -> Option<String> {
    let rest = expr.trim().strip_prefix(function)?.trim_start();
    let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
    // `absent(a) + absent(b)` is not one call: its "inside" closes a bracket it never
    // opened.
    balanced(inner).then(|| inner.trim().to_owned())
}

/// Whether every bracket of `expr` (outside string literals) closes one it opened.
fn balanced(expr: &str) -> bool {
    let (mut never_below, mut last) = (true, 0);
    walk_outside_strings(expr, |_, _, depth| {
        never_below = depth >= 0;
        last = depth;
        never_below
    });
    never_below && last == 0
}

/// A number or `vector(<number>)`: no series behind it.
fn is_constant(part: &str) -> bool {
    let p = part.trim();
    if p.parse::<f64>().is_ok() {
        return true;
    }
    p.strip_prefix("vector(")
        .and_then(|r| r.strip_suffix(')'))
        .is_some_and(|n| n.trim().parse::<f64>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_is_checked_through_the_left_side_of_its_comparison() {
        assert_eq!(
            inner_series("max by (sale) (yoink_reconcile_oversold_units) > 0"),
            ["max by (sale) (yoink_reconcile_oversold_units)"]
        );
        assert_eq!(
            inner_series("time() - max(yoink_reconcile_last_success_timestamp_seconds) > 120"),
            ["time() - max(yoink_reconcile_last_success_timestamp_seconds)"]
        );
        assert_eq!(
            inner_series(r#"up{job=~"yoink-.*"} == 0"#),
            [r#"up{job=~"yoink-.*"}"#]
        );
        assert_eq!(
            inner_series("min by (instance, level) (yoink_durability_satisfied) == 0"),
            ["min by (instance, level) (yoink_durability_satisfied)"]
        );
    }

    #[test]
    fn every_or_branch_is_checked_and_constants_are_not() {
        let expr = "sum by (sale) (increase(x_total[10m])) > 0\nor\n\
                    sum by (sale) (x_total > 0 unless x_total offset 10m)";
        assert_eq!(
            inner_series(expr),
            ["sum by (sale) (increase(x_total[10m]))", "x_total"]
        );
        // An aggregation without a filter inside is checked whole.
        assert_eq!(
            inner_series("sum by (sale) (rate(x_total[1m])) > 0"),
            ["sum by (sale) (rate(x_total[1m]))"]
        );
        assert_eq!(inner_series("max(a > 1) by (sale)"), ["a"]);
        assert_eq!(
            or_branches(r#"max(y{sale=~"a|b"}) or vector(0)"#),
            [r#"max(y{sale=~"a|b"})"#]
        );
        assert_eq!(
            inner_series("(a or on() vector(0)) / b > 0.01"),
            ["(a or on() vector(0)) / b"]
        );
        assert_eq!(inner_series("a > 1 or on() vector(0)"), ["a"]);
    }

    #[test]
    fn absent_is_checked_through_what_it_watches() {
        assert_eq!(inner_series("absent(yoink_x_seconds)"), ["yoink_x_seconds"]);
        assert_eq!(
            inner_series("absent(a) + absent(b)"),
            ["absent(a) + absent(b)"]
        );
    }

    #[test]
    fn operators_inside_selectors_strings_and_brackets_are_not_split() {
        let expr = r#"sum(rate(h{status=~"5..",status!="503",x="a or b > c"}[1m])) / sum(rate(h[1m])) > 0.01"#;
        assert_eq!(
            inner_series(expr),
            [r#"sum(rate(h{status=~"5..",status!="503",x="a or b > c"}[1m])) / sum(rate(h[1m]))"#]
        );
        assert_eq!(inner_series("sort_desc(orders)"), ["sort_desc(orders)"]);
    }

    #[test]
    fn metric_names_are_the_series_an_expression_reads() {
        assert_eq!(
            metric_names(
                r#"histogram_quantile(0.99, sum by (le) (rate(h_bucket{route="/buy"}[1m]))) > 0.5"#
            ),
            ["h_bucket"]
        );
        assert_eq!(
            metric_names("sum by (sale) (x_total > 0 unless x_total offset 10m) or vector(0)"),
            ["x_total"]
        );
        assert_eq!(
            metric_names(
                "(time() - max by (job) (start_seconds)) * on (job) group_left (version) build_info"
            ),
            ["start_seconds", "build_info"]
        );
        assert_eq!(metric_names(r#"up{job=~"yoink-.*"} == 0"#), ["up"]);
    }

    #[test]
    fn variables_are_replaced_longest_first() {
        assert_eq!(
            substitute(
                r#"rate(x{sale=~"$sale"}[$__rate_interval]) + y{s="${sale}"}[$__interval]"#,
                &[
                    ("sale", "a|b"),
                    ("__interval", "1s"),
                    ("__rate_interval", "4s")
                ]
            ),
            r#"rate(x{sale=~"a|b"}[4s]) + y{s="a|b"}[1s]"#
        );
    }

    #[test]
    fn label_values_variables_become_a_count_by_the_label() {
        assert_eq!(
            label_values_query("label_values(yoink_projector_lag, sale)").as_deref(),
            Some("count by (sale) (yoink_projector_lag)")
        );
        assert_eq!(label_values_query("prometheus"), None);
    }

    #[test]
    fn the_config_names_every_job_and_rule_file() {
        let text = config_text(
            &[ScrapeJob::new("yoink-api", "127.0.0.1:1")],
            &[PathBuf::from("/x/alerts.yml")],
            Duration::from_secs(1),
        );
        assert!(text.contains("scrape_interval: 1000ms"), "{text}");
        assert!(text.contains("- \"/x/alerts.yml\""), "{text}");
        assert!(text.contains("job_name: \"yoink-api\""), "{text}");
        assert!(text.contains("targets: [\"127.0.0.1:1\"]"), "{text}");
    }
}
