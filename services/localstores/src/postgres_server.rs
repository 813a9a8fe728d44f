//! A private PostgreSQL: `initdb` into a temp dir, `pg_ctl` start on a free loopback
//! port (trust auth, fsync off), `pg_ctl -m immediate` stop. Run as the `postgres`
//! user when we are root, since PostgreSQL refuses to run as root. It can also be
//! stopped and started again on the same data (`halt`, `start_again`), for
//! `yoink nemesis`.
//!
//! It must never touch a PostgreSQL it did not start: every `pg_ctl` call names the
//! data directory it made, and `pg_ctl -w start` only succeeds once the postmaster on
//! that directory is up (it exits when another server holds the port).

use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;
use tokio_postgres::NoTls;

use crate::LocalError;
use crate::support::{free_port, log_tail, tail, temp_dir};

/// Where Debian installs one `bin` dir per major version.
const PG_ROOT: &str = "/usr/lib/postgresql";
/// The server binaries this needs (a client-only install has a `bin` without them).
const SERVER_TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
/// The server's log, inside its temp dir.
const LOG: &str = "postgres.log";
/// The data directory, inside its temp dir.
const DATA: &str = "data";
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// How long `pg_ctl stop` may wait for an immediate shutdown.
const STOP_WITHIN_SECS: &str = "10";

/// A private PostgreSQL, stopped and its temp dir removed on drop.
pub(crate) struct PostgresServer {
    port: u16,
    bin: PathBuf,
    /// Run the tools through `runuser -u postgres` (we are root).
    as_postgres: bool,
    /// Holds the data directory, the socket and the log; `None` once removed.
    dir: Option<TempDir>,
    /// `pg_ctl start` has run (even if it failed): stopping is needed from then on.
    launched: bool,
}

impl PostgresServer {
    /// Makes a cluster, starts it and waits (until `deadline`) for `SELECT 1`.
    pub(crate) async fn start(deadline: Instant) -> Result<Self, LocalError> {
        let bin = pg_bin(Path::new(PG_ROOT))?;
        let dir = temp_dir("yoink-demo-pg-")?;
        // We made the dir, so it is owned by our effective uid: root or not.
        let as_postgres = dir
            .path()
            .metadata()
            .map_err(|err| LocalError::Failed(format!("cannot read the temp dir: {err}")))?
            .uid()
            == 0;
        // From here on, an early return drops `server`, which stops and removes it.
        let mut server = Self {
            port: free_port()?,
            bin,
            as_postgres,
            dir: Some(dir),
            launched: false,
        };
        if as_postgres {
            server.hand_dir_to_postgres().await?;
        }
        server.initdb(deadline).await?;
        server.pg_ctl_start(deadline).await?;
        server.wait_ready(deadline).await?;
        Ok(server)
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub(crate) fn dir(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().to_owned())
    }

    /// The temp dir, or an error once it is removed.
    fn path(&self) -> Result<PathBuf, LocalError> {
        self.dir()
            .ok_or_else(|| LocalError::Failed("the PostgreSQL temp dir is gone".to_owned()))
    }

