//! Command line: parses flags, picks the capture mechanism, runs the command, maps errors to exit codes
//! (0 all good, 1 tests failed, 2 usage, configuration, input or environment errors).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::capture::explicit::{DepSpec, Explicit};
use crate::capture::sandbox::Sandbox;
use crate::capture::{AppCommand, AppExit, Capture};
use crate::error::{Error, Result};
use crate::record::{self, PortMap, RecordOptions};
use crate::replay::{self, ReplayOptions, Target};
use crate::report;
use crate::store::{Config, Store};
use crate::tls::Ca;
use crate::tls::trust::Trust;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "doppel",
    version,
    about = "Record a service's real traffic as tests and mocks; replay it hermetically and catch regressions.",
    after_help = "Examples:\n  doppel demo\n  doppel record -- python3 app.py\n  doppel test -- python3 app.py\n  doppel test --target http://staging:8080"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Project config file (noise rules, defaults).
    #[arg(long, global = true, default_value = "doppel.yaml")]
    config: PathBuf,
    /// Print only errors and the final result.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a command and record its traffic: inbound HTTP as test cases, outbound calls as mocks.
    ///
    /// Example: doppel record --port 8080 -- python3 app.py
    Record(RecordArgs),
    /// Run a command with every dependency mocked and replay the recorded tests against it.
    ///
    /// Example: doppel test --junit junit.xml -- python3 app.py
    Test(TestArgs),
    /// Record, replay and catch a change on a bundled demo service (self-contained).
    ///
    /// Example: doppel demo
    Demo(crate::demo::DemoArgs),
    /// List the test sets under --path with their tests and mocks.
    ///
    /// Example: doppel list
    List(PathArgs),
    /// Send the recorded requests to a running deployment under load; report latency per endpoint.
    ///
    /// The schedule is open-loop (the recorded timing sped up, a fixed rate or a ramp) and latency runs from
    /// each request's intended send time; --fail-if gates make it a CI check.
    ///
    /// Example: doppel load --target http://staging:8080 --rate 500/s --duration 60s --fail-if 'p99>200ms'
    Load(LoadArgs),
    /// Send each recorded request to two deployments and report the fields where the candidate differs.
    ///
    /// A secondary copy of the primary tells which fields are noise (they differ between the two).
    ///
    /// Example: doppel diff --primary http://prod-copy:8080 --candidate http://staging:8080 --secondary http://prod-copy-2:8080
    Diff(DiffArgs),
    /// Group tests of the same shape (method, route with ids collapsed, header names, body schemas, status),
    /// keep N of each group and remove the other test files (never the mocks).
    ///
    /// Example: doppel dedup --keep 2 --dry-run
    Dedup(DedupArgs),
    /// Find credentials left in clear in recordings (exit 1 when any): for pre-commit hooks and CI.
    ///
    /// Example: doppel scan doppel/
    Scan(ScanArgs),
    /// Show doppel's TLS interception CA (created on first use): where it is and its fingerprint.
    ///
    /// Example: doppel ca
    Ca,
    #[command(hide = true, name = "__demo-app")]
    DemoApp,
    #[command(hide = true, name = "__demo-deps")]
    DemoDeps,
    /// A small fast HTTP server for load tests and benchmarks.
    #[command(hide = true, name = "__http-target")]
    HttpTarget {
        port: u16,
        /// Send every request to this http[s]://HOST:PORT first and answer its body.
        #[arg(long)]
        forward: Option<String>,
        /// Serve HTTPS with this certificate and key (PEM).
        #[arg(long, num_args = 2, value_names = ["CERT", "KEY"])]
        tls: Option<Vec<String>>,
    },
}

#[derive(Args, Debug)]
struct ScanArgs {
    /// Files or directories to scan (default: `path` in doppel.yaml, else ./doppel).
    ///
    /// Example: doppel scan doppel/test-set-0 exported.yaml
    paths: Vec<PathBuf>,
}

#[derive(Args, Debug)]
struct PathArgs {
    /// Directory holding the test sets (default: `path` in doppel.yaml, else ./doppel).
    #[arg(long)]
    path: Option<PathBuf>,
}

