//! Bad input gets its specified 4xx and a JSON `error`, never a 5xx, a panic or a hang.

use reqwest::Method;
use yoink_testkit::{AppOptions, TestApp, spawn_app, spawn_app_with};

struct Case {
    name: &'static str,
    method: Method,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    error: &'static str,
}

fn buy(name: &'static str, body: impl Into<Vec<u8>>, status: u16, error: &'static str) -> Case {
    Case {
        name,
        method: Method::POST,
        path: "/buy",
        headers: vec![("content-type", "application/json".into())],
        body: body.into(),
        status,
        error,
    }
}

fn cases() -> Vec<Case> {
    let long = "x".repeat(65);
    let mut cases = vec![
        buy("empty body", "", 400, "invalid_request"),
        buy("not json", "hello", 400, "invalid_request"),
        buy(
            "truncated json",
            r#"{"sale_id":"bad-sale","user_id":"#,
            400,
            "invalid_request",
        ),
        buy("json array", "[1,2,3]", 400, "invalid_request"),
        buy("json null", "null", 400, "invalid_request"),
        buy(
            "missing sale_id",
            r#"{"user_id":"u"}"#,
            400,
            "invalid_request",
        ),
        buy(
            "missing user_id",
            r#"{"sale_id":"bad-sale"}"#,
            400,
            "invalid_request",
        ),
        buy(
            "sale_id a number",
            r#"{"sale_id":7,"user_id":"u"}"#,
            400,
            "invalid_request",
        ),
        buy(
            "user_id null",
            r#"{"sale_id":"bad-sale","user_id":null}"#,
            400,
            "invalid_request",
        ),
        buy(
            "quantity a string",
            r#"{"sale_id":"bad-sale","user_id":"u","quantity":"1"}"#,
            400,
            "invalid_request",
        ),
        buy(
            "quantity a float",
            r#"{"sale_id":"bad-sale","user_id":"u","quantity":1.5}"#,
            400,
            "invalid_request",
        ),
        buy(
            "quantity zero",
            r#"{"sale_id":"bad-sale","user_id":"u","quantity":0}"#,
            400,
            "invalid_request",
        ),
        buy(
            "quantity negative",
            r#"{"sale_id":"bad-sale","user_id":"u","quantity":-1}"#,
            400,
            "invalid_request",
        ),
        buy(
            "quantity 10^12",
            r#"{"sale_id":"bad-sale","user_id":"u","quantity":1000000000000}"#,
            400,
            "invalid_request",
        ),
        buy(
            "quantity beyond i64",
            r#"{"sale_id":"bad-sale","user_id":"u","quantity":1e30}"#,
            400,
            "invalid_request",
        ),
        buy(
            "unknown field",
            r#"{"sale_id":"bad-sale","user_id":"u","qty":1}"#,
            400,
            "invalid_request",
        ),
        buy(
            "empty sale_id",
            r#"{"sale_id":"","user_id":"u"}"#,
            400,
            "invalid_request",
        ),
        buy(
            "sale_id too long",
            format!(r#"{{"sale_id":"{long}","user_id":"u"}}"#),
            400,
            "invalid_request",
        ),
        buy(
            "user_id too long",
            format!(r#"{{"sale_id":"bad-sale","user_id":"{long}"}}"#),
            400,
            "invalid_request",
        ),
        buy(
            "sale_id with a brace",
            r#"{"sale_id":"a}b","user_id":"u"}"#,
            400,
            "invalid_request",
        ),
        buy(
            "user_id with a pipe",
            r#"{"sale_id":"bad-sale","user_id":"a|b"}"#,
            400,
            "invalid_request",
        ),
        buy(
            "user_id with a space",
            r#"{"sale_id":"bad-sale","user_id":"a b"}"#,
            400,
            "invalid_request",
        ),
        buy(
            "non-UTF-8 body",
            b"{\"sale_id\":\"\xff\xfe\",\"user_id\":\"u\"}".to_vec(),
            400,
            "invalid_request",
        ),
        buy(
            "unknown sale",
            r#"{"sale_id":"no-such-sale","user_id":"u"}"#,
            404,
            "unknown_sale",
        ),
        buy(
            "1 MiB body",
            vec![b' '; 1024 * 1024],
            413,
            "payload_too_large",
        ),
        buy(
            "body just over 4 KiB",
            format!(
                r#"{{"sale_id":"bad-sale","user_id":"u","pad":"{}"}}"#,
                "p".repeat(4100)
            ),
            413,
            "payload_too_large",
        ),
    ];
    let mut bad_key = buy(
        "Idempotency-Key too long",
        r#"{"sale_id":"bad-sale","user_id":"u"}"#,
        400,
        "invalid_request",
    );
    bad_key.headers.push(("idempotency-key", "k".repeat(300)));
    cases.push(bad_key);
    let other = |name, method, path: &'static str, status, error| Case {
        name,
        method,
        path,
        headers: vec![],
        body: vec![],
        status,
        error,
    };
    cases.extend([
        other("GET /buy", Method::GET, "/buy", 405, "method_not_allowed"),
        other(
            "DELETE /sales/x",
            Method::DELETE,
            "/sales/x",
            405,
            "method_not_allowed",
        ),
        other("unknown path", Method::GET, "/nope", 404, "not_found"),
        other("root path", Method::GET, "/", 404, "not_found"),
        other(
            "bad sale id in path",
            Method::GET,
            "/sales/a%20b",
            400,
            "invalid_request",
        ),
        other(
            "unknown sale in path",
            Method::GET,
            "/sales/ghost",
            404,
            "unknown_sale",
        ),
        other(
            "bad reservation id",
            Method::GET,
            "/reservations/not-a-uuid",
            400,
            "invalid_request",
        ),
    ]);
    let sale_body = r#"{"sale_id":"new-sale","stock":5}"#;
    let admin = |name, auth: Option<&str>, body: &str, status, error| Case {
        name,
        method: Method::POST,
        path: "/sales",
        headers: auth
            .map(|a| vec![("authorization", a.to_owned())])
            .unwrap_or_default(),
        body: body.as_bytes().to_vec(),
        status,
        error,
    };
    cases.extend([
        admin("POST /sales without token", None, sale_body, 401, "unauthorized"),
        admin("POST /sales with wrong token", Some("Bearer nope"), sale_body, 401, "unauthorized"),
        admin("POST /sales with basic auth", Some("Basic YWRtaW46YWRtaW4="), sale_body, 401, "unauthorized"),
        admin("POST /sales negative stock", Some("Bearer s3cret"), r#"{"sale_id":"neg","stock":-1}"#, 400, "invalid_request"),
        admin("POST /sales ends before it starts", Some("Bearer s3cret"), r#"{"sale_id":"t","stock":1,"starts_at":"2030-01-02T00:00:00Z","ends_at":"2030-01-01T00:00:00Z"}"#, 400, "invalid_request"),
        admin("POST /sales bad time", Some("Bearer s3cret"), r#"{"sale_id":"t","stock":1,"starts_at":"soon"}"#, 400, "invalid_request"),
        admin("POST /sales negative hold_seconds", Some("Bearer s3cret"), r#"{"sale_id":"h","stock":1,"hold_seconds":-1}"#, 400, "invalid_request"),
        admin("POST /sales hold_seconds over 7 days", Some("Bearer s3cret"), r#"{"sale_id":"h","stock":1,"hold_seconds":604801}"#, 400, "invalid_request"),
        admin("POST /sales max_hold_seconds below hold_seconds", Some("Bearer s3cret"), r#"{"sale_id":"h","stock":1,"hold_seconds":60,"max_hold_seconds":30}"#, 400, "invalid_request"),
        admin("POST /sales max_hold_seconds without hold_seconds", Some("Bearer s3cret"), r#"{"sale_id":"h","stock":1,"max_hold_seconds":30}"#, 400, "invalid_request"),
        admin("POST /sales hold_seconds a string", Some("Bearer s3cret"), r#"{"sale_id":"h","stock":1,"hold_seconds":"60"}"#, 400, "invalid_request"),
    ]);
    // The hold decisions: the admin token stands in for the unset checkout token.
    let hold = |name, method, path: &'static str, body: &str, status, error| Case {
        name,
        method,
        path,
        headers: vec![("authorization", "Bearer s3cret".to_owned())],
        body: body.as_bytes().to_vec(),
        status,
        error,
    };
    let some_hold = "/reservations/0190f1c2-7a4b-8c3d-9e8f-0123456789ab/extend";
    cases.extend([
        hold(
            "GET /reservations/x/confirm",
            Method::GET,
            "/reservations/x/confirm",
            "",
            405,
            "method_not_allowed",
        ),
        hold(
            "bad reservation id to confirm",
            Method::POST,
            "/reservations/not-a-uuid/confirm",
            "",
            400,
            "invalid_request",
        ),
        hold(
            "bad reservation id to cancel",
            Method::POST,
            "/reservations/%FF/cancel",
            "",
            400,
            "invalid_request",
        ),
        hold(
            "unknown reservation to confirm",
            Method::POST,
            "/reservations/0190f1c2-7a4b-8c3d-9e8f-0123456789ab/confirm",
            "",
            404,
            "unknown_reservation",
        ),
        hold(
            "extend by zero seconds",
            Method::POST,
            some_hold,
            r#"{"seconds":0}"#,
            400,
            "invalid_request",
        ),
        hold(
            "extend by more than 7 days",
            Method::POST,
            some_hold,
            r#"{"seconds":604801}"#,
            400,
            "invalid_request",
        ),
        hold(
            "extend with an unknown field",
            Method::POST,
            some_hold,
            r#"{"minutes":1}"#,
            400,
            "invalid_request",
        ),
        hold(
            "extend with an array",
            Method::POST,
            some_hold,
            "[5]",
            400,
            "invalid_request",
        ),
        hold(
            "extend with a 5 KiB body",
            Method::POST,
            some_hold,
            &" ".repeat(5_000),
            413,
            "payload_too_large",
        ),
    ]);
    cases
}

/// Sends a body too large to be read over raw TCP, reading the answer while the body is
/// still being written: the server answers 413 without reading it and closes, which a
/// client still writing may see as a reset (as with any server that refuses a body).
async fn send_oversized(app: &TestApp, case: &Case) -> (u16, serde_json::Value, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n",
        case.method,
        case.path,
        case.body.len()
    );
    for (name, value) in &case.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let body = case.body.clone();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&body).await;
    });
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), rd.read_to_end(&mut raw)).await;
    writer.abort();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{}: no HTTP answer: {text:?}", case.name));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{}: bad status line: {head:?}", case.name));
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .map(str::to_owned);
    let json = serde_json::from_str(body)
        .unwrap_or_else(|_| panic!("{}: body is not JSON: {body:?}", case.name));
    (status, json, content_type)
}

