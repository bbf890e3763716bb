//! The mocks of one test set during a replay: which were used, which requests missed, and the values
//! that stand for recorded ones.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::protocols::Mock;

/// A request the mocks could not answer, with when it happened, so the test running then can fail.
#[derive(Debug, Clone)]
pub struct Miss {
    pub at: Instant,
    pub what: String,
}

/// Shared state of a replay: the mocks of the test set, which were used, and the misses.
pub struct MockPool {
    pub mocks: Vec<Mock>,
    /// When each mock started while recording, in milliseconds since the epoch.
    started_ms: Vec<Option<f64>>,
    /// The recorded time window of the test being replayed: mocks recorded inside it are preferred.
    window: Mutex<Option<(f64, f64)>>,
    used: Mutex<Vec<u32>>,
    misses: Mutex<Vec<Miss>>,
    /// Requests answered by a mock whose recorded values differ from the live ones in volatile-looking
    /// places (a fresh password hash, a new UUID): said under the test, never silent.
    tolerated: Mutex<Vec<Miss>>,
    /// Recorded value -> value the app has now, for chained values (ids, tokens) that the app produced anew
    /// in this replay: a mock recorded with the old value matches a request carrying the new one.
    rewrites: Mutex<Vec<(String, String)>>,
    /// Directory of the test set, for file bodies.
    pub dir: std::path::PathBuf,
    /// What each mock wrote (see `Protocol::recorded_write`); `None` for reads.
    writes: Vec<Option<String>>,
}

/// A write recorded during a test that the replayed build did not make.
#[derive(Debug, Clone, PartialEq)]
pub struct UnmadeWrite {
    pub mock: usize,
    /// The mock's kind and destination (`postgres`, `db:5432`).
    pub kind: String,
    pub dest: String,
    pub what: String,
}

impl MockPool {
    pub fn new(mocks: Vec<Mock>, dir: std::path::PathBuf) -> MockPool {
        let n = mocks.len();
        let started_ms = mocks.iter().map(|m| crate::store::parse_time_ms(&m.started_at)).collect();
        let writes = mocks
            .iter()
            .map(|m| super::registry().iter().find(|p| p.name() == m.kind).and_then(|p| p.recorded_write(m)))
            .collect();
        MockPool {
            writes,
            mocks,
            started_ms,
            window: Mutex::new(None),
            used: Mutex::new(vec![0; n]),
            misses: Mutex::new(Vec::new()),
            tolerated: Mutex::new(Vec::new()),
            rewrites: Mutex::new(Vec::new()),
            dir,
        }
    }

    /// Sets the recorded -> live values of chained values known so far.
    pub fn set_rewrites(&self, rewrites: Vec<(String, String)>) {
        *lock(&self.rewrites) = rewrites;
    }

    pub fn rewrites(&self) -> Vec<(String, String)> {
        lock(&self.rewrites).clone()
    }

    /// Whether a live value may stand for the value mock `i` recorded: equal; or a chained value the app
    /// produced anew in this replay (see `set_rewrites`); or the recorded value looked volatile (a UUID, a
    /// timestamp, a token) and the live one has the same shape. Protocols use it only after an exact match
    /// found nothing.
    pub fn stands_for(&self, i: usize, recorded: &str, live: &str) -> bool {
        recorded == live || self.rewritten(recorded, live) || self.shape_stand_in(i, recorded, live).is_some()
    }

    fn rewritten(&self, recorded: &str, live: &str) -> bool {
        lock(&self.rewrites).iter().any(|(r, l)| r == recorded && l == live)
    }

