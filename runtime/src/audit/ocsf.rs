//! The audit log as OCSF events (schema 1.3), one JSON object per line, for
//! a SIEM: every record becomes an API Activity event (class 6003), with the
//! broker's decision as its status and disposition. Airlock's own fields
//! (policy ids, instance, digest, delegation, chain position) are kept under
//! `unmapped`. Checkpoints are the log's integrity, not events: they are
//! left out.

use serde_json::{Value, json};

use super::Record;

const CLASS_API_ACTIVITY: u64 = 6003;
const CATEGORY_APPLICATION: u64 = 6;
const OCSF_VERSION: &str = "1.3.0";

fn text<'a>(event: &'a Value, key: &str) -> &'a str {
    event.get(key).and_then(Value::as_str).unwrap_or("")
}

/// OCSF activity: 1 create, 2 read, 3 update, 4 delete, 99 other.
fn activity(operation: &str) -> (u64, &'static str) {
    match operation {
        "storage.read" | "storage.list" => (2, "Read"),
        "storage.write" => (3, "Update"),
        "storage.delete" => (4, "Delete"),
        "skill.admit" => (1, "Create"),
        _ => (99, "Other"),
    }
}

fn resource(event: &Value) -> Value {
    let Some(r) = event.get("resource") else {
        return json!([]);
    };
    let kind = text(r, "type");
    let name = match kind {
        "object" => format!("{}/{}", text(r, "namespace"), text(r, "key")),
        _ => text(r, "name").to_string(),
    };
    json!([{ "type": kind, "name": name }])
}

/// One record as an OCSF event; `None` for checkpoints.
pub fn event(record: &Record) -> Option<Value> {
    let e = &record.event;
    let kind = text(e, "kind");
    if kind == "checkpoint" {
        return None;
    }
    let operation = match kind {
        "call" | "call.repeated" => text(e, "action"),
        other => other,
    };
    let (activity_id, activity_name) = activity(operation);
    let verdict = e
        .get("decision")
        .map(|d| text(d, "verdict"))
        .unwrap_or_default();
    let run_status = text(e, "status");
    // Success unless the broker denied it or the run failed.
    let failed = verdict == "deny"
        || kind == "call.repeated"
        || matches!(
            run_status,
            "trap" | "limit" | "stopped" | "audit_failed" | "skill_error" | "busy" | "cancelled"
        );
    let (status_id, status) = if failed {
        (2, "Failure")
    } else {
        (1, "Success")
    };
    let (disposition_id, disposition) = match verdict {
        "allow" => (1, "Allowed"),
        "deny" => (2, "Blocked"),
        _ => (0, "Unknown"),
    };
    let severity_id = match kind {
        "recovery" => 4,
        "skill.quarantine" | "skill.revoke" => 3,
        _ if verdict == "deny" => 3,
        _ => 1,
    };
    let policies = e.get("decision").and_then(|d| d.get("policies"));
    let reason = e
        .get("decision")
        .and_then(|d| d.get("reason"))
        .or_else(|| e.get("reason"))
        .or_else(|| e.get("error").and_then(|x| x.get("message")));
    let mut out = json!({
        "class_uid": CLASS_API_ACTIVITY,
        "class_name": "API Activity",
        "category_uid": CATEGORY_APPLICATION,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": CLASS_API_ACTIVITY * 100 + activity_id,
        "time": record.time_ms,
        "severity_id": severity_id,
        "status_id": status_id,
        "status": status,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": record.seq.to_string(),
            "product": {
                "name": "Airlock",
                "vendor_name": "Airlock",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "log_name": "audit",
        },
        "api": {
            "operation": operation,
            "service": { "name": "airlock" },
        },
        "actor": {
            "app_name": text(e, "skill"),
            "user": { "name": text(e, "agent"), "type": "agent" },
        },
        "resources": resource(e),
        "unmapped": {
            "kind": kind,
            "instance": e.get("instance"),
            "digest": e.get("digest"),
            "task_id": e.get("task_id"),
            "intent": e.get("intent"),
            "delegation": e.get("delegation"),
            "policies": policies,
            "outcome": e.get("outcome"),
            "suppressed": e.get("suppressed"),
            "prev": record.prev,
        },
    });
    if let Some(map) = out.as_object_mut() {
        if disposition_id != 0 {
            map.insert("disposition_id".into(), json!(disposition_id));
            map.insert("disposition".into(), json!(disposition));
        }
        if let Some(reason) = reason.filter(|r| !r.is_null()) {
            map.insert("status_detail".into(), reason.clone());
        }
        // Empty Airlock fields are noise to a SIEM.
        if let Some(Value::Object(unmapped)) = map.get_mut("unmapped") {
            unmapped.retain(|_, v| !v.is_null());
        }
    }
    Some(out)
}
