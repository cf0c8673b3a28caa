//! A throwaway `nats-server` with JetStream for the cluster tests: a free
//! port, a temporary store directory, stopped (and restartable on the same
//! port and store) by the test.
//!
//! The server is Debian's `nats-server` package, which deploy/setup.sh
//! installs; a missing binary fails the test with that hint.
#![allow(clippy::missing_panics_doc)]

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server may take to say it is ready (JetStream
/// recovers its store first on a restart).
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `nats-server -js`.
pub struct NatsServer {
    /// Store directory and log file; kept as long as the server.
    pub dir: tempfile::TempDir,
    /// The client port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    starts: u32,
}

/// The `nats-server` binary: `$NATS_SERVER` or the first on `PATH` or in
/// /usr/sbin (where Debian puts it, often not on a user's `PATH`).
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path_var).collect();
    dirs.push(PathBuf::from("/usr/sbin"));
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("nats-server is not installed: run deploy/setup.sh (Debian package nats-server)")
        })
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl NatsServer {
    /// Starts a server with JetStream on a free port and a new store directory.
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// Like [`Self::start`], with `config` (nats-server's config syntax:
    /// accounts, users, TLS) in a config file; port, address and store stay
    /// on the command line.
    pub fn start_with_config(config: &str) -> Self {
        let mut server = Self {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            child: None,
            starts: 0,
        };
        std::fs::write(server.dir.path().join("server.conf"), config).unwrap();
        server.spawn();
        server
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("server-{}.log", self.starts))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = self.log_path();
        let store = self.dir.path().join("store");
        let child = Command::new(server_binary())
            .arg("-c")
            .arg(self.dir.path().join("server.conf"))
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("cannot start nats-server");
        self.child = Some(child);
        wait_ready(&log, self.child.as_mut().unwrap());
    }

    /// Stops the server now (SIGKILL: what a crash or a power cut does to it).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store, after [`Self::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The server's log of its latest start, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_ready(log: &Path, child: &mut Child) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("Server is ready") {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("nats-server exited ({status}) before it was ready:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "nats-server was not ready within {READY_TIMEOUT:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpStream;

    use super::NatsServer;

    fn info_line(port: u16) -> String {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        line
    }

    #[test]
    fn starts_with_jetstream_restarts_on_the_same_port_and_stops() {
        let mut server = NatsServer::start();
        let port = server.port;
        let info = info_line(port);
        assert!(info.starts_with("INFO "), "{info}");
        assert!(info.contains("\"jetstream\":true"), "{info}");
        server.restart();
        assert_eq!(server.port, port);
        assert!(info_line(port).contains("\"jetstream\":true"));
        assert!(server.dir.path().join("store/jetstream").exists());
        server.kill();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
