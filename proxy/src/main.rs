//! The `edgepop` binary: see `edgepop::main`.

fn main() -> std::process::ExitCode {
    edgepop::main()
}
