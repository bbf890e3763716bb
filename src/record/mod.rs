//! `doppel record`: runs the app under capture, exposes its ports, proxies every connection while the
//! protocol observers turn it into test cases and mocks, and stops cleanly on Ctrl-C, SIGTERM or app exit.

pub(crate) mod annotate;
mod proxy;
mod summary;

use std::collections::BTreeSet;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::capture::{AppCommand, AppExit, AppLink, Capture, Egress};
use crate::error::{Error, Result};
use crate::harness::{Dependencies, Harness};
use crate::protocols::{RecordCtx, Role};
use crate::store::{FORMAT_VERSION, RecordSink, SetMeta, Store, WriteSummary, now_rfc3339};
pub(crate) use proxy::Tracker;

/// An app port and the host port it is exposed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMap {
    pub exposed: u16,
    pub app: u16,
}

impl PortMap {
    /// `8080` (same number on both sides) or `9090:8080` (host 9090 to app 8080).
    pub fn parse(s: &str) -> Result<PortMap> {
        let bad = || Error::input(format!("--port {s:?}: expected PORT or EXPOSED:APP (e.g. 8080 or 9090:8080)"));
        match s.split_once(':') {
            Some((e, a)) => Ok(PortMap { exposed: e.parse().map_err(|_| bad())?, app: a.parse().map_err(|_| bad())? }),
            None => {
                let p = s.parse().map_err(|_| bad())?;
                Ok(PortMap { exposed: p, app: p })
            }
        }
    }
}

pub struct RecordOptions {
    pub store: Store,
    pub test_set: Option<String>,
    pub ports: Vec<PortMap>,
    pub command: AppCommand,
    /// How long the app gets between SIGTERM and SIGKILL.
    pub grace: Duration,
    pub dns_upstream: Option<SocketAddr>,
    /// Print progress lines.
    pub quiet: bool,
    /// Stops the recording when notified (used when doppel drives the traffic itself, as in the demo).
    pub stop: Option<Arc<tokio::sync::Notify>>,
    /// Decrypts the app's TLS connections (absent: TLS is recorded as opaque bytes).
    pub tls: Option<Arc<crate::tls::Interceptor>>,
    /// Decrypts TLS that clients speak to the app's own ports (absent: recorded as opaque bytes).
    pub ingress_tls: Option<Arc<crate::tls::Interceptor>>,
    /// What to mark in the tests once the recording ends (chained values, volatile fields, tags).
    pub annotate: annotate::Annotate,
}

pub struct RecordOutcome {
    pub dir: std::path::PathBuf,
    pub summary: WriteSummary,
    pub app_exit: Option<AppExit>,
    /// The app stopped by itself (not asked by doppel).
    pub app_exited_by_itself: bool,
    /// Servers whose TLS could not be decrypted (their client refused doppel's CA), and why.
    pub undecrypted: Vec<(String, String)>,
    /// What the pass after the recording marked in the tests.
    pub annotated: annotate::Annotated,
}

