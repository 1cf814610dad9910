//! The checks that need more than types, section by section (each section's file has its
//! own): every problem is reported with the key it concerns, all of them at once.

use super::Config;
use super::problems::{ConfigError, Problem};

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |key: String, reason: String| problems.push(Problem { key, reason });
        self.validate_signers(&mut problem);
        self.validate_listeners(&mut problem);
        self.validate_database(&mut problem);
        self.validate_log(&mut problem);
        self.validate_telemetry(&mut problem);
        self.validate_dispatch(&mut problem);
        self.validate_routes(&mut problem);
        self.validate_destinations(&mut problem);
        self.validate_guard(&mut problem);
        self.validate_senders(&mut problem);
        self.validate_server(&mut problem);
        self.validate_limits(&mut problem);
        for p in super::secrets::problems(self) {
            problem(p.key, p.reason);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}