/// How https deployments (--target, --primary, ...) are verified.
#[derive(Args, Debug)]
struct TargetTlsArgs {
    /// Also trust this CA (PEM) for https targets (private or staging CAs; a self-signed server certificate
    /// itself works too). Repeatable. Example: --target-ca staging-ca.pem
    #[arg(long, value_name = "FILE")]
    target_ca: Vec<PathBuf>,
    /// Do not verify the certificates of https targets.
    /// Example: --target https://staging.internal:8443 --target-insecure
    #[arg(long)]
    target_insecure: bool,
}

impl TargetTlsArgs {
    fn trust(&self) -> crate::tls::UpstreamTrust {
        crate::tls::UpstreamTrust { extra_roots: self.target_ca.clone(), insecure: self.target_insecure }
    }
}

#[derive(Args, Debug)]
struct CaptureArgs {
    /// Do not use the Linux sandbox; capture only the dependencies named with --dep.
    #[arg(long)]
    no_sandbox: bool,
    /// A dependency for explicit mode: NAME=HOST:PORT[@LISTEN_PORT]. doppel listens locally (the app gets the
    /// address in $DOPPEL_DEP_<NAME>) and records or mocks the traffic. Implies --no-sandbox.
    /// Example: --dep rates=127.0.0.1:9000@19000
    #[arg(long = "dep", value_name = "NAME=HOST:PORT[@LISTEN]")]
    deps: Vec<String>,
    /// Seconds the app gets to exit after SIGTERM before SIGKILL.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
    /// Do not decrypt the app's TLS connections (they are recorded as opaque bytes).
    #[arg(long)]
    no_tls: bool,
    /// A .proto file describing the app's gRPC services (repeatable): messages are shown with field names.
    /// Without one they are shown by field number. Example: --proto protos/shop.proto
    #[arg(long = "proto", value_name = "FILE")]
    protos: Vec<PathBuf>,
    /// A directory where imports of the --proto files are found (repeatable). Example: --proto-path protos
    #[arg(long = "proto-path", value_name = "DIR")]
    proto_paths: Vec<PathBuf>,
}

