//! The `log` backend shared by the manager, the spawner and the helpers.
//!
//! It writes to syslog through glibc's `openlog`/`syslog` rather than a
//! socket of our own: glibc stamps each line with the *current* pid (the
//! spawner is a fork of the manager) and reconnects after syslogd restarts.
//! The socket is opened eagerly (`LOG_NDELAY`) so that it exists before a
//! seccomp filter forbids `socket`. Without `/dev/log`, or when asked, lines go
//! to stderr with the same `ident[pid]` prefix.

use std::ffi::CString;
use std::io::Write;
use std::path::Path;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Syslog,
    Stderr,
}

impl Sink {
    /// Syslog when `/dev/log` exists and stderr is not forced.
    pub fn choose(force_stderr: bool) -> Sink {
        if !force_stderr && Path::new("/dev/log").exists() {
            Sink::Syslog
        } else {
            Sink::Stderr
        }
    }
}

struct Logger {
    ident: &'static str,
    sink: Sink,
}

fn syslog_priority(level: Level) -> libc::c_int {
    match level {
        Level::Error => libc::LOG_ERR,
        Level::Warn => libc::LOG_WARNING,
        Level::Info => libc::LOG_INFO,
        Level::Debug | Level::Trace => libc::LOG_DEBUG,
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match self.sink {
            Sink::Stderr => {
                // SAFETY: getpid has no preconditions.
                let pid = unsafe { libc::getpid() };
                let line = format!(
                    "{}[{}]: {} {}: {}\n",
                    self.ident,
                    pid,
                    record.level(),
                    record.target(),
                    record.args()
                );
                // One write per line so that lines of the processes sharing
                // this stderr do not interleave.
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            Sink::Syslog => {
                let text = format!("{} {}: {}", record.level(), record.target(), record.args());
                let text = CString::new(text.replace('\0', "\\0"))
                    .unwrap_or_else(|_| CString::from(c"<unloggable>"));
                // SAFETY: "%s" with one valid NUL-terminated string argument.
                unsafe {
                    libc::syslog(
                        syslog_priority(record.level()),
                        c"%s".as_ptr(),
                        text.as_ptr(),
                    )
                };
            }
        }
    }

    fn flush(&self) {}
}

/// Routes panic messages to the log instead of the default hook, which may
/// walk the stack and read debug info (getcwd, open, ...): calls a seccomp
/// filter rightly forbids, and which would turn a caught panic in a D-Bus
/// handler into a SIGSYS kill of the whole process.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        log::error!("panic: {info}");
    }));
}

/// Installs the logger for this process. `ident` names the process in every
/// line (`patchpaneld`, `patchpanel-ndproxy`, ...). Calling it twice is a no-op.
pub fn init(ident: &'static str, sink: Sink, level: LevelFilter) {
    if sink == Sink::Syslog {
        // openlog keeps the pointer: `ident` is 'static, so leak a C copy once.
        let c_ident: &'static std::ffi::CStr = Box::leak(
            CString::new(ident)
                .unwrap_or_else(|_| CString::from(c"patchpanel"))
                .into_boxed_c_str(),
        );
        // SAFETY: c_ident lives for the rest of the process.
        unsafe {
            libc::openlog(
                c_ident.as_ptr(),
                libc::LOG_PID | libc::LOG_NDELAY,
                libc::LOG_DAEMON,
            )
        };
    }
    if log::set_boxed_logger(Box::new(Logger { ident, sink })).is_ok() {
        log::set_max_level(level);
    }
}
