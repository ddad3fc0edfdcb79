//! A real `nats-server -js` on a loopback port, for the cluster tests.
//!
//! Where `nats-server` is not installed the tests that need it say so and
//! pass, so that `cargo test` works on a fresh machine; `.ci/run` installs it
//! and sets `AIRLOCK_REQUIRE_NATS=1`, which turns its absence into a failure.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    pub addr: SocketAddr,
    child: Child,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Start a server with JetStream on a free loopback port, or `None`
    /// (with a note) when `nats-server` is not installed and not required.
    pub fn start() -> Option<NatsServer> {
        Self::start_with("")
    }

    /// As [`start`](Self::start), with `config` (the server's configuration
    /// format, for example `max_payload: 65536`).
    pub fn start_with(config: &str) -> Option<NatsServer> {
        let installed = Command::new("nats-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            assert!(
                std::env::var_os("AIRLOCK_REQUIRE_NATS").is_none(),
                "nats-server is not installed (apt-get install nats-server)"
            );
            eprintln!("note: nats-server is not installed; skipping a cluster test");
            return None;
        }
        let store = tempfile::tempdir().unwrap();
        let file = store.path().join("nats.conf");
        std::fs::write(&file, config).unwrap();
        let mut child = spawn(store.path(), &file);
        let addr = wait_ready(&mut child, store.path());
        Some(NatsServer {
            addr,
            child,
            _store: store,
        })
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server picks its own port (`-p -1`) and writes it to a ports file
/// once it listens: a port chosen here and released before the server binds
/// it can be taken by a concurrent test's server or client in between.
fn spawn(store: &Path, config: &Path) -> Child {
    Command::new("nats-server")
        .arg("-c")
        .arg(config)
        .args(["-js", "-a", "127.0.0.1", "-p", "-1"])
        .arg("-sd")
        .arg(store.join("jetstream"))
        .arg("--ports_file_dir")
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_ready(child: &mut Child, store: &Path) -> SocketAddr {
    let ports = store.join(format!("nats-server_{}.ports", child.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("nats-server exited before it was ready: {status}");
        }
        // The file is written whole once every listener is up; a read that
        // races its writing fails to parse and is retried.
        let addr = std::fs::read(&ports)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|v| v.get("nats")?.get(0)?.as_str().map(str::to_owned))
            .and_then(|url| url.strip_prefix("nats://")?.parse::<SocketAddr>().ok());
        if let Some(addr) = addr
            && TcpStream::connect(addr).is_ok()
        {
            return addr;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nats-server did not start within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
