//! The Debian package (issue 25, packaging/README.md): `scripts/package
//! --profile dev` packages the binaries the suite already built (no release
//! build), and these tests check what it holds, run its maintainer scripts
//! through dpkg against a scratch root (never the machine's own /usr or
//! /etc), hold lintian's verdict against packaging/lintian-justifications,
//! and check the default config against the manager's `Config`.
//!
//! Each test builds its own package into its own temporary directory, so the
//! tests run in parallel with each other and with the rest of the suite.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, ensure, Context, Result};
use patchpanel_tests::{bin_dir, Helper};
use patchpaneld::config::{pool_by_name, Config};
use tempfile::TempDir;

const UNIT: &str = "patchpaneld.service";
const ENABLE_LINK: &str = "etc/systemd/system/multi-user.target.wants/patchpaneld.service";
const CONFIG: &str = "etc/patchpanel/patchpanel.toml";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Every executable the package must put in /usr/bin: the daemon, each
/// helper it opens beside itself (the harness's copy of the spawner's
/// helper table), the CLI, and the standalone forwarders.
fn executables() -> Vec<String> {
    let mut names: Vec<String> = ["patchpaneld", "patchpanel", "ndproxyd", "mcastd"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    names.extend(Helper::ALL.iter().map(|h| h.executable().to_string()));
    names
}

fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd`; fails with its command line and output unless it exits 0.
fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    ensure!(
        out.status.success(),
        "`{}` failed ({}):\n{}{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `scripts/package --profile dev` into `out`; the .deb's path. With
/// `--fast` (gzip instead of xz: the same contents in half the time).
fn build_package(out: &Path) -> Result<PathBuf> {
    let bins = bin_dir()?;
    ensure!(
        bins.file_name().is_some_and(|n| n == "debug"),
        "scripts/package --profile dev packages <target>/debug, and the binaries are in {}",
        bins.display()
    );
    let target = bins.parent().context("target directory")?;
    let mut cmd = Command::new(repo().join("scripts/package"));
    cmd.args(["--profile", "dev", "--output"])
        .arg(out)
        .env("CARGO_TARGET_DIR", target);
    cmd.args(["--", "--fast"]);
    let output = run(&mut cmd)?;
    let text = stdout(&output);
    let last = text
        .lines()
        .last()
        .context("scripts/package printed nothing")?;
    let deb = PathBuf::from(last);
    ensure!(
        deb.is_file() && deb.starts_with(out),
        "scripts/package's last line is not the .deb in {}: {last:?}",
        out.display()
    );
    Ok(deb)
}

fn dpkg_field(deb: &Path, field: &str) -> Result<String> {
    let out = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field))?;
    Ok(stdout(&out).trim().to_string())
}

/// Names of the ELF file's sections (64-bit little-endian, what this
/// project builds for).
fn elf_sections(path: &Path) -> Result<Vec<String>> {
    let data = fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let u16_at = |o: usize| -> Result<usize> {
        let b = data.get(o..o + 2).context("truncated ELF")?;
        Ok(usize::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let u32_at = |o: usize| -> Result<usize> {
        let b: [u8; 4] = data.get(o..o + 4).context("truncated ELF")?.try_into()?;
        Ok(usize::try_from(u32::from_le_bytes(b))?)
    };
    let u64_at = |o: usize| -> Result<usize> {
        let b: [u8; 8] = data.get(o..o + 8).context("truncated ELF")?.try_into()?;
        Ok(usize::try_from(u64::from_le_bytes(b))?)
    };
    ensure!(
        data.starts_with(b"\x7fELF\x02\x01"),
        "{} is not a 64-bit little-endian ELF file",
        path.display()
    );
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 0x18)?;
    let mut names = Vec::new();
    for i in 0..shnum {
        let start = strtab + u32_at(header(i))?;
        let rest = data.get(start..).context("section name outside the file")?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .context("unterminated name")?;
        names.push(String::from_utf8_lossy(&rest[..end]).into_owned());
    }
    Ok(names)
}

/// The files (not directories) of an unpacked tree, relative to `root`.
fn files_under(root: &Path) -> Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root)?;
                found.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    Ok(found)
}

#[test]
fn the_package_holds_the_daemon_its_helpers_unit_policies_config_and_docs() -> Result<()> {
    let tmp = TempDir::new()?;
    let deb = build_package(tmp.path())?;

    // Control fields.
    assert_eq!(dpkg_field(&deb, "Package")?, "patchpanel");
    assert_eq!(
        dpkg_field(&deb, "Version")?,
        format!("{}-1", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(dpkg_field(&deb, "Section")?, "net");
    assert_eq!(dpkg_field(&deb, "Priority")?, "optional");
    let depends = dpkg_field(&deb, "Depends")?;
    // libc6 and libdbus-1-3 come from dpkg-shlibdeps ($auto): proof that the
    // shared-library dependencies were computed from the binaries.
    for dep in [
        "libc6",
        "libdbus-1-3",
        "dbus",
        "passwd",
        "iproute2",
        "init-system-helpers",
    ] {
        assert!(
            depends.split(',').any(|d| d.trim().starts_with(dep)),
            "Depends lacks {dep}: {depends}"
        );
    }

    // Control archive: conffiles and the maintainer scripts, as in the tree.
    let control = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control))?;
    let conffiles = fs::read_to_string(control.join("conffiles"))?;
    assert!(
        conffiles.lines().any(|l| l == format!("/{CONFIG}")),
        "conffiles: {conffiles}"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let shipped = control.join(script);
        assert_eq!(
            fs::read(&shipped)?,
            fs::read(repo().join("packaging/debian").join(script))?,
            "{script} differs from packaging/debian/{script}"
        );
        assert_eq!(
            fs::metadata(&shipped)?.permissions().mode() & 0o777,
            0o755,
            "{script}"
        );
    }

    // Data archive: exactly the expected files, with the expected modes.
    let data = tmp.path().join("data");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&data))?;
    let mut expected: BTreeMap<String, u32> = BTreeMap::new();
    for name in executables() {
        expected.insert(format!("usr/bin/{name}"), 0o755);
    }
    for file in [
        "lib/systemd/system/patchpaneld.service",
        "usr/share/dbus-1/system.d/org.chromium.PatchPanel.conf",
        "usr/share/dbus-1/system.d/org.chromium.SocketService.conf",
        CONFIG,
        "usr/share/doc/patchpanel/copyright",
        "usr/share/doc/patchpanel/changelog.Debian.gz",
        "usr/share/doc/patchpanel/README.md",
    ] {
        expected.insert(file.to_string(), 0o644);
    }
    for doc in fs::read_dir(repo().join("docs"))? {
        let name = doc?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            expected.insert(format!("usr/share/doc/patchpanel/{name}"), 0o644);
        }
    }
    let found = files_under(&data)?;
    let wanted: BTreeSet<String> = expected.keys().cloned().collect();
    assert_eq!(
        found,
        wanted,
        "missing: {:?}; unexpected: {:?}",
        wanted.difference(&found).collect::<Vec<_>>(),
        found.difference(&wanted).collect::<Vec<_>>()
    );
    for (file, mode) in &expected {
        let meta = fs::symlink_metadata(data.join(file))?;
        assert!(meta.file_type().is_file(), "{file} is not a regular file");
        assert_eq!(meta.permissions().mode() & 0o7777, *mode, "mode of {file}");
    }

    // The tree's own files, unchanged.
    for (shipped, source) in [
        (
            "lib/systemd/system/patchpaneld.service",
            "upstart/patchpaneld.service",
        ),
        (
            "usr/share/dbus-1/system.d/org.chromium.PatchPanel.conf",
            "upstart/org.chromium.PatchPanel.conf",
        ),
        (
            "usr/share/dbus-1/system.d/org.chromium.SocketService.conf",
            "upstart/org.chromium.SocketService.conf",
        ),
        (CONFIG, "packaging/patchpanel.toml"),
        ("usr/share/doc/patchpanel/copyright", "packaging/copyright"),
    ] {
        assert_eq!(
            fs::read(data.join(shipped))?,
            fs::read(repo().join(source))?,
            "{shipped} differs from {source}"
        );
    }
    // The unit starts the packaged daemon, and documents itself with a
    // packaged file.
    let unit = fs::read_to_string(data.join("lib/systemd/system").join(UNIT))?;
    for line in unit.lines() {
        for key in ["ExecStart=", "Documentation=file:"] {
            if let Some(path) = line.strip_prefix(key) {
                let path = path.split_whitespace().next().unwrap_or_default();
                assert!(
                    data.join(path.trim_start_matches('/')).is_file(),
                    "{key}{path}: not in the package"
                );
            }
        }
    }

    // Stripped: no debug sections, no symbol table.
    for name in executables() {
        let sections = elf_sections(&data.join("usr/bin").join(&name))?;
        let debug: Vec<_> = sections
            .iter()
            .filter(|s| (s.starts_with(".debug_") && *s != ".debug_gdb_scripts") || *s == ".symtab")
            .collect();
        assert!(debug.is_empty(), "{name} is not stripped: {debug:?}");
    }

    // The changelog's newest entry is this version.
    let changelog =
        run(Command::new("zcat").arg(data.join("usr/share/doc/patchpanel/changelog.Debian.gz")))?;
    let first = stdout(&changelog)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        first.starts_with(&format!("patchpanel ({}-1) ", env!("CARGO_PKG_VERSION"))),
        "packaging/changelog's first entry is not this version: {first}"
    );
    Ok(())
}

/// A scratch root for `dpkg --root`: an empty package database and account
/// files holding only root.
fn scratch_root() -> Result<TempDir> {
    let root = TempDir::new()?;
    let r = root.path();
    for dir in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "etc",
    ] {
        fs::create_dir_all(r.join(dir))?;
    }
    for (file, text, mode) in [
        ("var/lib/dpkg/status", "", 0o644),
        ("var/lib/dpkg/available", "", 0o644),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ("etc/group", "root:x:0:\n", 0o644),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n", 0o640),
        ("etc/gshadow", "root:*::\n", 0o640),
    ] {
        fs::write(r.join(file), text)?;
        fs::set_permissions(r.join(file), fs::Permissions::from_mode(mode))?;
    }
    Ok(root)
}

/// dpkg acting on `root` only: maintainer scripts run outside it with
/// DPKG_ROOT set (--force-script-chrootless), and the root has none of the
/// package's dependencies (--force-depends).
fn dpkg(root: &Path, args: &[&str]) -> Result<String> {
    let out = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
        ])
        .args(args))?;
    Ok(format!(
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn package_status(root: &Path) -> Result<String> {
    let out = Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f=${Status}", "patchpanel"])
        .output()?;
    Ok(stdout(&out))
}

/// What the machine's own account files, systemd configuration and /usr/bin
/// look like: contents, modification times and symlink targets.
fn host_snapshot() -> Result<BTreeMap<String, String>> {
    let mut snap = BTreeMap::new();
    for file in ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"] {
        let describe = match fs::metadata(file) {
            Ok(meta) => {
                let mut hash = DefaultHasher::new();
                fs::read(file)?.hash(&mut hash);
                format!("{:?} {:x}", meta.modified()?, hash.finish())
            }
            Err(e) => e.to_string(),
        };
        snap.insert(file.to_string(), describe);
    }
    let mut dirs = vec![PathBuf::from("/etc/systemd")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            let meta = fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                dirs.push(path.clone());
            }
            let target = fs::read_link(&path)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            snap.insert(
                path.display().to_string(),
                format!("{:?} {target}", meta.modified()?),
            );
        }
    }
    for name in executables() {
        let path = Path::new("/usr/bin").join(&name);
        snap.insert(path.display().to_string(), path.exists().to_string());
    }
    snap.insert(
        "/etc/patchpanel".into(),
        Path::new("/etc/patchpanel").exists().to_string(),
    );
    Ok(snap)
}

fn account_lines(root: &Path, db: &str, name: &str) -> Result<Vec<String>> {
    let text = fs::read_to_string(root.join("etc").join(db))?;
    Ok(text
        .lines()
        .filter(|l| l.split(':').next() == Some(name))
        .map(str::to_string)
        .collect())
}

#[test]
fn maintainer_scripts_install_enable_and_purge_in_a_scratch_root_only() -> Result<()> {
    let tmp = TempDir::new()?;
    let deb = build_package(tmp.path())?;
    let deb_arg = deb.to_str().context("path")?;
    let root = scratch_root()?;
    let r = root.path();
    let host_before = host_snapshot()?;

    // Install: files, accounts, enablement.
    let log = dpkg(r, &["-i", deb_arg])?;
    assert_eq!(package_status(r)?, "install ok installed", "{log}");
    for name in executables() {
        let path = r.join("usr/bin").join(&name);
        assert!(path.is_file(), "{} missing after install", path.display());
    }
    assert!(r.join("lib/systemd/system").join(UNIT).is_file());
    assert!(r
        .join("usr/share/dbus-1/system.d/org.chromium.PatchPanel.conf")
        .is_file());
    assert!(r.join(CONFIG).is_file());
    for user in ["patchpaneld", "crosvm"] {
        let lines = account_lines(r, "passwd", user)?;
        assert_eq!(lines.len(), 1, "{user} in passwd: {lines:?}\n{log}");
        let fields: Vec<&str> = lines[0].split(':').collect();
        let uid: u32 = fields[2].parse()?;
        assert!(
            (100..1000).contains(&uid),
            "{user} is not a system user: {}",
            lines[0]
        );
        assert_eq!(
            &fields[5..],
            ["/nonexistent", "/usr/sbin/nologin"],
            "{}",
            lines[0]
        );
        assert_eq!(
            account_lines(r, "group", user)?.len(),
            1,
            "{user}'s own group"
        );
        assert_eq!(
            account_lines(r, "shadow", user)?.len(),
            1,
            "{user} in shadow"
        );
    }
    assert_eq!(
        account_lines(r, "group", "patchpanel")?.len(),
        1,
        "group patchpanel"
    );
    let link = r.join(ENABLE_LINK);
    assert_eq!(
        fs::read_link(&link).with_context(|| format!("{} (not enabled)\n{log}", link.display()))?,
        Path::new("/lib/systemd/system").join(UNIT)
    );

    // Remove: binaries gone, the conffile and the accounts stay.
    dpkg(r, &["--remove", "patchpanel"])?;
    assert_eq!(package_status(r)?, "deinstall ok config-files");
    assert!(!r.join("usr/bin/patchpaneld").exists());
    assert!(r.join(CONFIG).is_file(), "remove must keep the conffile");

    // Purge: nothing of the package is left but the accounts (Debian
    // Policy: files elsewhere may still belong to them).
    dpkg(r, &["--purge", "patchpanel"])?;
    assert_eq!(package_status(r)?, "");
    let accounts = ["passwd", "group", "shadow", "gshadow"];
    let left: Vec<String> = files_under(r)?
        .into_iter()
        .filter(|f| !f.starts_with("var/lib/dpkg/"))
        .filter(|f| {
            let name = f.strip_prefix("etc/").unwrap_or_default();
            !accounts
                .iter()
                .any(|a| name == *a || name == format!("{a}-"))
        })
        .collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    assert!(
        fs::symlink_metadata(&link).is_err(),
        "enablement left after purge"
    );
    assert!(
        !r.join("etc/patchpanel").exists(),
        "/etc/patchpanel left after purge"
    );
    assert_eq!(account_lines(r, "passwd", "patchpaneld")?.len(), 1);

    // Reinstall over the kept accounts (none added twice), then an upgrade
    // keeps the administrator's `systemctl disable`.
    dpkg(r, &["-i", deb_arg])?;
    assert_eq!(account_lines(r, "passwd", "patchpaneld")?.len(), 1);
    assert_eq!(account_lines(r, "group", "patchpanel")?.len(), 1);
    assert!(fs::read_link(&link).is_ok(), "not enabled on a new install");
    fs::remove_file(&link)?;
    dpkg(r, &["-i", deb_arg])?;
    assert_eq!(package_status(r)?, "install ok installed");
    assert!(
        fs::symlink_metadata(&link).is_err(),
        "an upgrade re-enabled a disabled unit"
    );
    dpkg(r, &["--purge", "patchpanel"])?;
    assert_eq!(package_status(r)?, "");

    assert_eq!(
        host_before,
        host_snapshot()?,
        "the machine's own /etc or /usr/bin changed"
    );
    Ok(())
}

/// packaging/lintian-justifications: `tag: why` per line.
fn justifications() -> Result<BTreeMap<String, String>> {
    let path = repo().join("packaging/lintian-justifications");
    let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (tag, why) = line
            .split_once(':')
            .with_context(|| format!("not `tag: why`: {line}"))?;
        ensure!(!why.trim().is_empty(), "{tag} has no justification");
        map.insert(tag.trim().to_string(), why.trim().to_string());
    }
    Ok(map)
}

#[test]
fn lintian_tags_are_fixed_or_justified() -> Result<()> {
    if Command::new("lintian").arg("--version").output().is_err() {
        bail!("lintian is not installed: `apt-get install lintian` (scripts/bootstrap does)");
    }
    let tmp = TempDir::new()?;
    let deb = build_package(tmp.path())?;
    let out = run(Command::new("lintian")
        .args([
            "--tag-display-limit",
            "0",
            "--display-info",
            "--display-experimental",
            "--pedantic",
            "--fail-on",
            "none",
        ])
        .arg(&deb))?;
    let allowed = justifications()?;
    let mut emitted = BTreeSet::new();
    let mut unjustified = Vec::new();
    for line in stdout(&out).lines() {
        // "W: patchpanel: tag-name [context]"
        let mut parts = line.splitn(3, ": ");
        let (Some(level), Some(_package), Some(rest)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !matches!(level, "E" | "W" | "I" | "P" | "X" | "C") {
            continue;
        }
        let tag = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        if !allowed.contains_key(&tag) {
            unjustified.push(line.to_string());
        }
        emitted.insert(tag);
    }
    let stale: Vec<_> = allowed.keys().filter(|t| !emitted.contains(*t)).collect();
    if !stale.is_empty() {
        eprintln!("justified but not emitted by this lintian on this build: {stale:?}");
    }
    assert!(
        unjustified.is_empty(),
        "lintian tags neither fixed nor in packaging/lintian-justifications:\n{}",
        unjustified.join("\n")
    );
    Ok(())
}

/// packaging/patchpanel.toml with every `#key = value` and `#[table]` line
/// uncommented (prose lines are `# ...`).
fn uncommented_default_config() -> Result<(String, String)> {
    let text = fs::read_to_string(repo().join("packaging/patchpanel.toml"))?;
    let live = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[') => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok((text, live))
}

/// The top-level keys of a TOML text: `key = ...` lines before the first
/// table, and the first part of each `[table]` or `[table.sub]`.
fn top_level_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut in_table = false;
    for line in text.lines() {
        if let Some(header) = line.strip_prefix('[') {
            in_table = true;
            let name = header.split(['.', ']']).next().unwrap_or_default();
            keys.insert(name.trim().to_string());
        } else if !in_table {
            if let Some((key, _)) = line.split_once(" = ") {
                if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    keys.insert(key.to_string());
                }
            }
        }
    }
    keys
}

