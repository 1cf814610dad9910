//! Whole numbers of milliseconds or seconds, as the TOML writes them (`timeout_ms = 5000`),
//! typed so that a zero is refused while parsing and callers get a `Duration` without
//! converting units again.

use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A whole positive number of some unit, as a `Duration`.
macro_rules! positive_duration {
    ($(#[$doc:meta])* $name:ident($inner:ty, $primitive:ty), $to_duration:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
        #[serde(transparent)]
        pub struct $name($inner);

        impl $name {
            /// For defaults written in the code; a zero there is a programming error.
            pub const fn new(value: $primitive) -> Self {
                match <$inner>::new(value) {
                    Some(value) => Self(value),
                    None => panic!("a duration default must be positive"),
                }
            }

            pub const fn get(self) -> $primitive {
                self.0.get()
            }

            pub const fn duration(self) -> Duration {
                $to_duration(self.0.get() as u64)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

positive_duration!(
    /// A positive number of milliseconds (`*_ms` keys).
    Millis(NonZeroU64, u64),
    Duration::from_millis
);

positive_duration!(
    /// A positive number of seconds (`*_seconds` keys).
    Seconds(NonZeroU32, u32),
    Duration::from_secs
);

impl Seconds {
    pub const fn as_millis(self) -> u64 {
        self.0.get() as u64 * 1000
    }
}

/// A positive count written in the code as a default.
pub const fn count(n: usize) -> std::num::NonZeroUsize {
    match std::num::NonZeroUsize::new(n) {
        Some(n) => n,
        None => panic!("a count default must be positive"),
    }
}

/// The same for `u32` counts.
pub const fn count32(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("a count default must be positive"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Keys {
        timeout_ms: Millis,
        lease_seconds: Seconds,
    }

    #[test]
    fn a_zero_is_refused_while_parsing_and_the_rest_read_as_durations() {
        let keys: Keys = toml::from_str("timeout_ms = 1500\nlease_seconds = 30").expect("valid");
        assert_eq!(keys.timeout_ms.duration(), Duration::from_millis(1500));
        assert_eq!(keys.lease_seconds.as_millis(), 30_000);
        for zero in [
            "timeout_ms = 0\nlease_seconds = 30",
            "timeout_ms = 1\nlease_seconds = 0",
        ] {
            let error = toml::from_str::<Keys>(zero).expect_err("zero refused");
            assert!(error.to_string().contains("nonzero"), "{error}");
        }
        assert!(toml::from_str::<Keys>("timeout_ms = -5\nlease_seconds = 30").is_err());
    }
}
