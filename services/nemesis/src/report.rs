//! The run's report: what was injected, what the buyers saw, what the check found, and
//! the verdict, as text for the terminal and as `report.json`.
//!
//! Pure formatting: it must never compute a verdict of its own beyond "no problems".

use std::collections::BTreeMap;

use serde::Serialize;

use crate::Settings;
use crate::check::Findings;
use crate::faults::FaultRecord;

/// `yoink reconcile --sale`'s verdict after the drain.
#[derive(Debug, Clone, Serialize)]
pub struct Reconcile {
    pub exit_code: Option<i32>,
    /// Its `status` (`consistent`, `diverged`, ...), or what went wrong running it.
    pub status: String,
}

/// How the drain ended.
#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    pub drained: bool,
    pub secs: f64,
    /// 202s still without a fate when it ended.
    pub accepted_without_fate: i64,
    /// Stream entries pending when it ended, plus 1 if any was undelivered.
    pub stream_backlog: u64,
    /// The consumer group as Redis showed it, when the drain did not finish.
    pub group: Option<String>,
    /// Entries left in the sale's stream when it ended (`XLEN`): what projectors did
    /// not trim of everything the run appended (`None` when Redis did not answer).
    pub stream_length: Option<u64>,
}

/// A planted fault: when, and what it did.
#[derive(Debug, Clone, Serialize)]
pub struct Planted {
    pub kind: &'static str,
    pub at_ms: u64,
    pub detail: String,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub verdict: &'static str,
    pub seed: u64,
    pub settings: Settings,
    pub sale_id: String,
    /// Faults carried out, by kind.
    pub faults_by_kind: BTreeMap<String, u64>,
    pub faults: Vec<FaultRecord>,
    /// 202s.
    pub accepted: u64,
    pub indefinite: u64,
    pub confirmed: u64,
    pub released: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub oversold: u64,
    #[serde(rename = "check")]
    pub findings: Findings,
    pub drain: Drain,
    pub reconcile: Reconcile,
    pub planted: Option<Planted>,
    /// Starts of each process, the first included: `(api, projectors)`.
    pub process_starts: (u32, u32),
    pub load_secs: f64,
    pub history: String,
    pub logs: String,
    /// Every failed check, named; empty on success.
    pub problems: Vec<String>,
}

impl Report {
    /// Exit 0 only with no problem.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn render(&self) -> String {
        let f = &self.findings;
        let faults: Vec<String> = self
            .faults_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let failed: Vec<String> = f.failed.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let fault_errors: Vec<String> = self
            .faults
            .iter()
            .filter_map(|r| {
                r.error
                    .as_ref()
                    .map(|e| format!("{} at {} ms: {e}", r.kind, r.began_ms))
            })
            .collect();
        let mut out = format!(
            "== Nemesis, seed {seed}, sale {sale}\n\
             load             {req} requests in {load:.1} s ({rate}/s), {buyers} buyers, limit {limit}, stock {stock}\n\
             faults           {faults_n}: {faults}\n\
             answers          202 {accepted}, indefinite {indef}, failed {failed_n} ({failed})\n\
             indefinite       took effect {took}, not taken {not_taken}, unresolved {unresolved}\n\
             fates            confirmed {confirmed}, released {released} (of the 202s: {ac} confirmed, {ar} released)\n\
             stock            initial {initial}, confirmed units {cu}, orders {ou}, Redis {rs} (ledger leaves {es})\n\
             lost             {lost} (no fate {nf}, order gone {og}, units gone from stock {lu}); Yoink's own count {lr}\n\
             duplicated       {dup}\n\
             oversold         {over}\n\
             limit exceeded   {lim} buyer(s)\n\
             rebuilds         {rebuilds} (Yoink found Redis behind PostgreSQL and rebuilt the sale)\n\
             drain            {drained} in {drain:.1} s, {stream_left} entries left in the sale's stream (trimmed as PostgreSQL took them)\n\
             reconcile        {rec} (exit {rec_code})\n\
             processes        {api} API starts, {proj} projector starts\n",
            seed = self.seed,
            sale = self.sale_id,
            req = f.requests,
            load = self.load_secs,
            rate = self.settings.rate,
            buyers = self.settings.buyers,
            limit = self.settings.limit_per_user,
            stock = self.settings.stock,
            faults_n = self.faults.len(),
            faults = faults.join(", "),
            accepted = f.accepted,
            indef = f.indefinite,
            failed_n = f.failed.values().sum::<u64>(),
            failed = failed.join(", "),
            took = f.indefinite_took_effect,
            not_taken = f.indefinite_not_taken,
            unresolved = f.indefinite_unresolved,
            confirmed = f.confirmed,
            released = f.released,
            ac = f.accepted_confirmed,
            ar = f.accepted_released,
            initial = f.stock.initial,
            cu = f.stock.confirmed_units,
            ou = f.stock.order_units,
            rs = f.stock.redis_stock,
            es = f.stock.expected_stock,
            lost = f.lost,
            nf = f.lost_no_fate,
            og = f.lost_order_missing,
            lu = f.lost_units,
            lr = f.lost_reported_by_yoink,
            dup = f.duplicated,
            over = f.oversold,
            lim = f.limit_exceeded_buyers,
            rebuilds = f.rebuilds,
            drained = if self.drain.drained {
                "drained"
            } else {
                "NOT drained"
            },
            drain = self.drain.secs,
            stream_left = self
                .drain
                .stream_length
                .map_or("unknown".to_owned(), |n| n.to_string()),
            rec = self.reconcile.status,
            rec_code = self
                .reconcile
                .exit_code
                .map_or("none".to_owned(), |c| c.to_string()),
            api = self.process_starts.0,
            proj = self.process_starts.1,
        );
        if let Some(planted) = &self.planted {
            out.push_str(&format!(
                "planted          {} at {} ms: {}\n",
                planted.kind, planted.at_ms, planted.detail
            ));
        }
        for error in fault_errors {
            out.push_str(&format!("fault error      {error}\n"));
        }
        for warning in &f.warnings {
            out.push_str(&format!("warning          {warning}\n"));
        }
        if self.ok() {
            out.push_str("verdict          OK: nothing lost, duplicated or oversold\n");
        } else {
            out.push_str(&format!("verdict          FAILED (seed {}):\n", self.seed));
            for problem in &self.problems {
                out.push_str(&format!("  - {problem}\n"));
            }
        }
        out
    }
}
