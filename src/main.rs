//! The `xlreg` binary: everything lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    xlreg::cli::main()
}
