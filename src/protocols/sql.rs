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
    fn short_statements_are_one_line() {
        assert_eq!(short("SELECT  1\n  FROM t"), "SELECT 1 FROM t");
        assert!(short(&"x ".repeat(200)).ends_with("..."));
    }
}
