//! TLS interception: doppel's own CA mints a certificate per server name, so it can terminate the app's TLS
//! connections, see the plaintext, and speak TLS to the real server (verified against the real roots).
//! The app trusts the CA through `trust` (a bundle mounted over the system one in the sandbox, and the
//! environment variables common runtimes read).

mod ca;
pub(crate) mod trust;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

pub use ca::Ca;

use crate::error::{Error, Result};

/// The IP address of a `host:port` destination, when the host is one (names the certificate when the app
/// sends no SNI, as clients connecting to an IP address do).
pub fn dest_ip(dest: &str) -> Option<IpAddr> {
    dest.rsplit_once(':').and_then(|(h, _)| h.trim_matches(['[', ']']).parse().ok())
}

/// Whether bytes start a TLS handshake (record type 22, version 3.x).
pub fn looks_like_client_hello(b: &[u8]) -> bool {
    b.len() >= 3 && b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04
}

/// Who spoke first on a fresh connection.
pub enum FirstWord {
    /// The client sent these bytes (peeked, not consumed).
    Client(Vec<u8>),
    Server,
    Nobody,
}

/// Waits until the client or the server has something to say, without consuming it.
pub async fn first_word(client: &TcpStream, server: &TcpStream, limit: Duration) -> FirstWord {
    let (mut cbuf, mut sbuf) = ([0u8; 16], [0u8; 1]);
    tokio::select! {
        r = client.peek(&mut cbuf) => match r {
            Ok(n) if n > 0 => FirstWord::Client(cbuf[..n].to_vec()),
            _ => FirstWord::Nobody,
        },
        r = server.peek(&mut sbuf) => match r {
            Ok(n) if n > 0 => FirstWord::Server,
            _ => FirstWord::Nobody,
        },
        _ = tokio::time::sleep(limit) => FirstWord::Nobody,
    }
}

/// Peeks at the first bytes the app sends, up to `limit`.
pub async fn peek_client(stream: &TcpStream, limit: Duration) -> Vec<u8> {
    let mut buf = [0u8; 16];
    match tokio::time::timeout(limit, stream.peek(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        _ => Vec::new(),
    }
}

/// How upstream servers are verified while recording.
#[derive(Clone, Debug, Default)]
pub struct UpstreamTrust {
    /// Extra roots (PEM files) for private or staging CAs.
    pub extra_roots: Vec<std::path::PathBuf>,
    /// Accept any upstream certificate.
    pub insecure: bool,
}

/// What was negotiated on an intercepted connection.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub server_name: String,
    pub alpn: Option<String>,
}

/// How doppel verifies the servers it speaks TLS to: the real roots plus the user's extra ones (each also
/// accepted as the server's own certificate), or nothing at all (`insecure`).
pub struct ClientTrust {
    roots: Arc<RootCertStore>,
    /// Certificates given with --upstream-ca or --target-ca, also accepted as the server's own certificate (a
    /// self-signed certificate made with `openssl req -x509` is marked as a CA, which web PKI refuses as a
    /// server's).
    pinned: Arc<Vec<CertificateDer<'static>>>,
    insecure: bool,
}