#[derive(Args, Debug)]
struct RecordArgs {
    #[command(flatten)]
    path: PathArgs,
    /// Name of the new test set (default: the next free test-set-N). Never overwrites.
    #[arg(long)]
    test_set: Option<String>,
    /// App port to expose and record: PORT or EXPOSED:APP. Default: every port the app listens on.
    /// Example: --port 8080 --port 9090:9000
    #[arg(long = "port", value_name = "PORT|EXPOSED:APP")]
    ports: Vec<String>,
    /// DNS server to forward the app's queries to while recording (default: first nameserver of /etc/resolv.conf).
    #[arg(long, value_name = "IP:PORT")]
    dns_upstream: Option<SocketAddr>,
    /// Also trust this CA (PEM) for upstream TLS servers (private or staging CAs). Repeatable.
    /// Example: --upstream-ca staging-ca.pem
    #[arg(long, value_name = "FILE")]
    upstream_ca: Vec<PathBuf>,
    /// Do not verify upstream TLS certificates while recording.
    #[arg(long)]
    upstream_insecure: bool,
    /// The certificate (PEM chain) doppel presents to clients that speak TLS to the app's ports: use the app's
    /// own, so its clients keep trusting it. Without it they get one from doppel's CA (`doppel ca`).
    /// Example: --ingress-cert server.pem --ingress-key server-key.pem
    #[arg(long, value_name = "FILE", requires = "ingress_key")]
    ingress_cert: Option<PathBuf>,
    /// The private key (PEM) of --ingress-cert.
    #[arg(long, value_name = "FILE", requires = "ingress_cert")]
    ingress_key: Option<PathBuf>,
    /// Do not template values that a response produced and a later request used (ids, tokens, cookies).
    /// Also `chain: false` in doppel.yaml.
    /// Example: --no-chain
    #[arg(long)]
    no_chain: bool,
    /// Do not flag volatile-looking response values (timestamps, UUIDs, tokens) in the test files.
    /// Also `volatile: false` in doppel.yaml.
    /// Example: --no-volatile
    #[arg(long)]
    no_volatile: bool,
    /// Tag every recorded test (repeatable), for `doppel test --tag`.
    /// Example: --tag smoke
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    #[command(flatten)]
    capture: CaptureArgs,
    /// The command that runs the app.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct TestArgs {
    #[command(flatten)]
    path: PathArgs,
    /// Test set to run (repeatable; default: all).
    #[arg(long = "test-set", value_name = "NAME")]
    test_sets: Vec<String>,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Where the JSON report of the run goes (default: <path>/reports).
    #[arg(long, value_name = "DIR")]
    report_dir: Option<PathBuf>,
    /// Replay against a running deployment (no sandbox, no mocks). Example: --target https://staging:8443
    #[arg(long, value_name = "URL")]
    target: Option<String>,
    #[command(flatten)]
    target_tls: TargetTlsArgs,
    /// Wait until this path (or http://localhost:PORT/path) answers below 500 before testing.
    /// Example: --ready-url /health
    #[arg(long, value_name = "PATH|URL")]
    ready_url: Option<String>,
    /// Seconds to wait for the app to open its ports.
    #[arg(long, default_value_t = 30.0)]
    ready_timeout: f64,
    /// Seconds to wait for each response.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Show the app's own output while testing (by default only its last lines are shown, on errors).
    #[arg(long)]
    show_app_output: bool,
    /// App port in explicit mode when it cannot be detected: PORT.
    #[arg(long = "port", value_name = "PORT")]
    ports: Vec<u16>,
    /// Run only the tests whose name matches this glob (`*`, `?`; `SET/NAME` to name the set too).
    /// Repeatable. Tests whose responses feed a selected test's chain templates run too.
    /// Example: --test 'get-api-users-*'
    #[arg(long = "test", value_name = "NAME|GLOB")]
    tests: Vec<String>,
    /// Run only the tests with this tag (`tags:` in the test file; `doppel record --tag`). Repeatable.
    /// Example: --tag smoke
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Send chain templates with their recorded values instead of the values the app produces in this run.
    /// Also `chain: false` in doppel.yaml.
    /// Example: --no-chain
    #[arg(long)]
    no_chain: bool,
    /// Run the app with its clock at each test's recorded time (libfaketime, preloaded; dynamically linked
    /// apps only). Example: --freeze-time
    #[arg(long)]
    freeze_time: bool,
    /// Replay each test set --runs times against this build and write the fields that differ between runs
    /// into the test files as learned noise rules (`reason: learned`), then report the last run.
    /// Example: --learn-noise --runs 3
    #[arg(long)]
    learn_noise: bool,
    /// How many runs --learn-noise compares.
    /// Example: --runs 5
    #[arg(long, default_value_t = 3, value_name = "N")]
    runs: usize,
    /// With --target: a second deployment of the same version. Fields that differ between the two answers
    /// are noise for that test. Example: --target http://blue:8080 --secondary http://green:8080
    #[arg(long, value_name = "URL", requires = "target")]
    secondary: Option<String>,
    /// Replay the requests against the app with its REAL dependencies (record mode) and refresh the
    /// expected responses and mocks; shows the changes and asks before writing.
    /// Example: --rerecord --yes
    #[arg(long)]
    rerecord: bool,
    /// With --rerecord: write without asking.
    #[arg(long, requires = "rerecord")]
    yes: bool,
    /// A recorded write that a test may leave unmade, reported as tolerated instead of failing the test
    /// (repeatable): `*`, a protocol (`redis`), a destination (`db:5432`), or the start of the statement
    /// or request. Also `allow_missing_writes:` in doppel.yaml.
    /// Example: --allow-missing-write 'INSERT INTO audit_log'
    #[arg(long = "allow-missing-write", value_name = "PATTERN")]
    allow_missing_writes: Vec<String>,
    #[command(flatten)]
    capture: CaptureArgs,
    /// The command that runs the app (not needed with --target).
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct LoadArgs {
    #[command(flatten)]
    path: PathArgs,
    /// Test set to send (repeatable; default: all, one after the other).
    #[arg(long = "test-set", value_name = "NAME")]
    test_sets: Vec<String>,
    /// The running deployment to load. Example: --target http://staging:8080
    #[arg(long, value_name = "URL")]
    target: String,
    #[command(flatten)]
    target_tls: TargetTlsArgs,
    /// Replay the recorded timing this many times faster, keeping the real mix and burstiness (the default
    /// is 1x). Example: --speed 2x
    #[arg(long, value_name = "FACTOR", conflicts_with_all = ["rate", "ramp"])]
    speed: Option<String>,
    /// A fixed arrival rate; requests are taken from the recording in turn. Example: --rate 500/s
    #[arg(long, value_name = "N/s", conflicts_with = "ramp")]
    rate: Option<String>,
    /// An arrival rate growing linearly, then held at its end value until --duration.
    /// Example: --ramp '10/s..1000/s over 60s'
    #[arg(long, value_name = "FROM..TO over DURATION", num_args = 1..=3)]
    ramp: Option<Vec<String>>,
    /// How long to send, looping through the recording (default: one pass through the recorded requests; a
    /// ramp: its length). Example: --duration 60s
    #[arg(long, value_name = "DURATION")]
    duration: Option<String>,
    /// Keep-alive connections to the target; each carries one request at a time. Example: --connections 128
    #[arg(long, default_value_t = 64, value_name = "N")]
    connections: usize,
    /// Requests allowed to be due and unfinished (waiting for a free connection or on the wire). A request
    /// that comes due beyond it is not sent and counts as an error of class `dropped`. Example: --max-inflight 500
    #[arg(long, default_value_t = 1024, value_name = "N")]
    max_inflight: usize,
    /// How long each response may take once sent; later ones count as errors of class `timeout`.
    /// Example: --timeout 2s
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    timeout: String,
    /// Compare every response with its recording (noise rules apply); differences count as errors of class
    /// `mismatch`.
    #[arg(long)]
    check: bool,
    /// Write the report as JSON. Example: --json load.json
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the report as a self-contained HTML page with plots. Example: --html load.html
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Fail the run (exit 1) when this holds: p50, p90, p99, p999, max or mean above a duration, errors
    /// above a count or a percentage, rps below a rate. Repeatable.
    /// Example: --fail-if 'p99>200ms' --fail-if 'errors>1%'
    #[arg(long = "fail-if", value_name = "EXPR")]
    fail_if: Vec<String>,
    /// Send chained values (`{{ chain.* }}` in the tests) as recorded instead of the ones the target
    /// produced during the run.
    #[arg(long)]
    no_chain: bool,
}

#[derive(Args, Debug)]
struct DiffArgs {
    #[command(flatten)]
    path: PathArgs,
    /// Test set to send (repeatable; default: all).
    #[arg(long = "test-set", value_name = "NAME")]
    test_sets: Vec<String>,
    /// The deployment running the trusted version. Example: --primary http://prod-copy:8080
    #[arg(long, value_name = "URL")]
    primary: String,
    #[command(flatten)]
    target_tls: TargetTlsArgs,
    /// The deployment running the new build. Example: --candidate http://staging:8080
    #[arg(long, value_name = "URL")]
    candidate: String,
    /// A second copy of the primary: fields that differ between primary and secondary are noise.
    /// Example: --secondary http://prod-copy-2:8080
    #[arg(long, value_name = "URL")]
    secondary: Option<String>,
    /// Also send POST, PUT, PATCH and DELETE requests (skipped by default: they change state).
    #[arg(long)]
    allow_writes: bool,
    /// Numbers that differ by at most this fraction of the larger one are noise. Example: --relative-threshold 0.1
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    relative_threshold: f64,
    /// Numbers that differ by at most this much are noise. Example: --absolute-threshold 0.5
    #[arg(long, default_value_t = 0.0, value_name = "AMOUNT")]
    absolute_threshold: f64,
    /// How long each response may take. Example: --timeout 5s
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    timeout: String,
    /// Write the report as JSON. Example: --json diff.json
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the report as an HTML page with examples side by side. Example: --html diff.html
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct DedupArgs {
    #[command(flatten)]
    path: PathArgs,
    /// Test set to deduplicate (repeatable; default: all).
    /// Example: --test-set test-set-2
    #[arg(long = "test-set", value_name = "NAME")]
    test_sets: Vec<String>,
    /// How many tests of each shape to keep (the first ones recorded).
    /// Example: --keep 3
    #[arg(long, default_value_t = 1, value_name = "N")]
    keep: usize,
    /// Show the groups and what would go, remove nothing.
    /// Example: --dry-run
    #[arg(long)]
    dry_run: bool,
}

fn secs(s: f64, flag: &str) -> Result<Duration> {
    if s.is_finite() && s >= 0.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(Error::input(format!("{flag} must be a number of seconds")))
    }
}

fn store_for(path: &Option<PathBuf>, config: &Config) -> Store {
    Store::new(
        path.clone().or_else(|| config.path.clone().map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("doppel")),
    )
}

/// The store with the project's privacy rules and this machine's seal key (`recording`: created if none).
fn private_store(path: &Option<PathBuf>, config: &Config, recording: bool) -> Result<Store> {
    let privacy = crate::privacy::Privacy::load(&config.privacy, recording)?;
    Ok(store_for(path, config).with_privacy(Arc::new(privacy)))
}

/// The capture mechanism: explicit mode when asked for, else the sandbox (with the TLS trust mounts).
fn capture_of(explicit: Option<Explicit>, tls: &Option<TlsSetup>) -> Box<dyn Capture> {
    match explicit {
        Some(e) => Box::new(e),
        None => Box::new(TlsSetup::sandbox(tls)),
    }
}

fn explicit_of(c: &CaptureArgs, ports: Vec<u16>) -> Result<Option<Explicit>> {
    if !c.no_sandbox && c.deps.is_empty() {
        return Ok(None);
    }
    let deps = c.deps.iter().map(|d| DepSpec::parse(d)).collect::<Result<Vec<_>>>()?;
    Ok(Some(Explicit { deps, app_ports: ports }))
}

pub fn main() -> i32 {
    // The sandbox helper must start before any thread exists: unshare(CLONE_NEWUSER) refuses threaded callers.
    if std::env::args().nth(1).as_deref() == Some("__sandbox") {
        crate::capture::sandbox::helper::main();
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("doppel: error: environment error: cannot start the async runtime: {e}");
            return crate::error::EXIT_CANNOT_RUN;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{} {}", console::style("doppel: error:").red().bold(), e.labelled());
            e.exit_code()
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DOPPEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

async fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::DemoApp => return crate::demo::app::main().await,
        Command::DemoDeps => return crate::demo::deps::main().await,
        Command::HttpTarget { port, forward, tls } => {
            let tls = tls.and_then(|v| Some((v.first()?.clone(), v.get(1)?.clone())));
            return crate::load::target_server::main(port, forward, tls).await;
        }
        Command::Demo(args) => return crate::demo::run(args).await,
        _ => {}
    }
    let config = Store::load_config(&cli.config)?;
    match cli.command {
        Command::Record(args) => cmd_record(args, config, cli.quiet).await,
        Command::Test(args) => cmd_test(args, config, cli.quiet).await,
        Command::List(args) => cmd_list(args, config),
        Command::Dedup(args) => cmd_dedup(args, config),
        Command::Ca => cmd_ca(),
        Command::Scan(args) => cmd_scan(args, config),
        Command::Load(args) => cmd_load(args, config, cli.quiet).await,
        Command::Diff(args) => cmd_diff(args, config, cli.quiet).await,
        Command::Demo(_) | Command::DemoApp | Command::DemoDeps | Command::HttpTarget { .. } => Ok(0),
    }
}

/// Loads the gRPC schema from --proto/--proto-path and doppel.yaml (`proto`, `proto_path`).
fn load_protos(c: &CaptureArgs, config: &Config) -> Result<()> {
    let files: Vec<PathBuf> = c.protos.iter().cloned().chain(config.proto.iter().map(PathBuf::from)).collect();
    let dirs: Vec<PathBuf> = c.proto_paths.iter().cloned().chain(config.proto_path.iter().map(PathBuf::from)).collect();
    crate::protocols::http2::grpc::load_schema(&files, &dirs)
}

async fn cmd_record(args: RecordArgs, config: Config, quiet: bool) -> Result<i32> {
    load_protos(&args.capture, &config)?;
    let ports = args.ports.iter().map(|p| PortMap::parse(p)).collect::<Result<Vec<_>>>()?;
    let explicit = explicit_of(&args.capture, ports.iter().map(|p| p.app).collect())?;
    if explicit.is_some()
        && let Some(p) = ports.iter().find(|p| p.exposed == p.app)
    {
        return Err(Error::input(format!(
            "--port {}: without the sandbox the app and doppel share this machine's ports; expose the app on \
                 another port, e.g. --port {}:{}",
            p.app,
            p.app.wrapping_add(10000),
            p.app
        )));
    }
    let tls = TlsSetup::new(args.capture.no_tls)?;
    let interceptor = match &tls {
        Some(t) => {
            let trust =
                crate::tls::UpstreamTrust { extra_roots: args.upstream_ca.clone(), insecure: args.upstream_insecure };
            Some(Arc::new(crate::tls::Interceptor::new(t.ca.clone(), &trust)?))
        }
        None => None,
    };
    let identity = match (&args.ingress_cert, &args.ingress_key) {
        (Some(cert), Some(key)) => Some(crate::tls::Identity::load(cert, key)?),
        _ => None,
    };
    if identity.is_some() && tls.is_none() {
        return Err(Error::input("--ingress-cert decrypts the app's inbound TLS, which --no-tls turns off"));
    }
    let ingress_tls = tls.as_ref().map(|t| Arc::new(crate::tls::Interceptor::for_app(t.ca.clone(), identity)));
    let store = private_store(&args.path.path, &config, true)?;
    let privacy = store.privacy().clone();
    let opts = RecordOptions {
        store,
        test_set: args.test_set,
        ports,
        command: AppCommand { argv: args.command, env: TlsSetup::env(&tls), quiet: false },
        grace: secs(args.capture.grace, "--grace")?,
        dns_upstream: args.dns_upstream,
        quiet,
        stop: None,
        tls: interceptor,
        ingress_tls,
        annotate: record::annotate::Annotate {
            chain: !args.no_chain && config.chain.unwrap_or(true),
            volatile: !args.no_volatile && config.volatile.unwrap_or(true),
            tags: args.tags,
        },
    };
    let capture = capture_of(explicit, &tls);
    let outcome = record::record(capture.as_ref(), opts).await?;
    outcome.print_summary();
    print_privacy(&privacy);
    if outcome.summary.failed > 0 {
        return Ok(2);
    }
    if outcome.app_exited_by_itself
        && let Some(AppExit::Code(c)) = outcome.app_exit
        && c != 0
    {
        eprintln!("doppel: the app exited by itself with code {c}");
        return Ok(2);
    }
    Ok(0)
}

async fn cmd_test(args: TestArgs, mut config: Config, quiet: bool) -> Result<i32> {
    load_protos(&args.capture, &config)?;
    config.allow_missing_writes.extend(args.allow_missing_writes.iter().cloned());
    let trust = args.target_tls.trust();
    let target = args.target.as_deref().map(|u| Target::parse("--target", u, &trust)).transpose()?;
    if target.is_none() && args.command.is_empty() {
        return Err(Error::input("give the command that runs the app after --, or --target URL"));
    }
    if target.is_some() && args.freeze_time {
        return Err(Error::input(
            "--freeze-time works on an app doppel starts (give its command after --), not --target",
        ));
    }
    if target.is_some() && args.rerecord {
        return Err(Error::input("--rerecord starts the app itself (give its command after --), not --target"));
    }
    if args.rerecord && args.freeze_time {
        return Err(Error::input("--rerecord records with the real clock and real dependencies; drop --freeze-time"));
    }
    if args.rerecord && args.learn_noise {
        return Err(Error::input("--rerecord and --learn-noise do not go together; run them one after the other"));
    }
    if args.learn_noise && args.runs < 2 {
        return Err(Error::input("--runs must be at least 2: noise is what differs between runs"));
    }
    let secondary = args.secondary.as_deref().map(|u| Target::parse("--secondary", u, &trust)).transpose()?;
    let chain = !args.no_chain && config.chain.unwrap_or(true);
    let explicit = explicit_of(&args.capture, args.ports.clone())?;
    let tls = if target.is_some() { None } else { TlsSetup::new(args.capture.no_tls)? };
    let opts = ReplayOptions {
        store: private_store(&args.path.path, &config, args.rerecord)?,
        sets: args.test_sets,
        command: (!args.command.is_empty()).then(|| AppCommand {
            argv: args.command,
            env: TlsSetup::env(&tls),
            quiet: !args.show_app_output,
        }),
        target,
        ready_url: args.ready_url,
        ready_timeout: secs(args.ready_timeout, "--ready-timeout")?,
        request_timeout: secs(args.timeout, "--timeout")?,
        grace: secs(args.capture.grace, "--grace")?,
        config,
        junit: args.junit,
        report_dir: args.report_dir,
        quiet,
        ca: tls.as_ref().map(|t| t.ca.clone()),
        selection: replay::Selection { tests: args.tests, tags: args.tags },
        chain,
        freeze_time: args.freeze_time,
        learn_runs: args.learn_noise.then_some(args.runs),
        secondary,
    };
    let capture = capture_of(explicit, &tls);
    if args.rerecord {
        let rerecord = replay::rerecord::Rerecord { yes: args.yes, tls: tls.as_ref().map(|t| t.ca.clone()) };
        return replay::rerecord::run(capture.as_ref(), &opts, &rerecord).await;
    }
    let capture = if opts.target.is_some() { None } else { Some(capture.as_ref()) };
    let report = replay::run(capture, &opts).await?;
    println!("{}", report::summary_line(&report));
    Ok(if report.failed > 0 { 1 } else { 0 })
}

fn duration_flag(text: &str, flag: &str) -> Result<Duration> {
    crate::load::parse_duration(text).map_err(|e| Error::input(format!("{flag} {e}")))
}

async fn cmd_load(args: LoadArgs, config: Config, quiet: bool) -> Result<i32> {
    use crate::load::{Gate, LoadOptions, Pace};
    let pace = match (&args.speed, &args.rate, &args.ramp) {
        (Some(s), _, _) => Pace::parse_speed(s),
        (_, Some(r), _) => Pace::parse_rate(r),
        (_, _, Some(words)) => Pace::parse_ramp(&words.join(" ")),
        _ => Ok(Pace::Speed(1.0)),
    }?;
    let gates = args.fail_if.iter().map(|g| Gate::parse(g)).collect::<Result<Vec<_>>>()?;
    let timeout = duration_flag(&args.timeout, "--timeout")?;
    if timeout.is_zero() {
        return Err(Error::input("--timeout must be above 0"));
    }
    let opts = LoadOptions {
        store: private_store(&args.path.path, &config, false)?,
        sets: args.test_sets,
        target: Target::parse("--target", &args.target, &args.target_tls.trust())?,
        pace,
        duration: args.duration.as_deref().map(|d| duration_flag(d, "--duration")).transpose()?,
        connections: args.connections,
        max_inflight: args.max_inflight,
        timeout,
        check: args.check,
        json: args.json,
        html: args.html,
        gates,
        chain: !args.no_chain && config.chain.unwrap_or(true),
        config,
        quiet,
    };
    crate::load::run(opts).await
}

async fn cmd_diff(args: DiffArgs, config: Config, quiet: bool) -> Result<i32> {
    let trust = args.target_tls.trust();
    let target = |flag: &str, url: &str| Target::parse(flag, url, &trust);
    let threshold = |flag: &str, v: f64| {
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(Error::input(format!("{flag} must be a number of 0 or more")))
        }
    };
    let opts = crate::shadow::DiffOptions {
        store: private_store(&args.path.path, &config, false)?,
        sets: args.test_sets,
        primary: target("--primary", &args.primary)?,
        candidate: target("--candidate", &args.candidate)?,
        secondary: args.secondary.as_deref().map(|s| target("--secondary", s)).transpose()?,
        allow_writes: args.allow_writes,
        relative_threshold: threshold("--relative-threshold", args.relative_threshold)?,
        absolute_threshold: threshold("--absolute-threshold", args.absolute_threshold)?,
        timeout: duration_flag(&args.timeout, "--timeout")?,
        json: args.json,
        html: args.html,
        config,
        quiet,
    };
    crate::shadow::run(opts).await
}

