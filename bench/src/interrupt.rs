//! An orderly stop on SIGINT or SIGTERM.
//!
//! The benchmark holds namespaces, a daemon and bridges whose cleanup lives
//! in `Drop` impls. Dying on a signal would skip them, so the signals only
//! set a flag; the measuring loops check it between steps (each step takes
//! milliseconds) and return an error, and the usual unwinding cleans up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Makes SIGINT, SIGTERM and SIGHUP set the stop flag instead of killing the
/// process. Call once, before creating anything that needs cleaning up.
pub fn install() -> Result<()> {
    let flag = STOP.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register(signal, Arc::clone(flag))
            .with_context(|| format!("cannot install a handler for signal {signal}"))?;
    }
    Ok(())
}

/// Fails once a stop signal has arrived.
pub fn check() -> Result<()> {
    if STOP.get().is_some_and(|flag| flag.load(Ordering::Relaxed)) {
        bail!("interrupted by a signal; cleaning up");
    }
    Ok(())
}
