//! A Python service on its own database of the local PostgreSQL (127.0.0.1:5432, trust auth), recorded and
//! replayed by doppel: the scaffolding of the suites that record example apps under `examples/<name>/`.

use std::path::PathBuf;
use std::process::Command;

use super::*;

const PSQL: [&str; 6] = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"];

pub fn psql(db: &str, args: &[&str]) -> Ran {
    run(Command::new("psql").args(PSQL).args(["-U", "postgres", "-d", db]).args(args))
}

pub struct PgService {
    pub dir: tempfile::TempDir,
    pub db: String,
    pub port: u16,
    /// `examples/<name>/app.py` is the service, `examples/<name>/schema.sql` its schema.
    example: &'static str,
    /// Environment of every run of the app (record and replay).
    pub env: Vec<(String, String)>,
}

impl PgService {
    /// A fresh database `doppel_<example>_<random>` holding the example's schema.
    pub fn new(example: &'static str) -> PgService {
        let db = format!("doppel_{example}_{}_{}", std::process::id(), free_port());
        let r = psql("test", &["-c", &format!("CREATE DATABASE {db}")]);
        assert_eq!(r.code, 0, "{r:?}");
        let schema = repo().join(format!("examples/{example}/schema.sql"));
        let r = psql(&db, &["-f", &schema.display().to_string()]);
        assert_eq!(r.code, 0, "{r:?}");
        PgService { dir: tempfile::tempdir().unwrap(), db, port: free_port(), example, env: Vec::new() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("recordings")
    }

    /// `doppel <sub>` of the app, with `env` on top of the service's own.
    pub fn doppel(&self, sub: &str, env: &[(&str, &str)]) -> Command {
        self.doppel_with(sub, &[], env)
    }

    /// `doppel <sub> <flags>` of the app, with `env` on top of the service's own.
    pub fn doppel_with(&self, sub: &str, flags: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = doppel_cmd(self.dir.path(), sub, &self.path());
        if sub == "record" {
            c.args(["--port", &self.port.to_string()]);
        }
        c.args(flags).arg("--").arg("python3").arg(repo().join(format!("examples/{}/app.py", self.example)));
        c.env("APP_PORT", self.port.to_string())
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", "5432")
            .env("PGUSER", "postgres")
            .env("PGDATABASE", &self.db)
            .env("PGSSLMODE", "disable")
            .env("PYTHONUNBUFFERED", "1");
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c.envs(env.iter().copied());
        c
    }

    /// Sends a request with curl; stdout ends with ` <status>`.
    pub fn send(&self, method: &str, path: &str, json: Option<&str>, headers: &[&str]) -> Ran {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut args = vec!["-w", " %{http_code}", "-X", method, url.as_str()];
        if let Some(j) = json {
            args.extend(["-H", "Content-Type: application/json", "-d", j]);
        }
        for h in headers {
            args.extend(["-H", h]);
        }
        curl(&args)
    }

    /// Starts `doppel record` and waits until the app answers on /health.
    pub fn start_recording(&self) -> Bg {
        let mut cmd = self.doppel("record", &[]);
        let health = format!("http://127.0.0.1:{}/health", self.port);
        Bg::spawn_answering(&mut cmd, self.dir.path(), "record", &health, std::time::Duration::from_secs(60))
    }

    /// Drops the database and proves it is gone: replay cannot reach it.
    pub fn drop_database(&self) {
        let r = psql("test", &["-c", &format!("DROP DATABASE {} WITH (FORCE)", self.db)]);
        assert_eq!(r.code, 0, "{r:?}");
    }

    pub fn replay(&self, env: &[(&str, &str)]) -> Ran {
        run(&mut self.doppel("test", env))
    }
}

impl Drop for PgService {
    fn drop(&mut self) {
        let _ = psql("test", &["-c", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db)]);
    }
}
