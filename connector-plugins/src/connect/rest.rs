//! Kafka Connect's REST paths on the runner, so tools that manage Kafka
//! Connect manage it: list, create, show (config, status, tasks), pause,
//! resume, restart and delete connectors, list the plugins; and
//! `/metrics` (Prometheus) for each connector's counters. Errors are
//! `{"error_code": <HTTP status>, "message": ...}`, as Kafka Connect's.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::config::{Class, Properties};
use super::{ConnectError, Worker};

type Shared = State<Arc<Worker>>;

pub fn router(worker: Arc<Worker>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/connectors", get(list).post(create))
        .route("/connectors/{name}", get(info).delete(delete))
        .route("/connectors/{name}/config", get(config).put(put_config))
        .route("/connectors/{name}/status", get(status))
        .route("/connectors/{name}/tasks", get(tasks))
        .route("/connectors/{name}/pause", put(pause))
        .route("/connectors/{name}/resume", put(resume))
        .route("/connectors/{name}/restart", post(restart))
        .route("/connector-plugins", get(plugins))
        .route("/metrics", get(metrics))
        .with_state(worker)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error_code": status.as_u16(), "message": message.into() })),
    )
        .into_response()
}

fn not_found(name: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("Connector {name} not found"))
}

fn kind(class: Class) -> &'static str {
    if class.is_source() {
        "source"
    } else {
        "sink"
    }
}

fn info_json(w: &Worker, name: &str) -> Option<Value> {
    let c = w.config(name)?;
    let tasks: Vec<Value> = (0..c.tasks())
        .map(|t| json!({ "connector": name, "task": t }))
        .collect();
    Some(json!({ "name": name, "config": c.properties, "tasks": tasks, "type": kind(c.class) }))
}

fn status_json(w: &Worker, name: &str) -> Option<Value> {
    let c = w.config(name)?;
    let states = w.task_states(name)?;
    let tasks: Vec<Value> = states
        .iter()
        .enumerate()
        .map(|(id, s)| {
            let mut t = json!({ "id": id, "state": s.name(), "worker_id": w.id });
            if let super::TaskState::Failed(why) = s {
                t["trace"] = json!(why);
            }
            t
        })
        .collect();
    // The connector itself is as its tasks are: FAILED when all failed.
    let connector = if states.iter().all(|s| matches!(s, super::TaskState::Failed(_))) {
        "FAILED"
    } else {
        states
            .iter()
            .find(|s| !matches!(s, super::TaskState::Failed(_)))
            .map(|s| s.name())
            .unwrap_or("RUNNING")
    };
    Some(json!({
        "name": name,
        "connector": { "state": connector, "worker_id": w.id },
        "tasks": tasks,
        "type": kind(c.class),
    }))
}

async fn root() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION"), "commit": "", "kafka_cluster_id": "courier" }))
}

async fn list(State(w): Shared, RawQuery(query): RawQuery) -> Json<Value> {
    let names = w.names();
    let expand: Vec<String> = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.strip_prefix("expand="))
        .map(str::to_owned)
        .collect();
    if expand.is_empty() {
        return Json(json!(names));
    }
    let mut out = serde_json::Map::new();
    for name in names {
        let mut entry = serde_json::Map::new();
        if expand.iter().any(|e| e == "status") {
            entry.insert("status".into(), status_json(&w, &name).unwrap_or(Value::Null));
        }
        if expand.iter().any(|e| e == "info") {
            entry.insert("info".into(), info_json(&w, &name).unwrap_or(Value::Null));
        }
        out.insert(name, Value::Object(entry));
    }
    Json(Value::Object(out))
}

/// A JSON config as properties, or why it is not one.
fn properties(v: &Value) -> Result<Properties, String> {
    let Some(map) = v.as_object() else {
        return Err("the config must be a JSON object".into());
    };
    let mut out = Properties::new();
    for (k, v) in map {
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(format!("{k}: a string, number or boolean")),
        };
        out.insert(k.clone(), v);
    }
    Ok(out)
}

fn refused(e: ConnectError) -> Response {
    match e {
        ConnectError::Exists(name) => error(StatusCode::CONFLICT, format!("Connector {name} already exists")),
        e => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn create(State(w): Shared, Json(body): Json<Value>) -> Response {
    let mut props = match properties(body.get("config").unwrap_or(&Value::Null)) {
        Ok(p) => p,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    if let Some(name) = body.get("name").and_then(Value::as_str) {
        props.insert("name".into(), name.to_owned());
    }
    match w.create(&props) {
        Ok(c) => (StatusCode::CREATED, Json(info_json(&w, &c.name).unwrap_or(Value::Null))).into_response(),
        Err(e) => refused(e),
    }
}

async fn info(State(w): Shared, Path(name): Path<String>) -> Response {
    info_json(&w, &name).map_or_else(|| not_found(&name), |v| Json(v).into_response())
}

async fn config(State(w): Shared, Path(name): Path<String>) -> Response {
    w.config(&name)
        .map_or_else(|| not_found(&name), |c| Json(json!(c.properties)).into_response())
}

async fn put_config(State(w): Shared, Path(name): Path<String>, Json(body): Json<Value>) -> Response {
    let props = match properties(&body) {
        Ok(p) => p,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match w.put(&name, &props) {
        Ok(created) => {
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            (status, Json(info_json(&w, &name).unwrap_or(Value::Null))).into_response()
        }
        Err(e) => refused(e),
    }
}

async fn status(State(w): Shared, Path(name): Path<String>) -> Response {
    status_json(&w, &name).map_or_else(|| not_found(&name), |v| Json(v).into_response())
}

async fn tasks(State(w): Shared, Path(name): Path<String>) -> Response {
    let Some(c) = w.config(&name) else {
        return not_found(&name);
    };
    let tasks: Vec<Value> = (0..c.tasks())
        .map(|t| json!({ "id": { "connector": name, "task": t }, "config": c.properties }))
        .collect();
    Json(json!(tasks)).into_response()
}

async fn pause(State(w): Shared, Path(name): Path<String>) -> Response {
    if w.pause(&name) {
        StatusCode::ACCEPTED.into_response()
    } else {
        not_found(&name)
    }
}

async fn resume(State(w): Shared, Path(name): Path<String>) -> Response {
    if w.resume(&name) {
        StatusCode::ACCEPTED.into_response()
    } else {
        not_found(&name)
    }
}

async fn restart(State(w): Shared, Path(name): Path<String>) -> Response {
    if w.restart(&name) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found(&name)
    }
}

async fn delete(State(w): Shared, Path(name): Path<String>) -> Response {
    if w.delete(&name) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found(&name)
    }
}

async fn plugins() -> Json<Value> {
    let list: Vec<Value> = Class::ALL
        .iter()
        .map(|(c, name, _)| json!({ "class": name, "type": kind(*c), "version": env!("CARGO_PKG_VERSION") }))
        .collect();
    Json(json!(list))
}

async fn metrics(State(w): Shared) -> String {
    w.render_metrics()
}
