use std::path::Path;

use serde_json::json;

use super::*;

fn privacy() -> Privacy {
    Privacy::ephemeral().expect("a key")
}

/// The YAML a recording writes for `doc`, in a fresh set directory.
fn written(p: &Privacy, dir: &Path, doc: &Value) -> String {
    p.to_yaml(dir, doc, None, true).expect("written")
}

#[test]
fn credentials_are_sealed_and_open_again_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = privacy();
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
    let body = json!({"user": "ada", "password": "hunter2-PASSWORD", "credit_card": "4111111111111111"});
    let length = format!("Content-Length: {}", serde_json::to_string(&body).unwrap().len());
    let doc = json!({
        "request": {
            "target": "/login?next=/home&api_key=QUERYKEY123",
            "headers": [
                format!("Authorization: Bearer {jwt}"),
                "Cookie: session=SESSIONCOOKIE123; csrftoken=CSRF999",
                "X-Api-Key: sk_live_APIKEY_123456",
                length,
            ],
            "body": {"json": body},
        },
        "command": ["env", "SECRET_KEY=secret", "DATABASE_URL=postgres://app:dbpass99@db/shop", "python3", "app.py"],
    });
    let yaml = written(&p, dir.path(), &doc);
    for secret in [
        jwt,
        "SESSIONCOOKIE123",
        "CSRF999",
        "sk_live_APIKEY_123456",
        "hunter2-PASSWORD",
        "QUERYKEY123",
        "=secret",
        "dbpass99",
        "4111111111111111",
    ] {
        assert!(!yaml.contains(secret), "{secret} in clear:\n{yaml}");
    }
    assert!(yaml.contains("Authorization: !sealed bearer-jwt#"), "{yaml}");
    assert!(yaml.contains("Cookie: session=!sealed cookie#"), "{yaml}");
    assert!(yaml.contains("api_key=%21sealed+api-key%23"), "{yaml}");
    let sealed = std::fs::read_to_string(dir.path().join(seal::FILE)).unwrap();
    assert!(!sealed.contains("hunter2"), "{sealed}");
    // Read back with the key: every value as recorded, Content-Length true again.
    let back: Value = crate::store::parse_yaml(&yaml, Path::new("t.yaml"), 1).unwrap();
    let opened = p.open(dir.path(), back, None);
    let mut expected = doc.clone();
    // The card was pseudonymized, not sealed: it stays a pseudonym.
    expected["request"]["body"]["json"]["credit_card"] = opened["request"]["body"]["json"]["credit_card"].clone();
    assert_eq!(opened, expected);
    // A second key opens nothing and says why.
    let other = privacy();
    assert!(other.closed(dir.path()).is_some_and(|m| m.contains("not the one")), "{:?}", other.closed(dir.path()));
}

#[test]
fn personal_data_is_pseudonymized_consistently_and_lengths_follow() {
    let dir = tempfile::tempdir().unwrap();
    let p = privacy();
    let body = json!({"customer": {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "0612345678"}});
    let text = serde_json::to_string(&body).unwrap();
    let test = json!({"request": {"headers": [format!("Content-Length: {}", text.len())], "body": {"json": body}}});
    let mock = json!({"mysql": {"sql": "INSERT INTO users (name, email, phone) VALUES ('Ada Lovelace', 'ada@example.com', '0612345678')"}});
    let t = written(&p, dir.path(), &test);
    let m = written(&p, dir.path(), &mock);
    for clear in ["Ada Lovelace", "ada@example.com", "0612345678"] {
        assert!(!t.contains(clear) && !m.contains(clear), "{clear} in clear:\n{t}\n{m}");
    }
    let tv: Value = crate::store::parse_yaml(&t, Path::new("t"), 1).unwrap();
    let email = tv["request"]["body"]["json"]["customer"]["email"].as_str().unwrap().to_string();
    let name = tv["request"]["body"]["json"]["customer"]["name"].as_str().unwrap().to_string();
    assert!(m.contains(&email) && m.contains(&name), "the mock holds the same pseudonyms:\n{t}\n{m}");
    // Same key, another recording: the same pseudonyms.
    let dir2 = tempfile::tempdir().unwrap();
    assert_eq!(written(&p, dir2.path(), &test), t);
    let tally = p.tally();
    assert_eq!(tally.pseudonymized.get("email"), Some(&1), "{:?}", tally);
    assert!(tally.line().contains("pseudonymized"), "{}", tally.line());
}

#[test]
fn rewrites_keep_pseudonyms_and_scan_finds_what_is_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let p = privacy();
    let doc = json!({"response": {"body": {"json": {"email": "bob@example.org", "token": "tok_abcdefgh"}}}});
    let first = written(&p, dir.path(), &doc);
    let loaded: Value = crate::store::parse_yaml(&first, Path::new("t"), 1).unwrap();
    let opened = p.open(dir.path(), loaded, None);
    // A rewrite of what was loaded (learned rules): the pseudonym is not pseudonymized again, the token is
    // sealed under the same placeholder.
    assert_eq!(p.to_yaml(dir.path(), &opened, None, false).unwrap(), first);
    let mut clear = doc.clone();
    let found = p.findings(&mut clear);
    assert_eq!(found, [("token".to_string(), "tok_abcdefgh".to_string())]);
    let mut sealed: Value = crate::store::parse_yaml(&first, Path::new("t"), 1).unwrap();
    assert!(p.findings(&mut sealed).is_empty());
}

#[test]
fn project_rules_seal_keep_and_skip() {
    let cfg: PrivacyConfig = crate::store::parse_yaml(
        "skip: [ip]\nrules:\n  - field: tenant\n    action: seal\n    class: tenant\n  - body: $.contact.email\n    action: keep\n  - regex: 'ACME-[0-9]{6}'\n    action: seal\n    class: acme-id\n",
        Path::new("doppel.yaml"),
        1,
    )
    .unwrap();
    let mut p = Privacy::load(&cfg, false).unwrap();
    p.key = Some(Key::random().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let doc = json!({"body": {"json": {"tenant": "blue", "contact": {"email": "desk@example.com"}, "note": "ref ACME-123456 from 8.8.8.8"}}});
    let y = written(&p, dir.path(), &doc);
    assert!(
        y.contains("!sealed tenant#")
            && y.contains("desk@example.com")
            && y.contains("!sealed acme-id#")
            && y.contains("8.8.8.8"),
        "{y}"
    );
    assert!(Rules::compile(&PrivacyConfig { skip: vec!["nope".into()], ..Default::default() }).is_err());
}
