//! `doppel record`: runs the app under capture, exposes its ports, proxies every connection while the
//! protocol observers turn it into test cases and mocks, and stops cleanly on Ctrl-C, SIGTERM or app exit.

pub mod annotate;
mod proxy;

use std::collections::BTreeSet;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::capture::{AppCommand, AppExit, AppLink, Capture, Egress};
use crate::error::{Error, Result};
use crate::protocols::{self, RecordCtx, Role};
use crate::store::{FORMAT_VERSION, RecordSink, SetMeta, Store, WriteSummary, now_rfc3339};
pub use proxy::Tracker;

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
    pub set: String,
    pub dir: std::path::PathBuf,
    pub summary: WriteSummary,
    pub app_exit: Option<AppExit>,
    /// The app stopped by itself (not asked by doppel).
    pub app_exited_by_itself: bool,
    pub exposed: Vec<PortMap>,
    /// Servers whose TLS could not be decrypted (their client refused doppel's CA), and why.
    pub undecrypted: Vec<(String, String)>,
    /// What the pass after the recording marked in the tests.
    pub annotated: annotate::Annotated,
}

pub async fn record<C: Capture>(capture: &C, opts: RecordOptions) -> Result<RecordOutcome> {
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
    let tracker = Tracker::default();
    let conn_ids = Arc::new(AtomicU64::new(1));
    let mut session = match capture.start(&opts.command).await {
        Ok(s) => s,
        Err(e) => {
            // Nothing was recorded: leave no empty test set behind.
            drop(sink);
            let dir = writer.dir.clone();
            let _ = writer.finish();
            let _ = std::fs::remove_dir_all(&dir);
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

    // Outbound connections: forward to the real destination, observe.
    let egress_task = {
        let sink = sink.clone();
        let tracker = tracker.clone();
        let ids = conn_ids.clone();
        let mut rx = std::mem::replace(&mut session.egress, mpsc::channel(1).1);
        let tls = opts.tls.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                let ctx = ctx_for(&sink, Role::Egress { dest: e.dest.clone() }, &ids);
                tracker.spawn(egress(e, ctx, tls.clone()));
            }
        })
    };
    let mut dns_tasks = Vec::new();
    let upstream = opts.dns_upstream.or_else(protocols::dns::system_resolver);
    for sock in std::mem::take(&mut session.dns) {
        dns_tasks.push(tokio::spawn(protocols::dns::record(sock, upstream, sink.clone())));
    }

    // Inbound: named ports now, others as the app opens them.
    let inbound = Inbound {
        link: session.link.clone(),
        sink: sink.clone(),
        tracker: tracker.clone(),
        ids: conn_ids.clone(),
        tls: opts.ingress_tls.clone(),
    };
    let exposed = Arc::new(std::sync::Mutex::new(Vec::<PortMap>::new()));
    let mut ingress_tasks = Vec::new();
    for (p, l) in listeners {
        ingress_tasks.push(spawn_ingress(l, p, inbound.clone()));
        if let Ok(mut e) = exposed.lock() {
            e.push(p);
        }
    }
    let auto_detect = opts.ports.is_empty();
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<Error>(1);
    let watcher = if auto_detect {
        let link = session.link.clone();
        let inbound = inbound.clone();
        let exposed = exposed.clone();
        let quiet = opts.quiet;
        Some(tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            let mut tasks = Vec::new();
            let started = Instant::now();
            loop {
                for port in link.listening_ports() {
                    if !seen.insert(port) {
                        continue;
                    }
                    let map = PortMap { exposed: port, app: port };
                    match bind_exposed(port).await {
                        Ok(l) => {
                            if !quiet {
                                eprintln!("doppel: the app listens on port {port}; exposed on this machine at :{port}");
                            }
                            tasks.push(spawn_ingress(l, map, inbound.clone()));
                            if let Ok(mut e) = exposed.lock() {
                                e.push(map);
                            }
                        }
                        Err(e) => {
                            let _ = fatal_tx.send(e).await;
                            return;
                        }
                    }
                }
                // Apps open their ports at start-up: look often then, rarely after (reading /proc costs CPU).
                let every = if started.elapsed() < Duration::from_secs(10) { 50 } else { 1000 };
                tokio::time::sleep(Duration::from_millis(every)).await;
            }
        }))
    } else {
        None
    };

    // Run until asked to stop, or the app stops.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::internal(format!("cannot watch SIGTERM: {e}")))?;
    let mut by_itself = false;
    let mut fatal = None;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
        _ = session.app.wait() => { by_itself = true; }
        e = fatal_rx.recv() => { fatal = e; }
        _ = async { match &opts.stop { Some(n) => n.notified().await, None => std::future::pending().await } } => {}
    }
    if !opts.quiet && !by_itself {
        eprintln!("doppel: stopping the app");
    }
    let exit = session.app.stop(opts.grace).await;
    if let Some(w) = watcher {
        w.abort();
    }
    for t in ingress_tasks.into_iter().chain(dns_tasks) {
        t.abort();
    }
    egress_task.abort();
    // The app is gone, so its connections are closing; give the proxies a moment to write what completed,
    // then drop what is still open (idle keep-alive connections): those exchanges were in flight.
    tracker.finish(Duration::from_secs(3)).await;
    drop(sink);
    drop(session);
    let summary = writer.finish();
    let exposed_now = exposed.lock().map(|e| e.clone()).unwrap_or_default();
    update_meta_ports(&opts.store, &set_name, &exposed_now);
    if let Some(e) = fatal {
        return Err(e);
    }
    let dir = opts.store.root().join(&set_name);
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
    Ok(RecordOutcome {
        set: set_name,
        dir,
        summary,
        app_exit: Some(exit),
        app_exited_by_itself: by_itself,
        exposed: exposed_now,
        undecrypted,
        annotated,
    })
}

fn update_meta_ports(store: &Store, set: &str, ports: &[PortMap]) {
    let path = store.root().join(set).join("set.yaml");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(mut meta) = crate::store::parse_yaml::<SetMeta>(&text, &path, 1)
    {
        meta.app_ports = ports.iter().map(|p| p.app).collect();
        meta.app_ports.sort_unstable();
        meta.app_ports.dedup();
        if let Ok(y) = crate::store::to_yaml(&meta) {
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, y).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
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

fn spawn_ingress(listener: TcpListener, map: PortMap, inbound: Inbound) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { continue };
            let _ = client.set_nodelay(true);
            let inbound = inbound.clone();
            inbound.tracker.clone().spawn(async move {
                match inbound.link.connect(map.app).await {
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

pub(crate) async fn egress(e: Egress, ctx: RecordCtx, tls: Option<Arc<crate::tls::Interceptor>>) {
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
    let mock = crate::store::Mock {
        version: FORMAT_VERSION,
        id: ctx.sink.next_mock_id(),
        kind: "tcp".into(),
        dest: e.dest,
        connection: ctx.connection,
        started_at: crate::store::format_time(time::OffsetDateTime::from(ctx.opened_at)),
        duration_ms: 0.0,
        tcp: Some(crate::store::TcpMock {
            chunks: Vec::new(),
            note: None,
            closed_by: None,
            connect_error: Some(error),
        }),
        ..crate::store::Mock::default()
    };
    ctx.sink.submit(crate::store::Record::Mock(Box::new(mock)));
}
