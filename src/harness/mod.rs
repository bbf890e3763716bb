//! One run of the app under capture, shared by `doppel record`, `doppel test --rerecord` and `doppel test`:
//! starts the app, sends its outbound connections and datagrams to the real dependencies (recorded) or to
//! the mocks of a test set (replayed), keeps the tasks of the run, and stops all of it on `stop`, or when
//! dropped (an early return never leaves the app running).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::capture::{AppCommand, AppExit, AppHandle, AppLink, Capture, Session};
use crate::error::Result;
use crate::protocols::{self, DatagramCtx, MockPool};
use crate::record::{self, Tracker};
use crate::replay::egress::Mocks;
use crate::store::RecordSink;

/// Where the app's dependencies are.
pub(crate) enum Dependencies {
    /// The real ones: every outbound connection is forwarded and recorded.
    Real {
        sink: RecordSink,
        /// Decrypts the app's TLS connections (absent: TLS is recorded as opaque bytes).
        tls: Option<Arc<crate::tls::Interceptor>>,
        /// Where the app's DNS queries go (absent: the system's resolver).
        dns_upstream: Option<SocketAddr>,
        /// Numbers the recorded connections (shared with the app's inbound ones).
        ids: Arc<AtomicU64>,
    },
    /// The mocks of a test set: no route out at all.
    Mocks { pool: Arc<MockPool>, ca: Option<Arc<crate::tls::Ca>> },
}

/// The app running under capture with its dependencies wired.
pub(crate) struct Harness {
    pub app: AppHandle,
    pub link: Arc<dyn AppLink>,
    /// Proxies of recorded connections, waited for (briefly) when the run stops.
    pub tracker: Tracker,
    tasks: Vec<JoinHandle<()>>,
    /// The capture mechanism's resources (sandbox helper, explicit listeners).
    guard: Option<Box<dyn Send + Sync>>,
    stopped: bool,
}

impl Harness {
    /// Starts `command` under `capture` with its dependencies as `deps` say.
    pub(crate) async fn start(capture: &dyn Capture, command: &AppCommand, deps: Dependencies) -> Result<Harness> {
        let Session { egress, datagrams, app, link, guard } = capture.start(command).await?;
        let tracker = Tracker::default();
        let mut tasks = Vec::new();
        match deps {
            Dependencies::Real { sink, tls, dns_upstream, ids } => {
                tasks.push(record::forward_egress(egress, sink.clone(), tls, tracker.clone(), ids));
                let upstream = dns_upstream.or_else(protocols::dns::system_resolver);
                for (port, socket) in datagrams {
                    if let Some(p) = datagram_protocol(port) {
                        let ctx = DatagramCtx { sink: sink.clone(), upstream };
                        tasks.push(tokio::spawn(p.record_datagrams(socket, ctx)));
                    }
                }
            }
            Dependencies::Mocks { pool, ca } => {
                tasks.push(Mocks::new(pool.clone(), ca).spawn(egress));
                for (port, socket) in datagrams {
                    if let Some(p) = datagram_protocol(port) {
                        tasks.push(tokio::spawn(p.serve_datagrams(socket, pool.clone())));
                    }
                }
            }
        }
        Ok(Harness { app, link, tracker, tasks, guard: Some(guard), stopped: false })
    }

    /// Ties a task to the run: it is stopped with it.
    pub(crate) fn attach(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Stops the app (SIGTERM, SIGKILL after `grace`), then the run's tasks; recorded connections still
    /// open get up to 3 s to write what completed.
    pub(crate) async fn stop(mut self, grace: Duration) -> AppExit {
        let exit = self.app.stop(grace).await;
        self.stopped = true;
        for t in self.tasks.drain(..) {
            t.abort();
        }
        // The app is gone, so its connections are closing; give the proxies a moment to write what
        // completed, then drop what is still open (idle keep-alive connections): those were in flight.
        self.tracker.finish(Duration::from_secs(3)).await;
        self.guard.take();
        exit
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if !self.stopped && self.app.exited().is_none() {
            crate::capture::signal_group(self.app.pid, libc::SIGKILL);
        }
    }
}

/// The registered protocol for datagrams caught on `port`.
fn datagram_protocol(port: u16) -> Option<&'static dyn protocols::Protocol> {
    protocols::registry().iter().copied().find(|p| p.datagram_port() == Some(port))
}
