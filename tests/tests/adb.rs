//! ADB over TCP to ARC through the whole daemon: port 5555 listens only
//! while ARC runs and `adb_allowed` is set, data crosses the relay intact
//! both ways (from the host and from the LAN), the port closes when ARC
//! stops, and a killed adb-proxy relays again with no new D-Bus call.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use patchpanel_client::Client;
use patchpanel_tests::vm::{FakeContainer, FakeVm};
use patchpanel_tests::world::{World, UPLINK_ADDR};
use patchpanel_tests::{poll_until, DaemonOptions, Helper, Netns};

const ADB_ON: &str = "adb_allowed = true\nadb_max_connections = 8\n";
const MIB: usize = 1 << 20;

/// adbd's stand-in in ARC: a threaded echo server on 0.0.0.0:5555. Killed
/// on drop.
struct EchoServer(Child);

impl EchoServer {
    fn start(mut cmd: Command) -> EchoServer {
        let script = "import socket,threading\n\
            s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
            s.bind(('0.0.0.0',5555)); s.listen(128)\n\
            print('listening', flush=True)\n\
            def echo(c):\n\
            \x20   while True:\n\
            \x20       d=c.recv(1<<16)\n\
            \x20       if not d: break\n\
            \x20       c.sendall(d)\n\
            \x20   c.close()\n\
            while True:\n\
            \x20   c,a=s.accept(); threading.Thread(target=echo,args=(c,),daemon=True).start()\n";
        let mut child = cmd
            .args(["/usr/bin/python3", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("echo server");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line.trim(), "listening");
        EchoServer(child)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `mib` MiB of random bytes to `addr:5555` from `netns`, half-closes,
/// reads the echo to EOF; Ok(true) when every byte came back in order.
fn echo_round_trip(netns: &Netns, addr: &str, mib: usize) -> Result<bool, String> {
    let script = format!(
        "import socket,hashlib,threading,os\n\
         c=socket.create_connection(('{addr}',5555),timeout=20)\n\
         data=os.urandom({MIB}); out=hashlib.sha256(); back=hashlib.sha256()\n\
         def send():\n\
         \x20   for i in range({mib}): c.sendall(data); out.update(data)\n\
         \x20   c.shutdown(socket.SHUT_WR)\n\
         t=threading.Thread(target=send); t.start(); n=0\n\
         while True:\n\
         \x20   d=c.recv(1<<16)\n\
         \x20   if not d: break\n\
         \x20   back.update(d); n+=len(d)\n\
         t.join(); print(n, out.hexdigest()==back.hexdigest())\n"
    );
    let out = netns
        .exec(&["/usr/bin/python3", "-c", &script])
        .map_err(|e| format!("{e:#}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(text == format!("{} True", mib * MIB))
}

/// Whether anything accepts TCP on `addr:5555` from `netns`.
fn port_open(netns: &Netns, addr: &str) -> bool {
    netns
        .exec(&[
            "/usr/bin/python3",
            "-c",
            &format!("import socket; socket.create_connection(('{addr}',5555),timeout=3)"),
        ])
        .is_ok_and(|o| o.status.success())
}

fn started_arc(world: &World) -> FakeContainer {
    let container = FakeContainer::start().expect("container");
    Client::connect_to(world.bus.address())
        .expect("client")
        .arc_startup(container.pid())
        .expect("ArcStartup");
    container.bring_up("arc0", None).expect("arc0 up");
    container
}

fn adb_world() -> World {
    World::start_with(DaemonOptions {
        extra_config: ADB_ON.into(),
        ..Default::default()
    })
    .expect("world")
}

#[test]
fn adb_reaches_arc_from_the_host_and_the_lan_with_every_byte_intact() {
    let world = adb_world();
    assert!(
        !port_open(&world.netns, "127.0.0.1"),
        "5555 open before ARC"
    );
    let arc = started_arc(&world);
    let _adbd = EchoServer::start(arc.command(&[]));

    assert_eq!(echo_round_trip(&world.netns, "127.0.0.1", 16), Ok(true));
    assert_eq!(echo_round_trip(&world.netns, "::1", 1), Ok(true));
    assert_eq!(
        echo_round_trip(&world.internet.upstream, UPLINK_ADDR, 4),
        Ok(true)
    );
}

#[test]
fn a_hundred_mib_cross_the_relay_each_way_and_a_hundred_clients_are_served_at_once() {
    let world = World::start_with(DaemonOptions {
        extra_config: "adb_allowed = true\nadb_max_connections = 128\n".into(),
        ..Default::default()
    })
    .expect("world");
    let arc = started_arc(&world);
    let _adbd = EchoServer::start(arc.command(&[]));
    assert_eq!(echo_round_trip(&world.netns, "127.0.0.1", 100), Ok(true));

    let script = "import socket\n\
        cs=[socket.create_connection(('127.0.0.1',5555),timeout=10) for i in range(100)]\n\
        for i,c in enumerate(cs): c.sendall(b'%03d' % i)\n\
        print(all(c.recv(3) == b'%03d' % i for i,c in enumerate(cs)))\n";
    let out = world
        .netns
        .exec(&["/usr/bin/python3", "-c", script])
        .expect("clients");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "True",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_adb_port_closes_when_arc_stops() {
    let world = adb_world();
    let arc = started_arc(&world);
    let _adbd = EchoServer::start(arc.command(&[]));
    assert_eq!(echo_round_trip(&world.netns, "127.0.0.1", 1), Ok(true));

    Client::connect_to(world.bus.address())
        .expect("client")
        .arc_shutdown(arc.pid())
        .expect("ArcShutdown");
    assert!(
        !port_open(&world.netns, "127.0.0.1"),
        "5555 open after ArcShutdown"
    );
    assert!(world.daemon.log().contains("port 5555 closed"));
}

#[test]
fn the_adb_port_stays_closed_when_adb_is_not_allowed() {
    let world = World::start().expect("world");
    let arc = started_arc(&world);
    let _adbd = EchoServer::start(arc.command(&[]));
    assert!(!port_open(&world.netns, "127.0.0.1"));
}

#[test]
fn a_killed_adb_proxy_relays_again_without_a_new_call() {
    let world = adb_world();
    let arc = started_arc(&world);
    let _adbd = EchoServer::start(arc.command(&[]));
    assert_eq!(echo_round_trip(&world.netns, "127.0.0.1", 1), Ok(true));

    let old = world.daemon.tree().expect("tree").helper(Helper::AdbProxy);
    // SAFETY: kill takes integers only.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    poll_until(Duration::from_secs(5), || {
        let p = world.daemon.tree().ok()?.helper(Helper::AdbProxy);
        (p != old).then_some(p)
    })
    .expect("adb-proxy respawned");
    let back = poll_until(Duration::from_secs(10), || {
        echo_round_trip(&world.netns, "127.0.0.1", 1)
            .ok()
            .filter(|ok| *ok)
    });
    assert_eq!(back, Some(true), "no relay after adb-proxy respawned");
}

/// A Termina VM booted on its TAP, and its gateway (the TAP's host address).
fn boot_termina(world: &World) -> (FakeVm, String) {
    let vm = Client::connect_to(world.bus.address())
        .expect("client")
        .terminavm_startup(7)
        .expect("TerminaVmStartup");
    let addr = patchpanel_proto::ipv4_from_addr4(&vm.ipv4_address).expect("address");
    let gateway = patchpanel_proto::ipv4_from_addr4(&vm.gateway_ipv4_address).expect("gateway");
    let guest = FakeVm::boot(
        &world.netns,
        &vm.tap_device_ifname,
        "eth0",
        &addr.to_string(),
        30,
        &gateway.to_string(),
    )
    .expect("vm");
    (guest, gateway.to_string())
}

fn sideload_rules(world: &World) -> Vec<String> {
    let mut rules = Vec::new();
    for table in ["nat", "filter"] {
        let dump = world
            .netns
            .firewall_save(false, Some(table))
            .expect("iptables-save");
        rules.extend(
            dump.lines()
                .filter(|l| l.contains("--dport 5555"))
                .map(str::to_string),
        );
    }
    rules
}

#[test]
fn crostini_sideloads_through_the_relay_only_when_adb_is_allowed() {
    let world = adb_world();
    let arc = started_arc(&world);
    let _adbd = EchoServer::start(arc.command(&[]));
    let (vm, gateway) = boot_termina(&world);

    // `adb connect arc` from the VM: ARC's address, answered by the relay.
    assert_eq!(echo_round_trip(vm.netns(), "100.115.92.2", 4), Ok(true));
    let rules = sideload_rules(&world);
    assert_eq!(rules.len(), 2, "{rules:#?}");
    // To the relay on the TAP's own address: no route_localnet needed.
    assert!(
        rules[0].contains(&format!("-j DNAT --to-destination {gateway}:5555")),
        "{rules:#?}"
    );

    Client::connect_to(world.bus.address())
        .expect("client")
        .terminavm_shutdown(7)
        .expect("TerminaVmShutdown");
    assert_eq!(sideload_rules(&world), Vec::<String>::new());
}

#[test]
fn without_adb_a_termina_vm_gets_no_sideloading_rules() {
    let world = World::start().expect("world");
    let _vm = boot_termina(&world);
    assert_eq!(sideload_rules(&world), Vec::<String>::new());
}

#[test]
fn the_connection_limit_refuses_the_next_one_and_a_closed_client_frees_its_slot() {
    let world = adb_world();
    let arc = started_arc(&world);
    let _adbd = EchoServer::start(arc.command(&[]));
    // Eight clients hold a relayed connection (each proves it with an echo);
    // the ninth is closed by the relay; once one leaves, a new one works.
    let script = "import socket\n\
        def echo(c):\n\
        \x20   c.sendall(b'ping'); return c.recv(4) == b'ping'\n\
        held=[socket.create_connection(('127.0.0.1',5555),timeout=5) for i in range(8)]\n\
        print(all(echo(c) for c in held))\n\
        extra=socket.create_connection(('127.0.0.1',5555),timeout=5)\n\
        try:\n\
        \x20   extra.sendall(b'ping'); refused = extra.recv(4) == b''\n\
        except (ConnectionResetError, BrokenPipeError):\n\
        \x20   refused = True\n\
        print(refused)\n\
        held.pop().close()\n\
        import time\n\
        for i in range(50):\n\
        \x20   c=socket.create_connection(('127.0.0.1',5555),timeout=5)\n\
        \x20   try:\n\
        \x20       ok=echo(c)\n\
        \x20   except OSError:\n\
        \x20       ok=False\n\
        \x20   if ok: break\n\
        \x20   time.sleep(0.1)\n\
        print(ok)\n";
    let out = world
        .netns
        .exec(&["/usr/bin/python3", "-c", script])
        .expect("client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>(),
        ["True", "True", "True"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(world.daemon.log().contains("refused an ADB connection"));
}

/// A Python script running in the background, its stdout read line by
/// line. Killed on drop.
struct Script {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Script {
    /// Runs `script` with `args` through `cmd` (nsenter into the right
    /// namespace, or nothing).
    fn start(mut cmd: Command, script: &str, args: &[&str]) -> Script {
        let mut child = cmd
            .args(["/usr/bin/python3", "-c", script])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Script { child, out }
    }

    /// The next line it prints, trimmed ("" once it has exited).
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read");
        line.trim().to_string()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        self.kill();
    }
}

fn in_netns(netns: &Netns) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.path().display()))
        .arg("--");
    cmd
}

/// How long the far end may take to see its peer go.
const CLOSE_BOUND_SECONDS: u32 = 10;

/// Once its request is answered, prints `connected`, then waits up to
/// [`CLOSE_BOUND_SECONDS`] for the other side: prints `eof`, `reset`,
/// `data` or `timeout` and the seconds it waited. With the argument
/// `serve` it accepts one connection on 5555 and echoes the request;
/// with `connect` it connects to 127.0.0.1:5555 and sends it.
const WAITS_FOR_CLOSE: &str = "import socket,sys,time\n\
    if sys.argv[1] == 'serve':\n\
    \x20   s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
    \x20   s.bind(('0.0.0.0',5555)); s.listen(8); print('listening', flush=True)\n\
    \x20   c,a=s.accept(); c.sendall(c.recv(4))\n\
    else:\n\
    \x20   c=socket.create_connection(('127.0.0.1',5555),timeout=5)\n\
    \x20   c.sendall(b'ping'); assert c.recv(4) == b'ping'\n\
    print('connected', flush=True)\n\
    c.settimeout(float(sys.argv[2])); t=time.monotonic()\n\
    try:\n\
    \x20   r = 'eof' if c.recv(1) == b'' else 'data'\n\
    except ConnectionResetError:\n\
    \x20   r = 'reset'\n\
    except socket.timeout:\n\
    \x20   r = 'timeout'\n\
    print(r, round(time.monotonic()-t, 3), flush=True)\n\
    time.sleep(600)\n";

/// `eof` or `reset` (the peer went), in `line` ("<what> <seconds>").
fn saw_the_peer_go(line: &str) -> bool {
    matches!(line.split_whitespace().next(), Some("eof" | "reset"))
}

#[test]
fn killing_either_end_of_a_relayed_connection_closes_the_other() {
    let world = adb_world();
    let arc = started_arc(&world);
    let bound = CLOSE_BOUND_SECONDS.to_string();

    // adbd dies under a connected client: the client sees EOF or a reset.
    let mut adbd = EchoServer::start(arc.command(&[]));
    let mut client = Script::start(
        in_netns(&world.netns),
        WAITS_FOR_CLOSE,
        &["connect", &bound],
    );
    assert_eq!(client.line(), "connected");
    let _ = adbd.0.kill();
    let _ = adbd.0.wait();
    let seen = client.line();
    assert!(
        saw_the_peer_go(&seen),
        "client after adbd was killed: {seen:?}"
    );
    client.kill();

    // The client dies: adbd sees EOF or a reset.
    let mut adbd = Script::start(arc.command(&[]), WAITS_FOR_CLOSE, &["serve", &bound]);
    assert_eq!(adbd.line(), "listening");
    let mut client = Script::start(
        in_netns(&world.netns),
        WAITS_FOR_CLOSE,
        &["connect", &bound],
    );
    assert_eq!(client.line(), "connected");
    assert_eq!(adbd.line(), "connected");
    client.kill();
    let seen = adbd.line();
    assert!(
        saw_the_peer_go(&seen),
        "adbd after the client was killed: {seen:?}"
    );
}

/// VMADDR_CID_LOCAL: the local host, through the vsock loopback transport.
const VSOCK_CID_LOCAL: u32 = 1;

/// Whether vsock loopback works here: binds an AF_VSOCK listener to
/// VMADDR_CID_LOCAL, connects to it and passes a byte. Prints `ok` or why
/// not.
const VSOCK_LOOPBACK_PROBE: &str = "import socket\n\
    def probe():\n\
    \x20   try:\n\
    \x20       s=socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\n\
    \x20   except (AttributeError, OSError) as e:\n\
    \x20       return f'no AF_VSOCK socket: {e}'\n\
    \x20   try:\n\
    \x20       s.bind((1, 0xFFFFFFFF)); s.listen(1)\n\
    \x20   except OSError as e:\n\
    \x20       return f'cannot bind AF_VSOCK to VMADDR_CID_LOCAL (no vsock loopback transport): {e}'\n\
    \x20   c=socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM); c.settimeout(3); s.settimeout(3)\n\
    \x20   try:\n\
    \x20       c.connect((1, s.getsockname()[1])); a,_=s.accept(); c.sendall(b'x')\n\
    \x20       return 'ok' if a.recv(1) == b'x' else 'vsock loopback lost a byte'\n\
    \x20   except OSError as e:\n\
    \x20       return f'cannot connect to VMADDR_CID_LOCAL: {e}'\n\
    print(probe())\n";

/// ARCVM's adbd stand-in on the host side of vsock loopback: a threaded
/// echo server on AF_VSOCK (VMADDR_CID_ANY, 5555).
const VSOCK_ECHO_SERVER: &str = "import socket,threading\n\
    s=socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\n\
    s.bind((0xFFFFFFFF, 5555)); s.listen(16)\n\
    print('listening', flush=True)\n\
    def echo(c):\n\
    \x20   while True:\n\
    \x20       d=c.recv(1<<16)\n\
    \x20       if not d: break\n\
    \x20       c.sendall(d)\n\
    \x20   c.close()\n\
    while True:\n\
    \x20   c,a=s.accept(); threading.Thread(target=echo,args=(c,),daemon=True).start()\n";

#[test]
fn adb_reaches_arcvm_over_vsock_with_every_byte_intact() {
    let probe = Command::new("/usr/bin/python3")
        .args(["-c", VSOCK_LOOPBACK_PROBE])
        .output()
        .expect("python3");
    let verdict = String::from_utf8_lossy(&probe.stdout).trim().to_string();
    if verdict != "ok" {
        eprintln!(
            "skipped: {verdict}{}",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        return;
    }
    let world = adb_world();
    // In the daemon's namespace, where the relay connects from.
    let mut adbd = Script::start(in_netns(&world.netns), VSOCK_ECHO_SERVER, &[]);
    assert_eq!(adbd.line(), "listening");

    Client::connect_to(world.bus.address())
        .expect("client")
        .arcvm_startup(VSOCK_CID_LOCAL)
        .expect("ArcVmStartup");

    assert_eq!(echo_round_trip(&world.netns, "127.0.0.1", 16), Ok(true));
    assert_eq!(
        echo_round_trip(&world.internet.upstream, UPLINK_ADDR, 4),
        Ok(true)
    );
}
