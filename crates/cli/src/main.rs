//! `patchpanel`: the command-line client of patchpaneld.
//!
//! Each subcommand is one D-Bus call through `patchpanel-client` (or a
//! subscription to its signals), its answer printed as text or as JSON;
//! `topology` adds what it reads from the kernel. `connect-ns`, `watch`,
//! `monitor` and `counters --watch` keep running until SIGINT, SIGTERM or
//! SIGHUP; a lifeline held by `connect-ns` is released by the process
//! exiting, however it exits.
//!
//! Exit status ([`exit`], docs/cli.md): 0 on success, 1 when a call fails
//! (the message is `patchpanel: <what failed>: <server's reason>`), 2 on a
//! usage error (clap's own exit code), 3 when patchpaneld is not on the bus,
//! 4 when the bus policy refuses the call.

mod args;
mod exit;
mod networks;
mod output;
mod rates;
mod topology;
mod vm_run;

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use patchpanel_client::{Client, Subscription};
use patchpanel_proto::modify_port_rule_request::{Operation, Protocol, RuleType};
use patchpanel_proto::{ConnectNamespaceRequest, ModifyPortRuleRequest};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::args::{
    ArcCommand, Cli, Command, ConnectNsArgs, CountersArgs, DnsRedirectArgs, DnsRuleKind, FlagName,
    FollowArgs, LockState, OnOff, PortRuleCommand, VmCommand, VmStart, VmStop,
};
use crate::output::{
    counters_table, device_change_text, devices_table, guest_text, json_line, namespace_text,
    signal_text, CounterJson, CountersJson, DeviceChangeJson, DeviceJson, DevicesJson, GuestJson,
    NamespaceJson, SignalJson,
};

/// How often the long-running commands look for a termination signal
/// between bus reads or counter readings.
const WATCH_SLICE: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are "errors" that print to stdout and exit 0.
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            // Printing to stderr can only fail when stderr is gone.
            let _ = err.print();
            return ExitCode::from(exit::USAGE);
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("patchpanel: {err:#}");
            ExitCode::from(exit::code_for(&err))
        }
    }
}

/// Runs the command; the exit code on success (`vm run`: its VM's).
fn run(cli: Cli) -> Result<u8> {
    // Installed before any call, so that a signal arriving while a
    // namespace is being connected still ends in an orderly release.
    let signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install the signal handlers")?;
    // Read from the kernel alone: no bus needed.
    if let Command::Networks { json } = cli.command {
        let n = networks::assemble(&topology::kernel::read());
        return if json {
            print(&format!("{}\n", json_line(&n)))
        } else {
            print(&networks::render(&n))
        }
        .map(|()| exit::OK);
    }
    let client = Client::connect()?.with_timeout(cli.timeout);
    if let Command::Vm(VmCommand::Run(args)) = &cli.command {
        return vm_run::run(&client, args, signals);
    }
    match cli.command {
        Command::Devices { json } => devices(&client, json),
        Command::ConnectNs(args) => connect_ns(&client, &args, signals),
        Command::Counters(args) if args.watch => counters_watch(&client, &args, signals),
        Command::Counters(args) => counters(&client, &args.devices, args.json),
        Command::PortRule(command) => port_rule(&client, &command),
        Command::Watch(args) => watch(&client, &args, signals),
        Command::Monitor(args) => monitor(&client, &args, signals),
        Command::Vm(command) => vm(&client, &command),
        Command::Arc(command) => arc(&client, &command),
        Command::Topology { json, dot } => topology(&client, json, dot),
        Command::DnsRedirect(args) => dns_redirect(&client, &args, signals),
        Command::FeatureFlag { flag, state } => feature_flag(&client, flag, state),
        Command::Networks { .. } => unreachable!("served above"),
    }
    .map(|()| exit::OK)
}

