//! Makes whatever capability calls its input lists, in order, and reports what
//! happened to each. Tests use it to attack the broker from inside a guest.
//!
//! Input: `{"calls": [{"op": "storage.get", "key": "a"}, ...]}`. Operations:
//! `http.fetch` (method, url, headers, body, credential), `wasi-http` (method,
//! scheme, authority, path, headers), `storage.get|put|delete|list` (key,
//! value, prefix), `secrets.mint` (name, audience), `tools.invoke` (name,
//! input), `log` (level, message), `print` (message, to stdout), `handles`
//! (count: create and leak that many host handles), `panic` (message: trap),
//! `timed` (count, and call, or key: time that many round trips of the call,
//! or of `storage.get`).

use serde::Deserialize;
use serde_json::{Value, json};

wit_bindgen::generate!({ world: "skill", path: "../../../host-apis/wit" });

use airlock::skill::types::Error;
use airlock::skill::{http, log, secrets, storage, tools};

#[derive(Deserialize)]
struct Input {
    calls: Vec<Call>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct Call {
    op: String,
    method: Option<String>,
    url: String,
    scheme: Option<String>,
    authority: String,
    path: Option<String>,
    headers: Vec<(String, String)>,
    body: String,
    credential: Option<String>,
    key: String,
    value: String,
    prefix: String,
    name: String,
    audience: String,
    input: String,
    level: String,
    message: String,
    /// For `storage.put`: send this many bytes instead of `value`.
    size: usize,
    /// For `handles`: how many handles to create and leak; for `timed`,
    /// how many times to make the call.
    count: usize,
    /// For `timed`: the call to time (default: `storage.get` of `key`).
    call: Option<Box<Call>>,
}

fn error(e: Error) -> Value {
    let (kind, message) = match e {
        Error::Denied(m) => ("denied", m),
        Error::Invalid(m) => ("invalid", m),
        Error::Limit(m) => ("limit", m),
        Error::NotFound(m) => ("not-found", m),
        Error::Unavailable(m) => ("unavailable", m),
    };
    json!({ "error": kind, "message": message })
}

fn report<T>(result: Result<T, Error>, ok: impl FnOnce(T) -> Value) -> Value {
    match result {
        Ok(v) => json!({ "ok": ok(v) }),
        Err(e) => error(e),
    }
}

fn call(c: Call) -> Value {
    match c.op.as_str() {
        "http.fetch" => {
            let req = http::Request {
                method: c.method.unwrap_or_else(|| "GET".into()),
                url: c.url,
                headers: c.headers,
                body: c.body.into_bytes(),
                credential: c.credential,
            };
            report(http::fetch(&req), |r| {
                json!({
                    "status": r.status,
                    "headers": r.headers,
                    "body": String::from_utf8_lossy(&r.body),
                })
            })
        }
        "wasi-http" => wasi_http(c),
        "storage.get" => report(storage::get(&c.key), |v| {
            json!(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
        }),
        "storage.put" => {
            let value = if c.size > 0 {
                vec![b'x'; c.size]
            } else {
                c.value.into_bytes()
            };
            report(storage::put(&c.key, &value), |()| json!(null))
        }
        "storage.delete" => report(storage::delete(&c.key), |existed| json!(existed)),
        "storage.list" => report(storage::list_keys(&c.prefix), |keys| json!(keys)),
        "secrets.mint" => report(secrets::mint_token(&c.name, &c.audience), |t| json!(t)),
        "tools.invoke" => report(tools::invoke(&c.name, &c.input), |out| json!(out)),
        "log" => {
            let level = match c.level.as_str() {
                "debug" => log::Level::Debug,
                "warn" => log::Level::Warn,
                "error" => log::Level::Error,
                _ => log::Level::Info,
            };
            log::emit(level, &c.message);
            json!({ "ok": null })
        }
        "print" => {
            println!("{}", c.message);
            json!({ "ok": null })
        }
        "panic" => panic!("{}", c.message),
        "timed" => {
            // Round trips of a call, timed from inside the guest, and the
            // cost of reading the clock, to subtract.
            let mut nanos = Vec::with_capacity(c.count);
            let inner = c.call.clone();
            for _ in 0..c.count {
                let start = std::time::Instant::now();
                match &inner {
                    Some(inner) => {
                        let _ = call((**inner).clone());
                    }
                    None => {
                        let _ = storage::get(&c.key);
                    }
                }
                nanos.push(start.elapsed().as_nanos() as u64);
            }
            let mut clock = Vec::with_capacity(c.count);
            for _ in 0..c.count {
                let start = std::time::Instant::now();
                clock.push(start.elapsed().as_nanos() as u64);
            }
            json!({ "ok": { "nanos": nanos, "clock": clock } })
        }
        "handles" => {
            // Each `fields` is a host handle; leaking them floods the table.
            for _ in 0..c.count {
                std::mem::forget(wasi::http::types::Fields::new());
            }
            json!({ "ok": c.count })
        }
        other => json!({ "error": "probe", "message": format!("unknown op `{other}`") }),
    }
}

/// The standard `wasi:http/outgoing-handler` path, which must end in the same
/// broker check as `http.fetch`.
fn wasi_http(c: Call) -> Value {
    use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

    let headers = Fields::new();
    for (name, value) in &c.headers {
        if let Err(e) = headers.append(name, value.as_bytes()) {
            return json!({ "error": "header", "message": format!("{e:?}") });
        }
    }
    let request = OutgoingRequest::new(headers);
    let method = match c.method.as_deref().unwrap_or("GET") {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_string()),
    };
    let scheme = match c.scheme.as_deref().unwrap_or("https") {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        other => Scheme::Other(other.to_string()),
    };
    let set = request.set_method(&method).is_ok()
        && request.set_scheme(Some(&scheme)).is_ok()
        && request.set_authority(Some(&c.authority)).is_ok()
        && request
            .set_path_with_query(Some(c.path.as_deref().unwrap_or("/")))
            .is_ok();
    if !set {
        return json!({ "error": "request", "message": "the request was refused while being built" });
    }
    let Ok(body) = request.body() else {
        return json!({ "error": "request", "message": "no body" });
    };
    if !c.body.is_empty() {
        if let Ok(stream) = body.write() {
            let _ = stream.blocking_write_and_flush(c.body.as_bytes());
        }
    }
    let _ = OutgoingBody::finish(body, None);
    let future = match wasi::http::outgoing_handler::handle(request, None) {
        Ok(f) => f,
        Err(code) => return json!({ "error": "http", "message": format!("{code:?}") }),
    };
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(response))) => json!({ "ok": { "status": response.status() } }),
        Some(Ok(Err(code))) => json!({ "error": "http", "message": format!("{code:?}") }),
        Some(Err(())) => json!({ "error": "http", "message": "response already taken" }),
        None => json!({ "error": "http", "message": "no response" }),
    }
}

struct Probe;

impl Guest for Probe {
    fn run(input: String) -> Result<String, String> {
        let input: Input =
            serde_json::from_str(&input).map_err(|e| format!("bad probe input: {e}"))?;
        let results: Vec<Value> = input.calls.into_iter().map(call).collect();
        Ok(json!({ "results": results }).to_string())
    }
}

export!(Probe);
