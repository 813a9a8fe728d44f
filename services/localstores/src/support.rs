//! What both private servers need: a temp dir, a free port, the end of a log for an
//! error message. Nothing here starts or stops a process.

use std::net::TcpListener;
use std::path::Path;

use tempfile::TempDir;

use crate::LocalError;

/// How many log lines an error message carries.
const TAIL_LINES: usize = 20;

/// A fresh temp dir (`/tmp/{prefix}XXXXXX`), deleted when dropped.
pub(crate) fn temp_dir(prefix: &str) -> Result<TempDir, LocalError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|err| LocalError::Failed(format!("cannot create a temp dir: {err}")))
}

/// A free TCP port on 127.0.0.1 (bound, then released: a server must still cope with
/// losing it to someone else before it binds).
pub(crate) fn free_port() -> Result<u16, LocalError> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|err| LocalError::Failed(format!("cannot find a free port on 127.0.0.1: {err}")))
}

/// The last lines of a log file, or a note saying why there are none.
pub(crate) fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail(&String::from_utf8_lossy(&bytes)),
        Err(err) => format!("(no log at {}: {err})", path.display()),
    }
}

/// The last lines of `text`, indented so they read as a quote under the message.
pub(crate) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "    (empty)".to_owned();
    }
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..]
        .iter()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_only_the_last_lines() {
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let tail = tail(&text);
        assert_eq!(tail.lines().count(), TAIL_LINES);
        assert!(tail.starts_with("    line 11"));
        assert!(tail.ends_with("    line 30"));
    }

    #[test]
    fn tail_of_nothing_says_empty() {
        assert_eq!(tail("\n \n"), "    (empty)");
    }

    #[test]
    fn free_port_is_not_zero() {
        assert_ne!(free_port().expect("loopback is available in tests"), 0);
    }
}
