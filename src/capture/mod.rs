//! How traffic reaches doppel. Two mechanisms behind one trait: `sandbox` (a Linux user + network namespace
//! where every outbound connection is redirected to doppel) and `explicit` (listeners the user points the
//! app at). Record and replay only see a `Session`: captured outbound connections, captured DNS, and a link
//! to the app's own ports.

pub(crate) mod explicit;
pub(crate) mod sandbox;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use crate::error::Result;

/// The command under test.
#[derive(Debug, Clone)]
pub struct AppCommand {
    pub argv: Vec<String>,
    /// Extra environment for the app.
    pub env: Vec<(String, String)>,
    /// Keep the app's stdout and stderr off the terminal (only their tail is kept, for error messages).
    pub quiet: bool,
}

/// An outbound connection of the app, caught on its way to `dest`.
pub struct Egress {
    pub stream: TcpStream,
    /// Where the app meant to connect: `ip:port` (the original destination) or the declared `host:port`.
    pub dest: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppExit {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for AppExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppExit::Code(c) => write!(f, "exit code {c}"),
            AppExit::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How doppel reaches the app's listening ports.
pub trait AppLink: Send + Sync {
    fn connect(&self, port: u16) -> BoxFuture<'_, io::Result<TcpStream>>;
    /// TCP ports the app listens on now.
    fn listening_ports(&self) -> Vec<u16>;
}

/// A started app under capture.
pub(crate) struct Session {
    pub egress: mpsc::Receiver<Egress>,
    /// Sockets that receive the app's datagrams to a UDP port (sandbox only: DNS, port 53).
    pub datagrams: Vec<(u16, UdpSocket)>,
    pub app: AppHandle,
    pub link: Arc<dyn AppLink>,
    /// Keeps mechanism-specific resources alive for the session's lifetime.
    pub guard: Box<dyn Send + Sync>,
}

/// A way of running the app so that doppel sees its traffic.
pub(crate) trait Capture: Send + Sync {
    /// A short name for summaries: `sandbox` or `explicit`.
    fn name(&self) -> &'static str;
    fn start<'a>(&'a self, cmd: &'a AppCommand) -> BoxFuture<'a, Result<Session>>;
}

/// The next connection on `listener`. When the process is out of descriptors or memory (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM) accept fails until a connection closes: wait a moment then instead of retrying at full
/// speed, which would take a whole core while the app's connections wait. Other errors concern the one
/// connection that failed.
pub(crate) async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) => {
                tracing::warn!("cannot accept a connection ({e}); retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => tracing::debug!("accept: {e}"),
        }
    }
}

/// Background tasks of a session (accept loops), stopped when the session is dropped.
pub struct TaskGuard(pub Vec<tokio::task::JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The last lines the app wrote (stderr, and stdout when it is kept off the terminal), for error messages.
#[derive(Default)]
pub struct StderrTail {
    buf: Vec<u8>,
}

const TAIL_BYTES: usize = 4096;

impl StderrTail {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() > TAIL_BYTES * 2 {
            self.buf.drain(..self.buf.len() - TAIL_BYTES);
        }
    }

    pub fn text(&self) -> String {
        let start = self.buf.len().saturating_sub(TAIL_BYTES);
        let s = String::from_utf8_lossy(&self.buf[start..]);
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The running app: its process group, its exit, its stderr.
#[derive(Clone)]
pub struct AppHandle {
    pub pid: i32,
    exit: watch::Receiver<Option<AppExit>>,
    stderr: Arc<Mutex<StderrTail>>,
}

impl AppHandle {
    pub fn new(pid: i32, exit: watch::Receiver<Option<AppExit>>, stderr: Arc<Mutex<StderrTail>>) -> AppHandle {
        AppHandle { pid, exit, stderr }
    }

    pub fn exited(&self) -> Option<AppExit> {
        *self.exit.borrow()
    }

    pub async fn wait(&self) -> AppExit {
        let mut rx = self.exit.clone();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                return (*rx.borrow()).unwrap_or(AppExit::Signal(libc::SIGKILL));
            }
        }
    }

    pub fn stderr_tail(&self) -> String {
        self.stderr.lock().map(|t| t.text()).unwrap_or_default()
    }

    /// SIGTERM to the app's process group, SIGKILL after `grace`.
    pub async fn stop(&self, grace: Duration) -> AppExit {
        if let Some(e) = self.exited() {
            return e;
        }
        signal_group(self.pid, libc::SIGTERM);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(e) => e,
            Err(_) => {
                signal_group(self.pid, libc::SIGKILL);
                self.wait().await
            }
        }
    }
}

pub fn signal_group(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group the app leads; no memory is involved.
    unsafe {
        if libc::kill(-pid, sig) != 0 {
            libc::kill(pid, sig);
        }
    }
}

/// Reads the app's output pipes, keeps their tail and (unless `quiet`) copies them to our own outputs.
pub fn tee_output(
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
    quiet: bool,
) -> Arc<Mutex<StderrTail>> {
    let tail = Arc::new(Mutex::new(StderrTail::default()));
    fn copy<R: tokio::io::AsyncRead + Unpin + Send + 'static, W: tokio::io::AsyncWrite + Unpin + Send + 'static>(
        mut pipe: R,
        mut out: Option<W>,
        tail: Arc<Mutex<StderrTail>>,
    ) {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if let Ok(mut t) = tail.lock() {
                    t.push(&buf[..n]);
                }
                if let Some(o) = out.as_mut() {
                    let _ = tokio::io::AsyncWriteExt::write_all(o, &buf[..n]).await;
                }
            }
        });
    }
    if let Some(p) = stdout {
        copy(p, (!quiet).then(tokio::io::stdout), tail.clone());
    }
    if let Some(p) = stderr {
        copy(p, (!quiet).then(tokio::io::stderr), tail.clone());
    }
    tail
}

/// Parses `/proc/<pid>/net/tcp` or `tcp6` for sockets in LISTEN state.
pub fn parse_listening(text: &str) -> Vec<u16> {
    let mut ports = Vec::new();
    for line in text.lines().skip(1) {
        let mut cols = line.split_whitespace();
        let (Some(_), Some(local), Some(_), Some(state)) = (cols.next(), cols.next(), cols.next(), cols.next()) else {
            continue;
        };
        if state != "0A" {
            continue;
        }
        if let Some(port) = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok())
            && !ports.contains(&port)
        {
            ports.push(port);
        }
    }
    ports
}

/// Listening TCP ports in the network namespace of `pid`.
pub fn listening_ports_of(pid: i32) -> Vec<u16> {
    let mut ports = Vec::new();
    for f in ["tcp", "tcp6"] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{f}")) {
            for p in parse_listening(&text) {
                if !ports.contains(&p) {
                    ports.push(p);
                }
            }
        }
    }
    ports.sort_unstable();
    ports
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0\n   1: 0100007F:1F91 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0\n";
        assert_eq!(super::parse_listening(text), vec![8080]);
    }
}
