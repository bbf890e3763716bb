//! What counts as a secret or as personal data, and the pseudonyms personal data gets.
//!
//! Credentials are found by where they stand (an Authorization or Cookie header, a field named password or
//! token, the password of a connection string, a secret-named variable of the command line) and by what they
//! look like anywhere (JWTs, well-known API-key prefixes). Personal data is found by shape (emails, phone
//! numbers written with a country code, card numbers passing Luhn, IBANs passing mod 97, US-style national
//! ids, public IPv4 addresses) and by field name (names, phones, ids).
//!
//! Pseudonyms keep the format and length: digits stay digits, vowels vowels, consonants consonants, case and
//! punctuation are kept; a card keeps its first digit and a valid Luhn digit, an IBAN its country and valid
//! check digits. They come from HMAC-SHA256 of the lower-cased value, so the same value gives the same
//! pseudonym everywhere under one key, and an app that lower-cases what it received still sends the
//! pseudonym of what it lower-cased.

use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;
use ring::hmac;

/// What doppel does with a value it classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Seal,
    Pseudonymize,
}

/// A class: what to do and the name shown in placeholders and the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Class {
    pub(crate) action: Action,
    pub(crate) name: &'static str,
}

const fn seal(name: &'static str) -> Class {
    Class { action: Action::Seal, name }
}
const fn pseudo(name: &'static str) -> Class {
    Class { action: Action::Pseudonymize, name }
}

/// Every class doppel knows, for `privacy.skip` in doppel.yaml and the README.
pub(crate) const CLASSES: &[&str] = &[
    "bearer-jwt",
    "bearer",
    "basic",
    "auth",
    "cookie",
    "api-key",
    "token",
    "password",
    "secret",
    "jwt",
    "email",
    "phone",
    "card",
    "iban",
    "national-id",
    "ip",
    "name",
];

fn normalized(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect()
}

/// The class a field (JSON key, form or query parameter, environment variable) gives its value.
pub(crate) fn field(name: &str) -> Option<Class> {
    let n = normalized(name);
    // Fields that describe a credential rather than hold one.
    const DESCRIBING: &[&str] =
        &["type", "expires", "expiresin", "expiry", "expiresat", "ttl", "length", "url", "uri", "hint"];
    let describing = DESCRIBING.iter().any(|d| n.ends_with(d));
    let has = |w: &str| n.contains(w);
    if describing {
        // not a credential; may still be personal data below
    } else if has("password") || has("passwd") || has("passphrase") || n == "pwd" || n == "pass" || n == "pin" {
        return Some(seal("password"));
    } else if has("apikey") || has("accesskey") || n == "key" || has("privatekey") || has("clientkey") {
        return Some(seal("api-key"));
    } else if has("secret") || has("credential") {
        return Some(seal("secret"));
    } else if has("token")
        || has("sessionid")
        || n == "session"
        || n == "sid"
        || n == "csrf"
        || n == "auth"
        || n == "authorization"
        || n == "signature"
    {
        return Some(seal("token"));
    }
    if matches!(n.as_str(), "email" | "mail" | "emailaddress") {
        return Some(pseudo("email"));
    }
    if has("phone") || matches!(n.as_str(), "mobile" | "tel" | "telephone" | "cell" | "msisdn") {
        return Some(pseudo("phone"));
    }
    if matches!(
        n.as_str(),
        "ssn"
            | "nationalid"
            | "taxid"
            | "socialsecurity"
            | "socialsecuritynumber"
            | "nin"
            | "passport"
            | "passportnumber"
            | "nationalidentifier"
    ) {
        return Some(pseudo("national-id"));
    }
    if matches!(n.as_str(), "iban") {
        return Some(pseudo("iban"));
    }
    if matches!(n.as_str(), "card" | "cardnumber" | "creditcard" | "ccnumber" | "pan") {
        return Some(pseudo("card"));
    }
    if matches!(n.as_str(), "ip" | "ipaddress" | "clientip" | "remoteaddr" | "remoteip") {
        return Some(pseudo("ip"));
    }
    if matches!(
        n.as_str(),
        "firstname" | "lastname" | "fullname" | "surname" | "givenname" | "familyname" | "displayname" | "middlename"
    ) {
        return Some(pseudo("name"));
    }
    None
}

/// Keys under which a `name` field is a person's name.
pub(crate) fn is_person_key(name: &str) -> bool {
    matches!(
        normalized(name).as_str(),
        "user"
            | "customer"
            | "person"
            | "author"
            | "owner"
            | "contact"
            | "member"
            | "account"
            | "profile"
            | "sender"
            | "recipient"
            | "employee"
            | "patient"
    )
}

