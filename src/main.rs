fn main() -> std::process::ExitCode {
    cutover_cli::main()
}
