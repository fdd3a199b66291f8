//! `tessera`: the command-line client (see `tessera --help`).

mod cli;
mod eval_cmd;
mod keys_cmd;
mod run;
mod train_cmd;

use clap::Parser;
use std::process::ExitCode;
use tessera_client::exit;

fn main() -> ExitCode {
    tessera_client::quiet_on_closed_pipe();
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // Help and version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tessera: {}", usage_error_line(&e.render().to_string()));
            return ExitCode::from(exit::BAD_INPUT);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tessera: cannot start the async runtime: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    match runtime.block_on(run::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("tessera: {}", f.message.replace('\n', " "));
            ExitCode::from(f.code)
        }
    }
}

/// Folds clap's multi-line usage error into one line, since every error of
/// the CLI is one stderr line.
fn usage_error_line(rendered: &str) -> String {
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.is_empty())
        .collect();
    format!(
        "{} (see tessera --help)",
        parts.join(" ").trim_start_matches("error: ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_fold_into_one_line() {
        let text = "error: the following required arguments were not provided:\n  --user <USER>\n\nUsage: tessera search --user <USER> <TENANT> <QUERY>...\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_error_line(text),
            "the following required arguments were not provided: --user <USER> (see tessera --help)"
        );
    }
}
