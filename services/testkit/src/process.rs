//! A process a test started (usually the `yoink` binary): killed when dropped, so a
//! failing assertion never leaves it running, with its output (stdout and stderr, in
//! order) kept in a file the test can read, and exits waited for with a deadline, so a
//! process that does not exit fails the test instead of hanging it.

use std::io::Read;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

pub struct Spawned {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Spawned {
    /// Starts `command` with its stdout and stderr going to one log file.
    pub fn start(command: &mut Command) -> Self {
        let log = tempfile::NamedTempFile::new().expect("a temp file for the output");
        // One open file for both streams: they share an offset and never overwrite.
        let out = log.reopen().expect("the output file");
        let err = out.try_clone().expect("the output file");
        let child = command
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("the process starts");
        Self { child, log }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        let mut text = String::new();
        let _ = self
            .log
            .reopen()
            .and_then(|mut f| f.read_to_string(&mut text));
        text
    }

    /// Its exit status, if it exits within `timeout`.
    pub fn exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL, and waits for it: a crash, with no chance to finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then its exit status if it exits within 20 s.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM failed");
        self.exit_within(Duration::from_secs(20))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
