//! The `yoink` processes a run starts and kills: one API (`yoink serve`) and two
//! projectors (`yoink project`), each a child process of the `yoink` binary, with its
//! stdout and stderr appended to a log file of its own in the run's `logs/` directory.
//!
//! It must never signal a process it did not start: it kills, stops and continues only
//! its own children, by pid, and every child is killed when this is dropped
//! (`kill_on_drop`), so no process outlives the run.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use yoink_core::StoreArgs;

use crate::NemesisError;

/// How many projector processes a run keeps.
pub const PROJECTORS: usize = 2;

/// One supervised child: what to run, and its current life.
struct Proc {
    /// `api`, `projector-0`, ...: also its log file's name.
    name: String,
    args: Vec<String>,
    /// Projectors get `--consumer <name>-<life>`: a restarted process is a new consumer,
    /// as a new pid would be.
    consumer: bool,
    child: Option<Child>,
    lives: u32,
}

/// The API and the projectors of one run.
pub struct Processes {
    bin: PathBuf,
    stores: StoreArgs,
    log_dir: PathBuf,
    api: Proc,
    projectors: Vec<Proc>,
}

impl Processes {
    /// Starts the API and the projectors against `stores` (with its key prefix).
    pub async fn start(
        bin: &Path,
        stores: &StoreArgs,
        log_dir: &Path,
        api_port: u16,
    ) -> Result<Self, NemesisError> {
        std::fs::create_dir_all(log_dir)
            .map_err(|err| NemesisError::Io(format!("creating {}", log_dir.display()), err))?;
        let api = Proc {
            name: "api".into(),
            args: [
                "serve",
                "--listen",
                &format!("127.0.0.1:{api_port}"),
                "--metrics-listen",
                "off",
                "--durability",
                "none",
                "--fence-refresh-ms",
                "500",
            ]
            .map(String::from)
            .to_vec(),
            consumer: false,
            child: None,
            lives: 0,
        };
        // Quick takeovers: a killed projector's entries are reclaimed within about a
        // second, so a short run drains.
        let projector_args = [
            "project",
            "--metrics-listen",
            "off",
            "--block-ms",
            "200",
            "--claim-idle-ms",
            "1000",
            "--claim-interval-ms",
            "200",
            "--discover-interval-ms",
            "200",
            "--fence-interval-ms",
            "200",
        ]
        .map(String::from)
        .to_vec();
        let projectors = (0..PROJECTORS)
            .map(|i| Proc {
                name: format!("projector-{i}"),
                args: projector_args.clone(),
                consumer: true,
                child: None,
                lives: 0,
            })
            .collect();
        let mut processes = Self {
            bin: bin.to_owned(),
            stores: stores.clone(),
            log_dir: log_dir.to_owned(),
            api,
            projectors,
        };
        processes.ensure_all_running()?;
        Ok(processes)
    }

    /// Starts whichever of them is not running (killed, or exited by itself).
    pub fn ensure_all_running(&mut self) -> Result<(), NemesisError> {
        let (bin, stores, log_dir) = (&self.bin, &self.stores, &self.log_dir);
        for proc in std::iter::once(&mut self.api).chain(self.projectors.iter_mut()) {
            let running = match proc.child.as_mut() {
                Some(child) => matches!(child.try_wait(), Ok(None)),
                None => false,
            };
            if !running {
                proc.start(bin, stores, log_dir)?;
            }
        }
        Ok(())
    }

    /// SIGKILLs the API.
    pub async fn kill_api(&mut self) {
        self.api.kill().await;
    }

    /// SIGKILLs projector `i` (modulo their number).
    pub async fn kill_projector(&mut self, i: usize) {
        let n = self.projectors.len();
        self.projectors[i % n].kill().await;
    }

    /// SIGSTOPs (`stop`) or SIGCONTs the API: a stopped API takes connections (the
    /// kernel queues them) and answers nobody.
    pub fn pause_api(&self, stop: bool) -> Result<(), NemesisError> {
        let Some(pid) = self.api.child.as_ref().and_then(Child::id) else {
            return Ok(());
        };
        let signal = if stop { "-STOP" } else { "-CONT" };
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .map_err(|err| NemesisError::Io(format!("kill {signal} {pid}"), err))?;
        if !status.success() {
            tracing::warn!(pid, signal, "The API was not signalled (did it exit?).");
        }
        Ok(())
    }

    /// How many times each was started: `(api, projectors)`.
    pub fn lives(&self) -> (u32, u32) {
        (
            self.api.lives,
            self.projectors.iter().map(|p| p.lives).sum(),
        )
    }

    /// Kills them all (SIGTERM first, so they stop cleanly, then SIGKILL after a grace).
    pub async fn stop_all(&mut self) {
        for proc in std::iter::once(&mut self.api).chain(self.projectors.iter_mut()) {
            proc.terminate(Duration::from_secs(5)).await;
        }
    }
}

impl Proc {
    fn start(
        &mut self,
        bin: &Path,
        stores: &StoreArgs,
        log_dir: &Path,
    ) -> Result<(), NemesisError> {
        let log_path = log_dir.join(format!("{}.log", self.name));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .and_then(|out| Ok((out.try_clone()?, out)))
            .map_err(|err| NemesisError::Io(format!("opening {}", log_path.display()), err))?;
        let mut cmd = Command::new(bin);
        cmd.args(&self.args);
        if self.consumer {
            cmd.arg("--consumer")
                .arg(format!("nemesis-{}-{}", self.name, self.lives));
        }
        cmd.env("DATABASE_URL", &stores.database_url)
            .env("REDIS_URL", &stores.redis_url)
            .env("YOINK_KEY_PREFIX", &stores.key_prefix)
            .env(
                "YOINK_REDIS_CLUSTER",
                if stores.redis_cluster {
                    "true"
                } else {
                    "false"
                },
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.0)
            .stderr(log.1)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|err| NemesisError::Io(format!("starting {}", bin.display()), err))?;
        self.child = Some(child);
        self.lives += 1;
        Ok(())
    }

    /// SIGKILL, then reap.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(err) = child.start_kill() {
                tracing::debug!(name = %self.name, error = %err, "Not killed (exited already).");
            }
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL.
    async fn terminate(&mut self, grace: Duration) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Some(pid) = child.id() {
            // A stopped process cannot act on SIGTERM: continue it first.
            for signal in ["-CONT", "-TERM"] {
                let _ = std::process::Command::new("kill")
                    .arg(signal)
                    .arg(pid.to_string())
                    .status();
            }
        }
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            tracing::warn!(name = %self.name, "Did not stop on SIGTERM: killed.");
        }
        self.kill().await;
    }
}
