//! A bounded fuzzing pass (proptest; runs in CI): the parsers that take
//! input from outside — Conduit requests, API bodies, blueprint fields,
//! lease attributes a blueprint matches against, and the ref / path /
//! name / argv validators — get 50,000 generated inputs per group (200,000
//! in all), must never panic, and must keep their promises (an accepted path
//! cannot leave its directory, an accepted ref is never option-like, a
//! token never stays among Conduit parameters).
//!
//! `DRYDOCK_FUZZ_CASES` raises the number of cases for a longer run.

use drydock_model::input;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};

fn cases() -> u32 {
    std::env::var("DRYDOCK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Text built from pieces that matter to the parsers, mixed with anything.
fn tricky_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("..".to_owned()),
        Just("/".to_owned()),
        Just("-".to_owned()),
        Just("--upload-pack=x".to_owned()),
        Just("@{".to_owned()),
        Just(".lock".to_owned()),
        Just("\0".to_owned()),
        Just("\n".to_owned()),
        Just(" ".to_owned()),
        Just("~^:?*[\\".to_owned()),
        Just("é".to_owned()),
        Just("\u{202e}".to_owned()),
        Just("💥".to_owned()),
        Just("a".to_owned()),
        Just("main".to_owned()),
        Just("0123456789abcdef".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just("=".to_owned()),
        Just("&".to_owned()),
        Just("%".to_owned()),
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

#[test]
fn validators_never_panic_and_keep_their_promises() {
    runner()
        .run(
            &(tricky_text(), prop::collection::vec(tricky_text(), 0..4)),
            |(text, words)| {
                if let Ok(p) = input::relative_path(&text) {
                    prop_assert!(!p.starts_with('/'), "{p:?}");
                    prop_assert!(!p.split('/').any(|c| c == ".." || c == "."), "{p:?}");
                    prop_assert!(!p.contains('\0'));
                }
                if input::git_ref(&text).is_ok() {
                    prop_assert!(
                        !text.starts_with('-') && !text.contains("..") && !text.is_empty(),
                        "{text:?}"
                    );
                    prop_assert!(
                        !text.chars().any(|c| c.is_control() || c == ' '),
                        "{text:?}"
                    );
                }
                if input::repository_name(&text).is_ok() {
                    prop_assert!(
                        !text.starts_with('-') && !text.starts_with('.') && !text.contains('/'),
                        "{text:?}"
                    );
                }
                if input::commit(&text).is_ok() {
                    prop_assert!(text.chars().all(|c| c.is_ascii_hexdigit()), "{text:?}");
                }
                if input::env_name(&text).is_ok() {
                    prop_assert!(!text.contains('=') && !text.is_empty(), "{text:?}");
                }
                if input::argv(&words).is_ok() {
                    prop_assert!(!words.is_empty() && words.iter().all(|w| !w.contains('\0')));
                }
                Ok(())
            },
        )
        .unwrap();
}

/// PHP-style form keys and values, JSON `params`, raw bytes.
fn conduit_body() -> impl Strategy<Value = (bool, Vec<u8>)> {
    let key = prop_oneof![
        Just("api.token".to_owned()),
        Just("params".to_owned()),
        Just("constraints[ids][0]".to_owned()),
        Just("constraints[statuses][]".to_owned()),
        Just("constraints[ids]".to_owned()),
        Just("constraints[[".to_owned()),
        Just("a[b][c][d][e]".to_owned()),
        Just("limit".to_owned()),
        Just("[]".to_owned()),
        tricky_text(),
    ];
    let form = prop::collection::vec((key, tricky_text()), 0..6).prop_map(|pairs| {
        let s = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", url_escape(k), url_escape(v)))
            .collect::<Vec<_>>()
            .join("&");
        (false, s.into_bytes())
    });
    let json_body = arb_json(3).prop_map(|v| (true, v.to_string().into_bytes()));
    let bytes = prop::collection::vec(any::<u8>(), 0..256).prop_map(|b| (false, b));
    prop_oneof![form, json_body, bytes]
}

fn url_escape(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn arb_json(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        tricky_text().prop_map(Value::String),
        Just(json!("ddt_0123456789abcdef0123456789abcdef01234567")),
    ];
    leaf.prop_recursive(depth, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("constraints".to_owned()),
                        Just("__conduit__".to_owned()),
                        Just("token".to_owned()),
                        Just("api.token".to_owned()),
                        Just("limit".to_owned()),
                        Just("after".to_owned()),
                        Just("queryKey".to_owned()),
                        tricky_text(),
                    ],
                    inner
                ),
                0..4
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

#[test]
fn conduit_requests_never_panic_and_never_keep_the_token() {
    runner()
        .run(&conduit_body(), |(is_json, body)| {
            let mut headers = axum::http::HeaderMap::new();
            if is_json {
                headers.insert("content-type", "application/json".parse().unwrap());
            }
            if let Ok((params, _token)) = drydock_server::conduit::parse_request(&headers, &body) {
                prop_assert!(!params.contains_key("api.token"));
                prop_assert!(!params.contains_key("__conduit__"));
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn api_bodies_and_blueprint_fields_never_panic() {
    let specs: Vec<_> = drydock_blueprints::registry()
        .iter()
        .flat_map(|i| i.fields().to_vec())
        .collect();
    runner()
        .run(&(arb_json(3), tricky_text()), |(value, text)| {
            let bytes = value.to_string();
            let _ = serde_json::from_str::<drydock_server::api::CreateLease>(&bytes);
            let _ = serde_json::from_str::<drydock_server::api::RunCommand>(&bytes);
            let _ = serde_json::from_str::<drydock_server::api::EditBlueprint>(&bytes);
            let _ = serde_json::from_str::<drydock_server::api::CreateBlueprint>(&bytes);
            let _ = serde_json::from_str::<drydock_server::api::Renew>(&text);
            for spec in &specs {
                let _ = drydock_engine::blueprint::parse_field(spec, &text);
            }
            if let Value::Object(m) = &value {
                for imp in drydock_blueprints::registry().iter() {
                    let _ = drydock_engine::blueprint::validate_fields(imp.fields(), m);
                }
            }
            Ok(())
        })
        .unwrap();
}

fn lease_with(attributes: Map<String, Value>) -> drydock_store::lease::Lease {
    drydock_store::lease::Lease {
        id: drydock_model::LeaseId(1),
        resource_type: "working-copy".into(),
        status: drydock_model::LeaseStatus::Pending,
        resource_id: None,
        blueprint_ids: vec![],
        authorizing: "ci:fuzz".into(),
        owner: None,
        attributes,
        internal: Map::new(),
        priority: 0,
        until: None,
        waiting: None,
        failure: None,
        acquired_at: None,
        activated_at: None,
        version: 1,
        created_at: 0,
        modified_at: 0,
    }
}

#[test]
fn lease_attributes_are_matched_without_panics_or_option_injection() {
    let registry = drydock_blueprints::registry();
    let wc = registry.get("working-copy").expect("working-copy").clone();
    let mut fields = Map::new();
    fields.insert("host-blueprints".into(), json!(["1"]));
    fields.insert("repositories".into(), json!({"app": "/srv/git/app.git"}));
    let bp = drydock_store::blueprint::Blueprint {
        id: drydock_model::BlueprintId(2),
        name: "wc".into(),
        kind: "working-copy".into(),
        fields,
        disabled: false,
        version: 1,
        created_at: 0,
        modified_at: 0,
    };
    let attr_key = prop_oneof![
        Just("repository".to_owned()),
        Just("commit".to_owned()),
        Just("ref".to_owned()),
        Just("merge".to_owned()),
        tricky_text(),
    ];
    let attr_value = prop_oneof![
        Just(json!("app")),
        Just(json!("main")),
        Just(json!("0123456789abcdef")),
        tricky_text().prop_map(Value::String),
        arb_json(1),
    ];
    runner()
        .run(
            &prop::collection::vec((attr_key, attr_value), 0..5),
            |attrs| {
                let attributes: Map<String, Value> = attrs.into_iter().collect();
                let lease = lease_with(attributes.clone());
                if let Ok(true) = wc.can_ever_allocate(&bp, &lease) {
                    for key in ["ref", "commit"] {
                        if let Some(v) = attributes.get(key).and_then(Value::as_str) {
                            prop_assert!(!v.starts_with('-'), "{key}={v:?} accepted");
                        }
                    }
                    if let Some(m) = attributes.get("merge").and_then(Value::as_str) {
                        prop_assert!(
                            m.split(',').all(|r| !r.trim().starts_with('-')),
                            "merge={m:?}"
                        );
                    }
                }
                for other in registry.iter() {
                    let _ = other.can_ever_allocate(&bp, &lease);
                }
                Ok(())
            },
        )
        .unwrap();
}
