//! The flows, one function each, called by the CLI (and later the hooks). They never print.

pub mod approval;
pub mod audit;
pub mod broker;
pub mod context;
pub mod database;
pub mod deliver;
pub mod doctor;
pub mod export;
pub mod finish;
pub mod grants;
pub mod init;
pub mod issue;
pub mod ledger;
pub mod notifications;
pub mod org_audit;
#[cfg(feature = "testing")]
pub mod record;
pub mod request;
pub mod revoke;
pub mod sweep;
pub mod sync;
