//! A real `nats-server -js` on a loopback port, for the cluster tests.
//!
//! Where `nats-server` is not installed the tests that need it say so and
//! pass, so that `cargo test` works on a fresh machine; `.ci/run` installs it
//! and sets `AIRLOCK_REQUIRE_NATS=1`, which turns its absence into a failure.

use std::net::{SocketAddr, TcpListener, TcpStream};
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
        let addr = free_port();
        let child = spawn(addr, store.path());
        let server = NatsServer {
            addr,
            child,
            _store: store,
        };
        server.wait_ready();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn spawn(addr: SocketAddr, store: &Path) -> Child {
    Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p"])
        .arg(addr.port().to_string())
        .arg("-sd")
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}