pub(crate) async fn record(capture: &dyn Capture, opts: RecordOptions) -> Result<RecordOutcome> {
    let meta = SetMeta {
        version: FORMAT_VERSION,
        created_at: now_rfc3339(),
        command: opts.command.argv.clone(),
        app_ports: opts.ports.iter().map(|p| p.app).collect(),
        capture: capture.name().into(),
        deps: Vec::new(),
    };
    // Ports named on the command line are bound before the app starts, so a port in use fails early.
    let mut listeners = Vec::new();
    for p in &opts.ports {
        listeners.push((*p, bind_exposed(p.exposed).await?));
    }
    let writer = opts.store.create_set(opts.test_set.as_deref(), &meta)?;
    let sink = writer.sink();
    let ids = Arc::new(AtomicU64::new(1));
    let deps = Dependencies::Real {
        sink: sink.clone(),
        tls: opts.tls.clone(),
        dns_upstream: opts.dns_upstream,
        ids: ids.clone(),
    };
    let mut harness = match Harness::start(capture, &opts.command, deps).await {
        Ok(h) => h,
        Err(e) => {
            // Nothing was recorded: leave no empty test set behind.
            drop(sink);
            opts.store.discard_set(writer)?;
            return Err(e);
        }
    };
    let set_name = writer.name.clone();
    if !opts.quiet {
        eprintln!(
            "doppel: recording `{}` into {} ({} capture)",
            meta.command.join(" "),
            writer.dir.display(),
            capture.name()
        );
    }

    // Inbound: named ports now, others as the app opens them.
    let inbound = Inbound {
        link: harness.link.clone(),
        sink: sink.clone(),
        tracker: harness.tracker.clone(),
        ids: ids.clone(),
        tls: opts.ingress_tls.clone(),
    };
    let exposed = Arc::new(std::sync::Mutex::new(Vec::<PortMap>::new()));
    for (p, l) in listeners {
        harness.attach(spawn_ingress(l, p, inbound.clone()));
        lock(&exposed).push(p);
    }
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<Error>(1);
    if opts.ports.is_empty() {
        harness.attach(watch_ports(inbound.clone(), exposed.clone(), fatal_tx, opts.quiet));
    }

    let (by_itself, fatal) = run_until_stopped(&harness, &mut fatal_rx, opts.stop.as_deref()).await?;
    if !opts.quiet && !by_itself {
        eprintln!("doppel: stopping the app");
    }
    let exit = harness.stop(opts.grace).await;
    drop(sink);
    drop(inbound);
    let summary = writer.finish();
    let mut ports: Vec<u16> = lock(&exposed).iter().map(|p| p.app).collect();
    ports.sort_unstable();
    ports.dedup();
    if let Err(e) = opts.store.set_app_ports(&set_name, ports) {
        eprintln!("doppel: warning: {e}");
    }
    if let Some(e) = fatal {
        return Err(e);
    }
    let mut undecrypted = opts.tls.as_ref().map(|t| t.refused_hosts()).unwrap_or_default();
    undecrypted.extend(opts.ingress_tls.as_ref().map(|t| t.refused_hosts()).unwrap_or_default());
    // The tests are on disk: mark chained values and volatile fields across the whole set.
    let annotated = if summary.tests > 0 {
        annotate::annotate_set(&opts.store, &set_name, &opts.annotate).unwrap_or_else(|e| {
            eprintln!("doppel: could not mark chained values and volatile fields: {e}");
            annotate::Annotated::default()
        })
    } else {
        annotate::Annotated::default()
    };
    let dir = opts.store.root().join(&set_name);
    Ok(RecordOutcome { dir, summary, app_exit: Some(exit), app_exited_by_itself: by_itself, undecrypted, annotated })
}

/// Runs until Ctrl-C, SIGTERM, `stop`, the app's exit (then `by_itself` is true) or a fatal error met on
/// the way (a port the app opened that cannot be exposed).
async fn run_until_stopped(
    harness: &Harness,
    fatal: &mut mpsc::Receiver<Error>,
    stop: Option<&tokio::sync::Notify>,
) -> Result<(bool, Option<Error>)> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::internal(format!("cannot watch SIGTERM: {e}")))?;
    let stopped = async {
        match stop {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    };
    Ok(tokio::select! {
        _ = tokio::signal::ctrl_c() => (false, None),
        _ = sigterm.recv() => (false, None),
        _ = harness.app.wait() => (true, None),
        e = fatal.recv() => (false, e),
        _ = stopped => (false, None),
    })
}

