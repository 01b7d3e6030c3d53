//! The kubeboot binary: parse the command line, run the command, exit with its code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = kubeboot::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let exit = runtime.block_on(kubeboot::cmd::main(cli));
    // Don't wait for detached tasks (a second Ctrl-C listener, the TUI's input reader).
    runtime.shutdown_background();
    std::process::ExitCode::from(exit as u8)
}
