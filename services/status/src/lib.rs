//! placeholder: owned by the status helper, who replaces all of it.
//! Interface main.rs relies on: `StatusArgs` (clap::Args), `run`, `StatusError::exit_code`.

use yoink_core::StoreArgs;

/// `yoink status` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("not built yet")]
    NotBuilt,
}

impl StatusError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        2
    }
}

/// Runs `yoink status`, printing to stdout; returns the exit code.
pub async fn run(_stores: &StoreArgs, _args: &StatusArgs) -> Result<i32, StatusError> {
    Err(StatusError::NotBuilt)
}
