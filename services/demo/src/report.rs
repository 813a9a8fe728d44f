//! The demo's report: what the buyers saw, what PostgreSQL holds, and the verdict. Pure
//! arithmetic and text, no I/O, so every rule has a unit test.
//!
//! Oversold: units in orders beyond the sale's stock. Lost: units out of stock in Redis
//! that never became orders once the pipeline drained (`stock − remaining − confirmed`,
//! with no holds and no releases in a demo sale).

use std::fmt;
use std::time::Duration;

use yoink_core::SaleId;
use yoink_loadgen::LoadReport;

use crate::DemoArgs;

/// What the stores hold after the drain.
#[derive(Debug, Clone)]
pub struct Settled {
    pub orders: i64,
    pub confirmed_units: i64,
    pub remaining: i64,
    /// From the first buy to the last order written (PostgreSQL's `created_at`).
    pub drained_after: Duration,
    /// `yoink reconcile --sale` output.
    pub reconcile: String,
    pub reconciled_consistent: bool,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub sale: SaleId,
    pub stock: i64,
    pub buyers: usize,
    pub requests: u64,
    pub load: LoadReport,
    pub settled: Settled,
}

impl Report {
    pub fn new(sale: &SaleId, args: &DemoArgs, load: LoadReport, settled: Settled) -> Self {
        Self {
            sale: sale.clone(),
            stock: args.stock,
            buyers: args.buyers,
            requests: args.requests,
            load,
            settled,
        }
    }

    /// Units in orders beyond the stock.
    pub fn oversold(&self) -> i64 {
        (self.settled.confirmed_units - self.stock).max(0)
    }

    /// Units taken and never ordered (or ordered and never taken, as a negative count).
    pub fn lost(&self) -> i64 {
        self.stock - self.settled.remaining - self.settled.confirmed_units
    }

    /// Accepted units that did not reach PostgreSQL within the drain.
    pub fn undrained(&self) -> i64 {
        self.load.accepted as i64 - self.settled.confirmed_units
    }

    /// From the sell-out (the first 409 sold_out) to the last order written.
    pub fn sellout_to_last_order(&self) -> Option<Duration> {
        self.load
            .sold_out_after
            .map(|at| self.settled.drained_after.saturating_sub(at))
    }

    /// Nothing oversold, nothing lost, every 202 an order, and the stores agree.
    pub fn ok(&self) -> bool {
        self.oversold() == 0
            && self.lost() == 0
            && self.undrained() == 0
            && self.settled.reconciled_consistent
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.load;
        writeln!(f, "== Flash sale {}", self.sale)?;
        writeln!(
            f,
            "buyers           {} at once, {} buys in {:.2} s: {:.0} req/s",
            self.buyers,
            self.requests,
            l.elapsed.as_secs_f64(),
            l.requests_per_second()
        )?;
        writeln!(
            f,
            "latency          p50 {}, p95 {}, p99 {}, max {}",
            ms(l.percentile(50.0)),
            ms(l.percentile(95.0)),
            ms(l.percentile(99.0)),
            ms(l.percentile(100.0))
        )?;
        writeln!(
            f,
            "answers          202 accepted {}, 409 sold out {}, 503 unavailable {}, other {}",
            l.accepted, l.sold_out, l.unavailable, l.other
        )?;
        for example in &l.other_examples {
            writeln!(f, "                 other: {example}")?;
        }
        writeln!(
            f,
            "orders           {} in PostgreSQL ({} units of {}), {} left on sale",
            self.settled.orders, self.settled.confirmed_units, self.stock, self.settled.remaining
        )?;
        writeln!(f, "oversold units   {}", self.oversold())?;
        writeln!(f, "lost units       {}", self.lost())?;
        if self.undrained() != 0 {
            writeln!(
                f,
                "not drained      {} accepted units have no order yet",
                self.undrained()
            )?;
        }
        match self.sellout_to_last_order() {
            Some(d) => writeln!(f, "sell-out → last order written: {}", ms(d))?,
            None => writeln!(f, "never sold out")?,
        }
        writeln!(
            f,
            "reconcile        {}",
            if self.settled.reconciled_consistent {
                "consistent"
            } else {
                "FLAGGED"
            }
        )?;
        for line in self.settled.reconcile.lines() {
            writeln!(f, "                 {line}")?;
        }
        write!(
            f,
            "verdict          {}",
            if self.ok() {
                "OK: nothing oversold, nothing lost"
            } else {
                "FAILED"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(accepted: u64, confirmed_units: i64, remaining: i64) -> Report {
        let args = DemoArgs {
            stock: 100,
            buyers: 10,
            requests: 500,
            private_stores: false,
            drain_secs: 1,
            quiet: true,
            keep: false,
        };
        let load = LoadReport {
            elapsed: Duration::from_secs(1),
            latency: hdrhistogram::Histogram::new(3).expect("histogram"),
            accepted,
            sold_out: 500 - accepted,
            unavailable: 0,
            other: 0,
            sold_out_after: Some(Duration::from_millis(300)),
            other_examples: Vec::new(),
        };
        let settled = Settled {
            orders: confirmed_units,
            confirmed_units,
            remaining,
            drained_after: Duration::from_millis(1_000),
            reconcile: String::new(),
            reconciled_consistent: true,
        };
        Report::new(&SaleId::parse("s").expect("id"), &args, load, settled)
    }

    #[test]
    fn a_clean_sale_is_ok() {
        let r = report(100, 100, 0);
        assert!(r.ok());
        assert_eq!(r.sellout_to_last_order(), Some(Duration::from_millis(700)));
    }

    #[test]
    fn oversold_lost_and_undrained_units_fail_the_demo() {
        assert_eq!(report(110, 110, 0).oversold(), 10);
        assert!(!report(110, 110, 0).ok());
        let lost = report(100, 90, 0);
        assert_eq!(lost.lost(), 10);
        assert!(!lost.ok());
        assert!(!report(100, 99, 1).ok(), "one accepted unit never ordered");
    }
}
