//! Anti-abuse rules: sliding windows (shared by the ingress and dispatch), the ingress's limits
//! per client IP and per number, and the destination policy.

pub mod destinations;
pub mod ingress;
pub mod window;