/// The keys of the manager's `Config`, as serde lists them when refusing
/// an unknown one.
fn config_keys() -> Result<BTreeSet<String>> {
    let err = Config::parse("no_such_key_for_the_list = 1").expect_err("an unknown key is refused");
    let list = err
        .split_once("expected one of")
        .with_context(|| format!("serde's message changed: {err}"))?
        .1;
    Ok(list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect())
}

#[test]
fn the_default_config_names_every_key_with_its_default() -> Result<()> {
    let (text, live) = uncommented_default_config()?;
    // Commented out, the file is the defaults, but for the one key a
    // generic host's package sets: DHCP for its stock VM images.
    let generic_host = Config {
        guest_dhcp: true,
        ..Config::default()
    };
    assert_eq!(
        Config::parse(&text).map_err(anyhow::Error::msg)?,
        generic_host
    );

    // Every key of Config is there: uncommentable with its default, or (no
    // TOML spelling of "unset") shown as `# key = ...`.
    let present = top_level_keys(&live);
    let keys = config_keys()?;
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !present.contains(*k) && !text.contains(&format!("\n# {k} = ")))
        .collect();
    assert!(
        missing.is_empty(),
        "packaging/patchpanel.toml lacks {missing:?}"
    );
    let unknown: Vec<_> = present.iter().filter(|k| !keys.contains(*k)).collect();
    assert!(unknown.is_empty(), "not keys of the config: {unknown:?}");

    // Uncommented, it is the defaults too: each documented value is right.
    let parsed = Config::parse(&live).map_err(anyhow::Error::msg)?;
    let defaults = generic_host;
    let (ours, reference) = (
        parsed.address_manager().map_err(anyhow::Error::msg)?,
        defaults.address_manager().map_err(anyhow::Error::msg)?,
    );
    assert_eq!(parsed.pools.len(), 7, "every pool is written out");
    for name in parsed.pools.keys() {
        let pool = pool_by_name(name).context("pool name")?;
        assert_eq!(
            ours.pool_config(pool),
            reference.pool_config(pool),
            "[pools.{name}]"
        );
    }
    let mut without_pools = parsed.clone();
    without_pools.pools.clear();
    assert_eq!(without_pools, defaults);
    Ok(())
}

