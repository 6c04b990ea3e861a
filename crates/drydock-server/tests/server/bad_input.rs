//! Bad input to the API is a 4xx with a stable code and a message naming
//! the problem — never a 5xx, never a panic — and nothing stored changes.
//! (Parsing does not depend on the backend: SQLite only.)

use crate::harness::Server;
use anyhow::ensure;
use drydock_testkit::{Backend, TestDb, run};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_4xx_with_a_code_and_nothing_changes() {
    run(Backend::Sqlite, check).await
}

async fn raw(
    s: &Server,
    method: reqwest::Method,
    path: &str,
    ctype: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    // A body over the limit is refused from its Content-Length, before it
    // is read; the server then closes the connection with the rest unread,
    // and TCP may reset it before the client reads the 413. So such a
    // request is tried a few times: one answer must come back, and be 413.
    let mut attempts = 0;
    let resp = loop {
        // A connection of its own each time: one the server closed after an
        // oversized request must not be reused for the next.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let mut r = http
            .request(method.clone(), s.at(path))
            .bearer_auth(&s.admin_token)
            .body(body.clone());
        if let Some(c) = ctype {
            r = r.header("content-type", c);
        }
        match r.send().await {
            Ok(resp) => break resp,
            Err(e) if body.len() > drydock_server::MAX_BODY_BYTES && attempts < 10 => {
                attempts += 1;
                eprintln!("oversized request reset before its answer was read ({e}); again");
            }
            Err(e) => panic!("request: {e}"),
        }
    };
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn check(db: &TestDb) -> anyhow::Result<()> {
    let s = Server::start(db).await;
    let lease = s.active_lease().await?;
    let id = lease["id"].as_i64().unwrap();
    let (_, before) = s.get("/api/v1/leases").await;
    let json_ct = Some("application/json");
    use reqwest::Method as M;
    let cases: Vec<(M, String, Option<&str>, Vec<u8>, StatusCode, &str, &str)> = vec![
        (
            M::POST,
            "/api/v1/leases".into(),
            json_ct,
            b"{\"type\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-json",
            "EOF",
        ),
        (
            M::POST,
            "/api/v1/leases".into(),
            json_ct,
            b"[1, 2]".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-json",
            "invalid type",
        ),
        (
            M::POST,
            "/api/v1/leases".into(),
            json_ct,
            br#"{"type": "host", "priority": "high"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-json",
            "priority",
        ),
        (
            M::POST,
            "/api/v1/leases".into(),
            json_ct,
            br#"{"type": "host", "colour": "red"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-json",
            "colour",
        ),
        (
            M::POST,
            "/api/v1/leases".into(),
            json_ct,
            br#"{"attributes": {}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-json",
            "type",
        ),
        (
            M::POST,
            "/api/v1/leases".into(),
            json_ct,
            br#"{"type": "spaceship"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-request",
            "spaceship",
        ),
        (
            M::POST,
            "/api/v1/leases".into(),
            json_ct,
            br#"{"type": "host", "blueprints": ["nope"]}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-request",
            "nope",
        ),
        (
            M::POST,
            "/api/v1/leases".into(),
            json_ct,
            br#"{"type": "host", "ttl": "forever"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-request",
            "ttl",
        ),
        (
            M::POST,
            "/api/v1/leases".into(),
            json_ct,
            br#"{"type": "host", "until": 1}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-request",
            "future",
        ),
        (
            M::POST,
            "/api/v1/leases".into(),
            json_ct,
            br#"{"type": "host\u0000"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-request",
            "printable",
        ),
        (
            M::POST,
            "/api/v1/leases".into(),
            None,
            br#"{"type": "host"}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Content-Type",
        ),
        (
            M::POST,
            "/api/v1/leases".into(),
            json_ct,
            {
                let mut big = br#"{"type": "host", "attributes": {"x": ""#.to_vec();
                big.extend(std::iter::repeat_n(b'a', 2 * 1024 * 1024));
                big.extend(br#""}}"#);
                big
            },
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "length limit",
        ),
        (
            M::POST,
            "/api/v1/leases".into(),
            json_ct,
            {
                let mut big = br#"{"type": "host", "attributes": {"x": ""#.to_vec();
                big.extend(std::iter::repeat_n(b'a', 200 * 1024));
                big.extend(br#""}}"#);
                big
            },
            StatusCode::BAD_REQUEST,
            "bad-request",
            "attributes",
        ),
        (
            M::GET,
            "/api/v1/leases/999999".into(),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "not-found",
            "999999",
        ),
        (
            M::GET,
            "/api/v1/leases/abc".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "bad-request",
            "abc",
        ),
        (
            M::GET,
            "/api/v1/leases/-3".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "bad-request",
            "positive",
        ),
        (
            M::GET,
            "/api/v1/resources/0".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "bad-request",
            "positive",
        ),
        (
            M::GET,
            "/api/v1/blueprints/77777".into(),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "not-found",
            "77777",
        ),
        (
            M::GET,
            "/api/v1/leases?limit=0".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "bad-request",
            "limit",
        ),
        (
            M::GET,
            "/api/v1/leases?limit=ten".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "bad-request",
            "limit",
        ),
        (
            M::GET,
            "/api/v1/leases?status=sleepy".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "bad-request",
            "sleepy",
        ),
        (
            M::GET,
            "/api/v1/leases?colour=red".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "bad-request",
            "colour",
        ),
        (
            M::GET,
            format!("/api/v1/leases/{id}/wait?timeout=1h"),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "bad-request",
            "timeout",
        ),
        (
            M::GET,
            format!("/api/v1/leases/{id}/wait?status=gone"),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "bad-request",
            "gone",
        ),
        (
            M::GET,
            "/api/v1/nothing-here".into(),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "not-found",
            "nothing-here",
        ),
        (
            M::DELETE,
            "/api/v1/leases".into(),
            None,
            vec![],
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "DELETE",
        ),
        (
            M::POST,
            format!("/api/v1/leases/{id}/command"),
            json_ct,
            br#"{"argv": []}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-request",
            "no command given",
        ),
        (
            M::POST,
            format!("/api/v1/leases/{id}/command"),
            json_ct,
            br#"{"argv": ["true"], "env": {"BAD NAME": "x"}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-request",
            "BAD NAME",
        ),
        (
            M::POST,
            format!("/api/v1/leases/{id}/command"),
            json_ct,
            br#"{"argv": ["true"], "cwd": "../../etc"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-request",
            "..",
        ),
        (
            M::POST,
            format!("/api/v1/leases/{id}/command"),
            json_ct,
            br#"{"argv": ["true"], "timeout": "2days"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-request",
            "timeout",
        ),
        (
            M::POST,
            "/api/v1/leases/999999/release".into(),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "not-found",
            "999999",
        ),
        (
            M::POST,
            "/api/v1/leases/999999/command".into(),
            json_ct,
            br#"{"argv": ["true"]}"#.to_vec(),
            StatusCode::NOT_FOUND,
            "not-found",
            "999999",
        ),
        (
            M::POST,
            "/api/v1/blueprints".into(),
            json_ct,
            br#"{"name": "", "type": "host.local"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-request",
            "name",
        ),
        (
            M::PATCH,
            "/api/v1/blueprints/1".into(),
            json_ct,
            br#"{"kind": "x"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-json",
            "kind",
        ),
        (
            M::POST,
            "/api/v1/blueprints/999/disable".into(),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "not-found",
            "999",
        ),
        (
            M::GET,
            "/api/v1/logs?after=x".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "bad-request",
            "after",
        ),
    ];
    for (method, path, ctype, body, want, code, mention) in cases {
        let (status, answer) = raw(&s, method.clone(), &path, ctype, body).await;
        let message = answer["error"]["message"].as_str().unwrap_or("");
        ensure!(
            status == want && Server::code(&answer) == code && message.contains(mention),
            "{method} {path}: expected {want} {code} mentioning {mention:?}, got {status} {answer}"
        );
    }
    // A command on a lease that is not active: 409, and it says why.
    let (_, pending) = s
        .post("/api/v1/leases", json!({"type": "host", "blueprints": [s.blueprint], "until": drydock_store::now_ms() + 60_000}))
        .await;
    let pid = pending["id"].as_i64().unwrap();
    s.post(&format!("/api/v1/leases/{pid}/release"), json!({}))
        .await;
    s.wait(pid, "destroyed").await?;
    let (status, err) = s
        .post(
            &format!("/api/v1/leases/{pid}/command"),
            json!({"argv": ["true"]}),
        )
        .await;
    ensure!(
        status == StatusCode::CONFLICT
            && err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not active"),
        "{err}"
    );

    // Nothing already stored was changed by the refused requests.
    let (_, after) = s.get(&format!("/api/v1/leases?before={pid}")).await;
    ensure!(after == before, "{after} vs {before}");
    let (_, still) = s.get(&format!("/api/v1/leases/{id}")).await;
    ensure!(still["status"] == "active");
    Ok(())
}
