//! Exit codes and the one place that turns an error into a message on stderr.

use std::process::ExitCode;

/// Run-time failure.
pub const FAILURE: u8 = 1;
/// Bad usage or bad input.
pub const BAD_INPUT: u8 = 2;

/// An error caused by the caller's input (exit code 2), as opposed to a run-time failure (exit 1).
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// Standard output cannot be written: a reader that went away (a closed pipe) ends the program
/// quietly with success, as `head` expects; any other failure is reported and exits 1.
pub fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to standard output: {e}");
    std::process::exit(i32::from(FAILURE))
}

/// Shorthand for a bad-input error with a message.
pub fn bad_input(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadInput(msg.into()))
}

/// Prints the error chain as one line on stderr and picks the exit code.
pub fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            let code = if e.chain().any(|c| c.is::<BadInput>()) {
                BAD_INPUT
            } else {
                FAILURE
            };
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(code)
        }
    }
}

/// The chain joined with ": ". A cause whose text the message before it already ends with
/// (errors that print their source as well as return it) is said once, not twice.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if line.is_empty() {
            line = cause;
        } else if !line.ends_with(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}