/// How a header's value is treated.
pub(crate) enum HeaderRule {
    /// `Authorization`-like: the whole value is sealed, named by its scheme.
    Authorization,
    /// `Cookie`: each cookie's value is sealed, names kept.
    Cookie,
    /// `Set-Cookie`: the cookie's value is sealed, its attributes kept.
    SetCookie,
    /// A header named like a credential: the whole value sealed.
    Whole(Class),
    /// Any other header: its value is scanned like any text.
    Text,
}

pub(crate) fn header(name: &str) -> HeaderRule {
    let n = name.to_ascii_lowercase();
    match n.as_str() {
        "authorization" | "proxy-authorization" => HeaderRule::Authorization,
        "cookie" => HeaderRule::Cookie,
        "set-cookie" => HeaderRule::SetCookie,
        _ => match field(name) {
            Some(c) if c.action == Action::Seal => HeaderRule::Whole(c),
            _ => HeaderRule::Text,
        },
    }
}

/// The class of an Authorization value, by its scheme.
pub(crate) fn authorization_class(value: &str) -> &'static str {
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" if JWT.is_match(rest) => "bearer-jwt",
        "bearer" => "bearer",
        "basic" => "basic",
        _ => "auth",
    }
}

static JWT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*").expect("a valid pattern")
});
static API_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"\b(?:(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9_]{8,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}",
        r"|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}|glpat-[A-Za-z0-9_-]{20})"
    ))
    .expect("a valid pattern")
});
/// The password of `scheme://user:password@host`.
static URL_PASSWORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:([^@\s/]+)@").expect("a valid pattern"));
/// `password=...` and the like inside free text (connection strings: `host=db password=s3cret`).
static KEYWORD_PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:password|passwd|pwd|secret|api_?key|token)\s*=\s*([^\s;&']+)").expect("a valid pattern")
});
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
    )
    .expect("a valid pattern")
});
static CARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b[2-6]\d{3}(?:[ -]?\d){9,15}\b").expect("a valid pattern"));
static IBAN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b").expect("a valid pattern")
});
static PHONE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?)(?:[ .-]?\d{2,4}){2,4}\b").expect("a valid pattern"));
static NATIONAL_ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b\d{3}-\d{2}-\d{4}\b").expect("a valid pattern"));
static IPV4: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b(?:\d{1,3}\.){3}\d{1,3}\b").expect("a valid pattern"));

fn luhn_ok(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(*d);
            if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn luhn_digit(body: &[u8]) -> u8 {
    (0..10).find(|d| luhn_ok(&[body, &[*d]].concat())).unwrap_or(0)
}

/// The IBAN mod-97 remainder of `text` (letters as 10..35), rearranged as the standard says.
fn iban_mod97(iban: &str) -> Option<u32> {
    let s: String = iban.chars().filter(|c| !c.is_whitespace()).collect();
    if s.len() < 5 {
        return None;
    }
    let rearranged = format!("{}{}", &s[4..], &s[..4]);
    let mut r: u32 = 0;
    for c in rearranged.chars() {
        let v = c.to_digit(36)?;
        r = if v >= 10 { (r * 100 + v) % 97 } else { (r * 10 + v) % 97 };
    }
    Some(r)
}

fn public_ipv4(text: &str) -> bool {
    let Ok(ip) = text.parse::<std::net::Ipv4Addr>() else { return false };
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || o[0] >= 240
        || (o[0] == 100 && (64..128).contains(&o[1])))
}

/// The values in `text` that its shape classifies, as non-overlapping spans in order (credentials win over
/// personal data where they overlap). `skip` names classes turned off.
pub(crate) fn spans(text: &str, skip: &[String]) -> Vec<(Range<usize>, Class)> {
    let mut found: Vec<(Range<usize>, Class)> = Vec::new();
    let mut add = |r: Range<usize>, c: Class| {
        if !skip.iter().any(|s| s == c.name) && !found.iter().any(|(f, _)| f.start < r.end && r.start < f.end) {
            found.push((r, c));
        }
    };
    // Cheap tests first: most strings hold none of the characters these patterns need.
    let has_digit = text.bytes().any(|b| b.is_ascii_digit());
    if text.contains("eyJ") {
        JWT.find_iter(text).for_each(|m| add(m.range(), seal("jwt")));
    }
    if text.contains('_') || text.contains('-') || text.contains("AKIA") || text.contains("AIza") {
        API_KEY.find_iter(text).for_each(|m| add(m.range(), seal("api-key")));
    }
    if text.contains("://") {
        for c in URL_PASSWORD.captures_iter(text) {
            if let Some(m) = c.get(1) {
                add(m.range(), seal("password"));
            }
        }
    }
    if text.contains('=') {
        for c in KEYWORD_PASSWORD.captures_iter(text) {
            if let Some(m) = c.get(1).filter(|m| !m.as_str().starts_with("!sealed")) {
                add(m.range(), seal("password"));
            }
        }
    }
    if text.contains('@') {
        EMAIL.find_iter(text).for_each(|m| add(m.range(), pseudo("email")));
    }
    if has_digit {
        for m in CARD.find_iter(text) {
            let digits: Vec<u8> = m.as_str().bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect();
            if (13..=19).contains(&digits.len()) && luhn_ok(&digits) {
                add(m.range(), pseudo("card"));
            }
        }
        IBAN.find_iter(text).filter(|m| iban_mod97(m.as_str()) == Some(1)).for_each(|m| add(m.range(), pseudo("iban")));
        if text.contains('+') {
            for m in PHONE.find_iter(text) {
                let n = m.as_str().bytes().filter(u8::is_ascii_digit).count();
                if (8..=15).contains(&n) {
                    add(m.range(), pseudo("phone"));
                }
            }
        }
        if text.contains('-') {
            NATIONAL_ID.find_iter(text).for_each(|m| add(m.range(), pseudo("national-id")));
        }
        if text.contains('.') {
            IPV4.find_iter(text).filter(|m| public_ipv4(m.as_str())).for_each(|m| add(m.range(), pseudo("ip")));
        }
    }
    found.sort_by_key(|(r, _)| r.start);
    found
}