fn dns_redirect(client: &Client, args: &DnsRedirectArgs, mut signals: Signals) -> Result<()> {
    use patchpanel_proto::set_dns_redirection_rule_request::RuleType as DnsType;
    let kind = match args.kind {
        DnsRuleKind::Default => DnsType::Default,
        DnsRuleKind::Arc => DnsType::Arc,
        DnsRuleKind::User => DnsType::User,
        DnsRuleKind::ExcludeDestination => DnsType::ExcludeDestination,
    };
    let request = patchpanel_proto::SetDnsRedirectionRuleRequest {
        r#type: kind as i32,
        input_ifname: args.ifname.clone().unwrap_or_default(),
        proxy_address: args.proxy.to_string(),
        nameservers: args.nameservers.iter().map(|n| n.to_string()).collect(),
        host_ifname: args.host_ifname.clone().unwrap_or_default(),
    };
    let what = format!(
        "{}{} to {}",
        kind.as_str_name(),
        args.ifname
            .as_ref()
            .map(|i| format!(" on {i}"))
            .unwrap_or_default(),
        args.proxy
    );
    let lifeline = client
        .set_dns_redirection_rule(&request)
        .with_context(|| format!("cannot redirect DNS ({what})"))?;
    print(&format!(
        "redirecting DNS: {what}; SIGINT (Ctrl-C) or SIGTERM removes the rule\n"
    ))?;
    let signal = signals.forever().next();
    lifeline.release();
    print(&format!(
        "removing the DNS redirection ({})\n",
        signal.map_or_else(|| "signal".into(), signal_name)
    ))
}

fn feature_flag(client: &Client, flag: FlagName, state: OnOff) -> Result<()> {
    use patchpanel_proto::set_feature_flag_request::FeatureFlag;
    let (flag, name) = match flag {
        FlagName::WifiQos => (FeatureFlag::WifiQos, "wifi-qos"),
        FlagName::Clat => (FeatureFlag::Clat, "clat"),
    };
    let on = state == OnOff::On;
    let previous = client
        .set_feature_flag(flag, on)
        .with_context(|| format!("cannot set the feature flag {name}"))?;
    let word = |b: bool| if b { "on" } else { "off" };
    print(&format!("{name}: {} (was {})\n", word(on), word(previous)))
}

fn devices(client: &Client, json: bool) -> Result<()> {
    let devices = client
        .get_devices()
        .context("cannot list the guest devices")?;
    if json {
        let all = DevicesJson {
            devices: devices.iter().map(DeviceJson::from).collect(),
        };
        print(&format!("{}\n", json_line(&all)))
    } else {
        print(&devices_table(&devices))
    }
}

fn connect_ns(client: &Client, args: &ConnectNsArgs, mut signals: Signals) -> Result<()> {
    let request = ConnectNamespaceRequest {
        pid: args.pid.unwrap_or(-1),
        outbound_physical_device: args.outbound.clone().unwrap_or_default(),
        allow_user_traffic: args.allow_user_traffic,
        route_on_vpn: args.route_on_vpn,
        traffic_source: args.source.map_or(0, |s| s as i32),
        static_ipv6: args.static_ipv6,
    };
    let (response, lifeline) = client
        .connect_namespace(&request)
        .context("cannot connect the namespace")?;
    let ns = NamespaceJson::from(&response);
    if args.json {
        print(&format!("{}\n", json_line(&ns)))?;
    } else {
        print(&namespace_text(&ns, args.pid))?;
        print("holding the connection; SIGINT (Ctrl-C) or SIGTERM releases it\n")?;
    }
    let signal = signals.forever().next();
    let what = match ns.netns_name.as_str() {
        "" => format!("the namespace of pid {}", request.pid),
        name => name.to_string(),
    };
    let line = format!(
        "releasing {what} ({})\n",
        signal.map_or_else(|| "signal".into(), signal_name)
    );
    lifeline.release();
    if args.json {
        // stdout carries only the JSON object.
        eprint!("patchpanel: {line}");
        Ok(())
    } else {
        print(&line)
    }
}

fn counters(client: &Client, devices: &[String], json: bool) -> Result<()> {
    let counters = client
        .get_traffic_counters(devices)
        .context("cannot read the traffic counters")?;
    if json {
        let all = CountersJson {
            counters: counters.iter().map(CounterJson::from).collect(),
        };
        print(&format!("{}\n", json_line(&all)))
    } else {
        print(&counters_table(&counters))
    }
}