/// A lock that outlives a panic elsewhere: the data behind it stays usable.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Exposes every port the app starts listening on (when none was named with --port), at the same number.
fn watch_ports(
    inbound: Inbound,
    exposed: Arc<std::sync::Mutex<Vec<PortMap>>>,
    fatal: mpsc::Sender<Error>,
    quiet: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        let mut tasks = Vec::new();
        let started = Instant::now();
        loop {
            for port in inbound.link.listening_ports() {
                if !seen.insert(port) {
                    continue;
                }
                let map = PortMap { exposed: port, app: port };
                match bind_exposed(port).await {
                    Ok(l) => {
                        if !quiet {
                            eprintln!("doppel: the app listens on port {port}; exposed on this machine at :{port}");
                        }
                        tasks.push(AbortOnDrop(spawn_ingress(l, map, inbound.clone())));
                        lock(&exposed).push(map);
                    }
                    Err(e) => {
                        let _ = fatal.send(e).await;
                        return;
                    }
                }
            }
            // Apps open their ports at start-up: look often then, rarely after (reading /proc costs CPU).
            let every = if started.elapsed() < Duration::from_secs(10) { 50 } else { 1000 };
            tokio::time::sleep(Duration::from_millis(every)).await;
        }
    })
}

/// A task that stops when its handle is dropped (the accept loops of ports found by `watch_ports` stop
/// with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn ctx_for(sink: &RecordSink, role: Role, ids: &AtomicU64) -> RecordCtx {
    RecordCtx {
        sink: sink.clone(),
        role,
        connection: ids.fetch_add(1, Ordering::Relaxed),
        opened_at: SystemTime::now(),
        opened: Instant::now(),
    }
}

/// Binds an exposed port on all addresses (IPv6 socket accepting IPv4 too, or IPv4 only).
pub async fn bind_exposed(port: u16) -> Result<TcpListener> {
    let in_use = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            Error::env(format!(
                "port {port} is already in use on this machine; stop what uses it, or expose the app elsewhere with \
                 --port OTHER:{port}"
            ))
        } else {
            Error::env(format!("cannot listen on port {port}: {e}"))
        }
    };
    let dual = || -> std::io::Result<std::net::TcpListener> {
        let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
        s.listen(1024)?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    };
    let std = match dual() {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(in_use(e)),
        Err(_) => {
            let l = std::net::TcpListener::bind(("0.0.0.0", port)).map_err(in_use)?;
            l.set_nonblocking(true).map_err(in_use)?;
            l
        }
    };
    TcpListener::from_std(std).map_err(in_use)
}

/// What every inbound connection needs.
#[derive(Clone)]
struct Inbound {
    link: Arc<dyn AppLink>,
    sink: RecordSink,
    tracker: Tracker,
    ids: Arc<AtomicU64>,
    tls: Option<Arc<crate::tls::Interceptor>>,
}

/// How long a client that connected before the app listens waits for it (then it is closed, as before).
const APP_PORT_WAIT: Duration = Duration::from_secs(30);

fn spawn_ingress(listener: TcpListener, map: PortMap, inbound: Inbound) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Whether the app has listened on its port yet: until then a refused connection means "not yet".
        let listened = Arc::new(std::sync::atomic::AtomicBool::new(false));
        loop {
            let client = crate::capture::accept(&listener).await;
            let _ = client.set_nodelay(true);
            let inbound = inbound.clone();
            let listened = listened.clone();
            inbound.tracker.clone().spawn(async move {
                match connect_app(inbound.link.as_ref(), map.app, &listened).await {
                    Ok(app) => {
                        let _ = app.set_nodelay(true);
                        ingress(client, app, map, inbound).await;
                    }
                    Err(e) => tracing::info!("connection to the app's port {} failed: {e}", map.app),
                }
            });
        }
    })
}

