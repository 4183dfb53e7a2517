//! A process a test starts inside a namespace: SIGTERM on drop (SIGKILL
//! if it lingers), its log printed if the test failed.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{poll_until, Netns};

/// Time a process gets to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A process started in a namespace with `nsenter --net=`; SIGTERM on drop
/// (SIGKILL if it lingers), its log printed if the test failed.
#[derive(Debug)]
pub struct Spawned {
    name: String,
    child: Child,
    exit: Option<ExitStatus>,
    log: PathBuf,
}

impl Spawned {
    pub fn start(name: &str, netns: &Netns, argv: &[String], log: PathBuf) -> Result<Self> {
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.path().display()))
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out.try_clone().context("dup log")?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {name}: {argv:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            exit: None,
            log,
        })
    }

    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().context("poll child")?;
        }
        Ok(self.exit)
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_exit()? {
            return Ok(status);
        }
        let pid = i32::try_from(self.child.id()).context("pid")?;
        // SAFETY: kill takes integers only; the pid is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        match poll_until(EXIT_TIMEOUT, || self.try_exit().ok().flatten()) {
            Some(status) => Ok(status),
            None => bail!("{} did not exit after SIGTERM", self.name),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.terminate().is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}-----", self.name, self.log());
        }
    }
}
