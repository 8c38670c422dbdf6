//! Interruptions (SIGINT, SIGTERM, SIGHUP) during work that must not stop halfway: from the moment
//! a request's intent is recorded, a signal only sets a flag, and the flow decides at its next safe
//! point whether to end the request recorded (nothing minted yet) or to finish it (something was).
//! SIGKILL cannot be caught: `tpa sweep` ends what such a death leaves behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A flag the signal handlers set.
#[derive(Clone, Debug, Default)]
pub struct Interruption(Arc<AtomicBool>);

impl Interruption {
    /// A flag no signal sets: for callers that are not a whole process (tests, the broker later).
    pub fn never() -> Self {
        Self::default()
    }

    /// From now on, SIGINT, SIGTERM and SIGHUP set this flag instead of ending the process.
    #[cfg(unix)]
    pub fn catch() -> std::io::Result<Self> {
        let flag = Self::default();
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP]
        {
            signal_hook::flag::register(signal, flag.0.clone())?;
        }
        Ok(flag)
    }

    #[cfg(not(unix))]
    pub fn catch() -> std::io::Result<Self> {
        let flag = Self::default();
        signal_hook::flag::register(signal_hook::consts::SIGINT, flag.0.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, flag.0.clone())?;
        Ok(flag)
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Sets the flag as a signal would (tests of the flows).
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
