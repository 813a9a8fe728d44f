//! placeholder: owned by the nemesis helper, who replaces all of it.
//! Interface main.rs relies on: `NemesisArgs` (clap::Args), `run`, `NemesisError::exit_code`.

use yoink_core::StoreArgs;

/// `yoink nemesis` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct NemesisArgs {}

#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    #[error("not built yet")]
    NotBuilt,
}

impl NemesisError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        2
    }
}

/// Runs `yoink nemesis`, printing to stdout; returns the exit code.
pub async fn run(_stores: &StoreArgs, _args: &NemesisArgs) -> Result<i32, NemesisError> {
    Err(NemesisError::NotBuilt)
}
