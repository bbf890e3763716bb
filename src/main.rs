fn main() {
    std::process::exit(doppel::cli::main());
}
