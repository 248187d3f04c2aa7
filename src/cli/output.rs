//! What the headless commands print: tables for people, JSON for scripts.

use crate::config::units::human_bytes;
use crate::config::{Config, Operations};
use crate::engine::Snapshot;
use crate::store::{Store, Task, TaskKind, rfc3339};
use anyhow::Result;
use serde_json::{Value, json};

pub fn ops(o: Operations) -> &'static str {
    match o {
        Operations::All => "all",
        Operations::Put => "put",
    }
}

pub fn kind(t: &Task) -> &'static str {
    match t.kind {
        TaskKind::Put => "put",
        TaskKind::Delete => "delete-marker",
    }
}

/// One JSON object per rule, in the shape of DESIGN section 7.
pub fn status_rows(snapshot: &Snapshot) -> Vec<Value> {
    snapshot
        .rules
        .iter()
        .map(|r| {
            let migration = match &r.migration {
                None => Value::Null,
                Some(m) => json!({
                    "state": m.state,
                    "percent": m.percent,
                    "total_objects": m.total_objects,
                    "done_objects": m.done_objects,
                    "total_bytes": m.total_bytes,
                    "done_bytes": m.done_bytes,
                    "skipped_objects": m.skipped_objects,
                    "failed_objects": m.failed_objects,
                    "listing_complete": m.listing_complete,
                    "started_at": rfc3339(m.started_at),
                    "throughput_bytes_per_sec": m.throughput_bytes_per_sec,
                    "eta_seconds": m.eta_seconds,
                }),
            };
            json!({
                "id": r.id,
                "enabled": r.enabled,
                "state": r.state,
                "source": r.source,
                "destination": r.destination,
                "prefixes": r.prefixes,
                "operations": r.operations,
                "enable_point": r.enable_point.map(rfc3339),
                "last_sync_point": r.last_sync_point.map(rfc3339),
                "pending_tasks": r.backlog_objects,
                "pending_bytes": r.backlog_bytes,
                "failed_tasks": r.failed,
                "replicated_objects": r.replicated_objects,
                "replicated_bytes": r.replicated_bytes,
                "lag_seconds": r.lag_seconds,
                "error": r.error,
                "migration": migration,
            })
        })
        .collect()
}

/// One JSON object per endpoint: whether it answers, and when it last did.
pub fn endpoint_rows(snapshot: &Snapshot) -> Vec<Value> {
    snapshot
        .endpoints
        .iter()
        .map(|e| {
            json!({
                "name": e.name,
                "region": e.region,
                "reachable": e.reachable,
                "state": endpoint_state(e.reachable),
                "last_success": e.last_success.map(rfc3339),
                "down_since": e.down_since.map(rfc3339),
                "failed_attempts": e.failed_attempts,
                "last_error": e.last_error,
            })
        })
        .collect()
}

fn endpoint_state(reachable: Option<bool>) -> &'static str {
    match reachable {
        Some(true) => "reachable",
        Some(false) => "unreachable",
        None => "unknown",
    }
}

/// `crr status --json`: the rules (DESIGN section 7), then the endpoints.
pub fn status_json(snapshot: &Snapshot) -> Value {
    json!({ "rules": status_rows(snapshot), "endpoints": endpoint_rows(snapshot) })
}

