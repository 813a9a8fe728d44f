//! The run's history: one JSON line per request event (`invoke`, then `ok`, `fail` or
//! `indefinite`, with the reservation id when one is known), appended to
//! `history.jsonl` by one writer task, and the same requests kept in memory for the
//! check.
//!
//! It must never block a buyer on the disk: lines go through a channel, and a write
//! error is reported once at the end instead of stopping the load.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::NemesisError;

/// How one request ended, as the buyer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 202: the reservation stands.
    Ok { reservation_id: Uuid },
    /// A definite refusal: nothing was taken (4xx, a 503 without a reservation id, a
    /// connection that never opened).
    Fail { status: Option<u16>, code: String },
    /// The buyer cannot know: a timeout, a connection lost after sending, or a 503
    /// carrying a reservation id that may stand.
    Indefinite {
        reservation_id: Option<Uuid>,
        why: String,
    },
}

/// One request and its outcome.
#[derive(Debug, Clone)]
pub struct Request {
    pub n: u64,
    pub buyer: String,
    pub key: String,
    pub outcome: Outcome,
}

/// One history line.
#[derive(Debug, Serialize)]
struct Line<'a> {
    /// ms since the load started.
    t_ms: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    req: u64,
    buyer: &'a str,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reservation_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// Sends history lines to the writer task; cheap to clone.
#[derive(Clone)]
pub struct History {
    lines: mpsc::UnboundedSender<String>,
}

/// The writer task, to await once every `History` is dropped.
pub struct Writer {
    task: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    pub path: PathBuf,
}

impl History {
    /// Creates `history.jsonl` in `dir` and the task that writes it.
    pub async fn create(dir: &Path) -> Result<(History, Writer), NemesisError> {
        let path = dir.join("history.jsonl");
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|err| NemesisError::Io(format!("creating {}", path.display()), err))?;
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let task = tokio::spawn(async move {
            let mut out = tokio::io::BufWriter::new(file);
            while let Some(line) = rx.recv().await {
                out.write_all(line.as_bytes()).await?;
                out.write_all(b"\n").await?;
            }
            out.flush().await
        });
        Ok((History { lines: tx }, Writer { task, path }))
    }

    pub fn invoke(&self, t_ms: u64, n: u64, buyer: &str, key: &str) {
        self.send(&Line {
            t_ms,
            kind: "invoke",
            req: n,
            buyer,
            key,
            status: None,
            reservation_id: None,
            detail: None,
        });
    }

    pub fn complete(&self, t_ms: u64, request: &Request) {
        let (kind, status, reservation_id, detail) = match &request.outcome {
            Outcome::Ok { reservation_id } => ("ok", Some(202), Some(*reservation_id), None),
            Outcome::Fail { status, code } => ("fail", *status, None, Some(code.as_str())),
            Outcome::Indefinite {
                reservation_id,
                why,
            } => ("indefinite", None, *reservation_id, Some(why.as_str())),
        };
        self.send(&Line {
            t_ms,
            kind,
            req: request.n,
            buyer: &request.buyer,
            key: &request.key,
            status,
            reservation_id,
            detail,
        });
    }

    fn send(&self, line: &Line<'_>) {
        let text = serde_json::to_string(line).expect("a history line always serializes");
        // The writer only stops once every sender is gone: a send cannot fail before.
        let _ = self.lines.send(text);
    }
}

impl Writer {
    /// Waits until every line is on disk (call after dropping every `History`).
    pub async fn finish(self) -> Result<PathBuf, NemesisError> {
        let path = self.path;
        match self.task.await {
            Ok(Ok(())) => Ok(path),
            Ok(Err(err)) => Err(NemesisError::Io(format!("writing {}", path.display()), err)),
            Err(join) => Err(NemesisError::Io(
                format!("writing {}", path.display()),
                std::io::Error::other(join.to_string()),
            )),
        }
    }
}
