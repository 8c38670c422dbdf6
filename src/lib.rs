//! tpa: temporary production access, recorded as signed git notes and revoked by git events.
//! See docs/ for the user guide and DESIGN-level notes; `cli` is the only module that prints.

pub mod audit;
pub mod cli;
pub mod clock;
pub mod escape;
pub mod gitconfig;
pub mod grant;
pub mod hooks;
pub mod interrupt;
pub mod ledger;
pub mod lifecycle;
pub mod notify;
pub mod ocsf;
pub mod ops;
pub mod policy;
pub mod provider;
pub mod secrets;
pub mod siem;
pub mod state;
pub mod trust;
