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
    type Case<'a> = (
        M,
        String,
        Option<&'a str>,
        Vec<u8>,
        StatusCode,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
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

/// A generated sweep: valid requests broken in ways that are invalid by
/// construction (truncated JSON, a value of the wrong type, an unknown
/// field, unicode and size edge cases in checked strings, path traversal
/// and odd numbers in ids). Every answer must be a 4xx with an error code
/// and the database must not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generated_sweep_of_broken_requests_changes_nothing() {
    run(Backend::Sqlite, sweep).await
}

async fn snapshot(s: &Server) -> anyhow::Result<String> {
    let leases = s
        .store
        .leases(&drydock_store::lease::LeaseFilter {
            limit: Some(10_000),
            ..Default::default()
        })
        .await?;
    let blueprints = s.store.blueprints(None).await?;
    let mut commands = Vec::new();
    for l in &leases {
        commands.extend(s.store.commands_for(l.object()).await?);
    }
    Ok(format!("{leases:?}{blueprints:?}{commands:?}"))
}

async fn sweep(db: &TestDb) -> anyhow::Result<()> {
    use drydock_testkit::Rng;
    let s = Server::start(db).await;
    let lease = s.active_lease().await?;
    let id = lease["id"].as_i64().unwrap();
    let bp = s.blueprint;
    let before = snapshot(&s).await?;
    let bases: Vec<(reqwest::Method, String, Value)> = vec![
        (
            reqwest::Method::POST,
            "/api/v1/leases".into(),
            json!({"type": "host", "attributes": {"a": "b"}, "priority": 1, "ttl": "1h", "owner": "x"}),
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/leases/{id}/renew"),
            json!({"ttl": "2h"}),
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/leases/{id}/command"),
            json!({"argv": ["true"], "cwd": "sub", "env": {"A": "1"}, "timeout": "5s"}),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/blueprints".into(),
            json!({"name": "n", "type": "host.local", "fields": {"limit": 1}}),
        ),
        (
            reqwest::Method::PATCH,
            format!("/api/v1/blueprints/{bp}"),
            json!({"name": "renamed", "fields": {"limit": 2}}),
        ),
    ];
    let wrong_types = [
        json!(null),
        json!(true),
        json!(1.5e308),
        json!(-9_223_372_036_854_775_807i64),
        json!([]),
        json!([1, "a"]),
        json!({}),
        json!({"x": {"y": []}}),
        json!(0),
    ];
    let edge_strings = [
        String::new(),
        "\u{0}".into(),
        "\u{FEFF}\u{202E}host".into(),
        "host\n".into(),
        "💥".repeat(100),
        "x".repeat(300),
        "../../../../etc/passwd".into(),
        "%2e%2e%2f".into(),
    ];
    let odd_ids = [
        "../../etc/passwd",
        "..%2F..%2Fetc",
        "%00",
        "1e3",
        "0x10",
        "99999999999999999999999",
        "-1",
        "0",
        "💥",
        "1;DROP TABLE leases",
        "%20",
        "1.0",
    ];
    let mut rng = Rng(0x5eed_d0c5);
    let mut tried = 0;
    for round in 0..120 {
        let (method, path, base) = &bases[round % bases.len()];
        let text = base.to_string();
        let obj = base.as_object().unwrap();
        let keys: Vec<&String> = obj.keys().collect();
        let key = keys[rng.below(keys.len() as u64) as usize].clone();
        let mut variants: Vec<Vec<u8>> = Vec::new();
        // Truncated JSON.
        let cut = 1 + rng.below(text.len() as u64 - 1) as usize;
        variants.push(text.as_bytes()[..cut].to_vec());
        // A value of the wrong type (every field has one JSON type).
        let mut broken = obj.clone();
        let wrong = wrong_types[rng.below(wrong_types.len() as u64) as usize].clone();
        let same_kind = std::mem::discriminant(&wrong) == std::mem::discriminant(&obj[&key])
            || (key == "fields" && wrong.is_object())
            || (key == "attributes" && wrong.is_object())
            || (key == "name" && wrong.is_null());
        if !same_kind {
            broken.insert(key.clone(), wrong);
            variants.push(Value::Object(broken).to_string().into_bytes());
        }
        // An unknown field.
        let mut extra = obj.clone();
        extra.insert(format!("unknown_{}", rng.below(1000)), json!(1));
        variants.push(Value::Object(extra).to_string().into_bytes());
        // An edge-case string where a checked string goes.
        let checked = match path.as_str() {
            "/api/v1/leases" => Some("type"),
            p if p.ends_with("/renew") => Some("ttl"),
            p if p.ends_with("/command") => Some("cwd"),
            "/api/v1/blueprints" => Some("type"),
            _ => None,
        };
        if let Some(field) = checked {
            let mut edged = obj.clone();
            let value = edge_strings[rng.below(edge_strings.len() as u64) as usize].clone();
            let valid_cwd = field == "cwd" && drydock_model::input::relative_path(&value).is_ok();
            if !valid_cwd {
                edged.insert(field.into(), Value::String(value));
                variants.push(Value::Object(edged).to_string().into_bytes());
            }
        }
        for body in variants {
            tried += 1;
            let (status, answer) = raw(
                &s,
                method.clone(),
                path,
                Some("application/json"),
                body.clone(),
            )
            .await;
            ensure!(
                status.is_client_error() && !Server::code(&answer).is_empty(),
                "{method} {path} {:?}: {status} {answer}",
                String::from_utf8_lossy(&body)
            );
        }
        // An odd id in the path.
        let odd = odd_ids[rng.below(odd_ids.len() as u64) as usize];
        let odd_path = path
            .replace(&format!("/{id}/"), &format!("/{odd}/"))
            .replace(&format!("/{bp}"), &format!("/{odd}"));
        if odd_path != *path {
            tried += 1;
            let (status, answer) = raw(
                &s,
                method.clone(),
                &odd_path,
                Some("application/json"),
                text.clone().into_bytes(),
            )
            .await;
            ensure!(
                status.is_client_error(),
                "{method} {odd_path}: {status} {answer}"
            );
        }
    }
    ensure!(tried >= 400, "only {tried} requests");
    ensure!(
        snapshot(&s).await? == before,
        "a refused request changed the database"
    );
    Ok(())
}