/// Connects to the app's port for a client doppel accepted. doppel's port is open before the app's: a client
/// that comes early (a readiness probe, a fast test driver) waits, bounded, until the app listens and then
/// goes through, instead of being accepted and reset. Once the app has listened, a refusal is final.
async fn connect_app(
    link: &dyn AppLink,
    port: u16,
    listened: &std::sync::atomic::AtomicBool,
) -> std::io::Result<tokio::net::TcpStream> {
    use std::sync::atomic::Ordering;
    let deadline = tokio::time::Instant::now() + APP_PORT_WAIT;
    loop {
        match link.connect(port).await {
            Ok(app) => {
                listened.store(true, Ordering::Relaxed);
                return Ok(app);
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && !listened.load(Ordering::Relaxed)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One client connection to the app. A client that opens with a TLS ClientHello gets doppel's TLS (the app's
/// own certificate with --ingress-cert, else one from doppel's CA), doppel speaks TLS to the app, and the
/// plaintext becomes tests marked `tls:` so that replay speaks TLS to the app too.
async fn ingress(client: tokio::net::TcpStream, app: tokio::net::TcpStream, map: PortMap, inbound: Inbound) {
    let key = format!("port {}", map.exposed);
    let plain = |tls| ctx_for(&inbound.sink, Role::Ingress { port: map.app, tls }, &inbound.ids);
    let interceptor = match inbound.tls.filter(|t| !t.passes_through(&key)) {
        Some(t) => match crate::tls::first_word(&client, &app, Duration::from_secs(3600)).await {
            crate::tls::FirstWord::Client(hello) if crate::tls::looks_like_client_hello(&hello) => Some(t),
            _ => None,
        },
        None => None,
    };
    let Some(interceptor) = interceptor else {
        return proxy::run(client, app, plain(None), map.app, None).await;
    };
    let ip = client.local_addr().ok().map(|a| a.ip().to_canonical());
    match interceptor.intercept(client, app, &key, ip).await {
        Ok((client, app, negotiated)) => {
            let ctx = plain(Some(negotiated.server_name));
            proxy::run(client, app, ctx, map.app, None).await;
        }
        Err(why) => tracing::warn!("a TLS client of port {}: {why}", map.exposed),
    }
}

/// Forwards each outbound connection of the app to its real destination, recording it.
pub(crate) fn forward_egress(
    mut rx: mpsc::Receiver<Egress>,
    sink: RecordSink,
    tls: Option<Arc<crate::tls::Interceptor>>,
    tracker: Tracker,
    ids: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let ctx = ctx_for(&sink, Role::Egress { dest: e.dest.clone() }, &ids);
            tracker.spawn(egress(e, ctx, tls.clone()));
        }
    })
}

async fn egress(e: Egress, ctx: RecordCtx, tls: Option<Arc<crate::tls::Interceptor>>) {
    let connect = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(e.dest.as_str())).await;
    let upstream = match connect {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(err)) => return refuse(e, ctx, err.to_string()),
        Err(_) => return refuse(e, ctx, "timed out".into()),
    };
    let _ = upstream.set_nodelay(true);
    let _ = e.stream.set_nodelay(true);
    // A TLS client speaks first with a ClientHello; a server-first protocol (MySQL, SMTP) never waits on us.
    if let Some(tls) = tls.filter(|t| !t.passes_through(&e.dest)) {
        let first = crate::tls::first_word(&e.stream, &upstream, Duration::from_secs(3600)).await;
        if let crate::tls::FirstWord::Client(bytes) = first
            && crate::tls::looks_like_client_hello(&bytes)
        {
            let ip = upstream.peer_addr().ok().map(|a| a.ip());
            match tls.intercept(e.stream, upstream, &e.dest, ip).await {
                Ok((client, server, negotiated)) => {
                    tracing::debug!("decrypting TLS to {} ({:?})", negotiated.server_name, negotiated.alpn);
                    proxy::run(client, server, ctx, e.port, None).await;
                }
                Err(why) => tracing::warn!("{}: {why}", e.dest),
            }
            return;
        }
        // Plaintext for now; the protocol may still ask for TLS later (STARTTLS).
        proxy::run(e.stream, upstream, ctx, e.port, Some(tls)).await;
        return;
    }
    proxy::run(e.stream, upstream, ctx, e.port, None).await;
}

/// The dependency is down: the app sees its connection reset, and the failure is recorded so replay does
/// the same.
fn refuse(e: Egress, ctx: RecordCtx, error: String) {
    tracing::info!("{} is unreachable: {error}", e.dest);
    let _ = socket2::SockRef::from(&e.stream).set_linger(Some(Duration::ZERO));
    drop(e.stream);
    let mock = crate::protocols::tcp::refused(&ctx, &e.dest, error);
    ctx.sink.submit(crate::store::Record::Mock(Box::new(mock)));
}
