//! Writes audit records from four threads as fast as it can, printing
//! `acked <writer> <i>` once each append has returned (is durable), until it
//! is killed. The audit crash test kills it with SIGKILL mid-burst.

use std::io::Write;
use std::sync::Arc;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(data_dir), Some(log)) = (args.next(), args.next()) else {
        eprintln!("usage: audit-burst DATA_DIR LOG");
        std::process::exit(2);
    };
    let config = airlock_runtime::config::IdentityConfig::default();
    let issuer = airlock_runtime::identity::Issuer::open(data_dir.as_ref(), config)
        .unwrap_or_else(|e| panic!("{e}"));
    let log = Arc::new(
        airlock_runtime::audit::AuditLog::open(log.as_ref(), issuer.keys().clone())
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let threads: Vec<_> = (0..4)
        .map(|writer| {
            let log = log.clone();
            std::thread::spawn(move || {
                let padding = "x".repeat(2000);
                for i in 0u64.. {
                    let event = serde_json::json!({
                        "kind": "call", "writer": writer, "i": i, "padding": padding,
                    });
                    log.append(&[event]).unwrap_or_else(|e| panic!("{e}"));
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "acked {writer} {i}");
                    let _ = out.flush();
                }
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}
