//! End-to-end tests: the real `tpa` binary against real git, ssh-keygen and the OS keyring.
//! One test binary, so everything links once.

mod approvals;
mod audit;
mod broker;
mod common;
mod database;
mod db_token;
mod export;
mod firstrun;
mod fixtures;
mod grant_index;
mod hardening;
mod hook_managers;
mod init;
mod install;
mod keyring;
mod ledger;
mod notify;
mod notify_flow;
mod org_audit;
mod postgres;
mod records_cache;
mod request;
mod revoke;
mod snapshots;
mod sweep;
mod sync;
mod tamper;
mod verify_cache;
