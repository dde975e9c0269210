//! The `shardgate` binary: everything lives in the library (`shardgate::main_entry`).

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    shardgate::main_entry()
}
