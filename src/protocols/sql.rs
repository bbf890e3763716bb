//! What the two SQL protocols (PostgreSQL, MySQL) share: telling statements that change data from reads.

/// Statements that change data or schema. `COPY` and `WITH` are decided by what follows.
const WRITES: &[&str] = &[
    "INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "UPSERT", "CREATE", "ALTER", "DROP", "TRUNCATE", "RENAME",
    "GRANT", "REVOKE", "LOAD", "COMMENT", "REINDEX", "CLUSTER", "VACUUM", "REFRESH",
];

/// Whether `sql` changes data or schema: `INSERT`, `UPDATE`, `DELETE`, `MERGE`, DDL, `COPY ... FROM`, a
/// `WITH` whose body writes. A recorded one that a replayed test no longer sends is a missing side effect.
pub(crate) fn is_write(sql: &str) -> bool {
    let words = words(sql);
    match words.first().map(String::as_str) {
        Some("WITH") => words.iter().any(|w| matches!(w.as_str(), "INSERT" | "UPDATE" | "DELETE" | "MERGE")),
        Some("COPY") => words.iter().any(|w| w == "FROM") && !words.iter().any(|w| w == "TO"),
        Some(first) => WRITES.contains(&first),
        None => false,
    }
}

/// The statement on one line, cut to a readable length, for messages.
pub(crate) fn short(sql: &str) -> String {
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(120) {
        Some((cut, _)) => format!("{}...", &one_line[..cut]),
        None => one_line,
    }
}

/// A statement split into its shape and its literals: `INSERT INTO t VALUES ('a', 42)` is the shape
/// `INSERT INTO t VALUES (?, ?)` with the literals `a` and `42`. Apps that write values into the SQL text
/// (mysqljs, mysql2 and PyMySQL format queries on the client; PostgreSQL simple queries) are matched on the
/// shape, then literal by literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Literals {
    pub shape: String,
    /// String literals unescaped, numbers as written.
    pub values: Vec<String>,
}

/// Splits `sql` into its shape and literals. Written by hand: only literal boundaries matter (quotes with
/// backslash or doubled-quote escapes, numbers, comments), and a full SQL parser crate costs a fifth of
/// doppel's clean test build for that.
pub(crate) fn literals(sql: &str) -> Literals {
    let mut shape = String::new();
    let mut values = Vec::new();
    let mut chars = sql.chars().peekable();
    let mut last = ' ';
    let push = |shape: &mut String, text: &str| {
        if text == " " && (shape.is_empty() || shape.ends_with(' ')) {
            return;
        }
        shape.push_str(text);
    };
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => push(&mut shape, " "),
            '-' if chars.peek() == Some(&'-') => {
                chars.by_ref().find(|c| *c == '\n');
                push(&mut shape, " ");
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                chars.by_ref().find(|c| std::mem::replace(&mut prev, *c) == '*' && *c == '/');
                push(&mut shape, " ");
            }
            '\'' => {
                let mut value = String::new();
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => value.extend(chars.next().map(unescape)),
                        '\'' if chars.peek() == Some(&'\'') => {
                            chars.next();
                            value.push('\'');
                        }
                        '\'' => break,
                        d => value.push(d),
                    }
                }
                values.push(value);
                push(&mut shape, "?");
            }
            '"' | '`' => {
                // A quoted identifier stays in the shape.
                shape.push(c);
                for d in chars.by_ref() {
                    shape.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            c if c.is_ascii_digit() && !(last.is_alphanumeric() || last == '_' || last == '$') => {
                let mut value = String::from(c);
                while let Some(&d) = chars.peek() {
                    if d.is_ascii_alphanumeric() || d == '.' {
                        value.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                values.push(value);
                push(&mut shape, "?");
            }
            c => shape.push(c),
        }
        last = c;
    }
    let shape = shape.trim().trim_end_matches(';').trim_end().to_string();
    Literals { shape, values }
}

/// The character a backslash escape in a MySQL string stands for.
fn unescape(c: char) -> char {
    match c {
        'n' => '\n',
        't' => '\t',
        'r' => '\r',
        '0' => '\0',
        'Z' => '\u{1a}',
        c => c,
    }
}

/// The keywords and identifiers of `sql`, upper-cased, outside comments, string literals and quoted
/// identifiers (enough to classify a statement; a hand-written scan because only word boundaries matter).
fn words(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    let mut word = String::new();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c.to_ascii_uppercase());
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        match c {
            '-' if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            '\'' | '"' | '`' => {
                let mut escaped = false;
                for d in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if d == '\\' {
                        escaped = true;
                    } else if d == c {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads() {
        for w in [
            "INSERT INTO orders (sku) VALUES ($1)",
            "  /* app */ update users set name = 'x'",
            "-- note\nDELETE FROM carts WHERE id = 1",
            "WITH moved AS (DELETE FROM a RETURNING *) SELECT * FROM moved",
            "COPY items (a, b) FROM STDIN",
            "create table t (id int)",
            "REPLACE INTO kv VALUES (1, 'a')",
        ] {
            assert!(is_write(w), "{w}");
        }
        for r in [
            "SELECT * FROM orders WHERE note = 'INSERT INTO x'",
            "select 1 -- delete from x",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "COPY (SELECT * FROM items) TO STDOUT",
            "BEGIN",
            "SET search_path TO public",
            "SELECT `update` FROM t",
            "",
        ] {
            assert!(!is_write(r), "{r}");
        }
    }

    #[test]
    fn literals_are_split_from_the_shape() {
        let l = literals("INSERT INTO users (email, hash, n)\n  VALUES ('a@b.c', '$2b$04$x\\'y', 42); ");
        assert_eq!(l.shape, "INSERT INTO users (email, hash, n) VALUES (?, ?, ?)");
        assert_eq!(l.values, vec!["a@b.c", "$2b$04$x'y", "42"]);
        let l = literals("SELECT `t1`.`c2` FROM t1 /* 9 */ WHERE x = 'it''s' AND y = -3.5 -- 7\nLIMIT 10");
        assert_eq!(l.shape, "SELECT `t1`.`c2` FROM t1 WHERE x = ? AND y = -? LIMIT ?");
        assert_eq!(l.values, vec!["it's", "3.5", "10"]);
        assert_eq!(literals("SELECT $1, col2 FROM t").values, Vec::<String>::new());
    }

    #[test]
    fn short_statements_are_one_line() {
        assert_eq!(short("SELECT  1\n  FROM t"), "SELECT 1 FROM t");
        assert!(short(&"x ".repeat(200)).ends_with("..."));
    }
}
