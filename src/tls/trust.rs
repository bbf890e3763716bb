//! Making the app trust doppel's CA without changing it: a bundle of the system roots plus doppel's CA,
//! mounted over the system bundle inside the sandbox, and the environment variables common runtimes read.

use std::path::{Path, PathBuf};

use super::Ca;
use crate::error::{Error, Result};

/// System CA bundles of the common distributions; each one present is replaced in the sandbox.
const SYSTEM_BUNDLES: [&str; 5] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
];

pub struct Trust {
    /// (source, target) bind mounts for the sandbox.
    pub mounts: Vec<(String, String)>,
    /// Environment for the app.
    pub env: Vec<(String, String)>,
    dir: PathBuf,
}

impl Drop for Trust {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes the bundle (and a Java truststore when `keytool` is available) into a fresh directory under
/// `parent` and says how the app gets to trust it.
pub fn prepare(ca: &Ca, parent: &Path) -> Result<Trust> {
    let dir = parent.join(format!("doppel-trust-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::env(format!("cannot create {}: {e}", dir.display())))?;
    let system: Vec<&str> = SYSTEM_BUNDLES.iter().copied().filter(|p| Path::new(p).is_file()).collect();
    let mut bundle = system.first().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
    if !bundle.ends_with('\n') && !bundle.is_empty() {
        bundle.push('\n');
    }
    bundle.push_str(ca.cert_pem());
    let bundle_path = dir.join("ca-bundle.pem");
    let ca_path = dir.join("doppel-ca.pem");
    let write = |p: &Path, data: &str| {
        std::fs::write(p, data).map_err(|e| Error::env(format!("cannot write {}: {e}", p.display())))
    };
    write(&bundle_path, &bundle)?;
    write(&ca_path, ca.cert_pem())?;
    let b = bundle_path.display().to_string();
    let mounts = system.iter().map(|t| (b.clone(), t.to_string())).collect();
    let mut env = vec![
        ("SSL_CERT_FILE".to_string(), b.clone()),
        ("REQUESTS_CA_BUNDLE".to_string(), b.clone()),
        ("CURL_CA_BUNDLE".to_string(), b.clone()),
        ("NODE_EXTRA_CA_CERTS".to_string(), ca_path.display().to_string()),
        ("GIT_SSL_CAINFO".to_string(), b.clone()),
    ];
    if let Some(store) = java_truststore(&dir, &ca_path) {
        let opts =
            format!("-Djavax.net.ssl.trustStore={} -Djavax.net.ssl.trustStorePassword=changeit", store.display());
        let existing = std::env::var("JAVA_TOOL_OPTIONS").unwrap_or_default();
        env.push(("JAVA_TOOL_OPTIONS".to_string(), format!("{existing} {opts}").trim().to_string()));
    }
    Ok(Trust { mounts, env, dir })
}

/// A copy of the JVM's default truststore with doppel's CA added, built with `keytool` (skipped when the
/// machine has no JVM).
fn java_truststore(dir: &Path, ca: &Path) -> Option<PathBuf> {
    let keytool = which("keytool")?;
    let java_home = std::fs::canonicalize(&keytool).ok()?.parent()?.parent()?.to_path_buf();
    let cacerts = java_home.join("lib/security/cacerts");
    let store = dir.join("truststore.p12");
    if cacerts.is_file() {
        std::fs::copy(&cacerts, &store).ok()?;
    }
    let mut cmd = std::process::Command::new(keytool);
    cmd.args(["-importcert", "-noprompt", "-alias", "doppel-ca", "-storepass", "changeit"]);
    if !store.exists() {
        cmd.args(["-storetype", "PKCS12"]);
    }
    let ok = cmd
        .arg("-file")
        .arg(ca)
        .arg("-keystore")
        .arg(&store)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?
        .success();
    ok.then_some(store)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}
