//! The bench's results: one row per strategy, the machine they ran on, the markdown
//! table and the files (`results.json`, `report.md`, and through `chart` `latency.svg`). Pure arithmetic and text apart from
//! `Machine::this` and `write`, so the rules have unit tests.
//!
//! Oversold: units in orders beyond the stock. Lost: units taken in Redis with no order
//! (0 for the PostgreSQL-only strategies, which take units and write orders together).

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One strategy's run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StrategyResult {
    pub strategy: String,
    pub stock: i64,
    pub buyers: usize,
    pub requests: u64,
    pub elapsed_secs: f64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// 202
    pub accepted: u64,
    /// 409 sold_out
    pub sold_out: u64,
    /// 503
    pub unavailable: u64,
    /// Any other answer, or a transport error.
    pub other: u64,
    /// Units in orders in PostgreSQL.
    pub orders: i64,
    /// `orders − stock`, at least 0.
    pub oversold: i64,
    /// Units taken in Redis with no order (after the drain, for `stream`).
    pub lost: i64,
    /// Most connections `pg_stat_activity` showed during the load (whole server).
    pub peak_pg_connections: Option<i64>,
    /// Most resident memory of the bench process during the load, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// What else the reader should know (PostgreSQL refusals, an incomplete drain, …).
    pub notes: Vec<String>,
    /// `yoink reconcile --sale` after the run, for the strategies with Redis
    /// (`redis-sync`, `stream`); `naive` and `db-atomic` have nothing to compare.
    #[serde(default)]
    pub reconciled: Option<Reconciled>,
    /// Units granted and units in orders, every 100 ms from the start of the load (for
    /// `stream`, with one last point when the drain ended).
    #[serde(default)]
    pub timeline: Vec<crate::sampler::TimePoint>,
}

/// What the reconciler said of a strategy's sale once the run was over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciled {
    /// `consistent`, `diverged`, `oversold`, … (`yoink reconcile`'s statuses).
    pub status: String,
    /// Units Redis took that PostgreSQL has no order or release for.
    pub lost_units: i64,
}

impl Reconciled {
    fn cell(reconciled: Option<&Self>) -> String {
        match reconciled {
            None => "n/a".to_owned(),
            Some(r) if r.lost_units > 0 => format!("{} ({} lost)", r.status, r.lost_units),
            Some(r) => r.status.clone(),
        }
    }
}

/// Oversold units: orders beyond the stock.
pub fn oversold(orders: i64, stock: i64) -> i64 {
    (orders - stock).max(0)
}

/// Where the bench ran.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
}

impl Machine {
    pub fn this() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| cpu_model(&info))
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
        }
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Results {
    pub machine: Machine,
    pub unix_time: u64,
    pub strategies: Vec<StrategyResult>,
}

impl Results {
    /// The markdown table, one row per strategy.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| strategy | req/s | p50 ms | p95 ms | p99 ms | 2xx | 4xx | 5xx | other | orders | oversold | lost | reconcile | peak PG conns | peak RSS MiB |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|\n",
        );
        for r in &self.strategies {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.strategy,
                r.requests_per_second,
                r.p50_ms,
                r.p95_ms,
                r.p99_ms,
                r.accepted,
                r.sold_out,
                r.unavailable,
                r.other,
                r.orders,
                r.oversold,
                r.lost,
                Reconciled::cell(r.reconciled.as_ref()),
                r.peak_pg_connections
                    .map_or_else(|| "?".to_owned(), |n| n.to_string()),
                r.peak_rss_bytes.map_or_else(
                    || "?".to_owned(),
                    |b| format!("{:.0}", b as f64 / (1024.0 * 1024.0))
                ),
            );
        }
        out
    }

    /// `report.md`: the machine, the load, the table, the chart and the notes.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# yoink bench\n\n");
        let _ = writeln!(
            out,
            "Machine: {} CPUs (`nproc`), {}.\n",
            self.machine.nproc, self.machine.cpu_model
        );
        if let Some(first) = self.strategies.first() {
            let _ = writeln!(
                out,
                "Load: {} units on sale, {} concurrent buyers, {} `POST /buy` in all, the same for every strategy.\n",
                first.stock, first.buyers, first.requests
            );
        }
        out.push_str(&self.table());
        out.push_str("\n![POST /buy latency per strategy](latency.svg)\n");
        out.push_str("\n![Units granted and in orders over time](timeline.svg)\n");
        let notes: Vec<_> = self
            .strategies
            .iter()
            .flat_map(|r| {
                r.notes
                    .iter()
                    .map(move |n| format!("- {}: {n}", r.strategy))
            })
            .collect();
        if !notes.is_empty() {
            out.push_str("\nNotes:\n\n");
            out.push_str(&notes.join("\n"));
            out.push('\n');
        }
        out.push_str(
            "\noversold = units in orders beyond the stock; lost = units taken in Redis with no order; \
             peak PG conns = most rows in `pg_stat_activity` (the whole server) sampled every 100 ms; \
             peak RSS = this bench process (load generator included).\n",
        );
        out
    }

    /// Writes `results.json`, `report.md`, `latency.svg` and `timeline.svg` into `dir`
    /// (created when missing).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("results.json"), json)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        crate::chart::latency_svg(self, &dir.join("latency.svg")).map_err(std::io::Error::other)?;
        crate::chart::timeline_svg(self, &dir.join("timeline.svg"))
            .map_err(std::io::Error::other)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversold_counts_only_orders_beyond_the_stock() {
        assert_eq!(oversold(25, 20), 5);
        assert_eq!(oversold(20, 20), 0);
        assert_eq!(oversold(3, 20), 0);
    }

    #[test]
    fn the_cpu_model_comes_from_the_first_model_name_line() {
        let info = "processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\nprocessor\t: 1\nmodel name\t: Other\n";
        assert_eq!(cpu_model(info).as_deref(), Some("Some CPU @ 2.0GHz"));
        assert_eq!(cpu_model("nothing"), None);
    }
}