/// doppel's CA and the trust material the app gets (bundle mounts and environment).
struct TlsSetup {
    ca: Arc<Ca>,
    trust: Trust,
}

impl TlsSetup {
    fn new(disabled: bool) -> Result<Option<TlsSetup>> {
        if disabled {
            return Ok(None);
        }
        let ca = Arc::new(Ca::load_or_create(&Ca::default_dir())?);
        let trust = crate::tls::trust::prepare(&ca, &std::env::temp_dir())?;
        Ok(Some(TlsSetup { ca, trust }))
    }

    fn env(tls: &Option<TlsSetup>) -> Vec<(String, String)> {
        tls.as_ref().map(|t| t.trust.env.clone()).unwrap_or_default()
    }

    fn sandbox(tls: &Option<TlsSetup>) -> Sandbox {
        Sandbox { mounts: tls.as_ref().map(|t| t.trust.mounts.clone()).unwrap_or_default() }
    }
}

fn cmd_ca() -> Result<i32> {
    let dir = Ca::default_dir();
    let ca = Ca::load_or_create(&dir)?;
    println!("doppel CA certificate: {}", ca.cert_path().display());
    println!("private key:           {} (mode 0600)", ca.dir().join("ca-key.pem").display());
    println!("SHA-256 fingerprint:   {}", ca.fingerprint());
    println!("(set DOPPEL_CA_DIR to keep it elsewhere; apps under doppel trust it automatically)");
    Ok(0)
}