/// The endpoints block of `crr status`: one line each, and why one does not answer.
pub fn print_endpoints(rows: &[Value]) {
    if rows.is_empty() {
        return;
    }
    println!("endpoints");
    for e in rows {
        let last = match &e["last_success"] {
            Value::Null => "no answer yet".to_string(),
            v => format!("last success {}", s(v)),
        };
        let down = match (&e["state"], &e["down_since"]) {
            (Value::String(st), Value::String(since)) if st == "unreachable" => format!(
                ", unreachable since {since} ({} failed attempt(s))",
                s(&e["failed_attempts"])
            ),
            _ => String::new(),
        };
        println!(
            "  {:<12} {:<14} {:<12} {last}{down}",
            s(&e["name"]),
            s(&e["region"]),
            s(&e["state"])
        );
        if e["state"] == "unreachable"
            && let Value::String(err) = &e["last_error"]
        {
            println!("  {:<12} error: {err}", "");
        }
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn print_status(rows: &[Value]) {
    if rows.is_empty() {
        println!("no rules in the config");
        return;
    }
    for r in rows {
        println!(
            "{}  [{}{}]  {} -> {}",
            s(&r["id"]),
            s(&r["state"]),
            if r["enabled"] == Value::Bool(false) {
                ", disabled in config"
            } else {
                ""
            },
            s(&r["source"]),
            s(&r["destination"])
        );
        if let Some(e) = r["error"].as_str() {
            println!("  error            {e}");
        }
        println!("  enable point     {}", s(&r["enable_point"]));
        println!(
            "  last sync point  {}{}",
            s(&r["last_sync_point"]),
            r["lag_seconds"]
                .as_i64()
                .map(|l| format!(" ({l}s behind)"))
                .unwrap_or_default()
        );
        println!(
            "  backlog          {} task(s), {}",
            s(&r["pending_tasks"]),
            human_bytes(r["pending_bytes"].as_i64().unwrap_or(0).max(0) as u64)
        );
        println!("  failed           {} task(s)", s(&r["failed_tasks"]));
        println!(
            "  replicated       {} object(s), {}",
            s(&r["replicated_objects"]),
            human_bytes(r["replicated_bytes"].as_i64().unwrap_or(0).max(0) as u64)
        );
        let m = &r["migration"];
        if !m.is_null() {
            println!("  migration        {}", migration_line(m));
        }
    }
}

/// "running 42.5%: 17 of at least 40 objects, 1.2 MiB of 3.0 MiB; 2 skipped, 0 failed; 1.0 MiB/s, ETA 2s"
pub fn migration_line(m: &Value) -> String {
    let n = |k: &str| m[k].as_i64().unwrap_or(0).max(0) as u64;
    let at_least = if m["listing_complete"] == Value::Bool(true) {
        ""
    } else {
        "at least "
    };
    let mut line = format!(
        "{} {:.1}%: {} of {at_least}{} objects, {} of {at_least}{}; {} skipped, {} failed",
        s(&m["state"]),
        m["percent"].as_f64().unwrap_or(0.0),
        n("done_objects") + n("skipped_objects"),
        n("total_objects"),
        human_bytes(n("done_bytes")),
        human_bytes(n("total_bytes")),
        n("skipped_objects"),
        n("failed_objects"),
    );
    let rate = n("throughput_bytes_per_sec");
    if rate > 0 {
        line.push_str(&format!("; {}/s", human_bytes(rate)));
    }
    if let Some(eta) = m["eta_seconds"].as_u64() {
        line.push_str(&format!(
            ", ETA {}",
            humantime::format_duration(std::time::Duration::from_secs(eta))
        ));
    }
    line
}

pub fn print_tasks(tasks: &[Task], json: bool) -> Result<()> {
    if json {
        let rows: Vec<Value> = tasks
            .iter()
            .map(|t| {
                json!({
                    "id": t.id, "rule": t.rule_id, "kind": kind(t), "key": t.key,
                    "version_id": t.version_id, "size": t.size, "state": t.state,
                    "bytes_done": if t.state == "running" { t.bytes_done } else { 0 },
                    "attempts": t.attempts, "error": t.last_error, "migration": t.migration_id,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "tasks": rows }))?);
        return Ok(());
    }
    if tasks.is_empty() {
        println!("no tasks");
        return Ok(());
    }
    println!(
        "{:>6}  {:<8}  {:<14}  {:>10}  {:>7}  RULE / KEY",
        "TASK", "STATE", "KIND", "SIZE", "ATTEMPT"
    );
    for t in tasks {
        println!(
            "{:>6}  {:<8}  {:<14}  {:>10}  {:>7}  {} / {}",
            t.id,
            t.state,
            kind(t),
            human_bytes(t.size),
            t.attempts,
            t.rule_id,
            t.key
        );
        if let Some(e) = &t.last_error
            && t.state == "failed"
        {
            println!("{:>8}reason: {e}", "");
        }
    }
    Ok(())
}

pub fn print_rules(config: &Config, store: &Store) -> Result<()> {
    if config.rules.is_empty() {
        println!("no rules in {}", config.path.display());
        return Ok(());
    }
    println!(
        "{:<20}  {:<8}  {:<24}  {:<24}  {:<4}  SCOPE",
        "ID", "ENABLED", "SOURCE", "DESTINATION", "OPS"
    );
    for r in &config.rules {
        let state = store.rule_state(&r.id)?;
        let enabled = match (r.enabled, state.as_ref().map(|s| s.state.as_str())) {
            (true, Some("enabled")) => "yes",
            (true, _) => "pending",
            (false, _) => "no",
        };
        println!(
            "{:<20}  {:<8}  {:<24}  {:<24}  {:<4}  {}{}",
            r.id,
            enabled,
            r.source.to_string(),
            r.destination.to_string(),
            ops(r.operations),
            r.scope_text(),
            r.storage_class
                .as_ref()
                .map(|c| format!("; storage class {c}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