fn port_rule(client: &Client, command: &PortRuleCommand) -> Result<()> {
    let (op, verb) = match command {
        PortRuleCommand::Create(_) => (Operation::Create, "create"),
        PortRuleCommand::Delete(_) => (Operation::Delete, "delete"),
    };
    let args = command.args();
    let request = ModifyPortRuleRequest {
        op: op as i32,
        r#type: RuleType::from(args.rule) as i32,
        proto: Protocol::from(args.proto) as i32,
        input_ifname: args.ifname.clone().unwrap_or_default(),
        input_dst_ip: args
            .input_dst_ip
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        input_dst_port: u32::from(args.port),
        dst_ip: args.dst_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        dst_port: args.dst_port.map(u32::from).unwrap_or_default(),
    };
    let rule = RuleType::from(args.rule).as_str_name().to_ascii_lowercase();
    client
        .modify_port_rule(&request)
        .with_context(|| format!("cannot {verb} the {rule} rule"))?;
    print(&format!("{verb}d {rule} rule\n"))
}

fn watch(client: &Client, args: &FollowArgs, signals: Signals) -> Result<()> {
    let changes = client
        .watch_device_changes()
        .context("cannot watch device changes")?;
    follow(changes, args, signals, |signal| {
        if args.json {
            json_line(&DeviceChangeJson::from(signal))
        } else {
            device_change_text(signal)
        }
    })
}

fn monitor(client: &Client, args: &FollowArgs, signals: Signals) -> Result<()> {
    let all = client
        .watch_signals()
        .context("cannot subscribe to the signals of patchpaneld")?;
    follow(all, args, signals, |signal| {
        if args.json {
            json_line(&SignalJson::from(signal))
        } else {
            signal_text(signal)
        }
    })
}

/// Prints one line per item of `subscription` until `args.count` items or a
/// termination signal.
fn follow<T>(
    mut subscription: Subscription<'_, T>,
    args: &FollowArgs,
    mut signals: Signals,
    line: impl Fn(&T) -> String,
) -> Result<()> {
    let limit = args.count.unwrap_or(usize::MAX);
    let mut seen = 0;
    while seen < limit {
        if signals.pending().next().is_some() {
            break;
        }
        let Some(item) = subscription
            .next_timeout(WATCH_SLICE)
            .context("cannot read a signal")?
        else {
            continue;
        };
        seen += 1;
        print(&format!("{}\n", line(&item)))?;
    }
    Ok(())
}

fn counters_watch(client: &Client, args: &CountersArgs, mut signals: Signals) -> Result<()> {
    let read = || {
        client
            .get_traffic_counters(&args.devices)
            .context("cannot read the traffic counters")
    };
    let mut before = read()?;
    let mut then = Instant::now();
    let limit = args.count.unwrap_or(usize::MAX);
    for _ in 0..limit {
        let deadline = then + args.interval;
        loop {
            if signals.pending().next().is_some() {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(WATCH_SLICE));
        }
        let after = read()?;
        let now = Instant::now();
        let report = rates::rates(&before, &after, now - then);
        if args.json {
            print(&format!("{}\n", json_line(&report)))?;
        } else {
            print(&format!("{}\n", rates::rates_table(&report)))?;
        }
        (before, then) = (after, now);
    }
    Ok(())
}

