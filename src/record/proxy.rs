//! The recording proxy: bytes are forwarded as they arrive, and the protocol observer sees each piece
//! first. The observer is chosen from the first bytes (`protocols::detect`); if it cannot follow the
//! traffic, the connection carries on as opaque bytes, and a parser never breaks it. Observing happens on
//! the forwarding path, under the connection's lock, before each piece is written on: a request is always
//! seen before its response, and the traffic waits for the parse of each piece (a copy and a decode, no I/O:
//! the store writes on its own thread).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::protocols::detect::Detector;
use crate::protocols::tcp::TcpObserver;
use crate::protocols::{Observer, RecordCtx, Stream};

/// Keeps track of running proxies, so that stopping can wait for the last exchanges to be written, then
/// abort what is left (idle keep-alive connections, streams that never end).
#[derive(Clone, Default)]
pub struct Tracker {
    inner: Arc<TrackerInner>,
}

#[derive(Default)]
struct TrackerInner {
    active: AtomicUsize,
    idle: Notify,
    next: AtomicUsize,
    running: Mutex<std::collections::HashMap<usize, tokio::task::AbortHandle>>,
}

impl Tracker {
    /// Spawns `fut` as a tracked task.
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, fut: F) {
        let inner = self.inner.clone();
        let id = inner.next.fetch_add(1, Ordering::SeqCst);
        inner.active.fetch_add(1, Ordering::SeqCst);
        let done = inner.clone();
        let handle = tokio::spawn(async move {
            fut.await;
            if let Ok(mut r) = done.running.lock() {
                r.remove(&id);
            }
            if done.active.fetch_sub(1, Ordering::SeqCst) == 1 {
                done.idle.notify_waiters();
            }
        });
        if let Ok(mut r) = inner.running.lock()
            && !handle.is_finished()
        {
            r.insert(id, handle.abort_handle());
        }
    }

    /// Waits up to `limit` for every tracked task to end, then aborts the rest.
    pub async fn finish(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.inner.active.load(Ordering::SeqCst) > 0 {
            let notified = self.inner.idle.notified();
            if self.inner.active.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let left: Vec<_> =
            self.inner.running.lock().map(|mut r| r.drain().map(|(_, h)| h).collect()).unwrap_or_default();
        for h in left {
            h.abort();
        }
    }
}

enum Slot {
    /// Protocol not known yet: bytes seen so far, in order.
    Detecting {
        detector: Detector,
        seen: Vec<(bool, Vec<u8>, Instant)>,
    },
    Active(Box<dyn Observer>),
}

struct Watch {
    slot: Slot,
    /// The observer saw a STARTTLS negotiation complete: both pumps stop.
    upgrade: bool,
    /// How many bytes of the piece just fed belong before the TLS handshake.
    boundary: Option<usize>,
    /// With `DOPPEL_RAW_DIR` set: the connection's plaintext as fuzz input (see `crate::fuzz`), and the
    /// protocol it was detected as.
    raw: Option<(Vec<u8>, &'static str)>,
    ctx: RecordCtx,
    /// Bytes seen per direction, for the note when parsing gives up.
    offsets: [u64; 2],
}

/// Raw dumps (`DOPPEL_RAW_DIR`) keep at most this much of a connection.
const RAW_LIMIT: usize = 256 * 1024;

impl Watch {
    fn feed(&mut self, from_client: bool, data: &[u8], at: Instant) {
        let side = usize::from(!from_client);
        if let Some((raw, _)) = &mut self.raw
            && !data.is_empty()
            && raw.len() < RAW_LIMIT
        {
            crate::fuzz::frame(raw, from_client, data);
        }
        if let Slot::Detecting { detector, seen } = &mut self.slot {
            seen.push((from_client, data.to_vec(), at));
            let Some(protocol) = detector.feed(from_client, data) else { return };
            let seen = std::mem::take(seen);
            if let Some((_, name)) = &mut self.raw {
                *name = protocol.name();
            }
            self.slot = Slot::Active(protocol.observer(self.ctx.clone()));
            for (c, bytes, t) in seen {
                self.deliver(c, &bytes, t);
            }
            return;
        }
        self.deliver(from_client, data, at);
        self.offsets[side] += data.len() as u64;
    }

    fn deliver(&mut self, from_client: bool, data: &[u8], at: Instant) {
        let Slot::Active(obs) = &mut self.slot else { return };
        let r = if from_client { obs.client(data, at) } else { obs.server(data, at) };
        if r.is_ok()
            && let Some(n) = obs.tls_boundary()
        {
            self.upgrade = true;
            self.boundary = Some(n.min(data.len()));
        }
        if let Err(why) = r {
            // Degrade: the rest of this connection is recorded as opaque bytes, starting with this piece.
            let note = format!(
                "{} after {} bytes from the client and {} from the server: {why}",
                crate::protocols::tcp::GAVE_UP,
                self.offsets[0],
                self.offsets[1]
            );
            tracing::info!("connection {}: {note}", self.ctx.connection);
            obs.close(at);
            let mut fallback = TcpObserver::new(self.ctx.clone(), Some(note));
            let _ = if from_client { fallback.client(data, at) } else { fallback.server(data, at) };
            self.slot = Slot::Active(Box::new(fallback));
        }
    }

