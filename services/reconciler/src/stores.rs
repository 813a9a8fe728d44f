//! Both stores, opened together, and the two reads every pass makes: which sales to
//! check, and one sale's figures from both sides. A sale found with Redis behind
//! PostgreSQL is suspended here (atomically, in `fence.lua`), before anything else reads
//! it: it would sell units PostgreSQL already sold.
//!
//! `overdue_after` is how long past its deadline a hold may stay `held` before it
//! counts as overdue (`ReconcileArgs::overdue_after`).

use std::time::Duration;

use deadpool_postgres::Pool;
use redis::AsyncCommands;
use yoink_core::scripts::{self, Fence};
use yoink_core::{Keyspace, RedisConn, SaleId, StoreArgs, db, telemetry};

use crate::ReconcileArgs;
use crate::error::ReconcileError;
use crate::report::SaleReport;
use crate::snapshot;

pub(crate) struct Stores {
    pub redis: RedisConn,
    pub pool: Pool,
    pub keys: Keyspace,
    pub overdue_after: Duration,
}

impl Stores {
    /// Opens both stores and proves each answers, so an outage is one clear message.
    pub async fn open(args: &StoreArgs, overdue_after: Duration) -> Result<Self, ReconcileError> {
        let mut redis = RedisConn::open(args).await?;
        let _: String = redis::cmd("PING").query_async(&mut redis).await?;
        let pool = db::pool(&args.database_url, 4)?;
        pool.get()
            .await
            .map_err(|e| ReconcileError::Db(db::DbError::Pool(e)))?
            .simple_query("SELECT 1")
            .await?;
        Ok(Self {
            redis,
            pool,
            keys: Keyspace::new(args.key_prefix.clone()),
            overdue_after,
        })
    }

    pub async fn sales(&mut self, args: &ReconcileArgs) -> Result<Vec<SaleId>, ReconcileError> {
        let Some(raw) = &args.sale else {
            return yoink_core::sales::known_to_either::<ReconcileError>(
                &mut self.redis,
                &self.keys,
                &self.pool,
            )
            .await;
        };
        let sale = SaleId::parse(raw).map_err(|source| ReconcileError::BadSaleId {
            raw: raw.clone(),
            source,
        })?;
        let in_redis: bool = self.redis.exists(self.keys.meta(&sale)).await?;
        let in_postgres = self
            .pool
            .get()
            .await?
            .query_opt("SELECT 1 FROM sales WHERE sale_id = $1", &[&sale.as_str()])
            .await?
            .is_some();
        if !in_redis && !in_postgres {
            return Err(ReconcileError::UnknownSale(sale));
        }
        Ok(vec![sale])
    }

    pub async fn measure(
        &mut self,
        sale: &SaleId,
    ) -> Result<(SaleReport, snapshot::RedisSnapshot), ReconcileError> {
        // An archived sale is PostgreSQL's alone: never fenced (that would write a key
        // under its emptied tag, and a projector would rebuild it).
        if yoink_core::archive::is_archived(&self.pool.get().await?, sale).await? {
            let report = crate::archived::measure(self, sale).await?;
            return Ok((report, snapshot::RedisSnapshot::default()));
        }
        let mut redis_snapshot =
            snapshot::redis_snapshot(&mut self.redis, &self.keys, sale).await?;
        let postgres =
            snapshot::postgres_side(&self.pool, sale, &mut redis_snapshot, self.overdue_after)
                .await?;
        if redis_snapshot.side.position < postgres.floor && !redis_snapshot.side.suspended {
            // Redis went back in time: suspend the sale before it sells a unit
            // PostgreSQL already sold (a projector then rebuilds it).
            if let Fence::Suspended { now, reason, .. } = scripts::fence(
                &mut self.redis,
                &self.keys,
                sale,
                postgres.floor,
                "reconciler",
                false,
            )
            .await?
            {
                redis_snapshot.side.suspended = true;
                if now {
                    telemetry::rollback_detected(sale, "reconciler");
                    tracing::error!(sale_id = %sale, reason = %reason, "Redis went back behind PostgreSQL: sale suspended.");
                }
            }
        }
        let report = SaleReport::compute(sale, redis_snapshot.side.clone(), postgres);
        Ok((report, redis_snapshot))
    }
}
