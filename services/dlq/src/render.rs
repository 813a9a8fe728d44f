//! The human-readable output of each subcommand (`--json` prints the same structures as
//! JSON instead). Pure formatting: no store, no decision.

use std::fmt::Write;

use crate::Shown;
use crate::fate::Fate;
use crate::purge::PurgeReport;
use crate::replay::ReplayReport;
use crate::scan::Listing;

/// `3d 4h`, `5m 12s`, `850ms`: an age at a glance.
pub fn age(ms: i64) -> String {
    let s = ms / 1_000;
    match s {
        _ if ms < 1_000 => format!("{ms}ms"),
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m {}s", s / 60, s % 60),
        3_600..86_400 => format!("{}h {}m", s / 3_600, (s % 3_600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3_600),
    }
}

fn fate(fate: &Option<Fate>) -> String {
    match fate {
        None => "unknown: the entry names no readable reservation id".to_owned(),
        Some(Fate::None) => {
            "none: PostgreSQL never decided it (no order, no release); its units are still taken"
                .to_owned()
        }
        Some(Fate::Held { expires_at_ms }) => {
            format!("held: a hold waiting for its confirm (expires_at_ms {expires_at_ms})")
        }
        Some(Fate::Confirmed { order_id }) => match order_id {
            Some(id) => format!("confirmed: order {id}"),
            None => "confirmed".to_owned(),
        },
        Some(Fate::Released { reason }) => {
            format!("released, final (it cannot become an order): {reason}")
        }
    }
}

pub fn listing(listing: &Listing) -> String {
    let mut out = String::new();
    if listing.entries.is_empty() {
        let _ = writeln!(out, "No dead letters.");
    } else {
        let width = listing
            .entries
            .iter()
            .map(|e| e.entry.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}  {:>6}  REASON",
            "ENTRY", "AGE", "COPIES"
        );
        for e in &listing.entries {
            let _ = writeln!(
                out,
                "{:<width$}  {:>9}  {:>6}  {}",
                e.entry,
                age(e.age_ms),
                e.copies.len(),
                e.reason
            );
        }
    }
    let counts: Vec<String> = listing
        .counts_by_reason
        .iter()
        .map(|(class, n)| format!("{class} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "{} dead letters{}{}; {} copies in the dead streams",
        listing.entries.len(),
        if listing.truncated {
            " (--limit reached: more exist)"
        } else {
            ""
        },
        if counts.is_empty() {
            String::new()
        } else {
            format!("; by reason: {}", counts.join(", "))
        },
        listing.copies_in_streams
    );
    out
}

pub fn shown(shown: &Shown) -> String {
    let l = &shown.letter;
    let mut out = String::new();
    let _ = writeln!(out, "entry          {}", l.entry);
    let _ = writeln!(out, "original id    {}", l.original_id);
    let _ = writeln!(out, "copies         {}", l.copies.join(", "));
    let _ = writeln!(out, "consumer       {}", l.consumer);
    let _ = writeln!(out, "age            {}", age(l.age_ms));
    let _ = writeln!(out, "reason         {} ({})", l.reason, l.reason_class);
    let _ = writeln!(
        out,
        "deliveries     {}",
        l.deliveries.map_or(
            "not recorded (acknowledged when dead-lettered)".to_owned(),
            |n| n.to_string()
        )
    );
    let _ = writeln!(out, "replays        {}", shown.replays);
    let _ = writeln!(out, "fate           {}", fate(&shown.fate));
    if let Some(err) = &shown.parse_error {
        let _ = writeln!(out, "unreadable     {err}");
    }
    let _ = writeln!(out, "event");
    for (name, value) in &shown.event {
        let _ = writeln!(out, "  {name} = {value}");
    }
    out
}

pub fn replay(report: &ReplayReport) -> String {
    let mut out = String::new();
    let would = if report.dry_run {
        " (dry run: nothing written)"
    } else {
        ""
    };
    for e in &report.entries {
        let _ = writeln!(
            out,
            "{}  {}{}: {}",
            e.entry,
            e.outcome.as_str(),
            if e.removed { ", removed" } else { "" },
            e.detail
        );
    }
    let counts: Vec<String> = report
        .counts
        .iter()
        .map(|(outcome, n)| format!("{} {n}", outcome.as_str()))
        .collect();
    let _ = writeln!(
        out,
        "{} replayed{would}{}{}",
        report.entries.len(),
        if counts.is_empty() {
            String::new()
        } else {
            format!(": {}", counts.join(", "))
        },
        if report.truncated {
            "; --limit reached, more remain"
        } else {
            ""
        }
    );
    out
}

pub fn purge(report: &PurgeReport) -> String {
    let mut out = String::new();
    for p in &report.purged {
        match &p.entry {
            Some(entry) => {
                let _ = writeln!(
                    out,
                    "{entry}: {} copies removed; fate {}",
                    p.copies_removed,
                    fate(&p.fate)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "sale {}: {} copies removed",
                    p.sale_id, p.copies_removed
                );
            }
        }
    }
    let _ = writeln!(out, "{} dead-letter copies removed", report.copies_removed);
    out
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_400), "12s");
        assert_eq!(age(312_000), "5m 12s");
        assert_eq!(age(3 * 3_600_000 + 60_000), "3h 1m");
        assert_eq!(age(2 * 86_400_000 + 3_600_000), "2d 1h");
    }
}
