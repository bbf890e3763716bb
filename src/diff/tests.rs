use std::io::Write;

use serde_json::json;

use super::*;
use crate::store::format::NoiseRule;

fn body_rule(path: &str) -> NoiseRule {
    NoiseRule { body: Some(path.to_string()), ..NoiseRule::default() }
}

fn unordered_rule(path: &str) -> NoiseRule {
    NoiseRule { body: Some(path.to_string()), ignore_order: true, ..NoiseRule::default() }
}

fn header_rule(name: &str) -> NoiseRule {
    NoiseRule { header: Some(name.to_string()), ..NoiseRule::default() }
}

fn noise(rules: &[NoiseRule]) -> Noise {
    Noise::compile(rules, false).expect("rules compile")
}

fn h(name: &str, value: &str) -> Header {
    Header::new(name, value)
}

fn locations(c: &Comparison) -> Vec<&str> {
    c.differences.iter().map(|d| d.location.as_str()).collect()
}

/// A difference with no detail, as most comparisons report them.
fn difference(location: &str, change: Change, expected: Option<&str>, actual: Option<&str>) -> Difference {
    Difference {
        location: location.into(),
        change,
        expected: expected.map(Into::into),
        actual: actual.map(Into::into),
        detail: None,
    }
}

fn cmp(eh: &[Header], eb: &[u8], ah: &[Header], ab: &[u8], noise: &Noise) -> Comparison {
    compare(
        &Expected { status: 200, headers: eh, body: eb, trailers: &[] },
        &Actual { status: 200, headers: ah, body: ab, trailers: &[] },
        noise,
    )
}

#[test]
fn nested_changed_field_has_exact_path_and_values() {
    let e = json!({"user": {"name": "Ann", "age": 31}, "items": [1, 2, {"x": true}]});
    let a = json!({"user": {"age": 31, "name": "Bob"}, "items": [1, 2, {"x": false}]});
    let c = json_diff(&e, &a, &Noise::none());
    assert_eq!(
        c.differences,
        vec![
            difference("body $.user.name", Change::Changed, Some("\"Ann\""), Some("\"Bob\"")),
            difference("body $.items[2].x", Change::Changed, Some("true"), Some("false")),
        ]
    );
    assert!(c.applied_noise.is_empty());
}

