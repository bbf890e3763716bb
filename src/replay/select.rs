//! Which tests of a set run: `--test` globs and `--tag` labels pick them, and the tests whose responses
//! feed a picked test's chain templates run too (before it, in recorded order), or its templates would have
//! nothing to take.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::chain::Reference;
use crate::store::{LoadedSet, TestCase};

/// `--test` patterns and `--tag` labels; both empty selects every test.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Globs (`*`, `?`) over test names, or over `set/name` when the pattern holds a `/`.
    pub tests: Vec<String>,
    pub tags: Vec<String>,
}

impl Selection {
    pub fn is_all(&self) -> bool {
        self.tests.is_empty() && self.tags.is_empty()
    }

    /// A test is picked when it matches one of the patterns (if any) and has one of the tags (if any).
    pub fn picks(&self, set: &str, test: &TestCase) -> bool {
        let by_name = self.tests.is_empty()
            || self
                .tests
                .iter()
                .any(|p| if p.contains('/') { glob(p, &format!("{set}/{}", test.name)) } else { glob(p, &test.name) });
        let by_tag = self.tags.is_empty() || self.tags.iter().any(|t| test.tags.contains(t));
        by_name && by_tag
    }

    /// How the selection reads in messages: `--test get-* --tag smoke`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.tests.iter().map(|t| format!("--test {t}")).collect();
        parts.extend(self.tags.iter().map(|t| format!("--tag {t}")));
        parts.join(" ")
    }
}

/// Shell-style glob with `*` (any run of characters) and `?` (one character). Written here because these
/// two wildcards are all test names need; a glob crate would bring path semantics that do not apply.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matching with one backtrack point for the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The tests to run in one set, and the chain values each produces.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Indexes into the set's tests, in recorded order.
    pub tests: Vec<usize>,
    /// Tests that run only because a selected test uses a value they produce.
    pub feeders: BTreeSet<usize>,
    /// Producing test name -> the chain names it binds, with their recorded values.
    pub produces: HashMap<String, Vec<(String, Value)>>,
}

impl Plan {
    pub fn new(set: &LoadedSet, selection: &Selection) -> Plan {
        let by_name: HashMap<&str, usize> =
            set.tests.iter().enumerate().map(|(i, (_, t))| (t.name.as_str(), i)).collect();
        let picked: BTreeSet<usize> =
            (0..set.tests.len()).filter(|i| selection.picks(&set.name, &set.tests[*i].1)).collect();
        let mut all = picked.clone();
        let mut todo: Vec<usize> = picked.iter().copied().collect();
        while let Some(i) = todo.pop() {
            for name in set.tests[i].1.chain.keys() {
                if let Some(r) = Reference::parse(name)
                    && let Some(&p) = by_name.get(r.test.as_str())
                    && all.insert(p)
                {
                    todo.push(p);
                }
            }
        }
        let mut produces: HashMap<String, Vec<(String, Value)>> = HashMap::new();
        for &i in &all {
            for (name, recorded) in &set.tests[i].1.chain {
                if let Some(r) = Reference::parse(name) {
                    let list = produces.entry(r.test).or_default();
                    if !list.iter().any(|(n, _)| n == name) {
                        list.push((name.clone(), recorded.clone()));
                    }
                }
            }
        }
        let feeders = all.difference(&picked).copied().collect();
        Plan { tests: all.into_iter().collect(), feeders, produces }
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        assert!(glob("get-*", "get-api-users"));
        assert!(glob("*users*", "post-api-users-2"));
        assert!(glob("get-api-items-?", "get-api-items-7"));
        assert!(!glob("get-api-items-?", "get-api-items-17"));
        assert!(glob("test-set-0/post-*", "test-set-0/post-api-login"));
        assert!(!glob("post-*", "get-api-users"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "a-x-b-y-c"));
        assert!(!glob("a*b*c", "a-x-b-y"));
    }
}
