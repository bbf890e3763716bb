fn main() {
    // The sandbox helper must start before any thread exists: unshare(CLONE_NEWUSER) refuses threaded callers.
    if std::env::args().nth(1).as_deref() == Some("__sandbox") {
        doppel::capture::sandbox::helper::main();
    }
    std::process::exit(doppel::cli::main());
}
