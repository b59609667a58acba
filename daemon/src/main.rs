//! The `ptlens` command line.

use clap::Parser;

#[derive(Parser)]
#[command(name = "ptlens", version, about = "Intel PT recordings from Linux perf, decoded")]
enum Command {}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("PTLENS_LOG"))
        .with_writer(std::io::stderr)
        .init();
    match Command::parse() {}
}
