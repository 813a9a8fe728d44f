//! `yoink sale create` as an operator runs it: retried after a half-done creation, the
//! sale always ends registered, so projectors find it.

use redis::AsyncCommands;
use yoink_core::SaleId;
use yoink_testkit::spawn_app;

use crate::YOINK;

#[tokio::test]
async fn a_retried_creation_registers_a_sale_whose_registration_was_lost() {
    let app = spawn_app().await;
    let create = || {
        app.yoink_command(YOINK)
            .args(["sale", "create", "--id", "half-made", "--stock", "5"])
            .output()
            .expect("run yoink sale create")
    };
    assert!(create().status.success());
    let mut redis = app.redis.clone();
    let registry = app.keys().sales_registry();
    // The registration is lost (the write failed after the sale's keys were made).
    let _: i64 = redis.srem(&registry, "half-made").await.expect("SREM");

    let retry = create();
    let stderr = String::from_utf8_lossy(&retry.stderr);
    assert!(!retry.status.success(), "the sale exists: {stderr}");
    let registered: bool = redis
        .sismember(&registry, "half-made")
        .await
        .expect("SISMEMBER");
    assert!(registered, "the retry registered it");
    // And it still has the stock it was created with.
    let stock: i64 = redis
        .get(app.keys().stock(&SaleId::parse("half-made").expect("id")))
        .await
        .expect("stock");
    assert_eq!(stock, 5);
}
