//! placeholder: owned by the dlq helper, who replaces all of it.
//! Interface main.rs relies on: `DlqArgs` (clap::Args), `run`, `DlqError::exit_code`.

use yoink_core::StoreArgs;

/// `yoink dlq` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DlqArgs {}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("not built yet")]
    NotBuilt,
}

impl DlqError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        2
    }
}

/// Runs `yoink dlq`, printing to stdout; returns the exit code.
pub async fn run(_stores: &StoreArgs, _args: &DlqArgs) -> Result<i32, DlqError> {
    Err(DlqError::NotBuilt)
}
