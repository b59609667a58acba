//! The `ptlens` command line.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("PTLENS_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let command = cli::Command::parse();
    match command.run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // A closed pipe (`ptlens dump … | head`) is not an error worth a message.
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return std::process::ExitCode::SUCCESS;
                }
            }
            eprintln!("ptlens: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
