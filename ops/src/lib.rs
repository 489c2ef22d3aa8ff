//! ferryctl, the ferrymq admin CLI, as a library: flags ([`cli`]), one module per command
//! group ([`cmd`]), and the rendering helpers ([`output`], [`duration`]). `main.rs` only parses,
//! starts a runtime and prints the error line.

pub mod cli;
pub mod cmd;
pub mod duration;
pub mod output;

pub use cmd::run;

/// An error and its causes as one line: `context: cause: cause`, skipping a cause whose text
/// the line already holds (many errors repeat their source in their own message).
pub fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    one_line(&line)
}

/// A clap usage error as one line, without the `error:` prefix, the usage block and the
/// "for more information" hint.
pub fn usage_error_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let line = parts.join(" ");
    one_line(line.strip_prefix("error: ").unwrap_or(&line))
}

/// Collapses whitespace runs (newlines included) to single spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn error_chains_fit_one_line_without_repeats() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused\nreally");
        let e = anyhow::Error::new(io).context("cannot connect to h:1: refused\nreally");
        assert_eq!(error_line(&e), "cannot connect to h:1: refused really");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_line(&e), "outer: inner");
    }

    #[test]
    fn usage_errors_fit_one_line() {
        let err = crate::cli::Cli::try_parse_from([
            "ferryctl",
            "topic",
            "create",
            "t",
            "--partitions",
            "0",
        ])
        .unwrap_err();
        let line = usage_error_line(&err);
        assert!(line.starts_with("invalid value '0' for '--partitions"), "{line}");
        assert!(!line.contains('\n'));
        let err = crate::cli::Cli::try_parse_from(["ferryctl", "topic", "describe"]).unwrap_err();
        let line = usage_error_line(&err);
        assert!(line.contains("required arguments were not provided"), "{line}");
        assert!(line.contains("<NAME>"), "{line}");
    }
}