impl ClientTrust {
    /// `flag` names the option the extra roots came from, for error messages.
    pub fn new(trust: &UpstreamTrust, flag: &str) -> Result<ClientTrust> {
        let mut roots = RootCertStore::empty();
        let mut pinned = Vec::new();
        if !trust.insecure {
            for cert in native_roots() {
                let _ = roots.add(cert.clone());
            }
        }
        for path in &trust.extra_roots {
            let bad = |e: String| Error::input(format!("{flag} {}: {e}", path.display()));
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let mut added = 0;
            for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                let cert: CertificateDer<'static> = cert.map_err(|e| bad(format!("{e:?}")))?;
                pinned.push(cert.clone());
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(bad("no PEM certificate in it".into()));
            }
        }
        Ok(ClientTrust { roots: Arc::new(roots), pinned: Arc::new(pinned), insecure: trust.insecure })
    }

    /// Accepts any server certificate: for the app's own port, whose certificate is the app's business.
    pub fn any() -> ClientTrust {
        ClientTrust { roots: Arc::new(RootCertStore::empty()), pinned: Arc::new(Vec::new()), insecure: true }
    }

    /// A client configuration offering `alpn`.
    pub fn config(&self, alpn: Vec<Vec<u8>>) -> Arc<ClientConfig> {
        self.build(alpn, None)
    }

    /// Like `config`; the flag turns true when the server asks for a client certificate (doppel has none to
    /// give: a server that requires one drops the connection, in TLS 1.3 only after the handshake).
    pub fn config_noting_client_auth(&self, alpn: Vec<Vec<u8>>) -> (Arc<ClientConfig>, Arc<AtomicBool>) {
        let asked = Arc::new(AtomicBool::new(false));
        (self.build(alpn, Some(Arc::new(NoteClientAuth(asked.clone())))), asked)
    }

    fn build(&self, alpn: Vec<Vec<u8>>, note: Option<Arc<NoteClientAuth>>) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder();
        let webpki = rustls::client::WebPkiServerVerifier::builder(self.roots.clone()).build().ok();
        let verifying = match (self.insecure, webpki) {
            (false, Some(webpki)) if !self.pinned.is_empty() => {
                builder.dangerous().with_custom_certificate_verifier(Arc::new(UpstreamVerifier {
                    webpki: Some(webpki),
                    pinned: self.pinned.clone(),
                }))
            }
            (false, _) => builder.with_root_certificates(self.roots.clone()),
            (true, _) => builder.dangerous().with_custom_certificate_verifier(Arc::new(UpstreamVerifier {
                webpki: None,
                pinned: self.pinned.clone(),
            })),
        };
        let mut config = match note {
            Some(note) => verifying.with_client_cert_resolver(note),
            None => verifying.with_no_client_auth(),
        };
        config.alpn_protocols = alpn;
        Arc::new(config)
    }
}

/// Presents no client certificate, and notes that the server asked for one.
#[derive(Debug)]
struct NoteClientAuth(Arc<AtomicBool>);

impl rustls::client::ResolvesClientCert for NoteClientAuth {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.store(true, Ordering::Relaxed);
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The system's root certificates, read once per process (several targets or interceptors share them).
fn native_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// A certificate chain and key the user gives doppel to present (`--ingress-cert`, `--ingress-key`): the
/// app's own, so that its clients see the certificate they already trust.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    /// One configuration per ALPN list, as for the CA's leaves: building one loads the key.
    configs: Mutex<HashMap<Vec<Vec<u8>>, Arc<rustls::ServerConfig>>>,
}

impl Identity {
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Identity> {
        use rustls::pki_types::pem::PemObject;
        let named = |p: &std::path::Path, e: String| Error::input(format!("{}: {e}", p.display()));
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| named(cert, format!("{e:?}")))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| named(cert, format!("{e:?}")))?;
        if chain.is_empty() {
            return Err(named(cert, "no PEM certificate in it".into()));
        }
        let key_der = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
            .map_err(|e| named(key, format!("no usable PEM private key in it ({e:?})")))?;
        let identity = Identity { chain, key: key_der, configs: Mutex::new(HashMap::new()) };
        identity
            .server_config(Vec::new())
            .map_err(|e| named(cert, format!("does not go with {}: {e}", key.display())))?;
        Ok(identity)
    }

    fn server_config(&self, alpn: Vec<Vec<u8>>) -> Result<Arc<rustls::ServerConfig>> {
        if let Some(c) = self.configs.lock().ok().and_then(|m| m.get(&alpn).cloned()) {
            return Ok(c);
        }
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| Error::input(e.to_string()))?;
        config.alpn_protocols = alpn.clone();
        let config = Arc::new(config);
        if let Ok(mut m) = self.configs.lock() {
            m.insert(alpn, config.clone());
        }
        Ok(config)
    }
}

/// Decrypts TLS connections while recording: the app's own to its dependencies (egress), and its clients'
/// to the app (ingress).
pub struct Interceptor {
    ca: Arc<Ca>,
    trust: ClientTrust,
    /// Presented to clients instead of a certificate minted by doppel's CA.
    identity: Option<Identity>,
    /// Destinations doppel could not decrypt (a client refused its certificate, the server's handshake
    /// failed): server name and why. Their later connections pass through encrypted.
    refused: Refused,
}

