//! `patchpanel`: the command-line client of patchpaneld.
//!
//! Each subcommand is one D-Bus call through `patchpanel-client`, its answer
//! printed as a table or as JSON. `connect-ns` and `watch` keep running until
//! SIGINT, SIGTERM or SIGHUP; a lifeline held by `connect-ns` is released by
//! the process exiting, however it exits.
//!
//! Exit status: 0 on success, 1 when a call fails (the message is
//! `patchpanel: <what failed>: <server's reason>`), 2 on a usage error
//! (clap's own exit code).

mod args;
mod output;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use patchpanel_client::Client;
use patchpanel_proto::modify_port_rule_request::{Operation, Protocol, RuleType};
use patchpanel_proto::{ConnectNamespaceRequest, ModifyPortRuleRequest};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::args::{Cli, Command, ConnectNsArgs, PortRuleCommand};
use crate::output::{
    counters_table, device_change_text, devices_table, json_line, namespace_text, CounterJson,
    CountersJson, DeviceChangeJson, DeviceJson, DevicesJson, NamespaceJson,
};

/// How often `watch` looks for a termination signal between bus reads.
const WATCH_SLICE: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("patchpanel: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // Installed before any call, so that a signal arriving while a
    // namespace is being connected still ends in an orderly release.
    let signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install the signal handlers")?;
    let client = Client::connect()?.with_timeout(cli.timeout);
    match cli.command {
        Command::Devices { json } => devices(&client, json),
        Command::ConnectNs(args) => connect_ns(&client, &args, signals),
        Command::Counters { json, devices } => counters(&client, &devices, json),
        Command::PortRule(command) => port_rule(&client, &command),
        Command::Watch { json, count } => watch(&client, json, count, signals),
    }
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

fn watch(client: &Client, json: bool, count: Option<usize>, mut signals: Signals) -> Result<()> {
    let mut changes = client
        .watch_device_changes()
        .context("cannot watch device changes")?;
    let limit = count.unwrap_or(usize::MAX);
    let mut seen = 0;
    while seen < limit {
        if signals.pending().next().is_some() {
            break;
        }
        let Some(signal) = changes
            .next_timeout(WATCH_SLICE)
            .context("cannot read a device change")?
        else {
            continue;
        };
        seen += 1;
        let line = if json {
            json_line(&DeviceChangeJson::from(&signal))
        } else {
            device_change_text(&signal)
        };
        print(&format!("{line}\n"))?;
    }
    Ok(())
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
