//! Tokens this process verified a moment ago. Auth0 gives every request of one second the
//! same token (its claims are whole seconds, with no per-request one), so at volume most
//! requests carry a token already verified. Only a token that passed every check is
//! remembered; a request carrying it again skips the base64, the JSON and the HMAC, never the
//! time checks (`exp`, `nbf`), which are made again with jsonwebtoken's own arithmetic.
//!
//! A token is matched by its signing input (header and claims: nothing secret), then its
//! signature in constant time, so how long a forged token takes to refuse tells nothing about
//! a remembered signature.

use std::sync::Mutex;

use subtle::ConstantTimeEq;

use super::TokenError;

/// Tokens remembered: a new one each second per signer, for a handful of signers.
const REMEMBERED: usize = 16;

/// What verifying a token established, and the claims its validity still depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The index of the signer that accepted it.
    pub signer: usize,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
}

impl Verified {
    /// jsonwebtoken's time checks (`validation::validate`), at `now` (Unix seconds).
    pub fn in_time(&self, now: u64, leeway: u64) -> Result<(), TokenError> {
        if self.exp.is_some_and(|exp| exp < now.saturating_sub(leeway)) {
            return Err(TokenError::Expired);
        }
        if self.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }
}

#[derive(Default)]
pub struct RecentTokens {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    /// Signing input, signature, and what was verified.
    tokens: Vec<(Box<str>, Box<[u8]>, Verified)>,
    /// The slot the next new token replaces once all are taken.
    next: usize,
}

/// A compact JWT split into its signing input and its signature, when it has both.
fn split(token: &str) -> Option<(&str, &str)> {
    token.rsplit_once('.')
}

impl RecentTokens {
    /// What an earlier verification of exactly `token` established.
    pub fn find(&self, token: &str) -> Option<Verified> {
        let (input, signature) = split(token)?;
        let slots = self.slots.lock().ok()?;
        let (_, known, verified) = slots
            .tokens
            .iter()
            .find(|(known, _, _)| **known == *input)?;
        bool::from(known.ct_eq(signature.as_bytes())).then_some(*verified)
    }

    /// Remembers `token`, which has just passed every check.
    pub fn remember(&self, token: &str, verified: Verified) {
        let Some((input, signature)) = split(token) else {
            return;
        };
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        let entry = (Box::from(input), Box::from(signature.as_bytes()), verified);
        match slots
            .tokens
            .iter()
            .position(|(known, _, _)| **known == *input)
        {
            Some(same_input) => slots.tokens[same_input] = entry,
            None if slots.tokens.len() < REMEMBERED => slots.tokens.push(entry),
            None => {
                let next = slots.next;
                slots.tokens[next] = entry;
                slots.next = (next + 1) % REMEMBERED;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIED: Verified = Verified {
        signer: 1,
        exp: Some(1_000),
        nbf: Some(900),
    };

    #[test]
    fn only_the_same_bytes_are_found() {
        let recent = RecentTokens::default();
        recent.remember("aaa.bbb.sig", VERIFIED);
        assert_eq!(recent.find("aaa.bbb.sig"), Some(VERIFIED));
        assert_eq!(recent.find("aaa.bbb.sih"), None, "another signature");
        assert_eq!(recent.find("aaa.bbb.si"), None, "a shorter signature");
        assert_eq!(recent.find("aaa.bbc.sig"), None, "other claims");
        assert_eq!(recent.find("aaa.bbb"), None, "no signature");
        assert_eq!(recent.find(""), None);
    }

    #[test]
    fn it_stays_bounded_and_keeps_the_newest() {
        let recent = RecentTokens::default();
        for n in 0..(REMEMBERED * 3) {
            recent.remember(&format!("h.{n}.s"), VERIFIED);
        }
        let slots = recent.slots.lock().expect("not poisoned");
        assert_eq!(slots.tokens.len(), REMEMBERED);
        drop(slots);
        assert_eq!(
            recent.find(&format!("h.{}.s", REMEMBERED * 3 - 1)),
            Some(VERIFIED)
        );
        assert_eq!(recent.find("h.0.s"), None);
    }

    #[test]
    fn time_is_checked_as_jsonwebtoken_checks_it() {
        let leeway = 60;
        assert_eq!(VERIFIED.in_time(1_060, leeway), Ok(()));
        assert_eq!(VERIFIED.in_time(1_061, leeway), Err(TokenError::Expired));
        assert_eq!(VERIFIED.in_time(840, leeway), Ok(()));
        assert_eq!(VERIFIED.in_time(839, leeway), Err(TokenError::NotYetValid));
        let timeless = Verified {
            signer: 0,
            exp: None,
            nbf: None,
        };
        assert_eq!(timeless.in_time(u64::MAX, leeway), Ok(()));
        assert_eq!(timeless.in_time(0, leeway), Ok(()));
    }
}
