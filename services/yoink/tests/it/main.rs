//! Tests of the `yoink` binary as an operator runs it: real processes, killed and
//! restarted, against real Redis and PostgreSQL.

mod archive;
mod cluster;
mod durability;
mod holds;
mod nemesis;
mod observability;
mod one_host;
mod processes;
mod reconcile;
mod rollback;
mod sales;
mod start_order;
mod trim;

pub const YOINK: &str = env!("CARGO_BIN_EXE_yoink");

/// Sends `signal` (e.g. "-KILL", "-TERM") to a child process.
pub fn signal(child: &std::process::Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(signal)
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} failed");
}