impl Interceptor {
    pub fn new(ca: Arc<Ca>, upstream: &UpstreamTrust) -> Result<Interceptor> {
        Ok(Interceptor {
            ca,
            trust: ClientTrust::new(upstream, "--upstream-ca")?,
            identity: None,
            refused: Refused::default(),
        })
    }

    /// For the app's own TLS ports: clients get `identity` (else a certificate from doppel's CA for the name
    /// they ask), and the app's certificate is accepted whatever it is.
    pub fn for_app(ca: Arc<Ca>, identity: Option<Identity>) -> Interceptor {
        Interceptor { ca, trust: ClientTrust::any(), identity, refused: Refused::default() }
    }

    /// Servers whose TLS doppel could not decrypt (a client refused doppel's certificate, or the handshake
    /// with the server failed), with the reason.
    pub fn refused_hosts(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self.refused.lock().map(|m| m.values().cloned().collect()).unwrap_or_default();
        v.sort();
        v
    }

    fn refuse(&self, dest: &str, name: &str, why: String) {
        refuse(&self.refused, dest, name, why);
    }

    /// Whether connections to `dest` pass through encrypted (its client refused doppel's certificate before).
    pub fn passes_through(&self, dest: &str) -> bool {
        self.refused.lock().map(|m| m.contains_key(dest)).unwrap_or(false)
    }

    /// Terminates the app's TLS and opens TLS to the real server with the same server name and the ALPN
    /// protocols the app offered; the app gets the protocol the server chose. `dest_ip` names the server
    /// when the app sent no SNI.
    pub async fn intercept<C: AsyncRead + AsyncWrite + Unpin, U: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: C,
        upstream: U,
        dest: &str,
        dest_ip: Option<IpAddr>,
    ) -> std::result::Result<
        (tokio_rustls::server::TlsStream<C>, Watched<tokio_rustls::client::TlsStream<U>>, Negotiated),
        String,
    > {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client)
            .await
            .map_err(|e| format!("reading the app's TLS ClientHello: {e}"))?;
        let hello = start.client_hello();
        let sni = hello.server_name().map(str::to_string);
        let offered: Vec<Vec<u8>> = hello.alpn().map(|a| a.map(|p| p.to_vec()).collect()).unwrap_or_default();
        let name = sni.clone().or_else(|| dest_ip.map(|ip| ip.to_string())).unwrap_or_else(|| "localhost".into());
        let server_name = match (&sni, dest_ip) {
            (Some(s), _) => ServerName::try_from(s.clone()).map_err(|e| format!("server name {s:?}: {e}"))?,
            (None, Some(ip)) => ServerName::IpAddress(ip.into()),
            (None, None) => return Err("the app sent no server name and the destination has no address".into()),
        };
        let (config, asked_for_client_cert) = self.trust.config_noting_client_auth(offered);
        let upstream = match TlsConnector::from(config).connect(server_name, upstream).await {
            Ok(u) => u,
            Err(e) => {
                // This connection is lost (its ClientHello is consumed); later ones pass through encrypted,
                // so the app keeps working whatever doppel cannot verify or satisfy (a client certificate
                // the server asks for, a certificate doppel does not trust).
                self.refuse(dest, &name, format!("the TLS handshake with the server failed: {e}"));
                return Err(format!(
                    "TLS to the real server {name} failed: {e}; later connections pass through encrypted"
                ));
            }
        };
        let chosen = upstream.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        let alpn: Vec<Vec<u8>> = chosen.iter().cloned().collect();
        let config = match &self.identity {
            Some(identity) => identity.server_config(alpn),
            None => self.ca.server_config(&name, alpn),
        }
        .map_err(|e| e.to_string())?;
        match start.into_stream(config).await {
            Ok(client) => {
                let alpn = chosen.map(|p| String::from_utf8_lossy(&p).into_owned());
                // Many servers ask for a client certificate and take none (MySQL, MariaDB); one that
                // requires it rejects doppel's empty answer with an alert on the first read (TLS 1.3).
                let on_alert = asked_for_client_cert.load(Ordering::Relaxed).then(|| Refusal {
                    refused: self.refused.clone(),
                    dest: dest.to_string(),
                    name: name.clone(),
                });
                Ok((client, Watched { inner: upstream, on_alert }, Negotiated { server_name: name, alpn }))
            }
            Err(e) => {
                let why = format!(
                    "the client refused doppel's certificate for {name} ({e}); later connections to it are recorded encrypted"
                );
                self.refuse(dest, &name, format!("its client refused doppel's CA: {e}"));
                Err(why)
            }
        }
    }
}

