//! Captures what the runtime prints while it initialises: fds 2 and 1 are
//! pointed into a pipe, a thread reads it line by line, forwards every line
//! to the log and keeps them for classification, and the fds are restored
//! afterwards.
//!
//! The runtime prints through the C library straight to the file
//! descriptors, so this has to happen at the fd level. While a capture is
//! active the worker's own log must not go to fd 2 (it would loop through
//! the pipe): `main` gives tracing a duplicate of the original stderr
//! ([`crate::log_sink`]). Only one capture may be active at a time; the
//! worker captures only around `rkllm_init`, which runs once per load.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::thread::JoinHandle;

use nix::fcntl::OFlag;
use nix::unistd::{dup, dup2_stderr, dup2_stdout, pipe2};

use crate::classify::is_error_line;
use crate::ffi;

/// At most this many lines are kept for classification (all are logged).
const KEEP_LINES: usize = 1000;

/// An active capture of fds 1 and 2.
pub struct OutputCapture {
    saved_stderr: OwnedFd,
    saved_stdout: Option<OwnedFd>,
    reader: Option<JoinHandle<Vec<String>>>,
}

impl OutputCapture {
    /// Starts capturing.
    ///
    /// # Errors
    /// The OS error when the pipe or the fd duplication fails (nothing is
    /// redirected then).
    pub fn start() -> io::Result<Self> {
        let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC)?;
        let saved_stderr = dup(io::stderr())?;
        // stdout may be closed (a supervisor may start workers without one):
        // then only stderr is captured.
        let saved_stdout = dup(io::stdout()).ok();
        let reader = std::thread::Builder::new()
            .name("rkllm-log".into())
            .spawn(move || read_lines(read_end))?;
        dup2_stderr(&write_end)?;
        if saved_stdout.is_some() {
            if let Err(err) = dup2_stdout(&write_end) {
                tracing::debug!(%err, "stdout not captured");
            }
        }
        // Now fds 1 and 2 hold the pipe's write end; when they are restored
        // the last write end closes and the reader sees end of file.
        drop(write_end);
        Ok(Self {
            saved_stderr,
            saved_stdout,
            reader: Some(reader),
        })
    }

    /// Stops capturing, restores fds 1 and 2, and returns the lines seen.
    pub fn finish(mut self) -> Vec<String> {
        self.restore();
        self.reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default()
    }

    fn restore(&mut self) {
        // The runtime's printf output sits in C stdio buffers until flushed.
        ffi::flush_c_stdio();
        if let Err(err) = dup2_stderr(&self.saved_stderr) {
            tracing::error!(%err, "cannot restore stderr after the runtime's init");
        }
        if let Some(out) = &self.saved_stdout {
            if let Err(err) = dup2_stdout(out) {
                tracing::error!(%err, "cannot restore stdout after the runtime's init");
            }
        }
    }
}

impl Drop for OutputCapture {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            self.restore();
            let _ = reader.join();
        }
    }
}

fn read_lines(read_end: OwnedFd) -> Vec<String> {
    let mut kept = Vec::new();
    let mut reader = BufReader::new(File::from(read_end));
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            continue;
        }
        if is_error_line(line) {
            tracing::warn!(target: "rkllm", "{line}");
        } else {
            tracing::info!(target: "rkllm", "{line}");
        }
        if kept.len() < KEEP_LINES {
            kept.push(line.to_owned());
        }
    }
    kept
}
