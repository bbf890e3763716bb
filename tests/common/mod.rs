//! Shared pieces of the integration tests: run the real `doppel` binary and real processes in temporary
//! directories, and print everything they said when an assertion fails.

pub mod chromium;
pub mod pg;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn doppel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_doppel"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A finished command with its output, printable on failure.
pub struct Ran {
    pub cmd: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn explain(&self) -> String {
        format!("command: {}\nexit: {}\n--- stdout\n{}\n--- stderr\n{}", self.cmd, self.code, self.stdout, self.stderr)
    }
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.explain())
    }
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    if let Some(d) = cmd.get_current_dir() {
        s.push_str(&format!("   (in {})", d.display()));
    }
    s
}

pub fn run(cmd: &mut Command) -> Ran {
    let desc = describe(cmd);
    let out: Output = cmd.output().unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    Ran {
        cmd: desc,
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A background process whose output goes to files; killed (with its process group) when dropped.
pub struct Bg {
    pub child: Option<Child>,
    pub desc: String,
    pub out: PathBuf,
    pub err: PathBuf,
}

impl Bg {
    pub fn spawn(cmd: &mut Command, logs: &Path, name: &str) -> Bg {
        use std::os::unix::process::CommandExt;
        let out = logs.join(format!("{name}.out"));
        let err = logs.join(format!("{name}.err"));
        let desc = describe(cmd);
        cmd.stdout(std::fs::File::create(&out).unwrap()).stderr(std::fs::File::create(&err).unwrap());
        cmd.stdin(Stdio::null()).process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
        Bg { child: Some(child), desc, out, err }
    }

    /// Starts `cmd` like `spawn`, then waits until `text` appears in its output.
    pub fn spawn_ready(cmd: &mut Command, logs: &Path, name: &str, text: &str, limit: Duration) -> Bg {
        let bg = Bg::spawn(cmd, logs, name);
        bg.wait_for_output(text, limit);
        bg
    }

    /// Starts `cmd` like `spawn` (a `doppel record`, an app), then waits until `url` answers 200.
    pub fn spawn_answering(cmd: &mut Command, logs: &Path, name: &str, url: &str, limit: Duration) -> Bg {
        let bg = Bg::spawn(cmd, logs, name);
        wait_http_ok(url, limit, &bg);
        bg
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    pub fn explain(&self) -> String {
        format!("process: {}\n--- stdout\n{}\n--- stderr\n{}", self.desc, self.stdout(), self.stderr())
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for exit; panics with the output after `limit`.
    pub fn wait(&mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child.take();
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                panic!("{} did not exit within {limit:?}\n{}", self.desc, self.explain());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for_output(&self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.stdout().contains(text) && !self.stderr().contains(text) {
            if Instant::now() > deadline {
                panic!("{text:?} never appeared\n{}", self.explain());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Ctrl-C to a `doppel record` in the background; panics with its output unless it exits 0 within 30 s.
pub fn stop_recording(rec: &mut Bg) {
    rec.signal(libc::SIGINT);
    let code = rec.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "doppel record failed\n{}", rec.explain());
}

/// Waits (polling every `poll`) until something listens on 127.0.0.1:`port`; after `limit` panics with `fail()`.
pub fn wait_port_open(port: u16, limit: Duration, poll: Duration, fail: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{}", fail());
        std::thread::sleep(poll);
    }
}

/// Proves a stopped server is gone: waits up to 5 s until 127.0.0.1:`port` refuses connections, else panics
/// with `fail`.
pub fn wait_port_closed(port: u16, fail: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "{fail}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `url` answers 200 (through curl), or panics with `ctx` explained.
pub fn wait_http_ok(url: &str, limit: Duration, ctx: &Bg) {
    let deadline = Instant::now() + limit;
    loop {
        let r = run(Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", url]));
        if r.stdout == "200" {
            return;
        }
        if Instant::now() > deadline {
            panic!("{url} never answered 200 (last: {:?})\n{}", r.stdout, ctx.explain());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn curl(args: &[&str]) -> Ran {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "30"]).args(args);
    run(&mut c)
}

/// Peak resident memory (VmHWM) of a process in KiB.
pub fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `doppel <sub> --path <recordings>`, run in `dir`.
pub fn doppel_cmd(dir: &Path, sub: &str, recordings: &Path) -> Command {
    let mut c = Command::new(doppel_bin());
    c.current_dir(dir).arg(sub).arg("--path").arg(recordings);
    c
}

/// Sets APP_VARIANT (the example apps' changed builds) or makes sure it is unset.
pub fn app_variant(c: &mut Command, variant: Option<&str>) {
    match variant {
        Some(v) => c.env("APP_VARIANT", v),
        None => c.env_remove("APP_VARIANT"),
    };
}

/// A self-signed certificate for `hosts`, written as PEM files `dir/<cert>` and `dir/<key>`; returns their paths.
pub fn self_signed(dir: &Path, cert: &str, key: &str, hosts: &[&str]) -> (PathBuf, PathBuf) {
    let pair = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
    let signed = params.self_signed(&pair).unwrap();
    let (cert, key) = (dir.join(cert), dir.join(key));
    std::fs::write(&cert, signed.pem()).unwrap();
    std::fs::write(&key, pair.serialize_pem()).unwrap();
    (cert, key)
}

/// The `N passed, M failed ...` line of a `doppel test` run (the first), or "".
pub fn summary(r: &Ran) -> &str {
    r.stdout.lines().find(|l| l.contains(" passed, ")).unwrap_or("")
}

/// The newest JSON report of `doppel test` runs on `recordings`.
pub fn latest_report(recordings: &Path) -> serde_json::Value {
    let reports = recordings.join("reports");
    let latest = std::fs::read_dir(&reports).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    serde_json::from_str(&read_all(&latest)).unwrap()
}

/// Every noise rule a report says was applied, over all results of its first set.
pub fn applied_noise(report: &serde_json::Value) -> Vec<String> {
    report["sets"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["applied_noise"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()))
        .collect()
}

/// The first element of the JSON array `list` whose `key` is `value`.
pub fn find_by<'a>(list: &'a serde_json::Value, key: &str, value: &str) -> Option<&'a serde_json::Value> {
    list.as_array().unwrap().iter().find(|e| e[key] == value)
}

pub fn read_all(path: &Path) -> String {
    let mut s = String::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    s
}

/// The Flask example and its dependencies, wired together for one test.
pub struct FlaskWorld {
    pub dir: tempfile::TempDir,
    pub http_port: u16,
    pub kv_port: u16,
    pub app_port: u16,
    pub upstream: Option<Bg>,
}

impl FlaskWorld {
    pub fn new(blob_mb: u32) -> FlaskWorld {
        let dir = tempfile::tempdir().unwrap();
        let (http_port, kv_port, app_port) = (free_port(), free_port(), free_port());
        let mut w = FlaskWorld { dir, http_port, kv_port, app_port, upstream: None };
        w.start_upstream(blob_mb);
        w
    }

    pub fn start_upstream(&mut self, blob_mb: u32) {
        let script = repo().join("examples/flask-orders/upstream.py");
        let mut c = Command::new("python3");
        c.arg(script).arg(self.http_port.to_string()).arg(self.kv_port.to_string()).arg(blob_mb.to_string());
        self.upstream = Some(Bg::spawn_ready(&mut c, self.dir.path(), "upstream", "ready", Duration::from_secs(20)));
    }

    pub fn stop_upstream(&mut self) {
        self.upstream.take();
        // Prove the dependencies are gone.
        for p in [self.http_port, self.kv_port] {
            wait_port_closed(p, &format!("port {p} still open after stopping the upstream"));
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("recordings")
    }

    /// `doppel <sub> --path ... [extra] -- python3 app.py` with the app's environment.
    pub fn doppel(&self, sub: &str, extra: &[&str], variant: Option<&str>) -> Command {
        let mut c = doppel_cmd(self.dir.path(), sub, &self.path());
        c.args(extra).arg("--").arg("python3").arg(repo().join("examples/flask-orders/app.py"));
        c.env("APP_PORT", self.app_port.to_string())
            .env("CATALOG_URL", format!("http://127.0.0.1:{}", self.http_port))
            .env("KV_ADDR", format!("127.0.0.1:{}", self.kv_port))
            .env("PYTHONUNBUFFERED", "1");
        app_variant(&mut c, variant);
        c
    }

    /// `doppel list --path ...` (not in the test's directory).
    pub fn list(&self) -> Ran {
        run(Command::new(doppel_bin()).args(["list", "--path"]).arg(self.path()))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.app_port)
    }

    /// Starts `doppel record --port <app port> [extra]` and waits until the app answers through it.
    pub fn start_recording(&self, extra: &[&str]) -> Bg {
        self.start_recording_as("record", extra)
    }

    /// `start_recording` with its output in `<name>.out` and `<name>.err`.
    pub fn start_recording_as(&self, name: &str, extra: &[&str]) -> Bg {
        let port = self.app_port.to_string();
        let args: Vec<&str> = ["--port", &port].into_iter().chain(extra.iter().copied()).collect();
        self.spawn_recording(&mut self.doppel("record", &args, None), name)
    }

    /// Starts `doppel record` as `cmd` builds it and waits until the app answers through it.
    pub fn spawn_recording(&self, cmd: &mut Command, name: &str) -> Bg {
        Bg::spawn_answering(cmd, self.dir.path(), name, &self.url("/health"), Duration::from_secs(30))
    }

    /// Ctrl-C to doppel record; returns its stdout.
    pub fn stop_recording(&self, mut rec: Bg) -> String {
        stop_recording(&mut rec);
        rec.stdout()
    }
}
