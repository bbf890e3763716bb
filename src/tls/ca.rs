//! doppel's certificate authority: created on first use (key file mode 0600), reused across runs, and a
//! leaf certificate per server name minted on demand and cached.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{Error, Result};

pub struct Ca {
    dir: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

const CERT_FILE: &str = "ca.pem";
const KEY_FILE: &str = "ca-key.pem";

impl Ca {
    /// `$DOPPEL_CA_DIR`, else `$XDG_CONFIG_HOME/doppel`, else `~/.config/doppel`, else `./.doppel`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("DOPPEL_CA_DIR") {
            return PathBuf::from(d);
        }
        if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
            return PathBuf::from(d).join("doppel");
        }
        if let Some(h) = std::env::var_os("HOME") {
            return PathBuf::from(h).join(".config/doppel");
        }
        PathBuf::from(".doppel")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Loads the CA in `dir`, creating it when absent.
    pub fn load_or_create(dir: &Path) -> Result<Ca> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let io = |p: &Path, e: std::io::Error| Error::env(format!("doppel's CA {}: {e}", p.display()));
        if !cert_path.exists() || !key_path.exists() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
            let key = KeyPair::generate().map_err(|e| Error::internal(format!("cannot create a CA key: {e}")))?;
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, "doppel local interception CA");
            params.distinguished_name.push(DnType::OrganizationName, "doppel");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages =
                vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(3650);
            let cert = params.self_signed(&key).map_err(|e| Error::internal(format!("cannot create the CA: {e}")))?;
            // Several doppel processes may start at once: the one whose key lands first wins, the others load it.
            let tmp_key = dir.join(format!(".{KEY_FILE}.{}", std::process::id()));
            let tmp_cert = dir.join(format!(".{CERT_FILE}.{}", std::process::id()));
            write_private(&tmp_key, key.serialize_pem().as_bytes()).map_err(|e| io(&tmp_key, e))?;
            std::fs::write(&tmp_cert, cert.pem()).map_err(|e| io(&tmp_cert, e))?;
            match std::fs::hard_link(&tmp_key, &key_path) {
                Ok(()) => std::fs::rename(&tmp_cert, &cert_path).map_err(|e| io(&cert_path, e))?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let _ = std::fs::remove_file(&tmp_cert);
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                    while !cert_path.exists() && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
                Err(e) => return Err(io(&key_path, e)),
            }
            let _ = std::fs::remove_file(&tmp_key);
        }
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| io(&cert_path, e))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(|e| io(&key_path, e))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| Error::input(format!("{}: not a usable private key: {e}", key_path.display())))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| Error::input(format!("{}: not a usable CA certificate: {e}", cert_path.display())))?;
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| Error::input(format!("{}: {e:?}", cert_path.display())))?;
        Ok(Ca { dir: dir.to_path_buf(), cert_pem, cert_der: der, issuer, leaves: Mutex::new(HashMap::new()) })
    }

    /// SHA-256 of the CA certificate, as `AB:CD:...`.
    pub fn fingerprint(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.cert_der);
        d.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
    }

    /// A server configuration presenting a certificate for `name` and offering `alpn`.
    pub fn server_config(&self, name: &str, alpn: Vec<Vec<u8>>) -> Result<Arc<ServerConfig>> {
        let cache_key = format!(
            "{name}|{}",
            alpn.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>().join(",")
        );
        if let Some(c) = self.leaves.lock().ok().and_then(|m| m.get(&cache_key).cloned()) {
            return Ok(c);
        }
        let key = KeyPair::generate().map_err(|e| Error::internal(format!("cannot create a key: {e}")))?;
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.to_string().try_into().map_err(|e| Error::internal(format!("server name {name:?}: {e}")))?,
            ),
        };
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![san];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(30);
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| Error::internal(format!("cannot sign for {name}: {e}")))?;
        let chain = vec![leaf.der().clone(), self.cert_der.clone()];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| Error::internal(format!("certificate for {name}: {e}")))?;
        config.alpn_protocols = alpn;
        let config = Arc::new(config);
        if let Ok(mut m) = self.leaves.lock() {
            m.insert(cache_key, config.clone());
        }
        Ok(config)
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_reused_and_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Ca::load_or_create(dir.path()).unwrap();
        let b = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(a.server_config("api.example.com", vec![b"http/1.1".to_vec()]).is_ok());
        assert!(a.server_config("10.0.0.7", vec![]).is_ok());
    }
}
