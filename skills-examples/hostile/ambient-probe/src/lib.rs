//! Looks for anything the host might have left within reach: environment
//! variables, arguments, preopened directories, host files, stdin, the
//! working directory. Reports everything it found.

use std::io::Read;

use serde_json::{Map, Value, json};

wit_bindgen::generate!({ world: "skill", path: "../../../host-apis/wit" });

const PATHS: &[&str] = &[
    "/",
    ".",
    "/etc/passwd",
    "/etc/hostname",
    "/proc/self/environ",
    "/root",
    "/tmp",
    "..",
    "/work",
    "/home",
];

struct Probe;

impl Guest for Probe {
    fn run(_input: String) -> Result<String, String> {
        let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
        let args: Vec<String> = std::env::args().collect();
        let cwd = std::env::current_dir()
            .map(|p| p.display().to_string())
            .ok();
        let mut files = Map::new();
        for path in PATHS {
            let read = std::fs::read(path).map(|b| b.len());
            let list = std::fs::read_dir(path).map(|d| d.count());
            let outcome = match (read, list) {
                (Ok(n), _) => format!("read {n} bytes"),
                (_, Ok(n)) => format!("listed {n} entries"),
                (Err(e), Err(_)) => format!("error: {e}"),
            };
            files.insert((*path).to_string(), Value::String(outcome));
        }
        let created = std::fs::write("/tmp/airlock-escape", b"x").is_ok();
        let mut stdin = Vec::new();
        let stdin_read = std::io::stdin().read_to_end(&mut stdin).unwrap_or(0);
        Ok(json!({
            "env": env,
            "args": args,
            "cwd": cwd,
            "files": files,
            "created_file": created,
            "stdin_bytes": stdin_read,
        })
        .to_string())
    }
}

export!(Probe);
