//! The record summary printed when a recording ends.

use super::RecordOutcome;

impl RecordOutcome {
    /// What was recorded, for the terminal.
    pub(crate) fn print_summary(&self) {
        let o = self;
        let mocks: usize = o.summary.mocks_by_kind.values().sum();
        let kinds: Vec<String> = o.summary.mocks_by_kind.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        println!(
            "doppel: recorded {} test{} and {} mock{}{} into {}",
            o.summary.tests,
            if o.summary.tests == 1 { "" } else { "s" },
            mocks,
            if mocks == 1 { "" } else { "s" },
            if kinds.is_empty() { String::new() } else { format!(" ({})", kinds.join(", ")) },
            o.dir.display()
        );
        if o.summary.failed > 0 {
            println!(
                "doppel: {} exchange{} could not be stored (first error: {}); everything listed above is complete and loadable",
                o.summary.failed,
                if o.summary.failed == 1 { "" } else { "s" },
                o.summary.errors.first().map(String::as_str).unwrap_or("unknown")
            );
        }
        if o.summary.degraded > 0 {
            println!(
                "doppel: {} connection{} could not be followed and {} recorded as opaque bytes from there on \
                 (replayed byte for byte); first: {}",
                o.summary.degraded,
                if o.summary.degraded == 1 { "" } else { "s" },
                if o.summary.degraded == 1 { "was" } else { "were" },
                o.summary.degraded_reasons.join("; ")
            );
        }
        let a = &o.annotated;
        if a.chained_values > 0 {
            println!(
                "doppel: chained {} value{} from earlier responses into {} test{} (templates {{{{ chain.* }}}}; `chain:` \
                 in the test files)",
                a.chained_values,
                if a.chained_values == 1 { "" } else { "s" },
                a.chained_tests,
                if a.chained_tests == 1 { "" } else { "s" }
            );
        }
        if a.volatile_fields > 0 {
            println!(
                "doppel: flagged {} volatile field{} in {} test{} (timestamps, ids, tokens; `volatile:` in the test files)",
                a.volatile_fields,
                if a.volatile_fields == 1 { "" } else { "s" },
                a.volatile_tests,
                if a.volatile_tests == 1 { "" } else { "s" }
            );
        }
        for (host, why) in &o.undecrypted {
            println!("doppel: TLS to {host} could not be decrypted ({why}); later connections were recorded encrypted");
        }
    }
}
