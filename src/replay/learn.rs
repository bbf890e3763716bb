//! `--learn-noise`: the same build replayed several times; what differs between its answers is noise.

use super::judge::rejudge;
use super::{Planned, ReplayOptions, Rules, default_headers, header_line, run_once};
use crate::capture::Capture;
use crate::error::{Error, Result};
use crate::noise::learn::{self, Observation};
use crate::report::{self, SetReport};
use crate::store::{self, NoiseRule};

/// Replays a set `runs` times against the same build, writes the fields that differ between the runs into
/// the test files as learned rules, and judges the last run with them.
pub(crate) async fn learn_set(
    capture: Option<&dyn Capture>,
    planned: &Planned,
    opts: &ReplayOptions,
    tmp: &std::path::Path,
    runs: usize,
) -> Result<SetReport> {
    let Planned { set, rules, plan } = planned;
    if !opts.quiet {
        header_line(set, plan, if opts.target.is_some() { 0 } else { set.mocks.len() });
        println!("  learning noise: {runs} runs of the same build");
    }
    let mut all = Vec::new();
    for _ in 0..runs {
        all.push(run_once(capture, planned, opts, tmp, true).await?);
    }
    let today = store::now_rfc3339().chars().take(10).collect::<String>();
    let mut rules = rules.to_vec();
    let mut learned_lines = Vec::new();
    for (k, &i) in plan.tests.iter().enumerate() {
        let (file, test) = &set.tests[i];
        let seen: Vec<Observation> =
            all.iter().filter_map(|run| run.answers.get(k)?.as_ref().map(|a| a.normalized.clone())).collect();
        if seen.len() < 2 {
            continue;
        }
        let learning = learn::learn(&seen, &rules[i].list, default_headers(&opts.config), &today);
        for u in &learning.unlearnable {
            if !opts.quiet {
                println!(
                    "  {} {}: {u} (not learned: it may be a real difference)",
                    console::style("warning:").yellow(),
                    test.name
                );
            }
        }
        let fresh: Vec<NoiseRule> = learning
            .rules
            .into_iter()
            .filter(|r| {
                !test.noise.iter().any(|n| n.header == r.header && n.body == r.body && n.ignore_order == r.ignore_order)
            })
            .collect();
        if fresh.is_empty() {
            continue;
        }
        let mut updated = test.clone();
        updated.noise.extend(fresh.iter().cloned());
        opts.store.rewrite_test(file, &updated)?;
        let described: Vec<String> = fresh.iter().map(describe_learned).collect();
        if !opts.quiet {
            println!("  {} {}: {}", console::style("learned").magenta().bold(), test.name, described.join(", "));
        }
        learned_lines.extend(described.iter().map(|d| format!("{}: {d}", test.name)));
        rules[i] = Rules::new(&opts.config, &updated, opts.freeze_time)
            .map_err(|e| Error::input(format!("{}: {e}", file.display())))?;
    }
    let Some(mut last) = all.pop() else { return Ok(SetReport::default()) };
    for (k, &i) in plan.tests.iter().enumerate() {
        if let (Some(result), Some(Some(answer))) = (last.report.results.get_mut(k), last.answers.get(k)) {
            rejudge(set, result, answer, &rules[i].noise);
        }
        if let Some(result) = last.report.results.get(k)
            && !opts.quiet
        {
            report::print_result(result);
        }
    }
    last.report.learned = learned_lines;
    Ok(last.report)
}

/// `body $.shard (seen 3, 7)`, `body $.tags (ignore order)`.
fn describe_learned(r: &NoiseRule) -> String {
    let what = match (&r.header, &r.body) {
        (Some(h), _) => format!("header {h}"),
        (None, Some(b)) => format!("body {b}"),
        (None, None) => String::new(),
    };
    if r.ignore_order {
        return format!("{what} (ignore order)");
    }
    match r.learned.as_ref().filter(|l| !l.seen.is_empty()) {
        Some(l) => format!("{what} (seen {})", l.seen.join(", ")),
        None => what,
    }
}
