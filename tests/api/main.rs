//! Integration tests: the real app, a real PostgreSQL, requests signed the way Auth0 signs them.

mod auth;
mod cli;
mod health;
mod helpers;
mod ingress;
mod status;