fn cmd_scan(args: ScanArgs, config: Config) -> Result<i32> {
    let privacy = crate::privacy::Privacy::load(
        &crate::privacy::PrivacyConfig { enabled: Some(true), ..config.privacy.clone() },
        false,
    )?;
    let paths = if args.paths.is_empty() { vec![store_for(&None, &config).root().to_path_buf()] } else { args.paths };
    let (mut found, mut files) = (0, 0);
    for path in &paths {
        let (findings, n) = crate::privacy::scan::scan(path, &privacy)?;
        files += n;
        for f in &findings {
            println!("{}:{}: {} in clear ({})", f.file.display(), f.line, f.class, f.hint);
        }
        found += findings.len();
    }
    if found > 0 {
        println!("doppel scan: {found} value(s) in clear in {files} file(s); re-record with privacy on, or seal them");
        return Ok(1);
    }
    println!("doppel scan: {files} file(s), no credential in clear");
    Ok(0)
}

/// What the recording sealed and pseudonymized, and where a key made now is.
fn print_privacy(privacy: &crate::privacy::Privacy) {
    if !privacy.is_on() {
        println!("doppel: privacy is off (doppel.yaml `privacy: {{enabled: false}}`): values were written in clear");
        return;
    }
    let tally = privacy.tally();
    if !tally.is_empty() {
        println!("doppel: {} (`!sealed` in the files; `doppel scan` checks)", tally.line());
    }
    if let Some(note) = privacy.key_note() {
        println!("doppel: {note}");
    }
}

