//! What a test's own thread logs, captured as text, for tests that assert on logging
//! (an outage logged once, no ERROR line per refused buyer, a panic logged).
//!
//! tracing-core 0.1 decides whether a call site is wanted the first time any thread
//! reaches it, and while only one subscriber exists it asks only that thread's: another
//! test's thread, with no subscriber, reaching a call site first would silence it here
//! for good. A second, silent dispatcher kept alive with the capture makes it ask every
//! live subscriber instead.

use std::sync::{Arc, Mutex, PoisonError};

/// The captured output; capturing stops when this is dropped.
pub struct Logs {
    captured: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
    _silent: tracing::Dispatch,
}

#[derive(Clone)]
struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures everything this thread logs, at every level, as the process would print it
/// (without colours). Run the code under test on this thread (a current-thread runtime).
pub fn capture() -> Logs {
    let silent = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let captured = Arc::new(Mutex::new(Vec::new()));
    let writer = Writer(captured.clone());
    let guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .finish(),
    );
    Logs {
        captured,
        _guard: guard,
        _silent: silent,
    }
}

impl Logs {
    pub fn text(&self) -> String {
        let bytes = self.captured.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }
}
