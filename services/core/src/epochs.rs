//! PostgreSQL's side of the position fence: the floor a sale's Redis position must
//! not be below, the epochs of a sale's Redis state, and the reservations Redis
//! answered and lost before PostgreSQL saw them.
//!
//! Every figure here is a lower bound on where Redis has been: the newest position of
//! a decided reservation (`sales.hwm_*`, raised in the same transaction as its order or
//! release), the epoch PostgreSQL allocated for a rebuild, and the highest seq API
//! instances saw Redis hand out. Nothing here may lower a floor or forget an epoch.

use deadpool_postgres::GenericClient;

use crate::ids::SaleId;
use crate::position::Position;

/// Sales still worth watching: not ended, or ended within the last hour (a sale's
/// last buys and their projection finish after its end), and never archived (Redis
/// holds nothing of those, on purpose).
const ACTIVE_SALES: &str =
    "(s.archived_at IS NULL AND (s.ends_at IS NULL OR s.ends_at > now() - interval '1 hour'))";

/// The floor of one sale as a lateral subquery over `s.sale_id`.
const FLOOR_OF_SALE: &str = "
    SELECT epoch, seq FROM (
        SELECT epoch, issued_seq AS seq FROM sale_epochs WHERE sale_id = s.sale_id
        UNION ALL
        SELECT s.hwm_epoch, s.hwm_seq WHERE s.hwm_epoch > 0
    ) p ORDER BY epoch DESC, seq DESC LIMIT 1";

/// The highest position PostgreSQL knows Redis reached for `sale`; `Position::ZERO`
/// for a sale with no epoch yet (unknown, or half-created: never in Redis).
pub async fn floor(
    client: &impl GenericClient,
    sale: &SaleId,
) -> Result<Position, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!(
                "SELECT p.epoch, p.seq FROM sales s CROSS JOIN LATERAL ({FLOOR_OF_SALE}) p
                 WHERE s.sale_id = $1"
            ),
            &[&sale.as_str()],
        )
        .await?;
    Ok(row.map_or(Position::ZERO, |r| Position::new(r.get(0), r.get(1))))
}

/// The floors of every active sale that has had Redis state.
pub async fn active_floors(
    client: &impl GenericClient,
) -> Result<Vec<(SaleId, Position)>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT s.sale_id, p.epoch, p.seq FROM sales s
                 CROSS JOIN LATERAL ({FLOOR_OF_SALE}) p
                 WHERE {ACTIVE_SALES}"
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let sale = SaleId::parse(r.get(0)).ok()?;
            Some((sale, Position::new(r.get(1), r.get(2))))
        })
        .collect())
}

/// Records that Redis handed out these positions (an API instance saw them), so the
/// floor covers reservations answered 202 even if Redis loses them before any
/// projector reads them. Sales PostgreSQL does not know are skipped.
pub async fn record_issued(
    client: &impl GenericClient,
    issued: &[(SaleId, Position)],
) -> Result<(), tokio_postgres::Error> {
    if issued.is_empty() {
        return Ok(());
    }
    let sales: Vec<&str> = issued.iter().map(|(s, _)| s.as_str()).collect();
    let epochs: Vec<i64> = issued.iter().map(|(_, p)| p.epoch).collect();
    let seqs: Vec<i64> = issued.iter().map(|(_, p)| p.seq).collect();
    client
        .execute(
            "INSERT INTO sale_epochs (sale_id, epoch, issued_seq, reason)
             SELECT i.sale_id, i.epoch, i.seq, 'seen by an API instance'
             FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS i(sale_id, epoch, seq)
             WHERE i.epoch >= 1 AND EXISTS (SELECT 1 FROM sales s WHERE s.sale_id = i.sale_id)
             ON CONFLICT (sale_id, epoch)
             DO UPDATE SET issued_seq = greatest(sale_epochs.issued_seq, EXCLUDED.issued_seq)",
            &[&sales, &epochs, &seqs],
        )
        .await?;
    Ok(())
}

/// Records epoch 1 of a sale whose Redis state was just created.
pub async fn open_first(
    client: &impl GenericClient,
    sale: &SaleId,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO sale_epochs (sale_id, epoch, reason) VALUES ($1, 1, 'created')
             ON CONFLICT (sale_id, epoch) DO NOTHING",
            &[&sale.as_str()],
        )
        .await?;
    Ok(())
}

/// Ends every open epoch of `sale` below the one a rebuild is about to open (inside the
/// rebuild's transaction, after it decided what was left in the stream: nothing of
/// those epochs can be decided later), recording what PostgreSQL decided in each.
pub async fn close_open(
    client: &impl GenericClient,
    sale: &SaleId,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE sale_epochs e SET
                 decided_seqs = (SELECT count(DISTINCT f.seq) FROM reservation_fates f
                                 WHERE f.sale_id = e.sale_id AND f.epoch = e.epoch),
                 max_decided_seq = (SELECT coalesce(max(f.seq), 0) FROM reservation_fates f
                                    WHERE f.sale_id = e.sale_id AND f.epoch = e.epoch)
             WHERE e.sale_id = $1 AND e.decided_seqs IS NULL",
            &[&sale.as_str()],
        )
        .await?;
    Ok(())
}

/// Reservations Redis answered in an epoch that a rebuild ended and that PostgreSQL
/// never decided: they were lost with Redis's memory. Counted as the seqs handed out
/// (`issued_seq`, or the newest decided) that no decided reservation holds; the
/// current epoch is left out (its undecided reservations may still be in flight).
pub async fn lost_reservations(
    client: &impl GenericClient,
    sale: &SaleId,
) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT coalesce(sum(greatest(
                        greatest(issued_seq, max_decided_seq) - decided_seqs, 0)), 0)::bigint
             FROM sale_epochs WHERE sale_id = $1 AND decided_seqs IS NOT NULL",
            &[&sale.as_str()],
        )
        .await?;
    Ok(row.get(0))
}
