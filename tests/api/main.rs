//! Integration tests: the real app, a real PostgreSQL, requests signed the way Auth0 signs them.

mod abuse;
mod actions;
mod auth;
mod carriers;
mod cli;
mod correctness;
mod deploy;
mod dispatch;
mod failover;
mod faults;
mod health;
mod helpers;
mod ingress;
mod observability;
mod operator;
mod ops_files;
mod pgbouncer;
mod process;
mod prometheus;
mod receipts;
mod signed_reports;
mod slow_clients;
mod soak;
mod standins;
mod status;
mod test_config;
