//! Makes whatever capability calls its input lists, in order, and reports what
//! happened to each. Tests use it to attack the broker from inside a guest.
//!
//! Input: `{"calls": [{"op": "storage.get", "key": "a"}, ...]}`. Operations:
//! `http.fetch` (method, url, headers, body, credential), `wasi-http` (method,
//! scheme, authority, path, headers; `wasi-http-many` sends `count` at once,
//! `wasi-http-abandon` leaves one in flight after `count` ms),
//! `storage.get|put|delete|list` (key,
//! value, prefix), `secrets.mint` (name, audience), `secrets.mint-send`
//! (name, audience, url, key: mint, then send the token to url in a header,
//! the query and the body, and store it), `secrets.mint-key` (name,
//! audience: mint, then read storage with the token as the key),
//! `tools.invoke` (name,
//! input), `log` (level, message), `print` (message, to stdout), `handles`
//! (count: create and leak that many host handles), `panic` (message: trap),
//! `timed` (count, and call, or key: time that many round trips of the call,
//! or of `storage.get`), `sleep` (count: milliseconds), `spin` (loop until
//! stopped), `fail` (message: end the run with this error).

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
        "wasi-http" => match send(&c) {
            Ok(future) => wait(future),
            Err(refused) => refused,
        },
        // Send, wait `count` ms, and never look at the response: the
        // request is still in flight when the instance ends.
        "wasi-http-abandon" => match send(&c) {
            Ok(future) => {
                std::thread::sleep(std::time::Duration::from_millis(c.count as u64));
                std::mem::forget(future);
                json!({ "ok": "abandoned" })
            }
            Err(refused) => refused,
        },
        // `count` requests in flight at once, then each response in turn.
        "wasi-http-many" => {
            let mut futures = Vec::new();
            for _ in 0..c.count.max(1) {
                match send(&c) {
                    Ok(future) => futures.push(future),
                    Err(refused) => return refused,
                }
            }
            json!({ "ok": futures.into_iter().map(wait).collect::<Vec<_>>() })
        }
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
        "secrets.mint-send" => {
            // Mint a token, then try to send it (in a header, the URL's
            // query and the body) to `url`, and to store it under `key`.
            let token = match secrets::mint_token(&c.name, &c.audience) {
                Ok(token) => token,
                Err(e) => return error(e),
            };
            let mut url = c.url.clone();
            url.push_str(if url.contains('?') { "&t=" } else { "?t=" });
            let attempts = [
                (
                    c.url.clone(),
                    vec![("x-token".to_string(), token.clone())],
                    String::new(),
                ),
                (url + &token, Vec::new(), String::new()),
                (c.url.clone(), Vec::new(), format!("token={token}")),
            ];
            let mut sent = Vec::new();
            for (url, headers, body) in attempts {
                let req = http::Request {
                    method: "POST".into(),
                    url,
                    headers,
                    body: body.into_bytes(),
                    credential: None,
                };
                sent.push(report(http::fetch(&req), |r| json!(r.status)));
            }
            let stored = report(storage::put(&c.key, token.as_bytes()), |()| json!(null));
            log::emit(log::Level::Info, &format!("minted {token}"));
            json!({ "ok": { "sent": sent, "stored": stored, "token": token } })
        }
        "secrets.mint-key" => {
            // Mint a token and read storage under it: a call's own string
            // carries a live token.
            let token = match secrets::mint_token(&c.name, &c.audience) {
                Ok(token) => token,
                Err(e) => return error(e),
            };
            let read = report(storage::get(&token), |v| json!(v.is_some()));
            json!({ "ok": { "read": read, "token": token } })
        }
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
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_millis(c.count as u64));
            json!({ "ok": null })
        }
        "spin" => loop {
            std::hint::black_box(());
        },
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
/// Send a request through `wasi:http/outgoing-handler`, without waiting.
fn send(c: &Call) -> Result<wasi::http::types::FutureIncomingResponse, Value> {
    use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

    let headers = Fields::new();
    for (name, value) in &c.headers {
        if let Err(e) = headers.append(name, value.as_bytes()) {
            return Err(json!({ "error": "header", "message": format!("{e:?}") }));
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
        return Err(
            json!({ "error": "request", "message": "the request was refused while being built" }),
        );
    }
    let Ok(body) = request.body() else {
        return Err(json!({ "error": "request", "message": "no body" }));
    };
    if !c.body.is_empty() {
        if let Ok(stream) = body.write() {
            let _ = stream.blocking_write_and_flush(c.body.as_bytes());
        }
    }
    let _ = OutgoingBody::finish(body, None);
    wasi::http::outgoing_handler::handle(request, None)
        .map_err(|code| json!({ "error": "http", "message": format!("{code:?}") }))
}

/// Wait for a response and read it whole.
fn wait(future: wasi::http::types::FutureIncomingResponse) -> Value {
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(response))) => {
            let status = response.status();
            let mut bytes = Vec::new();
            if let Ok(body) = response.consume() {
                if let Ok(stream) = body.stream() {
                    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
                        bytes.extend_from_slice(&chunk);
                    }
                }
            }
            json!({ "ok": { "status": status, "body": String::from_utf8_lossy(&bytes) } })
        }
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
        let mut results = Vec::new();
        for c in input.calls {
            if c.op == "fail" {
                return Err(c.message);
            }
            results.push(call(c));
        }
        Ok(json!({ "results": results }).to_string())
    }
}

export!(Probe);