async fn send(app: &TestApp, case: &Case) -> (u16, serde_json::Value, Option<String>) {
    if case.body.len() > 64 * 1024 {
        return send_oversized(app, case).await;
    }
    let mut req = app
        .http
        .request(case.method.clone(), format!("{}{}", app.base, case.path))
        .body(case.body.clone());
    for (name, value) in &case.headers {
        req = req.header(*name, value);
    }
    let response = tokio::time::timeout(std::time::Duration::from_secs(5), req.send())
        .await
        .unwrap_or_else(|_| panic!("{}: no answer within 5 s", case.name))
        .unwrap_or_else(|err| panic!("{}: {err}", case.name));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await.expect("body");
    let json = serde_json::from_slice(&body).unwrap_or_else(|_| {
        panic!(
            "{}: body is not JSON: {:?}",
            case.name,
            String::from_utf8_lossy(&body)
        )
    });
    (status, json, content_type)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bad_request_gets_its_4xx_and_a_json_error() {
    let app = spawn_app_with(AppOptions {
        admin_token: Some("s3cret".into()),
        ..AppOptions::default()
    })
    .await;
    app.create_sale("bad-sale", 10, 0).await;
    let cases = cases();
    assert!(cases.len() >= 25, "the issue asks for at least 25 cases");

    let mut failures = Vec::new();
    for case in &cases {
        let (status, body, content_type) = send(&app, case).await;
        if status != case.status || body["error"] != case.error {
            failures.push(format!(
                "{}: expected {} {}, got {status} {body}",
                case.name, case.status, case.error
            ));
        }
        assert!(status < 500, "{}: {status} {body}", case.name);
        assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "{}",
            case.name
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The bad buys took nothing.
    let (_, view) = app.get("/sales/bad-sale").await;
    assert_eq!(view["remaining"], 10);
}

#[tokio::test]
async fn admin_endpoints_are_off_without_a_configured_token_and_say_how_to_enable() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(format!("{}/sales", app.base))
        .header("authorization", "Bearer anything")
        .body(r#"{"sale_id":"s","stock":1}"#)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 403);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"], "admin_disabled");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("YOINK_ADMIN_TOKEN")),
        "{body}"
    );
}
