//! Text and JSON rendering of what the commands print.

use drydock_engine::events::{describe_log, describe_waiting};
use drydock_store::blueprint::Blueprint;
use drydock_store::lease::Lease;
use drydock_store::log::LogEntry;
use drydock_store::resource::Resource;
use serde::Serialize;

/// Print `value` as JSON, or the text `human` gives.
pub fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value)
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        );
    } else {
        println!("{}", human());
    }
}

/// Epoch ms as an RFC 3339 UTC time (second precision).
pub fn time(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A JSON value as text: strings bare, anything else as JSON.
fn value_text(v: &serde_json::Value) -> String {
    v.as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| v.to_string())
}

pub fn lease_line(l: &Lease) -> String {
    let detail = match (&l.waiting, &l.failure) {
        (_, Some(f)) => format!("failed: {f}"),
        (Some(w), None) => format!("waiting: {}", describe_waiting(w)),
        _ => String::new(),
    };
    format!(
        "{:>6}  {:<9}  {:<12}  {:>8}  {}",
        l.id,
        l.status.as_str(),
        l.resource_type,
        l.resource_id
            .map(|r| r.to_string())
            .unwrap_or_else(|| "-".into()),
        detail
    )
}

pub fn lease_detail(l: &Lease) -> String {
    let mut out = vec![
        format!("Lease {}", l.id),
        format!("  status:      {}", l.status),
        format!("  type:        {}", l.resource_type),
        format!(
            "  resource:    {}",
            l.resource_id
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into())
        ),
        format!("  authorizing: {}", l.authorizing),
        format!("  priority:    {}", l.priority),
        format!("  created:     {}", time(l.created_at)),
    ];
    if let Some(o) = &l.owner {
        out.push(format!("  owner:       {o}"));
    }
    if !l.blueprint_ids.is_empty() {
        out.push(format!(
            "  blueprints:  {}",
            l.blueprint_ids
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(u) = l.until {
        out.push(format!("  until:       {}", time(u)));
    }
    if let Some(w) = &l.waiting {
        out.push(format!("  waiting:     {}", describe_waiting(w)));
    }
    if let Some(f) = &l.failure {
        out.push(format!("  failure:     {f}"));
    }
    for (k, v) in &l.attributes {
        out.push(format!("  attribute:   {k} = {}", value_text(v)));
    }
    out.join("\n")
}

pub fn resource_line(r: &Resource) -> String {
    format!(
        "{:>6}  {:<9}  {:<12}  blueprint {}",
        r.id,
        r.status.as_str(),
        r.resource_type,
        r.blueprint_id
    )
}

pub fn resource_detail(r: &Resource) -> String {
    let mut out = vec![
        format!("Resource {}", r.id),
        format!("  status:    {}", r.status),
        format!("  type:      {}", r.resource_type),
        format!("  blueprint: {}", r.blueprint_id),
        format!("  created:   {}", time(r.created_at)),
    ];
    if let Some(f) = &r.failure {
        out.push(format!("  failure:   {f}"));
    }
    for (k, v) in &r.attributes {
        out.push(format!("  attribute: {k} = {}", value_text(v)));
    }
    out.join("\n")
}

pub fn blueprint_line(b: &Blueprint) -> String {
    format!(
        "{:>4}  {:<20}  {:<14}  {}",
        b.id,
        b.name,
        b.kind,
        if b.disabled { "disabled" } else { "enabled" }
    )
}

pub fn blueprint_detail(b: &Blueprint) -> String {
    let mut out = vec![
        format!("Blueprint {}: {}", b.id, b.name),
        format!("  type:    {}", b.kind),
        format!(
            "  state:   {}",
            if b.disabled { "disabled" } else { "enabled" }
        ),
        format!("  created: {}", time(b.created_at)),
    ];
    for (k, v) in &b.fields {
        out.push(format!("  {k} = {}", value_text(v)));
    }
    out.join("\n")
}

pub fn log_line(e: &LogEntry) -> String {
    let mut about = Vec::new();
    if let Some(l) = e.lease {
        about.push(format!("lease {l}"));
    }
    if let Some(r) = e.resource {
        about.push(format!("resource {r}"));
    }
    if let Some(b) = e.blueprint {
        about.push(format!("blueprint {b}"));
    }
    format!(
        "{}  [{}] {}",
        time(e.epoch),
        about.join(", "),
        describe_log(&e.kind, &e.data)
    )
}
