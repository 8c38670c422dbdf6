//! The current time. A test build may pin it with TPA_TEST_NOW (RFC 3339); a release build has no
//! such door. Everything that compares with "now" (policy, expiry, the kernel keyring's timeouts)
//! asks here, so a pinned clock moves all of it together.

use chrono::{DateTime, Utc};

pub fn now() -> DateTime<Utc> {
    #[cfg(feature = "testing")]
    if let Some(pinned) =
        std::env::var("TPA_TEST_NOW").ok().and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
    {
        return pinned.with_timezone(&Utc);
    }
    Utc::now()
}
