//! One pass of `yoink status` over both stores: which sales (each store's list, read
//! side by side), then their figures (each store's, side by side), merged into one
//! record per sale. A store that fails leaves its figures `None` and its error in the
//! record; only both failing at once is an error of the pass. Every store call is
//! bounded in time (the stores' own timeouts, and `STORE_DEADLINE` over each store's
//! part of a pass): a pass always answers. Read-only.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::Pool;
use yoink_core::{Keyspace, RedisConn, SaleId, StoreArgs, db};

use crate::StatusReport;
use crate::error::{StatusError, StoreError};
use crate::model::SaleStatus;
use crate::postgres_side::{self, PostgresReading};
use crate::redis_side::{self, RedisReading};

/// The longest a pass waits for one store, whatever its own timeouts say: a status
/// call answers.
const STORE_DEADLINE: Duration = Duration::from_secs(10);

/// `fut`, or a timeout error after `STORE_DEADLINE`.
async fn within<T>(
    store: &'static str,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(STORE_DEADLINE, fut)
        .await
        .unwrap_or(Err(StoreError::Timeout {
            store,
            secs: STORE_DEADLINE.as_secs(),
        }))
}

pub(crate) fn local_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Both stores, opened lazily and kept across `--watch` passes.
pub(crate) struct Stores {
    args: StoreArgs,
    keys: Keyspace,
    redis: Option<RedisConn>,
    pool: Option<Pool>,
}

impl Stores {
    pub(crate) fn new(args: &StoreArgs) -> Self {
        Self {
            args: args.clone(),
            keys: Keyspace::new(args.key_prefix.clone()),
            redis: None,
            pool: None,
        }
    }

    /// The Redis handle (a single node connects lazily; a cluster now, so a cluster
    /// that was down is tried again on the next pass).
    async fn redis(&mut self) -> Result<RedisConn, StoreError> {
        if self.redis.is_none() {
            self.redis = Some(RedisConn::open(&self.args).await?);
        }
        Ok(self.redis.clone().expect("opened above"))
    }

    /// The pool (connections open lazily, each wait bounded by `db::pool`). Two
    /// connections: one pass uses one at a time.
    fn pool(&mut self) -> Result<Pool, StoreError> {
        if self.pool.is_none() {
            self.pool = Some(db::pool(&self.args.database_url, 2)?);
        }
        Ok(self.pool.clone().expect("created above"))
    }

    /// One pass over both stores: which sales (each store's list, side by side), then
    /// their figures (each store's, side by side).
    pub(crate) async fn collect(
        &mut self,
        only: Option<&SaleId>,
    ) -> Result<StatusReport, StatusError> {
        let keys = self.keys.clone();
        let redis = self.redis().await;
        let pool = self.pool();
        let (redis_listed, postgres_listed) = tokio::join!(
            within("Redis", async {
                let mut redis = redis?;
                let ids = redis_side::registered(&mut redis, &keys, only).await?;
                Ok((redis, ids))
            }),
            within("PostgreSQL", async {
                let pool = pool?;
                let ids = postgres_side::known_sales(&pool, only).await?;
                Ok((pool, ids))
            }),
        );
        let mut store_errors: Vec<String> = Vec::new();
        let mut listed: BTreeSet<String> = BTreeSet::new();
        // With `--sale`: the registry names it.
        let mut registered = false;
        let (redis_listed, postgres_listed) = match (redis_listed, postgres_listed) {
            (Err(redis), Err(postgres)) => {
                self.forget_cluster();
                return Err(StatusError::Unreadable { redis, postgres });
            }
            both => both,
        };
        let redis = match redis_listed {
            Ok((conn, ids)) => {
                registered = !ids.is_empty();
                listed.extend(ids);
                Some(conn)
            }
            Err(err) => {
                self.forget_cluster();
                store_errors.push(err.to_string());
                None
            }
        };
        let postgres = match postgres_listed {
            Ok((pool, ids)) => {
                listed.extend(ids);
                Some(pool)
            }
            Err(err) => {
                store_errors.push(err.to_string());
                None
            }
        };
        let sales: Vec<SaleId> = match only {
            Some(sale) => vec![sale.clone()],
            // Ids either store holds that cannot be sale ids are nobody's sale.
            None => listed
                .iter()
                .filter_map(|id| SaleId::parse(id).ok())
                .collect(),
        };

        let (redis_read, postgres_read) = tokio::join!(
            async {
                match redis {
                    Some(mut conn) => Some(
                        within("Redis", async {
                            Ok(read_redis(&mut conn, &keys, &sales).await)
                        })
                        .await,
                    ),
                    None => None,
                }
            },
            async {
                match postgres {
                    Some(pool) => {
                        Some(within("PostgreSQL", postgres_side::read(&pool, &sales)).await)
                    }
                    None => None,
                }
            },
        );
        let redis_read = match redis_read {
            Some(Ok(readings)) => Some(readings),
            Some(Err(err)) => {
                store_errors.push(err.to_string());
                None
            }
            None => None,
        };
        let postgres_read: Option<PostgresReading> = match postgres_read {
            Some(Ok(reading)) => Some(reading),
            Some(Err(err)) => {
                store_errors.push(err.to_string());
                None
            }
            None => None,
        };

        if let (Some(sale), Some(readings), Some(pg)) = (only, &redis_read, &postgres_read) {
            // A script call that failed cannot say the sale is absent.
            let in_redis = registered
                || match readings.get(sale) {
                    Some(Ok(reading)) => reading.knows_sale(),
                    _ => true,
                };
            let in_postgres = pg.sales.get(sale).is_some_and(|p| p.known);
            if !in_redis && !in_postgres {
                return Err(StatusError::UnknownSale(sale.clone()));
            }
        }

        let now = local_now_ms();
        let statuses = sales
            .into_iter()
            .map(|sale| {
                let mut errors = store_errors.clone();
                let redis = match redis_read.as_ref().and_then(|r| r.get(&sale)) {
                    Some(Ok(reading)) => Some(reading),
                    Some(Err(err)) => {
                        errors.push(err.clone());
                        None
                    }
                    None => None,
                };
                let postgres = postgres_read
                    .as_ref()
                    .and_then(|p| p.sales.get(&sale).map(|s| (s, p.outbox)));
                SaleStatus::build(sale, redis, postgres, errors, now)
            })
            .collect();
        Ok(StatusReport {
            sales: statuses,
            outbox: postgres_read.map(|p| p.outbox),
            errors: store_errors,
        })
    }

    /// A cluster handle that failed is opened again next pass (a single node's
    /// handle reconnects by itself).
    fn forget_cluster(&mut self) {
        if self.args.redis_cluster {
            self.redis = None;
        }
    }
}

/// Each sale's Redis figures, one script call each. Once Redis proves unreachable the
/// remaining sales are not tried (each would wait for its own timeout): they get the
/// same error.
async fn read_redis(
    redis: &mut RedisConn,
    keys: &Keyspace,
    sales: &[SaleId],
) -> HashMap<SaleId, Result<RedisReading, String>> {
    let mut readings = HashMap::with_capacity(sales.len());
    let mut unreachable: Option<String> = None;
    for sale in sales {
        let reading = match &unreachable {
            Some(err) => Err(err.clone()),
            None => redis_side::read_sale(redis, keys, sale).await.map_err(|err| {
                let text = format!("sale {sale}: {err}");
                if matches!(&err, StoreError::Redis(e) if yoink_core::redis_store::is_unavailable(e)) {
                    unreachable = Some(err.to_string());
                }
                text
            }),
        };
        readings.insert(sale.clone(), reading);
    }
    readings
}
