//! `doppel demo`: the whole job on a bundled service, self-contained. A demo orders service (this binary,
//! `__demo-app`) calls an HTTP rates API and a TCP ledger; doppel records it while driving some traffic,
//! shuts the dependencies down, replays the recording (green), then replays against a "new build" with a
//! rounding bug and shows the field that regressed.

pub(crate) mod app;
pub(crate) mod deps;

use std::sync::Arc;
use std::time::Duration;

use console::style;
use tokio::net::{TcpListener, TcpStream};

use crate::capture::explicit::{DepSpec, Explicit};
use crate::capture::sandbox::Sandbox;
use crate::capture::{AppCommand, Capture};
use crate::error::{Error, Kind, Result};
use crate::protocols::http::client;
use crate::protocols::http::{Header, HttpRequest};
use crate::record::{self, PortMap, RecordOptions};
use crate::replay::{self, ReplayOptions};
use crate::report::RunReport;
use crate::store::{Config, SpillBuffer, Store};

async fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await.map_err(|e| Error::env(format!("no free port: {e}")))?;
    l.local_addr().map(|a| a.port()).map_err(|e| Error::env(e.to_string()))
}

fn request(method: &str, target: &str, port: u16, body: Option<&str>) -> HttpRequest {
    let mut headers = vec![Header::new("Host", format!("localhost:{port}")), Header::new("User-Agent", "doppel-demo")];
    if let Some(b) = body {
        headers.push(Header::new("Content-Type", "application/json"));
        headers.push(Header::new("Content-Length", b.len().to_string()));
    }
    HttpRequest {
        method: method.into(),
        target: target.into(),
        version: "HTTP/1.1".into(),
        headers,
        body: body.and_then(|b| crate::store::Body::from_bytes(b.as_bytes())),
        messages: vec![],
        trailers: vec![],
    }
}

async fn call(port: u16, req: &HttpRequest) -> std::result::Result<(u16, String), String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let sink = SpillBuffer::new(std::env::temp_dir(), Arc::new(0.into()));
    let resp = client::exchange(&mut conn, req, std::path::Path::new("."), sink, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let body = resp.body.bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
    Ok((resp.head.status, body))
}

struct Setup {
    rates: String,
    ledger: String,
    app_port: u16,
    exposed: u16,
    explicit: Option<Explicit>,
}

impl Setup {
    fn command(&self, changed: bool) -> Result<AppCommand> {
        let exe = std::env::current_exe().map_err(|e| Error::env(format!("cannot find doppel's own binary: {e}")))?;
        let (rates, ledger) = match &self.explicit {
            Some(e) => (format!("127.0.0.1:{}", e.deps[0].listen), format!("127.0.0.1:{}", e.deps[1].listen)),
            None => (self.rates.clone(), self.ledger.clone()),
        };
        let mut env = vec![
            ("DEMO_APP_PORT".to_string(), self.app_port.to_string()),
            ("DEMO_RATES_ADDR".to_string(), rates),
            ("DEMO_LEDGER_ADDR".to_string(), ledger),
        ];
        if changed {
            env.push(("DEMO_VARIANT".into(), "changed".into()));
        }
        Ok(AppCommand { argv: vec![exe.display().to_string(), "__demo-app".into()], env, quiet: true })
    }
}

/// `doppel demo`'s options.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Keep the demo's recordings in this directory (default: a temporary directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub keep: Option<std::path::PathBuf>,
    /// Use explicit mode instead of the sandbox.
    #[arg(long)]
    pub no_sandbox: bool,
}

