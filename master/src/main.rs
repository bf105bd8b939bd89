//! `sloth-master`: runs deploy scripts across a fleet of `sloth-agent`s.

use clap::Parser;

/// Lua states allocate and free many small objects; mimalloc is faster at it than
/// the system allocator (see docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLOTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = sloth_master::cli::Cli::parse();
    let code = sloth_master::cli::main(args);
    std::process::ExitCode::from(code as u8)
}
