//! One log line per operator action, target `smsgate::audit` at INFO: what was changed, how,
//! and through which door. The admin token names no person, so "who" is the door: the admin
//! API or the command line (whose shell history and login say the rest).

use crate::domain::MessageId;

/// Through which door an operator acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    AdminApi,
    Cli,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::AdminApi => "admin api",
            Actor::Cli => "cli",
        }
    }
}

/// A carrier taken out of every route (`disable`) or put back into its routes (`enable`);
/// `changed` is false when it already was, and the line says so.
pub fn carrier_switched(carrier: &str, disabled: bool, changed: bool, actor: Actor) {
    let (action, change) = match (disabled, changed) {
        (true, true) => ("disable", "carrier out of every route"),
        (true, false) => ("disable", "already disabled, nothing changed"),
        (false, true) => ("enable", "carrier back in its routes"),
        (false, false) => ("enable", "already enabled, nothing changed"),
    };
    tracing::info!(
        target: "smsgate::audit",
        action,
        carrier,
        actor = actor.as_str(),
        change,
        "operator action"
    );
}

/// A waiting message made due now (`retry`) or ended unsent (`cancel`).
pub fn message_changed(id: MessageId, action: &'static str, change: &'static str, actor: Actor) {
    tracing::info!(
        target: "smsgate::audit",
        action,
        message_id = %id,
        actor = actor.as_str(),
        change,
        "operator action"
    );
}
