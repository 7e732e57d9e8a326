//! Arguments several commands share, declared once and flattened into each.

use clap::Args;

/// Who may use a server: its API key, and the explicit opt-out needed to serve beyond this machine without one.
#[derive(Args, Clone, Debug, Default)]
pub struct AccessArgs {
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "VIBECHECK_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Serve a non-loopback --host without --api-key (refused otherwise): anyone who can reach the port can
    /// generate, read every stored answer and vote.
    #[arg(long)]
    pub insecure_no_key: bool,
}

impl AccessArgs {
    /// The settings' key (an empty key counts as none) and opt-out.
    pub fn apply(&self, settings: &mut vibecheck_server::ServeSettings) {
        settings.api_key = self.api_key.clone().filter(|k| !k.is_empty());
        settings.insecure_no_key = self.insecure_no_key;
    }
}
