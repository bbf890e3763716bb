//! After a recording: find what will not repeat in replay and say so in the test files. Values a response
//! produced and a later request used become chain templates; values that look volatile become `volatile:`
//! rules; `--tag` labels are added. Runs on the finished set, so it sees every test in recorded order.

use crate::chain;
use crate::error::Result;
use crate::noise::volatile;
use crate::store::{Store, TestCase, parse_time_ms};

/// What to annotate.
#[derive(Debug, Clone)]
pub struct Annotate {
    pub chain: bool,
    pub volatile: bool,
    pub tags: Vec<String>,
}

impl Default for Annotate {
    fn default() -> Annotate {
        Annotate { chain: true, volatile: true, tags: Vec::new() }
    }
}

/// What was written.
#[derive(Debug, Default, Clone, Copy)]
pub struct Annotated {
    pub chained_values: usize,
    pub chained_tests: usize,
    pub volatile_fields: usize,
    pub volatile_tests: usize,
}

/// Annotates test set `name` in `store`, rewriting the tests that changed.
pub fn annotate_set(store: &Store, name: &str, opts: &Annotate) -> Result<Annotated> {
    let set = store.load_set(name)?;
    let mut tests: Vec<TestCase> = set.tests.iter().map(|(_, t)| t.clone()).collect();
    let summary = annotate(&mut tests, opts);
    for ((path, before), after) in set.tests.iter().zip(&tests) {
        if before != after {
            store.rewrite_test(path, after)?;
        }
    }
    Ok(summary)
}

/// Annotates tests in recorded order, in memory.
pub fn annotate(tests: &mut [TestCase], opts: &Annotate) -> Annotated {
    let mut out = Annotated::default();
    if opts.chain {
        let d = chain::detect::detect(tests);
        out.chained_values = tests.iter().map(|t| t.chain.len()).sum();
        out.chained_tests = d.tests;
    }
    for t in tests.iter_mut() {
        if opts.volatile {
            t.volatile = match t.http() {
                Some((_, response)) => volatile::detect(response, parse_time_ms(&t.recorded_at)),
                None => Vec::new(),
            };
            if !t.volatile.is_empty() {
                out.volatile_fields += t.volatile.len();
                out.volatile_tests += 1;
            }
        }
        for tag in &opts.tags {
            if !t.tags.contains(tag) {
                t.tags.push(tag.clone());
            }
        }
    }
    out
}
