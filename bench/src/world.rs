//! A daemon's [`World`] for the length of one measurement, stopped in order
//! whatever happened.

use std::panic::AssertUnwindSafe;

use anyhow::{Context, Result};
use patchpanel_tests::world::World;
use patchpanel_tests::DaemonOptions;

/// Starts a [`World`] with `options`, runs `measure` in it and stops it.
///
/// When `measure` fails, the daemon's log is printed to stderr and the error
/// returned. The harness's `Drop` panics when the daemon's teardown shows a
/// bug (leftover processes or namespaces, a bad exit status), after cleaning
/// up and printing the problems; that panic is caught, and its message
/// returned next to the measurements, which stand.
pub fn in_world<T>(
    options: DaemonOptions,
    measure: impl FnOnce(&World) -> Result<T>,
) -> Result<(T, Option<String>)> {
    let world = World::start_with(options).context("cannot start the daemon's world")?;
    let result = measure(&world);
    if result.is_err() {
        eprintln!(
            "----- patchpaneld log ({}) -----\n{}\n----- end -----",
            world.daemon.log_path().display(),
            world.daemon.log()
        );
    }
    let stopped = std::panic::catch_unwind(AssertUnwindSafe(move || drop(world)));
    let value = result?;
    let problem = stopped.err().map(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the daemon's teardown panicked".to_string())
    });
    Ok((value, problem))
}