#[test]
fn key_order_and_number_form_do_not_matter() {
    let e = json!({"a": 1, "b": [1.0, 2]});
    let a: Value = serde_json::from_str(r#"{"b": [1, 2.0], "a": 1.0}"#).expect("json");
    assert!(json_diff(&e, &a, &Noise::none()).is_match());
    let a = json!({"a": 2, "b": [1.0, 2]});
    assert_eq!(locations(&json_diff(&e, &a, &Noise::none())), ["body $.a"]);
}

#[test]
fn added_and_removed_keys_and_elements() {
    let e = json!({"keep": 1, "gone": {"deep": 1}, "list": [1, 2, 3]});
    let a = json!({"keep": 1, "odd key": "x", "list": [1, 2, 3, 4]});
    let c = json_diff(&e, &a, &Noise::none());
    assert_eq!(c.differences.len(), 3);
    assert_eq!(c.differences[0].location, "body $.gone");
    assert_eq!(c.differences[0].change, Change::Removed);
    assert_eq!(c.differences[0].expected.as_deref(), Some(r#"{"deep":1}"#));
    assert_eq!(c.differences[0].actual, None);
    assert_eq!(c.differences[1].location, "body $.list[3]");
    assert_eq!(c.differences[1].change, Change::Added);
    assert_eq!(c.differences[1].actual.as_deref(), Some("4"));
    assert_eq!(c.differences[2].location, "body $['odd key']");
    assert_eq!(c.differences[2].change, Change::Added);
    assert_eq!(c.differences[2].expected, None);
    assert_eq!(c.differences[2].actual.as_deref(), Some("\"x\""));

    let c = json_diff(&json!([1, 2, 3]), &json!([1]), &Noise::none());
    assert_eq!(locations(&c), ["body $[1]", "body $[2]"]);
    assert!(c.differences.iter().all(|d| d.change == Change::Removed));
}

#[test]
fn type_change_reports_both_values() {
    let e = json!({"n": 1, "o": {"a": 1}, "z": null});
    let a = json!({"n": "1", "o": [1], "z": null});
    let c = json_diff(&e, &a, &Noise::none());
    assert_eq!(locations(&c), ["body $.n", "body $.o"]);
    assert!(c.differences.iter().all(|d| d.change == Change::TypeChanged));
    assert_eq!(c.differences[0].expected.as_deref(), Some("1"));
    assert_eq!(c.differences[0].actual.as_deref(), Some("\"1\""));
    assert_eq!(c.differences[1].expected.as_deref(), Some(r#"{"a":1}"#));
    assert_eq!(c.differences[1].actual.as_deref(), Some("[1]"));
}

#[test]
fn descendant_id_noise() {
    let e = json!({"id": 1, "user": {"id": "u1", "name": "Ann"}, "items": [{"id": 5}, {"id": 6, "v": 1}]});
    let a = json!({"id": 2, "user": {"id": "u9", "name": "Ann"}, "items": [{"id": 7}, {"v": 1}]});
    let c = json_diff(&e, &a, &noise(&[body_rule("$..id")]));
    assert!(c.is_match(), "{:?}", c.differences);
    assert_eq!(c.applied_noise, ["body $..id"]);

    // The rule does not hide other changes.
    let a = json!({"id": 2, "user": {"id": "u9", "name": "Bo"}, "items": [{"id": 5}, {"id": 6, "v": 1}]});
    let c = json_diff(&e, &a, &noise(&[body_rule("$..id")]));
    assert_eq!(locations(&c), ["body $.user.name"]);
}

#[test]
fn wildcard_member_noise_and_quoted_keys() {
    let e = json!({"items": [{"token": "a", "n": 1}, {"token": "b", "n": 2}], "created_at": "t1", "a b": 1});
    let a = json!({"items": [{"token": "c", "n": 1}, {"token": "d", "n": 3}], "a b": 2});
    let rules = [body_rule("$.items[*].token"), body_rule("$.created_at"), body_rule("$['a b']")];
    let c = json_diff(&e, &a, &noise(&rules));
    assert_eq!(locations(&c), ["body $.items[1].n"]);
    assert_eq!(c.applied_noise, ["body $.items[*].token", "body $.created_at", "body $['a b']"]);

    // A rule that matches nothing different is not reported as applied.
    let c = json_diff(&e, &e, &noise(&rules));
    assert!(c.is_match());
    assert!(c.applied_noise.is_empty());
}

#[test]
fn noise_on_added_keys() {
    let e = json!({"a": 1});
    let a = json!({"a": 1, "trace": {"x": 1}});
    let c = json_diff(&e, &a, &noise(&[body_rule("$.trace")]));
    assert!(c.is_match());
    assert_eq!(c.applied_noise, ["body $.trace"]);
}

#[test]
fn ignore_order_arrays() {
    let rules = [unordered_rule("$.items"), body_rule("$.items[*].id")];
    let e = json!({"items": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]});
    let a = json!({"items": [{"id": 9, "name": "c"}, {"id": 8, "name": "a"}, {"id": 7, "name": "b"}]});
    let c = json_diff(&e, &a, &noise(&rules));
    assert!(c.is_match(), "{:?}", c.differences);
    assert_eq!(c.applied_noise, ["body $.items (ignore order)", "body $.items[*].id"]);

    // Without ignore_order the reordering is a difference.
    let c = json_diff(&e, &a, &noise(&[body_rule("$.items[*].id")]));
    assert_eq!(locations(&c), ["body $.items[0].name", "body $.items[1].name", "body $.items[2].name"]);

    // An element that changed is left over on both sides.
    let a = json!({"items": [{"id": 9, "name": "c"}, {"id": 8, "name": "A"}, {"id": 7, "name": "b"}]});
    let c = json_diff(&e, &a, &noise(&rules));
    assert_eq!(
        c.differences,
        vec![
            difference("body $.items[*]", Change::Removed, Some(r#"{"id":1,"name":"a"}"#), None),
            difference("body $.items[*]", Change::Added, None, Some(r#"{"id":8,"name":"A"}"#)),
        ]
    );

    // Multiset, not set: a duplicate must be matched twice.
    let c = json_diff(&json!({"items": [1, 1, 2]}), &json!({"items": [2, 1, 2]}), &noise(&rules));
    assert_eq!(locations(&c), ["body $.items[*]", "body $.items[*]"]);
    assert_eq!(c.differences[0].change, Change::Removed);
    assert_eq!(c.differences[0].expected.as_deref(), Some("1"));
    assert_eq!(c.differences[1].change, Change::Added);
    assert_eq!(c.differences[1].actual.as_deref(), Some("2"));

    // Same order: equal, and ignore_order not reported as applied.
    let c = json_diff(&json!({"items": [1, 2]}), &json!({"items": [1, 2]}), &noise(&rules));
    assert!(c.is_match());
    assert!(c.applied_noise.is_empty());
}

#[test]
fn ignore_order_nested_wildcard() {
    let rules = [unordered_rule("$.groups[*].tags")];
    let e = json!({"groups": [{"tags": ["a", "b"]}, {"tags": ["c", "d"]}]});
    let a = json!({"groups": [{"tags": ["b", "a"]}, {"tags": ["d", "c"]}]});
    assert!(json_diff(&e, &a, &noise(&rules)).is_match());
    let a = json!({"groups": [{"tags": ["b", "a"]}, {"tags": ["d", "e"]}]});
    assert_eq!(locations(&json_diff(&e, &a, &noise(&rules))), ["body $.groups[1].tags[*]", "body $.groups[1].tags[*]"]);
}

#[test]
fn whole_body_noise_and_scalars() {
    let c = json_diff(&json!(1), &json!(2), &Noise::none());
    assert_eq!(locations(&c), ["body $"]);
    let c = json_diff(&json!({"a": 1}), &json!({"a": 2}), &noise(&[body_rule("$")]));
    assert!(c.is_match());
    assert_eq!(c.applied_noise, ["body $"]);
}

#[test]
fn path_rendering() {
    use json::{Seg, render_path};
    let p = [Seg::Key("a".into()), Seg::Index(3), Seg::Key("odd key".into()), Seg::Key("it's".into())];
    assert_eq!(render_path(&p), r"$.a[3]['odd key']['it\'s']");
    assert_eq!(render_path(&[Seg::Key("_x1".into()), Seg::Key("1x".into())]), "$._x1['1x']");
    assert_eq!(render_path(&[]), "$");
}

#[test]
fn bad_jsonpath_names_the_rule() {
    let err = Noise::compile(&[body_rule("$.ok"), body_rule("$.[")], true).expect_err("bad path").to_string();
    assert!(err.starts_with("noise rule body: \"$.[\": "), "{err}");
    assert!(err.len() > "noise rule body: \"$.[\": ".len(), "{err}");
    let err = Noise::compile(&[NoiseRule::default()], false).expect_err("empty rule").to_string();
    assert!(err.contains("neither"), "{err}");
}

#[test]
fn default_header_noise_on_and_off() {
    let eh = [h("Content-Type", "text/plain"), h("Date", "Mon, 01 Jan 2024 00:00:00 GMT"), h("ETag", "\"1\"")];
    let ah = [h("content-type", "text/plain"), h("date", "Tue, 02 Jan 2024 00:00:00 GMT"), h("X-Request-Id", "abc")];
    let on = Noise::compile(&[], true).expect("compile");
    let c = cmp(&eh, b"hi", &ah, b"hi", &on);
    assert!(c.is_match(), "{:?}", c.differences);
    assert_eq!(c.applied_noise, ["header date", "header x-request-id", "header etag"]);
    assert!(on.ignores_header("X-B3-TraceId"));

    let off = Noise::compile(&[], false).expect("compile");
    let c = cmp(&eh, b"hi", &ah, b"hi", &off);
    assert_eq!(locations(&c), ["header date", "header etag", "header x-request-id"]);
    assert_eq!(c.differences[0].change, Change::Changed);
    assert_eq!(c.differences[1].change, Change::Removed);
    assert_eq!(c.differences[2].change, Change::Added);
    assert!(c.applied_noise.is_empty());
}

#[test]
fn header_added_removed_changed() {
    let eh = [
        h("Content-Type", "application/json"),
        h("Set-Cookie", "a=1"),
        h("set-cookie", "b=2"),
        h("X-Old", "1"),
        h("Content-Length", "10"),
        h("X-Custom", "v"),
    ];
    let ah = [
        h("content-type", "text/html"),
        h("Set-Cookie", "a=1"),
        h("Set-Cookie", "b=3"),
        h("X-New", "2"),
        h("Transfer-Encoding", "chunked"),
        h("x-custom", "w"),
    ];
    let c = cmp(&eh, b"", &ah, b"", &noise(&[header_rule("X-CUSTOM")]));
    assert_eq!(locations(&c), ["header content-type", "header set-cookie", "header x-old", "header x-new"]);
    let d = &c.differences;
    assert_eq!(d[0].change, Change::Changed);
    assert_eq!(d[0].expected.as_deref(), Some("\"application/json\""));
    assert_eq!(d[0].actual.as_deref(), Some("\"text/html\""));
    assert_eq!(d[1].expected.as_deref(), Some("\"a=1, b=2\""));
    assert_eq!(d[1].actual.as_deref(), Some("\"a=1, b=3\""));
    assert_eq!((d[2].change.clone(), d[2].actual.clone()), (Change::Removed, None));
    assert_eq!((d[3].change.clone(), d[3].expected.clone()), (Change::Added, None));
    assert_eq!(c.applied_noise, ["header x-custom"]);
}

#[test]
fn status_and_trailers() {
    let et = [h("X-Sum", "1")];
    let at = [h("x-sum", "2"), h("Date", "x")];
    let c = compare(
        &Expected { status: 200, headers: &[], body: b"", trailers: &et },
        &Actual { status: 500, headers: &[], body: b"", trailers: &at },
        &Noise::compile(&[], true).expect("compile"),
    );
    assert_eq!(locations(&c), ["status", "trailer x-sum"]);
    assert_eq!(c.differences[0].expected.as_deref(), Some("200"));
    assert_eq!(c.differences[0].actual.as_deref(), Some("500"));
    assert_eq!(c.applied_noise, ["header date"]);
}

#[test]
fn json_bodies_compared_structurally() {
    let json_ct = [h("Content-Type", "application/json; charset=utf-8")];
    let rules = noise(&[body_rule("$.created_at")]);
    let c = cmp(&json_ct, br#"{"a":1,"created_at":"x"}"#, &json_ct, b"{ \"created_at\": \"y\", \"a\": 1 }\n", &rules);
    assert!(c.is_match(), "{:?}", c.differences);
    assert_eq!(c.applied_noise, ["body $.created_at"]);

    // Sniffed as JSON without a content type.
    let c = cmp(&[], b"[1, 2]", &[], b"[1,3]", &Noise::none());
    assert_eq!(locations(&c), ["body $[1]"]);

    // A JSON scalar body needs the content type.
    let c = cmp(&json_ct, b"1", &json_ct, b"1.0", &Noise::none());
    assert!(c.is_match());
    let c = cmp(&[], b"1", &[], b"1.0", &Noise::none());
    assert_eq!(locations(&c), ["body"]);

    // Empty on both sides is equal.
    assert!(cmp(&json_ct, b"", &json_ct, b"", &Noise::none()).is_match());
}

#[test]
fn text_body_unified_diff() {
    let e = "line 1\nline 2\nline 3\nline 4\nline 5\nline 6\nline 7\nline 8\n";
    let a = "line 1\nline 2\nline 3\nline 4\nLINE 5\nline 6\nline 7\nline 8\n";
    let c = cmp(&[], e.as_bytes(), &[], a.as_bytes(), &Noise::none());
    assert_eq!(c.differences.len(), 1);
    let d = &c.differences[0];
    assert_eq!(d.location, "body");
    assert_eq!(d.change, Change::Changed);
    assert_eq!(d.expected.as_deref(), Some(e));
    assert_eq!(d.actual.as_deref(), Some(a));
    let detail = d.detail.as_deref().expect("detail");
    assert!(detail.starts_with("@@ "), "{detail}");
    let body: Vec<&str> = detail.lines().skip(1).collect();
    assert_eq!(body, [" line 2", " line 3", " line 4", "-line 5", "+LINE 5", " line 6", " line 7", " line 8"]);

    // Long values are cut, and long diffs too.
    let e: String = (0..200).map(|i| format!("a{i}\n")).collect();
    let a: String = (0..200).map(|i| format!("b{i}\n")).collect();
    let c = cmp(&[], e.as_bytes(), &[], a.as_bytes(), &Noise::none());
    let d = &c.differences[0];
    assert_eq!(d.expected.as_deref().map(|s| s.chars().count()), Some(201));
    assert!(d.expected.as_deref().is_some_and(|s| s.ends_with('…')));
    let detail = d.detail.as_deref().expect("detail");
    assert_eq!(detail.lines().count(), 61);
    assert!(detail.ends_with("(341 more lines)"), "{}", detail.lines().last().unwrap_or(""));
}

#[test]
fn binary_body() {
    let e = [0u8, 1, 2, 0xff, 4];
    let a = [0u8, 1, 2, 0xfe, 4, 5];
    let c = cmp(&[], &e, &[], &a, &Noise::none());
    assert_eq!(
        c.differences,
        vec![difference(
            "body",
            Change::Changed,
            Some("5 bytes; first difference at offset 3: 0xff"),
            Some("6 bytes; first difference at offset 3: 0xfe")
        )]
    );
    let c = cmp(&[], &e, &[], &[0u8, 1, 2, 0xff, 4, 0], &Noise::none());
    assert_eq!(c.differences[0].expected.as_deref(), Some("5 bytes; first difference at offset 5: end of body"));
    assert!(cmp(&[], &e, &[], &e, &Noise::none()).is_match());
}

fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(bytes).expect("write");
    f.flush().expect("flush");
    f
}

fn compare_files(e: &std::path::Path, a: &std::path::Path) -> std::io::Result<Option<Difference>> {
    let (ef, af) = (std::fs::File::open(e)?, std::fs::File::open(a)?);
    let (el, al) = (ef.metadata()?.len(), af.metadata()?.len());
    compare_streams(ef, el, af, al)
}

#[test]
fn compare_files_equal_different_and_size() {
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let e = temp_file(&big);
    let same = temp_file(&big);
    assert_eq!(compare_files(e.path(), same.path()).expect("compare"), None);

    let mut changed = big.clone();
    changed[150_000] ^= 0xff;
    let different = temp_file(&changed);
    let d = compare_files(e.path(), different.path()).expect("compare").expect("a difference");
    assert_eq!(d.location, "body");
    assert_eq!(d.change, Change::Changed);
    let expected_byte = big[150_000];
    assert_eq!(
        d.expected.as_deref(),
        Some(format!("200000 bytes; first difference at offset 150000: 0x{expected_byte:02x}").as_str())
    );
    assert!(d.actual.as_deref().is_some_and(|s| s.contains("offset 150000")));

    let shorter = temp_file(&big[..1000]);
    let d = compare_files(e.path(), shorter.path()).expect("compare").expect("a difference");
    assert_eq!(d.expected.as_deref(), Some("200000 bytes"));
    assert_eq!(d.actual.as_deref(), Some("1000 bytes"));

    let empty1 = temp_file(b"");
    let empty2 = temp_file(b"");
    assert_eq!(compare_files(empty1.path(), empty2.path()).expect("compare"), None);
    assert!(compare_files(e.path(), std::path::Path::new("/nonexistent/doppel")).is_err());
}

fn like_rule(path: &str, shape: &str) -> NoiseRule {
    NoiseRule { body: Some(path.to_string()), like: Some(shape.to_string()), ..NoiseRule::default() }
}

#[test]
fn like_rules_accept_a_new_value_of_the_same_shape_only() {
    let n = noise(&[like_rule("$.id", "{uuid}"), like_rule("$.at", "{timestamp}")]);
    let e = json!({"id": "5f0c4e1e-8a43-4c1a-9a55-0d1b8d2b8f27", "at": "2026-11-27T10:00:00Z", "plan": "free"});
    let a = json!({"id": "00000000-1111-4222-8333-444444444444", "at": "2026-11-28T09:00:00Z", "plan": "free"});
    let c = json_diff(&e, &a, &n);
    assert!(c.is_match(), "{c:?}");
    assert_eq!(c.applied_noise, vec!["body $.id like {uuid}", "body $.at like {timestamp}"]);

    // The neighbour changed, the id lost its shape, the timestamp is gone: all three are reported.
    let a = json!({"id": 17, "plan": "trial"});
    let c = json_diff(&e, &a, &n);
    assert_eq!(locations(&c), vec!["body $.id", "body $.at", "body $.plan"]);
    assert_eq!(c.differences[0].change, Change::TypeChanged);
    let a = json!({"id": "not-a-uuid", "at": "2026-11-27T10:00:00Z", "plan": "free"});
    let c = json_diff(&e, &a, &n);
    assert_eq!(c.differences[0].detail.as_deref(), Some("expected a value like {uuid}"));
}

#[test]
fn with_a_frozen_clock_times_must_also_be_close() {
    let n = noise(&[like_rule("$.at", "{timestamp}")]).with_clock_tolerance(Some(2.0));
    let e = json!({"at": "2026-11-27T10:00:00Z"});
    assert!(json_diff(&e, &json!({"at": "2026-11-27T10:00:01.5Z"}), &n).is_match());
    let c = json_diff(&e, &json!({"at": "2026-11-27T10:00:09Z"}), &n);
    assert_eq!(locations(&c), vec!["body $.at"]);
    assert!(c.differences[0].detail.as_deref().is_some_and(|d| d.contains("frozen clock")), "{c:?}");
}

#[test]
fn header_like_rules_keep_the_header() {
    let rule = NoiseRule {
        header: Some("Set-Cookie".into()),
        like: Some("sid={token:24}; Path=/".into()),
        ..NoiseRule::default()
    };
    let n = noise(&[rule]);
    let e = [h("Set-Cookie", "sid=Ab3dEf6hIj9kLm2nOp5qRs8t; Path=/")];
    let ok = [h("Set-Cookie", "sid=Zz9yXw8vUt7sRq6pOn5mLk4j; Path=/")];
    assert!(cmp(&e, b"", &ok, b"", &n).is_match());
    let c = cmp(&e, b"", &[], b"", &n);
    assert_eq!(locations(&c), vec!["header set-cookie"]);
    let c = cmp(&e, b"", &[h("Set-Cookie", "sid=; Path=/")], b"", &n);
    assert_eq!(locations(&c), vec!["header set-cookie"]);
}

#[test]
fn extra_rules_say_where_they_came_from() {
    let n =
        Noise::compile_with_extra(&[], &[body_rule("$.host")], "differs between target and secondary", false).unwrap();
    let c = json_diff(&json!({"host": "a"}), &json!({"host": "b"}), &n);
    assert_eq!(c.applied_noise, vec!["body $.host (differs between target and secondary)"]);
}
