//! Values an app makes itself: a sign-up / login / article service (examples/signup/) hashes passwords with
//! bcrypt and argon2 (a fresh salt every time) and gives users and articles slugs with a random suffix, all
//! sent to PostgreSQL as bind parameters (psycopg 3, asyncpg) and to MariaDB written into the SQL text
//! (PyMySQL). Recorded once, the database dropped, it replays green three runs in a row with no hand-written
//! rule, and each tolerated value is said.

use std::process::Command;

use crate::common::pg::PgService;
use crate::common::*;

/// The statement that stores a new user, and what its tolerated line names, per database.
struct Expect {
    insert: &'static str,
    user_places: &'static str,
    article_places: &'static str,
}

const POSTGRES: Expect = Expect {
    insert: "tolerated: matched INSERT INTO users (email, name, slug, bcrypt_hash, argon2_hash) VALUES ($1",
    user_places: "ignoring $3, $4, $5: random slug suffixes, password hashes",
    article_places: "ignoring $3: random slug suffixes",
};

fn sign_up_flow(mut service: PgService, driver: &str, expect: &Expect) {
    service.env.push(("DRIVER".into(), driver.into()));
    let mut rec = service.start_recording();
    let r = service.send(
        "POST",
        "/users",
        Some(r#"{"name":"Ann Lee","email":"ann@example.com","password":"s3cret!"}"#),
        &[],
    );
    assert!(r.stdout.ends_with(" 201"), "{r:?}\n{}", rec.explain());
    let r = service.send("POST", "/login", Some(r#"{"email":"ann@example.com","password":"s3cret!"}"#), &[]);
    assert!(r.stdout.ends_with(" 200") && r.stdout.contains("token"), "{r:?}");
    let login: serde_json::Value = serde_json::from_str(r.stdout.rsplit_once(' ').unwrap().0).unwrap();
    let auth = format!("Authorization: Bearer {}", login["token"].as_str().unwrap());
    let user = format!("X-User: {}", login["user"]);
    let r = service.send("POST", "/login", Some(r#"{"email":"ann@example.com","password":"wrong"}"#), &[]);
    assert!(r.stdout.ends_with(" 401"), "{r:?}");
    let r = service.send("POST", "/articles", Some(r#"{"title":"How to Train Your Dragon"}"#), &[&auth, &user]);
    assert!(r.stdout.ends_with(" 201") && r.stdout.contains("how-to-train-your-dragon-"), "{r:?}");
    let article: serde_json::Value = serde_json::from_str(r.stdout.rsplit_once(' ').unwrap().0).unwrap();
    let r = service.send("GET", &format!("/articles/{}", article["slug"].as_str().unwrap()), None, &[]);
    assert!(r.stdout.ends_with(" 200") && r.stdout.contains("Ann Lee"), "{r:?}");
    stop_recording(&mut rec);
    let mocks = read_all(&service.path().join("test-set-0/mocks.yaml"));
    assert!(mocks.contains("$2b$04$") && mocks.contains("$argon2id$"), "the hashes are in the mocks:\n{mocks}");
    assert!(!mocks.contains("kind: tcp"), "a connection fell back to opaque bytes:\n{mocks}");
    if driver == "pymysql" {
        drop_mysql_database(&service.db);
    } else {
        service.drop_database();
    }

    for run in 1..=3 {
        let ok = service.replay(&[]);
        assert_eq!(ok.code, 0, "run {run}: {ok:?}");
        assert!(summary(&ok).starts_with("6 passed, 0 failed"), "run {run}: {ok:?}");
        assert!(!ok.stdout.contains("mock miss"), "run {run}: {ok:?}");
        // What was tolerated is said, with the parameters and why.
        assert!(
            ok.stdout.contains(expect.insert) && ok.stdout.contains(expect.user_places),
            "run {run}: {}",
            ok.stdout
        );
        assert!(ok.stdout.contains(expect.article_places), "run {run}: {}", ok.stdout);
    }
    // Beside the tolerated hashes and suffixes, a real change to a stored value is still a miss.
    let bad = service.replay(&[("APP_VARIANT", "changed")]);
    assert_eq!(bad.code, 1, "{bad:?}");
    // The recording holds the user's name pseudonymized (privacy is on by default): the changed build
    // upper-cases that pseudonym.
    let post = read_all(&service.path().join("test-set-0/tests/post-users.yaml"));
    let test: serde_json::Value = serde_saphyr::from_str(&post).unwrap();
    let name = test["request"]["body"]["json"]["name"].as_str().unwrap().to_string();
    assert!(name != "Ann Lee" && !post.contains("ann@example.com"), "{post}");
    assert!(bad.stdout.contains("mock miss:") && bad.stdout.contains(&name.to_uppercase()), "{name}: {}", bad.stdout);
    assert!(bad.stdout.contains("FAIL post-users"), "{}", bad.stdout);
}

#[test]
fn bcrypt_argon2_and_slug_suffixes_replay_green_on_psycopg() {
    sign_up_flow(PgService::new("signup"), "psycopg", &POSTGRES);
}

#[test]
fn bcrypt_argon2_and_slug_suffixes_replay_green_on_asyncpg() {
    sign_up_flow(PgService::new("signup"), "asyncpg", &POSTGRES);
}

fn mysql(args: &[&str]) -> Ran {
    run(Command::new("mysql").args(["-h", "127.0.0.1", "-P", "3306", "-u", "root"]).args(args))
}

fn drop_mysql_database(db: &str) {
    let r = mysql(&["-e", &format!("DROP DATABASE {db}")]);
    assert_eq!(r.code, 0, "{r:?}");
}

/// PyMySQL formats every query on the client: the hashes and slugs are literals in the SQL text.
#[test]
fn bcrypt_argon2_and_slug_suffixes_written_inline_replay_green_on_pymysql() {
    // The service's PostgreSQL database goes unused; the app talks to a MariaDB database of the same name.
    let mut service = PgService::new("signup");
    let db = service.db.clone();
    assert_eq!(mysql(&["-e", &format!("CREATE DATABASE {db}")]).code, 0);
    let schema = read_all(&repo().join("examples/signup/schema-mysql.sql"));
    let r = mysql(&["-D", &db, "-e", &schema]);
    assert_eq!(r.code, 0, "{r:?}");
    for (k, v) in [("DB_HOST", "127.0.0.1"), ("DB_PORT", "3306"), ("DB_USER", "root"), ("DB_NAME", db.as_str())] {
        service.env.push((k.into(), v.into()));
    }
    let expect = Expect {
        insert: "tolerated: matched INSERT INTO users (email, name, slug, bcrypt_hash, argon2_hash) VALUES (?, ?, ?, ?, ?)",
        user_places: "ignoring literal 3, literal 4, literal 5: random slug suffixes, password hashes",
        article_places: "ignoring literal 3: random slug suffixes",
    };
    sign_up_flow(service, "pymysql", &expect);
    let _ = mysql(&["-e", &format!("DROP DATABASE IF EXISTS {db}")]);
}
