//! Policy: being written (see docs/policy.md once it lands).