const VOWELS: &[u8] = b"aeiou";
const CONSONANTS: &[u8] = b"bcdfghjklmnpqrstvwxz";

/// A stream of key-derived bytes for `class` and `value`.
fn stream(key: &hmac::Key, class: &str, value: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = 0u32;
    while out.len() < len {
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(class.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        ctx.update(&block.to_be_bytes());
        out.extend_from_slice(ctx.sign().as_ref());
        block += 1;
    }
    out
}

/// Replaces each letter and digit of `value` by one of its kind chosen by the stream, keeping case and
/// everything else.
fn map_chars(value: &str, bytes: &[u8]) -> String {
    value
        .chars()
        .zip(bytes.iter().cycle())
        .map(|(c, b)| {
            let b = *b as usize;
            let lower = c.to_ascii_lowercase();
            let mapped = if c.is_ascii_digit() {
                (b'0' + (b % 10) as u8) as char
            } else if VOWELS.contains(&(lower as u8)) && c.is_ascii_alphabetic() {
                VOWELS[b % VOWELS.len()] as char
            } else if c.is_ascii_alphabetic() {
                CONSONANTS[b % CONSONANTS.len()] as char
            } else {
                return c;
            };
            if c.is_ascii_uppercase() { mapped.to_ascii_uppercase() } else { mapped }
        })
        .collect()
}

fn mapped(key: &hmac::Key, class: &str, value: &str) -> String {
    let lower = value.to_lowercase();
    map_chars(value, &stream(key, class, &lower, value.len()))
}

/// The pseudonym of `value` of class `class`, same format and length.
pub(crate) fn pseudonym(key: &hmac::Key, class: &str, value: &str) -> String {
    match class {
        "email" => match value.rsplit_once('@') {
            Some((local, domain)) => {
                let local = mapped(key, "email-local", &format!("{local}@{domain}"))[..local.len()].to_string();
                let (labels, tld) = domain.rsplit_once('.').unwrap_or(("", domain));
                let labels =
                    if labels.is_empty() { String::new() } else { format!("{}.", mapped(key, "domain", labels)) };
                format!("{local}@{labels}{tld}")
            }
            None => mapped(key, class, value),
        },
        "card" => {
            let digits: Vec<u8> = value.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect();
            if digits.len() < 2 {
                return mapped(key, class, value);
            }
            let s = stream(key, class, value, digits.len());
            let mut new: Vec<u8> = vec![digits[0]];
            new.extend(s[1..digits.len() - 1].iter().map(|b| b % 10));
            new.push(luhn_digit(&new));
            let mut it = new.into_iter();
            value
                .chars()
                .map(|c| if c.is_ascii_digit() { (b'0' + it.next().unwrap_or(0)) as char } else { c })
                .collect()
        }
        "iban" => {
            let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
            if compact.len() < 5 || !compact.is_ascii() {
                return mapped(key, class, value);
            }
            let bban = map_chars(&compact[4..], &stream(key, class, &compact, compact.len()));
            let check = 98 - iban_mod97(&format!("{}00{bban}", &compact[..2])).unwrap_or(0);
            let new = format!("{}{check:02}{bban}", &compact[..2]);
            let mut it = new.chars();
            value.chars().map(|c| if c.is_whitespace() { c } else { it.next().unwrap_or(c) }).collect()
        }
        "phone" => {
            // The country code and first digit stay, so the number still reads as a number of that country.
            let keep = value.char_indices().filter(|(_, c)| c.is_ascii_digit()).nth(1).map(|(i, _)| i + 1).unwrap_or(0);
            format!("{}{}", &value[..keep], mapped(key, class, &value[keep..]))
        }
        "ip" => match value.parse::<std::net::Ipv4Addr>() {
            // Into 100.64.0.0/10 (shared address space): plainly not a public client address any more.
            Ok(_) => {
                let s = stream(key, class, value, 3);
                format!("100.{}.{}.{}", 64 + s[0] % 64, s[1], s[2].max(1))
            }
            Err(_) => mapped(key, class, value),
        },
        _ => mapped(key, class, value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, b"test key")
    }

    fn classes(text: &str) -> Vec<(&str, &'static str)> {
        spans(text, &[]).into_iter().map(|(r, c)| (&text[r], c.name)).collect()
    }

    #[test]
    fn shapes_are_found_and_lookalikes_are_not() {
        assert_eq!(classes("mail alice.smith@example.com now"), [("alice.smith@example.com", "email")]);
        assert_eq!(classes("card 4111 1111 1111 1111."), [("4111 1111 1111 1111", "card")]);
        assert_eq!(classes("card 4111 1111 1111 1112."), []); // Luhn fails
        assert_eq!(classes("ts 1733172000000"), []); // a millisecond timestamp is no card
        assert_eq!(classes("DE89 3704 0044 0532 0130 00"), [("DE89 3704 0044 0532 0130 00", "iban")]);
        assert_eq!(classes("DE88 3704 0044 0532 0130 00"), []);
        assert_eq!(classes("call +44 20 7946 0958"), [("+44 20 7946 0958", "phone")]);
        assert_eq!(classes("ssn 078-05-1120"), [("078-05-1120", "national-id")]);
        assert_eq!(classes("from 8.8.4.4 and 10.0.0.1 and 127.0.0.1"), [("8.8.4.4", "ip")]);
        assert_eq!(classes("postgres://app:s3cr3t@db:5432/shop"), [("s3cr3t", "password")]);
        assert_eq!(classes("host=db password=hunter2 user=x"), [("hunter2", "password")]);
        assert_eq!(classes("key sk_live_APIKEY_123456"), [("sk_live_APIKEY_123456", "api-key")]);
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlX2hlcmU";
        assert_eq!(classes(&format!("t={jwt}")), [(jwt, "jwt")]);
        assert_eq!(classes("version 1.2.3 of 2024-01-02"), []);
    }

    #[test]
    fn fields_name_their_class() {
        let name = |f: &str| field(f).map(|c| c.name);
        assert_eq!(name("password"), Some("password"));
        assert_eq!(name("new_password"), Some("password"));
        assert_eq!(name("X-Api-Key"), Some("api-key"));
        assert_eq!(name("access_token"), Some("token"));
        assert_eq!(name("token_type"), None);
        assert_eq!(name("expires_in"), None);
        assert_eq!(name("client_secret"), Some("secret"));
        assert_eq!(name("last_name"), Some("name"));
        assert_eq!(name("phone_number"), Some("phone"));
        assert_eq!(name("title"), None);
        assert_eq!(authorization_class("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"), "bearer-jwt");
        assert_eq!(authorization_class("Basic dXNlcjpwYXNz"), "basic");
    }

    #[test]
    fn pseudonyms_keep_format_and_are_stable() {
        let k = key();
        let e = pseudonym(&k, "email", "Alice.Smith@Example.com");
        assert_eq!(e.len(), "Alice.Smith@Example.com".len());
        assert!(EMAIL.is_match(&e) && e.ends_with(".com") && e != "Alice.Smith@Example.com", "{e}");
        assert_eq!(e, pseudonym(&k, "email", "Alice.Smith@Example.com"));
        // Lower-casing the input lower-cases the pseudonym: an app that normalizes still matches its mocks.
        assert_eq!(e.to_lowercase(), pseudonym(&k, "email", "alice.smith@example.com"));
        let c = pseudonym(&k, "card", "4111-1111-1111-1111");
        let digits: Vec<u8> = c.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect();
        assert!(c.starts_with('4') && c.len() == 19 && luhn_ok(&digits) && c != "4111-1111-1111-1111", "{c}");
        let i = pseudonym(&k, "iban", "DE89 3704 0044 0532 0130 00");
        assert!(i.starts_with("DE") && iban_mod97(&i) == Some(1) && i.len() == 27, "{i}");
        let ip = pseudonym(&k, "ip", "8.8.4.4");
        assert!(ip.starts_with("100.") && !public_ipv4(&ip), "{ip}");
        assert_eq!(pseudonym(&k, "phone", "+44 20 7946 0958").len(), "+44 20 7946 0958".len());
        assert!(pseudonym(&k, "phone", "+44 20 7946 0958").starts_with("+4"));
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"another key");
        assert_ne!(pseudonym(&other, "email", "alice@example.com"), pseudonym(&k, "email", "alice@example.com"));
    }
}