    /// What values of the recorded one's shape are (`password hashes`) when `live` matches only by that shape.
    fn shape_stand_in(&self, i: usize, recorded: &str, live: &str) -> Option<&'static str> {
        let around = self.recorded_at_s(i).unwrap_or(0.0);
        crate::noise::shape::Shape::of(recorded, around).filter(|s| s.matches(live)).map(|s| s.plural())
    }

    /// Notes, for the test running now, which values of mock `i` only matched `what` by shape (a fresh salt
    /// in a password hash): `values` are (place, recorded, live); equal and chained values are not noted.
    /// A match by shape is never silent.
    pub fn tolerate_stand_ins(&self, i: usize, what: &str, values: impl IntoIterator<Item = (String, String, String)>) {
        let mut places = Vec::new();
        let mut kinds: Vec<&str> = Vec::new();
        for (place, recorded, live) in values {
            if recorded == live || self.rewritten(&recorded, &live) {
                continue;
            }
            if let Some(kind) = self.shape_stand_in(i, &recorded, &live) {
                places.push(place);
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
        }
        if !places.is_empty() {
            self.tolerate(format!("matched {what} ignoring {}: {}", places.join(", "), kinds.join(", ")));
        }
    }

    /// Notes a request answered despite volatile-looking differences, for the test running now.
    pub fn tolerate(&self, what: String) {
        lock(&self.tolerated).push(Miss { at: Instant::now(), what });
    }

    pub fn tolerated(&self) -> Vec<Miss> {
        lock(&self.tolerated).clone()
    }

    /// When mock `i` was recorded, in seconds since the epoch.
    pub fn recorded_at_s(&self, i: usize) -> Option<f64> {
        self.started_ms.get(i).copied().flatten().map(|ms| ms / 1000.0)
    }

    /// Sets the recorded window (start and end, ms since the epoch) of the test about to run.
    pub fn set_window(&self, window: Option<(f64, f64)>) {
        *lock(&self.window) = window;
    }

    /// Picks, among `candidates` (indexes in recorded order), the first unused one recorded during the
    /// current test's window, else the first unused one; when all were used, the last one again. Marks it
    /// used and tells whether it was a reuse.
    pub fn take(&self, candidates: &[usize]) -> Option<(usize, bool)> {
        let mut used = lock(&self.used);
        let (i, reused) = self.choose(candidates, &used)?;
        used[i] += 1;
        Some((i, reused))
    }

    /// The mock `take` would pick now, without taking it.
    pub fn peek(&self, candidates: &[usize]) -> Option<usize> {
        let used = lock(&self.used);
        self.choose(candidates, &used).map(|(i, _)| i)
    }

    /// Whether mock `i` was recorded during `window` (a millisecond of slack either side).
    fn recorded_during(&self, i: usize, window: Option<(f64, f64)>) -> bool {
        match (window, self.started_ms[i]) {
            (Some((from, to)), Some(t)) => t >= from - 1.0 && t <= to + 1.0,
            _ => false,
        }
    }

    fn choose(&self, candidates: &[usize], used: &[u32]) -> Option<(usize, bool)> {
        let window = *lock(&self.window);
        let in_window = |i: &usize| self.recorded_during(*i, window);
        let pick = candidates
            .iter()
            .copied()
            .find(|i| used[*i] == 0 && in_window(i))
            .or_else(|| candidates.iter().copied().find(|i| used[*i] == 0));
        match pick {
            Some(i) => Some((i, false)),
            None => Some((*candidates.last()?, true)),
        }
    }

    /// Whether any mock was recorded for `dest`.
    pub fn targets(&self, dest: &str) -> bool {
        self.mocks.iter().any(|m| m.dest == dest)
    }

    pub fn miss(&self, protocol: &'static str, dest: &str, mut what: String) {
        tracing::debug!("mock miss ({protocol}, {dest}): {what}");
        if !self.targets(dest) {
            what.push_str(&format!(" (nothing was recorded for {dest}: no mock targets it)"));
        }
        lock(&self.misses).push(Miss { at: Instant::now(), what });
    }

    pub fn misses(&self) -> Vec<Miss> {
        lock(&self.misses).clone()
    }

    /// How many times each mock was used.
    pub fn usage(&self) -> Vec<u32> {
        lock(&self.used).clone()
    }

    /// The writes recorded during the current test's window (`set_window`) that no request has used.
    pub fn unmade_writes(&self) -> Vec<UnmadeWrite> {
        let window = *lock(&self.window);
        let used = lock(&self.used);
        (0..self.mocks.len())
            .filter(|&i| used[i] == 0 && self.recorded_during(i, window))
            .filter_map(|i| {
                let what = self.writes[i].clone()?;
                let m = &self.mocks[i];
                Some(UnmadeWrite { mock: i, kind: m.kind.clone(), dest: m.dest.clone(), what })
            })
            .collect()
    }

    pub fn of_kind(&self, kind: &str) -> impl Iterator<Item = (usize, &Mock)> {
        self.mocks.iter().enumerate().filter(move |(_, m)| m.kind == kind)
    }
}

/// The pool's locks survive a panic on another connection's task: what they hold (which mocks were used,
/// the misses) stays true, and losing a miss would turn a failing test green.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_miss_is_kept_after_a_panic_while_the_pool_was_locked() {
        let pool = std::sync::Arc::new(MockPool::new(Vec::new(), std::env::temp_dir()));
        let p = pool.clone();
        let crashed = std::thread::spawn(move || {
            let _held = p.misses.lock();
            panic!("a mock server task panics while it holds the lock");
        })
        .join();
        assert!(crashed.is_err());
        pool.miss("http", "api:80", "GET /x was not recorded".into());
        assert_eq!(pool.misses().len(), 1, "the miss must not be dropped");
        assert_eq!(pool.take(&[]), None);
    }

    #[test]
    fn a_miss_to_a_destination_nothing_targets_says_so() {
        let mock = Mock::new("http", 1, "api:80", 1, "2026-11-27T10:00:00.000Z".into(), 1.0);
        let pool = MockPool::new(vec![mock], std::env::temp_dir());
        pool.miss("http", "api:80", "GET /a was not recorded".into());
        pool.miss("http", "other:80", "GET /b was not recorded".into());
        let misses = pool.misses();
        assert_eq!(misses[0].what, "GET /a was not recorded");
        assert_eq!(misses[1].what, "GET /b was not recorded (nothing was recorded for other:80: no mock targets it)");
    }
}