fn vm(client: &Client, command: &VmCommand) -> Result<()> {
    let (result, json) = match command {
        VmCommand::Run(_) => unreachable!("served by run"),
        VmCommand::Start(VmStart::Termina { cid, json }) => (
            client
                .terminavm_startup(cid.cid)
                .map(|r| GuestJson::termina(cid.cid, &r))
                .context("cannot start the Termina VM's network"),
            json,
        ),
        VmCommand::Start(VmStart::Plugin {
            id,
            subnet_index,
            json,
        }) => (
            client
                .pluginvm_startup(id.id, *subnet_index)
                .map(|r| GuestJson::plugin(id.id, &r))
                .context("cannot start the Plugin VM's network"),
            json,
        ),
        VmCommand::Start(VmStart::Arcvm { cid, json }) => (
            client
                .arcvm_startup(cid.cid)
                .map(|r| GuestJson::arcvm(cid.cid, &r))
                .context("cannot start ARCVM's network"),
            json,
        ),
        VmCommand::Start(VmStart::Bruschetta { id, json }) => (
            client
                .bruschettavm_startup(id.id)
                .map(|r| GuestJson::bruschetta(id.id, &r))
                .context("cannot start the Bruschetta VM's network"),
            json,
        ),
        VmCommand::Start(VmStart::Borealis { cid, json }) => (
            client
                .borealisvm_startup(cid.cid)
                .map(|r| GuestJson::borealis(cid.cid, &r))
                .context("cannot start the Borealis VM's network"),
            json,
        ),
        VmCommand::Stop(VmStop::Bruschetta { id, json }) => (
            client
                .bruschettavm_shutdown(id.id)
                .map(|()| GuestJson::stopped("bruschetta", None, Some(id.id), None))
                .context("cannot stop the Bruschetta VM's network"),
            json,
        ),
        VmCommand::Stop(VmStop::Borealis { cid, json }) => (
            client
                .borealisvm_shutdown(cid.cid)
                .map(|()| GuestJson::stopped("borealis", Some(cid.cid), None, None))
                .context("cannot stop the Borealis VM's network"),
            json,
        ),
        VmCommand::Stop(VmStop::Termina { cid, json }) => (
            client
                .terminavm_shutdown(cid.cid)
                .map(|()| GuestJson::stopped("termina", Some(cid.cid), None, None))
                .context("cannot stop the Termina VM's network"),
            json,
        ),
        VmCommand::Stop(VmStop::Plugin { id, json }) => (
            client
                .pluginvm_shutdown(id.id)
                .map(|()| GuestJson::stopped("plugin", None, Some(id.id), None))
                .context("cannot stop the Plugin VM's network"),
            json,
        ),
        VmCommand::Stop(VmStop::Arcvm { cid, json }) => (
            client
                .arcvm_shutdown(cid.cid)
                .map(|()| GuestJson::stopped("arcvm", Some(cid.cid), None, None))
                .context("cannot stop ARCVM's network"),
            json,
        ),
    };
    print_guest(&result?, json.json)
}

fn arc(client: &Client, command: &ArcCommand) -> Result<()> {
    let guest = match command {
        ArcCommand::Start(args) => {
            client
                .arc_startup(args.pid)
                .context("cannot start ARC's network")?;
            let devices = client
                .get_devices()
                .context("ARC started, but the devices cannot be listed")?;
            GuestJson::arc(args.pid, &devices)
        }
        ArcCommand::Stop(args) => {
            client
                .arc_shutdown(args.pid)
                .context("cannot stop ARC's network")?;
            GuestJson::stopped("arc", None, None, Some(args.pid))
        }
        ArcCommand::MulticastLock { state } => {
            let held = *state == LockState::Held;
            client
                .notify_wifi_multicast_lock(held)
                .context("cannot notify the Wi-Fi multicast lock")?;
            return print(if held {
                "Wi-Fi multicast lock held: inbound mDNS/SSDP from Wi-Fi reaches ARC\n"
            } else {
                "Wi-Fi multicast lock released: inbound mDNS/SSDP from Wi-Fi no longer reaches ARC\n"
            });
        }
    };
    let (ArcCommand::Start(args) | ArcCommand::Stop(args)) = command else {
        unreachable!("answered above")
    };
    print_guest(&guest, args.json.json)
}

fn print_guest(guest: &GuestJson, json: bool) -> Result<()> {
    if json {
        print(&format!("{}\n", json_line(guest)))
    } else {
        print(&guest_text(guest))
    }
}

fn topology(client: &Client, json: bool, dot: bool) -> Result<()> {
    let topology = topology::gather(client)?;
    if json {
        print(&format!("{}\n", json_line(&topology)))
    } else if dot {
        print(&topology::render::dot(&topology))
    } else {
        print(&topology::render::tree(&topology))
    }
}

/// Writes to stdout and flushes, so that a reader of a pipe sees each line
/// as it is printed; a closed stdout is an error, not a panic.
fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

fn signal_name(signal: i32) -> String {
    match signal {
        SIGINT => "SIGINT".into(),
        SIGTERM => "SIGTERM".into(),
        SIGHUP => "SIGHUP".into(),
        other => format!("signal {other}"),
    }
}
