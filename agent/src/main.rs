//! `sloth-agent`: serves tasks from authenticated masters over QUIC.

mod audit;
mod config;
mod credentials;
mod enroll;
mod pki;
mod server;
mod worker;

use clap::Parser;

/// Lua states allocate and free many small objects; mimalloc is faster at it than
/// the system allocator (see docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// After a big task's state is dropped: the memory it held goes back to the system,
/// or an agent that once ran a task of hundreds of MiB would keep them.
fn release_memory() {
    // SAFETY: mi_collect takes no pointers; it only walks mimalloc's own structures.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> std::process::ExitCode {
    let args = config::Args::parse();
    sloth_lua::executor::on_big_state_dropped(release_memory);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLOTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cfg = match config::Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sloth-agent: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match sloth_transport::process::runtime(cfg.max_tasks as usize + 16) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sloth-agent: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    // The server runs as a task on the worker thread, not on this thread inside
    // `block_on`: a new connection then wakes no second thread to be accepted.
    let served = rt.block_on(async {
        tokio::spawn(server::serve(cfg))
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the server task failed: {e}")))
    });
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sloth-agent: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