    fn close(&mut self, at: Instant) {
        if let Slot::Detecting { .. } = self.slot {
            self.feed(true, &[], at);
        }
        if let Slot::Active(obs) = &mut self.slot {
            obs.close(at);
        }
        if let (Some((raw, name)), Some(dir)) = (self.raw.take(), std::env::var_os("DOPPEL_RAW_DIR"))
            && !raw.is_empty()
        {
            let path =
                std::path::Path::new(&dir).join(format!("{}-{}-{name}.bin", std::process::id(), self.ctx.connection));
            let _ = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(path, raw));
        }
    }
}

/// Proxies `client` <-> `server` until both directions end, observing every byte. When the observer sees a
/// STARTTLS negotiation and `tls` is set, both sides are decrypted from then on.
pub async fn run<C: Stream + 'static, S: Stream + 'static>(
    client: C,
    server: S,
    ctx: RecordCtx,
    port: u16,
    tls: Option<Arc<crate::tls::Interceptor>>,
) {
    let dest = match &ctx.role {
        crate::protocols::Role::Egress { dest } => dest.clone(),
        crate::protocols::Role::Ingress { .. } => String::new(),
    };
    let watch = Arc::new(Mutex::new(Watch {
        slot: Slot::Detecting { detector: Detector::new(port), seen: Vec::new() },
        upgrade: false,
        boundary: None,
        raw: std::env::var_os("DOPPEL_RAW_DIR").map(|_| (Vec::new(), "tcp")),
        ctx,
        offsets: [0, 0],
    }));
    if let Some((client, server, early)) = pump_both(client, server, &watch).await {
        let client = crate::protocols::Prefixed::new(early, client);
        // STARTTLS: the client's next bytes are a ClientHello. Decrypt both sides and carry on.
        match tls {
            Some(tls) => {
                let ip = crate::tls::dest_ip(&dest);
                match tls.intercept(client, server, &dest, ip).await {
                    Ok((c, s, negotiated)) => {
                        tracing::debug!("STARTTLS to {} decrypted", negotiated.server_name);
                        if let Ok(mut w) = watch.lock() {
                            w.upgrade = false;
                        }
                        let _ = pump_both(c, s, &watch).await;
                    }
                    Err(why) => tracing::warn!("{dest}: {why}"),
                }
            }
            None => {
                // Not decrypting: the handshake and what follows are forwarded as they are.
                if let Ok(mut w) = watch.lock() {
                    w.upgrade = false;
                }
                let _ = pump_both(client, server, &watch).await;
            }
        }
    }
    if let Ok(mut w) = watch.lock() {
        w.close(Instant::now());
    }
}

/// Runs both directions until they end; when they stopped for a STARTTLS upgrade, returns the streams and
/// the client's bytes already read past the boundary (the start of its TLS handshake).
async fn pump_both<C: Stream, S: Stream>(client: C, server: S, watch: &Arc<Mutex<Watch>>) -> Option<(C, S, Vec<u8>)> {
    let (cr, cw) = tokio::io::split(client);
    let (sr, sw) = tokio::io::split(server);
    let halt = Arc::new(Notify::new());
    let ((cr, sw, up1, early), (sr, cw, up2, _)) =
        tokio::join!(pump(cr, sw, watch.clone(), true, halt.clone()), pump(sr, cw, watch.clone(), false, halt.clone()));
    (up1 || up2).then(|| (cr.unsplit(cw), sr.unsplit(sw), early))
}

/// Copies one direction, observing every piece before forwarding it. Returns the halves and whether it
/// stopped for a STARTTLS upgrade (rather than the end of the stream).
async fn pump<R: AsyncRead, W: AsyncWrite>(
    mut from: ReadHalf<R>,
    mut to: WriteHalf<W>,
    watch: Arc<Mutex<Watch>>,
    from_client: bool,
    halt: Arc<Notify>,
) -> (ReadHalf<R>, WriteHalf<W>, bool, Vec<u8>) {
    let mut buf = vec![0u8; 64 * 1024];
    let upgrading = |w: &Arc<Mutex<Watch>>| w.lock().map(|w| w.upgrade).unwrap_or(false);
    loop {
        let read = tokio::select! {
            r = from.read(&mut buf) => r,
            // The other direction saw the negotiation end; a read dropped here loses nothing.
            _ = halt.notified() => {
                if upgrading(&watch) {
                    return (from, to, true, Vec::new());
                }
                continue;
            }
        };
        match read {
            Ok(0) | Err(_) => {
                if let Ok(mut w) = watch.lock() {
                    w.feed(from_client, &[], Instant::now());
                }
                let _ = to.shutdown().await;
                halt.notify_one();
                return (from, to, false, Vec::new());
            }
            Ok(n) => {
                // Observe before forwarding, so a request is always seen before its response.
                let mut upto = n;
                if let Ok(mut w) = watch.lock() {
                    w.feed(from_client, &buf[..n], Instant::now());
                    if let Some(b) = w.boundary.take() {
                        upto = b;
                    }
                }
                if to.write_all(&buf[..upto]).await.is_err() {
                    halt.notify_one();
                    return (from, to, false, Vec::new());
                }
                if upgrading(&watch) {
                    let _ = to.flush().await;
                    halt.notify_one();
                    return (from, to, true, buf[upto..n].to_vec());
                }
            }
        }
    }
}