fn cmd_dedup(args: DedupArgs, config: Config) -> Result<i32> {
    if args.keep == 0 {
        return Err(Error::input("--keep must be at least 1"));
    }
    let store = store_for(&args.path.path, &config);
    let names = if args.test_sets.is_empty() { store.list_sets()? } else { args.test_sets };
    let mut removed = 0;
    for name in names {
        let set = store.load_set(&name)?;
        let groups = crate::dedup::plan(&set, args.keep);
        println!("{name}: {} tests in {} groups of the same shape", set.tests.len(), groups.len());
        for g in groups.iter().filter(|g| g.kept.len() + g.kept_for_chain.len() + g.removed.len() > 1) {
            let total = g.kept.len() + g.kept_for_chain.len() + g.removed.len();
            let mut line = format!("  {} ({total} tests): keep {}", g.label, g.kept.join(", "));
            if !g.kept_for_chain.is_empty() {
                line.push_str(&format!("; keep {} (later tests use their values)", g.kept_for_chain.join(", ")));
            }
            if !g.removed.is_empty() {
                let names: Vec<&str> = g.removed.iter().map(|(n, _)| n.as_str()).collect();
                line.push_str(&format!(
                    "; {} {}",
                    if args.dry_run { "would remove" } else { "remove" },
                    names.join(", ")
                ));
            }
            println!("{line}");
        }
        removed +=
            if args.dry_run { groups.iter().map(|g| g.removed.len()).sum() } else { crate::dedup::apply(&groups)? };
    }
    if args.dry_run {
        println!("dry run: would remove {removed} test file(s); mocks are never removed");
    } else {
        println!("removed {removed} test file(s); mocks kept");
    }
    Ok(0)
}

fn cmd_list(args: PathArgs, config: Config) -> Result<i32> {
    let store = store_for(&args.path, &config);
    let sets = store.list_sets()?;
    if sets.is_empty() {
        println!("no test sets in {}", store.root().display());
    }
    for name in sets {
        let set = store.load_set(&name)?;
        let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
        for m in &set.mocks {
            *kinds.entry(m.kind.as_str()).or_default() += 1;
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        println!(
            "{name}: {} tests, {} mocks ({}) — recorded {} from `{}`",
            set.tests.len(),
            set.mocks.len(),
            kinds.join(", "),
            set.meta.created_at,
            set.meta.command.join(" ")
        );
        for w in &set.warnings {
            eprintln!("  note: {w}");
        }
    }
    Ok(0)
}
