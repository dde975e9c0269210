//! The `shardgate` binary: everything lives in the library (`shardgate::main_entry`).

fn main() -> std::process::ExitCode {
    shardgate::main_entry()
}
