//! `yoink status` output: one compact, aligned block per sale for people, or one JSON
//! object per sale per line for tools. Pure formatting: it never reads a store, and
//! shows a figure it does not have as `?`, never as 0.

use std::io::Write;

use crate::StatusReport;
use crate::error::StatusError;
use crate::model::SaleStatus;

/// Longest dead-letter reason shown in the human form (JSON carries it whole).
const REASON_CHARS: usize = 100;

/// A duration for people: "850 ms", "3.2 s", "4 m 10 s", "2 h 5 m", "3 d 4 h".
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    let secs = ms / 1_000;
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1_000.0),
        60_000..3_600_000 => format!("{} m {} s", secs / 60, secs % 60),
        3_600_000..86_400_000 => format!("{} h {} m", secs / 3_600, secs % 3_600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3_600),
    }
}

fn or_unknown<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

fn plural(n: i64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `plural`, or "? <many>" for a figure not read.
fn count(n: Option<i64>, one: &str, many: &str) -> String {
    n.map_or_else(|| format!("? {many}"), |n| plural(n, one, many))
}

/// The report: every sale (JSON: one object per line), then in the human form the
/// outbox of all sales and the store-wide errors.
pub fn render(out: &mut impl Write, report: &StatusReport, json: bool) -> Result<(), StatusError> {
    if json {
        for sale in &report.sales {
            writeln!(out, "{}", serde_json::to_string(sale)?)?;
        }
        return Ok(());
    }
    if report.sales.is_empty() {
        writeln!(out, "no sales")?;
    }
    for sale in &report.sales {
        human(out, sale, &report.errors)?;
    }
    if let Some(outbox) = report.outbox {
        let oldest = outbox
            .oldest_age_ms
            .map(|ms| format!(", oldest {} old", duration(ms)))
            .unwrap_or_default();
        writeln!(
            out,
            "outbox (all sales): {} unpublished{oldest}",
            outbox.backlog
        )?;
    }
    for err in &report.errors {
        writeln!(out, "! {err}")?;
    }
    Ok(())
}

/// One sale's block, labels in one column; its own errors (the store-wide ones,
/// `shown_below`, are printed once after every block).
fn human(out: &mut impl Write, s: &SaleStatus, shown_below: &[String]) -> std::io::Result<()> {
    let state = match (s.suspended, s.in_redis, s.in_postgres) {
        (Some(true), _, _) => "suspended: buys answer 503 until Redis is rebuilt",
        (_, Some(false), Some(true)) => "not in Redis",
        (_, Some(true), Some(false)) => "not in PostgreSQL",
        (Some(false), _, _) => "open",
        _ => "state unknown: Redis not read",
    };
    writeln!(out, "== {} ({state})", s.sale_id)?;
    let line =
        |out: &mut dyn Write, label: &str, text: String| writeln!(out, "  {label:<15}{text}");

    line(
        out,
        "stock",
        format!(
            "{} of {} left, {} reserved, {} released (Redis)",
            or_unknown(s.stock),
            or_unknown(s.initial_stock),
            or_unknown(s.reserved),
            or_unknown(s.released_in_redis)
        ),
    )?;
    line(
        out,
        "decided",
        format!(
            "{} confirmed in {}, {} released, {} held (PostgreSQL)",
            or_unknown(s.confirmed),
            count(s.orders, "order", "orders"),
            or_unknown(s.released),
            or_unknown(s.held)
        ),
    )?;

    let waiting = s
        .oldest_undelivered_age_ms
        .filter(|_| s.lag != Some(0))
        .map(|ms| format!(" (oldest waiting {})", duration(ms)))
        .unwrap_or_default();
    let group = if s.group_exists == Some(false) {
        ", no projector group yet"
    } else {
        ""
    };
    line(
        out,
        "stream",
        format!(
            "{}, lag {}{waiting}, pending {}{group}",
            count(s.stream_length, "entry", "entries"),
            or_unknown(s.lag),
            or_unknown(s.pending)
        ),
    )?;
    if let Some(id) = &s.oldest_pending_id {
        line(
            out,
            "oldest pending",
            format!(
                "{id}, {} old, idle {}, {}, held by {}",
                or_unknown(s.oldest_pending_age_ms.map(duration)),
                or_unknown(s.oldest_pending_idle_ms.map(duration)),
                plural(
                    s.oldest_pending_deliveries.unwrap_or(0),
                    "delivery",
                    "deliveries"
                ),
                or_unknown(s.oldest_pending_consumer.as_deref())
            ),
        )?;
    }

    match &s.consumers {
        None => line(out, "consumers", "?".into())?,
        Some(list) if list.is_empty() => line(out, "consumers", "none".into())?,
        Some(list) => {
            let width = list.iter().map(|c| c.name.len()).max().unwrap_or(0);
            for (i, c) in list.iter().enumerate() {
                let inactive = c
                    .inactive_ms
                    .filter(|ms| *ms >= 0)
                    .map(|ms| format!(", inactive {}", duration(ms)))
                    .unwrap_or_default();
                let label = if i == 0 { "consumers" } else { "" };
                line(
                    out,
                    label,
                    format!(
                        "{:<width$}  pending {:<6} idle {}{inactive}",
                        c.name,
                        c.pending,
                        duration(c.idle_ms)
                    ),
                )?;
            }
            let total = s.consumers_total.unwrap_or(0);
            let shown = i64::try_from(list.len()).unwrap_or(i64::MAX);
            if total > shown {
                line(out, "", format!("... and {} more", total - shown))?;
            }
        }
    }

    let dead = match (s.dead_letters, &s.oldest_dead_letter_id) {
        (Some(n), Some(_)) if n > 0 => {
            let reason: String = s
                .oldest_dead_letter_reason
                .as_deref()
                .unwrap_or("")
                .chars()
                .take(REASON_CHARS)
                .collect();
            format!(
                "{n}, oldest {} ago: {reason}",
                or_unknown(s.oldest_dead_letter_age_ms.map(duration))
            )
        }
        (n, _) => or_unknown(n),
    };
    line(out, "dead letters", dead)?;

    let oldest = s
        .outbox_oldest_age_ms
        .map(|ms| format!(", oldest {} old", duration(ms)))
        .unwrap_or_default();
    line(
        out,
        "outbox",
        format!("{} unpublished{oldest}", or_unknown(s.outbox_backlog)),
    )?;
    for err in s.errors.iter().filter(|e| !shown_below.contains(e)) {
        writeln!(out, "  ! {err}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ConsumerStatus;
    use yoink_core::SaleId;

    #[test]
    fn durations_read_like_a_person_says_them() {
        assert_eq!(duration(0), "0 ms");
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(3_240), "3.2 s");
        assert_eq!(duration(250_000), "4 m 10 s");
        assert_eq!(duration(7_500_000), "2 h 5 m");
        assert_eq!(duration(273_600_000), "3 d 4 h");
        assert_eq!(duration(-5), "0 ms");
    }

    fn status() -> SaleStatus {
        let mut s = crate::model::SaleStatus::build(
            SaleId::parse("s1").expect("valid id"),
            None,
            None,
            vec!["Redis: connection refused".into()],
            0,
        );
        s.confirmed = Some(3);
        s.orders = Some(3);
        s
    }

    #[test]
    fn the_human_form_shows_a_missing_side_as_unknown_and_says_why() {
        let report = StatusReport {
            sales: vec![status()],
            outbox: None,
            errors: Vec::new(),
        };
        let mut text = Vec::new();
        render(&mut text, &report, false).expect("renders");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.contains("== s1"), "{text}");
        assert!(text.contains("? of ? left"), "{text}");
        assert!(text.contains("3 confirmed in 3 orders"), "{text}");
        assert!(text.contains("? entries, lag ?"), "{text}");
        assert!(text.contains("  ! Redis: connection refused"), "{text}");

        let store_wide = StatusReport {
            sales: vec![status(), status()],
            outbox: None,
            errors: vec!["Redis: connection refused".into()],
        };
        let mut text = Vec::new();
        render(&mut text, &store_wide, false).expect("renders");
        let text = String::from_utf8(text).expect("utf-8");
        assert_eq!(
            text.matches("Redis: connection refused").count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn consumers_are_aligned_one_a_line() {
        let mut s = status();
        s.consumers = Some(vec![
            ConsumerStatus {
                name: "ghost".into(),
                pending: 3,
                idle_ms: 1_200,
                inactive_ms: None,
            },
            ConsumerStatus {
                name: "projector-long".into(),
                pending: 0,
                idle_ms: 5,
                inactive_ms: Some(5),
            },
        ]);
        s.consumers_total = Some(3);
        let report = StatusReport {
            sales: vec![s],
            outbox: None,
            errors: Vec::new(),
        };
        let mut text = Vec::new();
        render(&mut text, &report, false).expect("renders");
        let text = String::from_utf8(text).expect("utf-8");
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(" idle ")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0].find("pending"), lines[1].find("pending"), "{text}");
        assert!(text.contains("... and 1 more"), "{text}");
    }

    #[test]
    fn the_json_form_is_one_object_per_sale_per_line() {
        let report = StatusReport {
            sales: vec![status(), status()],
            outbox: None,
            errors: Vec::new(),
        };
        let mut text = Vec::new();
        render(&mut text, &report, true).expect("renders");
        let text = String::from_utf8(text).expect("utf-8");
        assert_eq!(text.lines().count(), 2);
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("one object");
            assert_eq!(v["sale_id"], "s1");
        }
    }
}