    /// `tool` from the PostgreSQL `bin` dir, as the `postgres` user when we are root,
    /// working in the temp dir (root's cwd may be closed to `postgres`).
    fn command(&self, tool: &str, dir: &Path) -> Command {
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
            cmd
        } else {
            Command::new(self.bin.join(tool))
        };
        cmd.current_dir(dir).stdin(Stdio::null());
        cmd
    }

    /// Runs `cmd` to the end (or until `deadline`, then kills it) and keeps its output.
    async fn run(&self, what: &str, cmd: Command, deadline: Instant) -> Result<Output, LocalError> {
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match tokio::time::timeout_at(deadline, cmd.output()).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(err)) if err.kind() == ErrorKind::NotFound && self.as_postgres => {
                Err(LocalError::Missing(
                    "runuser not found (needed to run PostgreSQL as the `postgres` user): \
                     install it with `apt-get install util-linux`"
                        .to_owned(),
                ))
            }
            Ok(Err(err)) => Err(LocalError::Failed(format!("cannot run {what}: {err}"))),
            Err(_) => Err(LocalError::Failed(format!(
                "{what} did not finish within {} s",
                crate::READY_WITHIN.as_secs()
            ))),
        }
    }

    /// Gives the temp dir to the `postgres` user, which initdb and the server run as.
    async fn hand_dir_to_postgres(&self) -> Result<(), LocalError> {
        let path = self.path()?;
        let output = tokio::process::Command::new("chown")
            .arg("postgres:postgres")
            .arg(&path)
            .output()
            .await
            .map_err(|err| LocalError::Failed(format!("cannot run chown: {err}")))?;
        if output.status.success() {
            return Ok(());
        }
        Err(LocalError::Failed(format!(
            "cannot hand {} to the `postgres` user (does it exist? `apt-get install postgresql` makes it):\n{}",
            path.display(),
            output_tail(&output)
        )))
    }

    async fn initdb(&self, deadline: Instant) -> Result<(), LocalError> {
        let path = self.path()?;
        let mut cmd = self.command("initdb", &path);
        // Locale C with UTF-8: works on any box, whatever locales are installed.
        cmd.args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .args(["--encoding=UTF8", "--locale=C", "-D"])
            .arg(path.join(DATA));
        let output = self.run("initdb", cmd, deadline).await?;
        if output.status.success() {
            return Ok(());
        }
        Err(LocalError::Failed(format!(
            "initdb failed ({}); the end of its output:\n{}",
            output.status,
            output_tail(&output)
        )))
    }

    async fn pg_ctl_start(&mut self, deadline: Instant) -> Result<(), LocalError> {
        let path = self.path()?;
        // pg_ctl hands `-o` to a shell, hence the quoted socket dir.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            shell_quote(&path.as_os_str().to_string_lossy())
        );
        let wait_secs = deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .max(1)
            .to_string();
        let mut cmd = self.command("pg_ctl", &path);
        cmd.arg("-D")
            .arg(path.join(DATA))
            .arg("-o")
            .arg(options)
            .arg("-l")
            .arg(path.join(LOG))
            .args(["-w", "-t", &wait_secs, "start"]);
        self.launched = true;
        let output = self.run("pg_ctl start", cmd, deadline).await?;
        if output.status.success() {
            return Ok(());
        }
        Err(LocalError::Failed(format!(
            "pg_ctl start failed ({}):\n{}\nthe end of the server log:\n{}",
            output.status,
            output_tail(&output),
            log_tail(&path.join(LOG))
        )))
    }

    /// Polls until `SELECT 1` answers or the deadline passes.
    async fn wait_ready(&self, deadline: Instant) -> Result<(), LocalError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(PROBE_TIMEOUT);
        loop {
            let last_error = match select_one(&config).await {
                Ok(()) => return Ok(()),
                Err(err) => err,
            };
            if Instant::now() >= deadline {
                return Err(LocalError::Failed(format!(
                    "PostgreSQL did not answer SELECT 1 on port {} within {} s ({last_error}); \
                     the end of its log:\n{}",
                    self.port,
                    crate::READY_WITHIN.as_secs(),
                    log_tail(&self.path()?.join(LOG))
                )));
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    pub(crate) fn started(&self) -> bool {
        self.launched
    }

    /// Stops the server at once (`-m immediate`: a crash, as far as its clients and its
    /// recovery are concerned), keeping its data. Blocking; idempotent.
    pub(crate) fn halt(&mut self) {
        if let (true, Some(path)) = (std::mem::take(&mut self.launched), self.dir()) {
            let stopped = self
                .command("pg_ctl", &path)
                .arg("-D")
                .arg(path.join(DATA))
                .args(["-m", "immediate", "-w", "-t", STOP_WITHIN_SECS, "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            match stopped {
                Ok(status) if status.success() => {}
                // Not running: it never came up, so nothing is left to stop.
                Ok(status) => {
                    tracing::debug!(port = self.port, %status, "Local PostgreSQL was not running.");
                }
                Err(err) => {
                    tracing::warn!(port = self.port, error = %err, "Local PostgreSQL not stopped.");
                }
            }
        }
    }

    /// Starts a halted server again on the same port and data, and waits (until
    /// `deadline`) for `SELECT 1`. A running one is halted first.
    pub(crate) async fn start_again(&mut self, deadline: Instant) -> Result<(), LocalError> {
        self.halt();
        self.pg_ctl_start(deadline).await?;
        self.wait_ready(deadline).await
    }

    /// Stops the server at once (it holds nothing worth a clean shutdown) and removes
    /// the temp dir. Blocking, since drop calls it; idempotent.
    fn stop(&mut self) {
        self.halt();
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            if let Err(err) = dir.close() {
                tracing::warn!(dir = %path.display(), error = %err, "Local PostgreSQL temp dir not removed.");
            }
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn select_one(config: &tokio_postgres::Config) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    // The connection task ends when `client` is dropped, below.
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await?;
    Ok(())
}

/// The newest `bin` dir under `root` holding the server tools.
fn pg_bin(root: &Path) -> Result<PathBuf, LocalError> {
    let entries = std::fs::read_dir(root).into_iter().flatten().flatten();
    entries
        .filter_map(|entry| {
            let version = major_minor(&entry.file_name())?;
            let bin = entry.path().join("bin");
            SERVER_TOOLS
                .iter()
                .all(|tool| bin.join(tool).is_file())
                .then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
        .ok_or_else(|| {
            LocalError::Missing(format!(
                "PostgreSQL server binaries not found under {}/*/bin: install them with \
                 `apt-get install postgresql`",
                root.display()
            ))
        })
}

/// `15` → (15, 0), `9.6` → (9, 6); `None` for names that are no version.
fn major_minor(name: &OsString) -> Option<(u32, u32)> {
    let name = name.to_str()?;
    let (major, minor) = name.split_once('.').unwrap_or((name, "0"));
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// `text` as one word for `/bin/sh`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The end of a tool's stdout and stderr together.
fn output_tail(output: &Output) -> String {
    tail(&format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_numbers() {
        let v = |s: &str| major_minor(&OsString::from(s));
        assert_eq!(v("15"), Some((15, 0)));
        assert_eq!(v("9.6"), Some((9, 6)));
        assert!(v("15") > v("9.6"));
        assert_eq!(v("README"), None);
    }

    #[test]
    fn pg_bin_names_what_to_install_when_nothing_is_there() {
        let empty = tempfile::tempdir().expect("tests can make temp dirs");
        let err = pg_bin(empty.path()).expect_err("an empty dir holds no server");
        assert!(matches!(&err, LocalError::Missing(m) if m.contains("apt-get install postgresql")));
    }

    #[test]
    fn pg_bin_skips_client_only_installs() {
        let root = tempfile::tempdir().expect("tests can make temp dirs");
        let client_only = root.path().join("16/bin");
        let server = root.path().join("15/bin");
        std::fs::create_dir_all(&client_only).expect("mkdir");
        std::fs::create_dir_all(&server).expect("mkdir");
        std::fs::write(client_only.join("psql"), "").expect("write");
        for tool in SERVER_TOOLS {
            std::fs::write(server.join(tool), "").expect("write");
        }
        assert_eq!(pg_bin(root.path()).expect("15 has a server"), server);
    }

    #[test]
    fn shell_quote_keeps_one_word() {
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
