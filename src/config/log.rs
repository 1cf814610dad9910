//! `[log]`: how smsgate writes its log lines, with its defaults and checks.

use serde::{Deserialize, Serialize};

use super::Config;

/// `[log]`: how smsgate writes its log lines (to stderr).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. "info" or "info,smsgate=debug"; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info,sqlx=warn".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl Config {
    pub(super) fn validate_log(&self, problem: &mut impl FnMut(String, String)) {
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problem(
                "log.level".into(),
                format!("is not a tracing filter: {err}"),
            );
        }
    }
}
