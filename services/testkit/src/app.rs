//! `spawn_app`: the real API, in-process, on 127.0.0.1:0, against real Redis and a
//! database of the test's own, with typed request helpers.

use std::net::SocketAddr;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use yoink_api::ApiArgs;
use yoink_core::sales::{self, CreateSale};
use yoink_core::scripts::SaleTerms;
use yoink_core::{Keyspace, RedisConn, SaleId, StoreArgs};

use crate::{TestDb, TestRedis};

/// How to start the app under test.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    pub admin_token: Option<String>,
    /// `--checkout-token` (the hold decisions); unset: the admin token serves.
    pub checkout_token: Option<String>,
    pub max_in_flight: Option<usize>,
    /// Another Redis (a `PrivateRedis`) instead of the shared one.
    pub redis_url: Option<String>,
    /// Another PostgreSQL server (a `PrivatePostgres`) instead of the shared one.
    pub postgres_server_url: Option<String>,
    pub redis_timeout_ms: Option<u64>,
    pub header_timeout_secs: Option<u64>,
    /// `redis_url` is a comma-separated list of Redis Cluster nodes.
    pub redis_cluster: bool,
    /// `--durability` (default `none`).
    pub durability: Option<yoink_api::durability::Level>,
    /// `--durability-check-secs`.
    pub durability_check_secs: Option<u64>,
    /// `--durability-timeout-ms`.
    pub durability_timeout_ms: Option<u64>,
    /// `--sold-out-recheck-ms` (default 50; 0 turns the fast path off).
    pub sold_out_recheck_ms: Option<u64>,
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub db: TestDb,
    pub redis_keys: TestRedis,
    pub redis: RedisConn,
    pub stores: StoreArgs,
    /// The app's bound on reserve calls in flight (to check permits come back).
    pub reserve_permits: std::sync::Arc<tokio::sync::Semaphore>,
    /// The app's memory of recent `sold_out` answers (the fast path).
    pub sold_out: std::sync::Arc<yoink_api::sold_out::SoldOut>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    let db = match &options.postgres_server_url {
        Some(url) => TestDb::on_server(url).await,
        None => TestDb::new().await,
    };
    let redis_keys = match &options.redis_url {
        Some(url) => TestRedis::on(url.clone()),
        None => TestRedis::new(),
    };
    let mut stores = StoreArgs::local(db.url.clone(), redis_keys.url.clone());
    stores.key_prefix = redis_keys.keys.prefix().to_owned();
    stores.redis_cluster = options.redis_cluster;
    if let Some(ms) = options.redis_timeout_ms {
        stores.redis_timeout_ms = ms;
    }
    let mut args = ApiArgs::local();
    args.admin_token = options.admin_token.clone();
    args.checkout_token = options.checkout_token.clone();
    if let Some(secs) = options.header_timeout_secs {
        args.header_timeout_secs = secs;
    }
    if let Some(bound) = options.max_in_flight {
        args.max_in_flight = bound;
    }
    if let Some(level) = options.durability {
        args.durability = level;
    }
    if let Some(secs) = options.durability_check_secs {
        args.durability_check_secs = secs;
    }
    if let Some(ms) = options.durability_timeout_ms {
        args.durability_timeout_ms = ms;
    }
    if let Some(ms) = options.sold_out_recheck_ms {
        args.sold_out_recheck_ms = ms;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = listener.local_addr().expect("bound address");
    let state = yoink_api::state(&stores, &args).await.expect("app state");
    let mut check = state.redis.clone();
    yoink_api::durability::check_at_start(&state.durability, &mut check)
        .await
        .expect("the durability level holds");
    let redis = state.redis.clone();
    let reserve_permits = state.reserve_permits.clone();
    let sold_out = state.sold_out.clone();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(yoink_api::run(listener, state, args, async {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("HTTP client"),
        db,
        redis_keys,
        redis,
        stores,
        reserve_permits,
        sold_out,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn keys(&self) -> &Keyspace {
        &self.redis_keys.keys
    }

    /// Creates a sale directly through the core (not over HTTP).
    pub async fn create_sale(&self, id: &str, stock: i64, limit_per_user: i64) -> SaleId {
        self.create_sale_with(
            id,
            SaleTerms {
                initial_stock: stock,
                limit_per_user,
                ..SaleTerms::default()
            },
        )
        .await
    }

    /// Creates a sale with any terms (holds, times) directly through the core.
    pub async fn create_sale_with(&self, id: &str, terms: SaleTerms) -> SaleId {
        let sale_id = SaleId::parse(id).expect("test sale ids are valid");
        let pool = self.db.pool();
        let mut redis = self.redis.clone();
        sales::create_sale(
            &mut redis,
            self.keys(),
            &pool,
            &CreateSale {
                sale_id: sale_id.clone(),
                terms,
            },
        )
        .await
        .expect("create test sale");
        sale_id
    }

    /// `POST /buy`; returns the status and the JSON body.
    pub async fn buy(&self, sale: &str, user: &str, quantity: i64) -> (u16, Value) {
        self.buy_with_key(sale, user, quantity, None).await
    }

    pub async fn buy_with_key(
        &self,
        sale: &str,
        user: &str,
        quantity: i64,
        idempotency_key: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/buy", self.base))
            .json(&json!({ "sale_id": sale, "user_id": user, "quantity": quantity }));
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        Self::status_and_json(req).await
    }

    /// `POST /reservations/{id}/confirm` with `Authorization: Bearer <token>` (none
    /// without a token).
    pub async fn confirm(&self, id: &str, token: Option<&str>) -> (u16, Value) {
        self.hold_decision(id, "confirm", token, None).await
    }

    /// `POST /reservations/{id}/cancel`.
    pub async fn cancel(&self, id: &str, token: Option<&str>) -> (u16, Value) {
        self.hold_decision(id, "cancel", token, None).await
    }

    /// `POST /reservations/{id}/extend`, with `{"seconds": N}` when `seconds` is given
    /// (no body otherwise: the sale's `hold_seconds`).
    pub async fn extend(
        &self,
        id: &str,
        token: Option<&str>,
        seconds: Option<i64>,
    ) -> (u16, Value) {
        let body = seconds.map(|s| json!({ "seconds": s }));
        self.hold_decision(id, "extend", token, body).await
    }

    async fn hold_decision(
        &self,
        id: &str,
        action: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/reservations/{id}/{action}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        Self::status_and_json(req).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        Self::status_and_json(self.http.get(format!("{}{path}", self.base))).await
    }

    pub async fn status_and_json(req: reqwest::RequestBuilder) -> (u16, Value) {
        let response = req.send().await.expect("request reaches the test server");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("response body");
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        (status, json)
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A projector running in-process against the app's stores.
pub struct RunningProjector {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningProjector {
    /// Asks it to stop (as SIGTERM would) and waits until it has.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningProjector {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What the group on a sale stream still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupState {
    pub pending: usize,
    pub lag: usize,
}

impl TestApp {
    /// Starts a projector named `consumer` with test-friendly timings.
    pub fn projector(&self, consumer: &str) -> RunningProjector {
        self.projector_with(yoink_projector::ProjectorArgs::local(consumer))
    }

    pub fn projector_with(&self, args: yoink_projector::ProjectorArgs) -> RunningProjector {
        RunningProjector::start(&self.stores, args)
    }
}

impl RunningProjector {
    /// Starts a projector on `stores` (e.g. the app's, pointed at another Redis).
    pub fn start(stores: &StoreArgs, args: yoink_projector::ProjectorArgs) -> RunningProjector {
        let (tx, rx) = oneshot::channel::<()>();
        let stores = stores.clone();
        let task = tokio::spawn(async move {
            if let Err(err) = yoink_projector::run(&stores, args, None, async {
                let _ = rx.await;
            })
            .await
            {
                panic!("projector failed to start: {err}");
            }
        });
        RunningProjector {
            stop: Some(tx),
            task: Some(task),
        }
    }
}

impl TestApp {
    /// Takes units straight through the reserve script (as `/buy` does, minus HTTP),
    /// for tests that need many reservations fast.
    pub async fn reserve_direct(&self, sale: &SaleId, user: &str, quantity: i64) -> bool {
        let user = yoink_core::UserId::parse(user).expect("test user ids are valid");
        let mut redis = self.redis.clone();
        let request = yoink_core::scripts::Reserve {
            reservation_id: yoink_core::ReservationId::for_sale(sale),
            sale_id: sale,
            user_id: &user,
            quantity,
            idempotency_key: None,
            floor: yoink_core::Position::ZERO,
        };
        yoink_core::scripts::reserve(&mut redis, self.keys(), &request)
            .await
            .is_ok()
    }

    /// Takes `n` single units for users `{prefix}0..n`, 200 calls at a time; all must succeed.
    pub async fn reserve_many(&self, sale: &SaleId, prefix: &str, n: usize) {
        let users: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        for chunk in users.chunks(200) {
            let taken = futures::future::join_all(
                chunk.iter().map(|user| self.reserve_direct(sale, user, 1)),
            )
            .await;
            assert!(taken.iter().all(|ok| *ok), "every reserve call succeeds");
        }
    }

    /// Pending entries and lag of the projector group on `sale`'s stream.
    pub async fn group_state(&self, sale: &SaleId) -> GroupState {
        use redis::AsyncCommands;
        let mut redis = self.redis.clone();
        let info: redis::streams::StreamInfoGroupsReply = redis
            .xinfo_groups(self.keys().events(sale))
            .await
            .unwrap_or_default();
        info.groups
            .iter()
            .find(|g| g.name == yoink_core::keys::PROJECTOR_GROUP)
            .map(|g| GroupState {
                pending: g.pending,
                lag: g.lag.unwrap_or(usize::MAX),
            })
            .unwrap_or(GroupState {
                pending: usize::MAX,
                lag: usize::MAX,
            })
    }

    /// Waits until the group on `sale` has nothing pending and no lag.
    pub async fn wait_drained(&self, sale: &SaleId, timeout: std::time::Duration) -> bool {
        crate::eventually(timeout, || async {
            self.group_state(sale).await == GroupState { pending: 0, lag: 0 }
        })
        .await
    }
}

impl TestApp {
    /// The `yoink` binary (`bin`, from `env!("CARGO_BIN_EXE_yoink")`) set up to use this
    /// app's database, Redis and key prefix, with no metrics listeners (a test passes
    /// `--metrics-listen` where it wants one).
    pub fn yoink_command(&self, bin: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(bin);
        cmd.env("DATABASE_URL", &self.stores.database_url)
            .env("REDIS_URL", &self.stores.redis_url)
            .env("YOINK_KEY_PREFIX", &self.stores.key_prefix)
            .env("YOINK_PROJECTOR_METRICS_LISTEN", "off")
            .env("YOINK_API_METRICS_LISTEN", "off")
            .env("YOINK_RELAY_METRICS_LISTEN", "off")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null());
        cmd
    }
}
