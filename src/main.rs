fn main() -> std::process::ExitCode {
    tpa::cli::main()
}