/// Destinations doppel could not decrypt, shared with the streams that may still find out.
type Refused = Arc<Mutex<HashMap<String, (String, String)>>>;

fn refuse(refused: &Refused, dest: &str, name: &str, why: String) {
    if let Ok(mut m) = refused.lock() {
        m.insert(dest.to_string(), (name.to_string(), why));
    }
}

/// Where to note that a server rejected doppel for want of a client certificate.
struct Refusal {
    refused: Refused,
    dest: String,
    name: String,
}

/// A server-side TLS stream that notes, if the server asked for a client certificate during the handshake
/// and then ends the connection with an alert, that later connections to it must pass through encrypted.
pub struct Watched<S> {
    inner: S,
    on_alert: Option<Refusal>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Err(e)) = &polled
            && let Some(alert) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
            && matches!(alert, rustls::Error::AlertReceived(_))
            && let Some(r) = self.on_alert.take()
        {
            let why = format!("the server requires a client certificate, which doppel cannot present ({alert})");
            tracing::warn!("{}: {why}; later connections pass through encrypted", r.dest);
            refuse(&r.refused, &r.dest, &r.name, why);
        }
        polled
    }
}

crate::protocols::write_through_inner!(Watched);

/// Accepts the app's TLS in replay with a certificate for the name it asks for; `alpn` picks the protocol
/// among those the app offers.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    ca: &Ca,
    stream: S,
    dest_ip: Option<IpAddr>,
    alpn: impl Fn(&[Vec<u8>]) -> Option<Vec<u8>>,
) -> std::io::Result<(tokio_rustls::server::TlsStream<S>, String)> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let hello = start.client_hello();
    let name = hello
        .server_name()
        .map(str::to_string)
        .or_else(|| dest_ip.map(|ip| ip.to_string()))
        .unwrap_or_else(|| "localhost".into());
    let offered: Vec<Vec<u8>> = hello.alpn().map(|a| a.map(|p| p.to_vec()).collect()).unwrap_or_default();
    let config = ca.server_config(&name, alpn(&offered).into_iter().collect()).map_err(std::io::Error::other)?;
    let tls = start.into_stream(config).await?;
    Ok((tls, name))
}

/// How doppel verifies an upstream server when the usual web PKI check is not the whole story: with
/// `webpki` set, web PKI except that a server presenting exactly a certificate the user gave with
/// `--upstream-ca` or `--target-ca` is trusted as is; without it (`--upstream-insecure`,
/// `--target-insecure`), any certificate is accepted. Handshake signatures are always checked.
#[derive(Debug)]
struct UpstreamVerifier {
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    pinned: Arc<Vec<CertificateDer<'static>>>,
}

fn signature_algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

impl rustls::client::danger::ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else { return Ok(rustls::client::danger::ServerCertVerified::assertion()) };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(_) if self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &signature_algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &signature_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        signature_algorithms().supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
        let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn an_ingress_identity_needs_a_certificate_and_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path(), "a");
        let (_, other_key) = self_signed(dir.path(), "b");
        assert!(Identity::load(&cert, &key).is_ok());
        let mismatch = Identity::load(&cert, &other_key).err().unwrap().message;
        assert!(mismatch.contains("a.pem") && mismatch.contains("does not go with"), "{mismatch}");
        let not_a_cert = Identity::load(&key, &key).err().unwrap().message;
        assert!(not_a_cert.contains("a-key.pem") && not_a_cert.contains("no PEM certificate"), "{not_a_cert}");
        let missing = Identity::load(&dir.path().join("none.pem"), &key).err().unwrap().message;
        assert!(missing.contains("none.pem"), "{missing}");
    }

    #[test]
    fn extra_roots_must_hold_a_certificate_and_name_their_flag() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem").unwrap();
        let trust = UpstreamTrust { extra_roots: vec![empty], insecure: false };
        let e = ClientTrust::new(&trust, "--target-ca").err().unwrap().message;
        assert!(e.starts_with("--target-ca ") && e.contains("no PEM certificate"), "{e}");
    }
}