/// Runs packaging/debian/`script` `args` as dpkg would on a live system
/// (DPKG_ROOT unset), in a private mount and pid namespace whose /run is
/// `run` and whose /proc shows only its own processes, with `stubs` first
/// in PATH and /usr/sbin left out (so no real useradd can run).
fn run_live(script: &str, args: &[&str], stubs: &Path, run: &Path, log: &Path) -> Result<Output> {
    let path = repo().join("packaging/debian").join(script);
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--mount-proc",
        ])
        .args([
            "sh",
            "-c",
            "mount --bind \"$0\" /run && shift && exec sh \"$@\"",
        ])
        .arg(run)
        .arg("placeholder")
        .arg(&path)
        .args(args)
        .env("PATH", format!("{}:/usr/bin:/bin", stubs.display()))
        .env("STUB_LOG", log)
        .env_remove("DPKG_ROOT")
        .output()
        .context("unshare")?;
    Ok(out)
}

/// The branches that act on the running system, which a scratch root never
/// reaches: every tool they call is a stub that logs its arguments. A
/// daemon that fails to start does not fail postinst, and a failed
/// `patchpaneld --cleanup` does not fail prerm; both say so.
#[test]
fn on_a_live_systemd_host_postinst_starts_and_prerm_stops_and_cleans_up() -> Result<()> {
    let tmp = TempDir::new()?;
    let (stubs, run, log) = (
        tmp.path().join("bin"),
        tmp.path().join("run"),
        tmp.path().join("calls"),
    );
    fs::create_dir_all(&stubs)?;
    fs::create_dir_all(run.join("systemd/system"))?;
    fs::create_dir_all(run.join("dbus"))?;
    let _bus = std::os::unix::net::UnixListener::bind(run.join("dbus/system_bus_socket"))?;
    for (tool, status) in [
        ("getent", 2), // nobody exists yet
        ("groupadd", 0),
        ("useradd", 0),
        ("deb-systemd-helper", 0),
        ("deb-systemd-invoke", 1), // start and stop fail
        ("systemctl", 0),
        ("dbus-send", 0),
        ("patchpaneld", 1), // --cleanup fails
    ] {
        let stub = stubs.join(tool);
        fs::write(
            &stub,
            format!("#!/bin/sh\necho \"{tool} $*\" >>\"$STUB_LOG\"\nexit {status}\n"),
        )?;
        fs::set_permissions(&stub, fs::Permissions::from_mode(0o755))?;
    }
    let calls = || -> Result<Vec<String>> {
        let text = fs::read_to_string(&log).unwrap_or_default();
        fs::write(&log, "")?;
        Ok(text.lines().map(str::to_string).collect())
    };
    let position = |calls: &[String], prefix: &str| {
        calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .with_context(|| format!("no `{prefix}` in {calls:#?}"))
    };

    let out = run_live("postinst", &["configure", ""], &stubs, &run, &log)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "postinst failed: {stderr}");
    let made = calls()?;
    for account in [
        "groupadd --system patchpanel",
        "useradd --system",
        "deb-systemd-helper enable",
    ] {
        position(&made, account)?;
    }
    assert_eq!(
        made.iter().filter(|c| c.starts_with("useradd")).count(),
        2,
        "{made:#?}"
    );
    let reload = position(&made, "systemctl --system daemon-reload")?;
    let bus = position(&made, "dbus-send --system")?;
    let start = position(&made, "deb-systemd-invoke start patchpaneld.service")?;
    assert!(
        reload < start && bus < start,
        "start before the reloads: {made:#?}"
    );
    assert!(
        made[bus].contains("org.freedesktop.DBus.ReloadConfig"),
        "{}",
        made[bus]
    );
    assert!(stderr.contains("did not start"), "no warning: {stderr}");

    let out = run_live("prerm", &["remove"], &stubs, &run, &log)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "prerm failed: {stderr}");
    let made = calls()?;
    let stop = position(&made, "deb-systemd-invoke stop patchpaneld.service")?;
    let cleanup = position(&made, "patchpaneld --cleanup")?;
    assert!(stop < cleanup, "{made:#?}");
    assert!(stderr.contains("--cleanup` failed"), "no warning: {stderr}");

    // An upgrade stops the daemon and cleans nothing.
    let out = run_live("prerm", &["upgrade", "0.1.0-1"], &stubs, &run, &log)?;
    assert!(out.status.success());
    let made = calls()?;
    position(&made, "deb-systemd-invoke stop")?;
    assert!(
        !made.iter().any(|c| c.starts_with("patchpaneld")),
        "{made:#?}"
    );
    Ok(())
}
