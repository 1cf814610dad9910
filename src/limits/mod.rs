//! Anti-abuse rules: sliding windows (shared by the ingress and dispatch), the ingress's limits
//! per client IP, number and country with the spend ceilings, prices, and the destination
//! policy.

pub mod destinations;
pub mod ingress;
pub mod pricing;
pub mod slices;
pub mod window;
