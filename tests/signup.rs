//! Values an app makes itself: a sign-up / login / article service (examples/signup/) hashes passwords with
//! bcrypt and argon2 (a fresh salt every time) and gives users and articles slugs with a random suffix, all
//! sent to PostgreSQL as bind parameters, on psycopg 3 and on asyncpg. Recorded once, the database dropped,
//! it replays green three runs in a row with no hand-written rule, and each tolerated value is said.

use crate::common::pg::PgService;
use crate::common::*;

fn sign_up_flow(driver: &str) {
    let mut service = PgService::new("signup");
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
    service.drop_database();

    for run in 1..=3 {
        let ok = service.replay(&[]);
        assert_eq!(ok.code, 0, "run {run}: {ok:?}");
        assert!(summary(&ok).starts_with("6 passed, 0 failed"), "run {run}: {ok:?}");
        assert!(!ok.stdout.contains("mock miss"), "run {run}: {ok:?}");
        // What was tolerated is said, with the parameters and why.
        assert!(
            ok.stdout
                .contains("tolerated: matched INSERT INTO users (email, name, slug, bcrypt_hash, argon2_hash) VALUES")
                && ok.stdout.contains("ignoring $3, $4, $5: random slug suffixes, password hashes"),
            "run {run}: {}",
            ok.stdout
        );
        assert!(ok.stdout.contains("ignoring $3: random slug suffixes"), "run {run}: {}", ok.stdout);
    }
}

#[test]
fn bcrypt_argon2_and_slug_suffixes_replay_green_on_psycopg() {
    sign_up_flow("psycopg");
}

#[test]
fn bcrypt_argon2_and_slug_suffixes_replay_green_on_asyncpg() {
    sign_up_flow("asyncpg");
}
