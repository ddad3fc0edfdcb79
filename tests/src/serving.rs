//! `airlock serve` as a child process on a port the kernel picks.
//!
//! The server listens on `127.0.0.1:0` and its address is read from the line
//! it prints once bound. A port found free here and handed to the server
//! later can be taken in between by another test running in parallel.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

const READY: &str = "airlock: serving the API on http://";

pub struct Serving {
    pub addr: SocketAddr,
    pub child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Serving {
    /// Run `command` (ending in `serve` and its options) with
    /// `--listen 127.0.0.1:0`, and wait until it listens.
    pub fn start(mut command: Command) -> Serving {
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting airlock serve: {e}"));
        let pipe = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready, bound) = mpsc::channel();
        let kept = stderr.clone();
        // Read to the end so the server never blocks on a full pipe.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix(READY) {
                    let addr = addr.split_whitespace().next().unwrap_or_default();
                    let _ = ready.send(addr.parse::<SocketAddr>().ok());
                }
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        let mut serving = Serving {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            stderr,
            reader: Some(reader),
        };
        match bound.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(addr)) => serving.addr = addr,
            outcome => panic!(
                "airlock serve did not start ({outcome:?}):\n{}",
                serving.kill()
            ),
        }
        serving
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the server has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Kill the server and return everything it wrote to stderr.
    fn kill(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.stderr()
    }

    /// Ask the server to stop as an operator would (SIGTERM), and wait for
    /// it: its exit status and everything it wrote to stderr. A server that
    /// has not stopped after 30 s fails the test rather than hanging it.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        const GRACE: std::time::Duration = std::time::Duration::from_secs(30);
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let deadline = std::time::Instant::now() + GRACE;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Ok(None) => panic!(
                    "airlock serve did not stop within {GRACE:?} of SIGTERM; it wrote:\n{}",
                    self.kill()
                ),
                Err(e) => panic!("waiting for airlock serve: {e}"),
            }
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status, self.stderr())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