pub async fn run(args: DemoArgs) -> Result<i32> {
    let dir = match &args.keep {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("doppel-demo-{}", std::process::id())),
    };
    // A kept demo recording can be replayed later, so it is sealed with this machine's key; a thrown-away one
    // with a key of its own.
    let privacy = match &args.keep {
        Some(_) => crate::privacy::Privacy::load(&Default::default(), true)?,
        None => crate::privacy::Privacy::ephemeral()?,
    };
    let store = Store::new(dir.join("doppel")).with_privacy(std::sync::Arc::new(privacy));
    let rates_l = TcpListener::bind("127.0.0.1:0").await.map_err(|e| Error::env(e.to_string()))?;
    let ledger_l = TcpListener::bind("127.0.0.1:0").await.map_err(|e| Error::env(e.to_string()))?;
    let rates = rates_l.local_addr().map_err(|e| Error::env(e.to_string()))?.to_string();
    let ledger = ledger_l.local_addr().map_err(|e| Error::env(e.to_string()))?.to_string();
    let deps = [tokio::spawn(deps::serve_rates(rates_l)), tokio::spawn(deps::serve_ledger(ledger_l))];
    let app_port = free_port().await?;
    let mut setup = Setup { rates: rates.clone(), ledger: ledger.clone(), app_port, exposed: app_port, explicit: None };

    println!("{}", style("doppel demo").bold().cyan());
    println!(
        "  demo service: an orders API (`doppel __demo-app`) calling a rates API (HTTP, {rates}) and a ledger (TCP, {ledger})"
    );
    println!("\n{} record the service while a client sends it traffic", style("1.").bold());
    let recorded = if args.no_sandbox {
        None
    } else {
        match record_step(&Sandbox::default(), &setup, &store).await {
            Err(e) if e.kind == Kind::Environment => {
                println!(
                    "  {} the sandbox is not available here ({}); using explicit mode",
                    style("note:").yellow(),
                    e.message.lines().next().unwrap_or("")
                );
                None
            }
            other => Some(other?),
        }
    };
    let recorded = match recorded {
        Some(r) => r,
        None => {
            let listen = [free_port().await?, free_port().await?];
            setup.explicit = Some(Explicit {
                deps: vec![
                    DepSpec { name: "rates".into(), target: rates.clone(), listen: listen[0] },
                    DepSpec { name: "ledger".into(), target: ledger.clone(), listen: listen[1] },
                ],
                app_ports: vec![app_port],
            });
            setup.exposed = free_port().await?;
            let explicit = setup.explicit.clone().unwrap_or_default();
            record_step(&explicit, &setup, &store).await?
        }
    };
    recorded.print_summary();

    println!("\n{} shut the real dependencies down", style("2.").bold());
    for d in deps {
        d.abort();
        let _ = d.await;
    }
    let down = TcpStream::connect(&rates).await.is_err() && TcpStream::connect(&ledger).await.is_err();
    println!("  rates API and ledger are {}", if down { "down (connections refused)" } else { "STILL UP" });

    println!("\n{} replay the recording against the same build, every dependency mocked", style("3.").bold());
    let green = replay_step(&setup, &store, false).await?;
    println!("  {}", crate::report::summary_line(&green));

    println!("\n{} replay against a new build that rounds currency down instead of to nearest", style("4.").bold());
    let red = replay_step(&setup, &store, true).await?;
    println!("  {}", crate::report::summary_line(&red));

    let caught: Vec<String> = red
        .sets
        .iter()
        .flat_map(|s| &s.results)
        .flat_map(|r| r.differences.iter().map(move |d| format!("{} {}", r.name, d.location)))
        .collect();
    let ok = down && green.failed == 0 && green.passed > 0 && red.failed > 0;
    println!();
    if ok {
        println!(
            "{} recorded {} tests, replayed them green with the dependencies down, and caught the regression: {}",
            style("demo OK:").green().bold(),
            green.passed,
            caught.join(", ")
        );
        println!("  the recording is readable YAML: {}", store.root().display());
    } else {
        println!("{} the demo did not go as expected (see above)", style("demo FAILED:").red().bold());
    }
    if args.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(if ok { 0 } else { 1 })
}

async fn record_step<C: Capture>(capture: &C, setup: &Setup, store: &Store) -> Result<record::RecordOutcome> {
    let stop = Arc::new(tokio::sync::Notify::new());
    let opts = RecordOptions {
        store: store.clone(),
        test_set: None,
        ports: vec![PortMap { exposed: setup.exposed, app: setup.app_port }],
        command: setup.command(false)?,
        grace: Duration::from_secs(3),
        dns_upstream: None,
        quiet: true,
        stop: Some(stop.clone()),
        tls: None,
        ingress_tls: None,
        annotate: Default::default(),
    };
    let exposed = setup.exposed;
    let recording = record::record(capture, opts);
    let traffic = async {
        let health = request("GET", "/health", exposed, None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while call(exposed, &health).await.map(|(s, _)| s) != Ok(200) {
            if tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for req in [
            request("GET", "/quote?amount=100&currency=EUR", exposed, None),
            request("GET", "/quote?amount=12.34&currency=GBP", exposed, None),
            request("POST", "/orders", exposed, Some(r#"{"item":"widget","qty":3}"#)),
            request("GET", "/quote?amount=5&currency=XYZ", exposed, None),
        ] {
            match call(exposed, &req).await {
                Ok((status, body)) => println!("  {} {} -> {status} {}", req.method, req.target, body.trim()),
                Err(e) => println!("  {} {} -> error: {e}", req.method, req.target),
            }
        }
        stop.notify_one();
    };
    let (outcome, ()) = tokio::join!(recording, traffic);
    outcome
}

async fn replay_step(setup: &Setup, store: &Store, changed: bool) -> Result<RunReport> {
    let opts = ReplayOptions {
        store: store.clone(),
        sets: vec![],
        command: Some(setup.command(changed)?),
        target: None,
        ready_url: None,
        ready_timeout: Duration::from_secs(20),
        request_timeout: Duration::from_secs(10),
        grace: Duration::from_secs(3),
        config: Config::default(),
        junit: None,
        report_dir: Some(std::env::temp_dir().join(format!("doppel-demo-reports-{}", std::process::id()))),
        quiet: false,
        ca: None,
        selection: Default::default(),
        chain: true,
        freeze_time: false,
        learn_runs: None,
        secondary: None,
    };
    let r = match &setup.explicit {
        Some(e) => replay::run(Some(e), &opts).await,
        None => replay::run(Some(&Sandbox::default()), &opts).await,
    };
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("doppel-demo-reports-{}", std::process::id())));
    r
}
