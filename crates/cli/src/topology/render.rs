//! [`Topology`] for people (a tree) and for Graphviz (`dot`). Pure.

use std::fmt::Write as _;

use super::{Chain, Fwmark, Guest, Link, Route, Rule, Topology, Uplink};

/// One line of the tree and what hangs under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub label: String,
    pub children: Vec<Node>,
}

impl Node {
    fn leaf(label: impl Into<String>) -> Node {
        Node {
            label: label.into(),
            children: Vec::new(),
        }
    }

    fn branch(label: impl Into<String>, children: Vec<Node>) -> Node {
        Node {
            label: label.into(),
            children,
        }
    }
}

/// The tree: one root per uplink (its guests under it), then the guests
/// that have no uplink, then the notes.
pub fn tree(topology: &Topology) -> String {
    let mut roots: Vec<Node> = topology
        .uplinks
        .iter()
        .map(|uplink| uplink_node(topology, uplink))
        .collect();
    let homeless: Vec<Node> = topology
        .guests
        .iter()
        .filter(|g| {
            g.uplink
                .as_deref()
                .is_none_or(|u| !topology.uplinks.iter().any(|l| l.ifname == u))
        })
        .map(guest_node)
        .collect();
    if !homeless.is_empty() {
        roots.push(Node::branch("guests without an uplink", homeless));
    }
    let mut out = String::new();
    if roots.is_empty() {
        out.push_str("no uplinks and no guest devices\n");
    }
    for root in &roots {
        out.push_str(&root.label);
        out.push('\n');
        draw(&root.children, "", &mut out);
    }
    if !topology.notes.is_empty() {
        out.push_str("notes:\n");
        for note in &topology.notes {
            let _ = writeln!(out, "  {note}");
        }
    }
    out
}

fn draw(children: &[Node], prefix: &str, out: &mut String) {
    for (i, child) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        let (branch, indent) = if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        let _ = writeln!(out, "{prefix}{branch}{}", child.label);
        draw(&child.children, &format!("{prefix}{indent}"), out);
    }
}

fn uplink_node(topology: &Topology, uplink: &Uplink) -> Node {
    let mut label = format!("uplink {}", uplink.ifname);
    label.push_str(&link_summary(uplink.link.as_ref()));
    if topology.default_uplink.as_deref() == Some(uplink.ifname.as_str()) {
        label.push_str(" [default network]");
    }
    let mut children = details(
        &uplink.addresses,
        &uplink.routes,
        &uplink.rules,
        &uplink.fwmarks,
        &uplink.chains,
    );
    children.extend(
        topology
            .guests
            .iter()
            .filter(|g| g.uplink.as_deref() == Some(uplink.ifname.as_str()))
            .map(guest_node),
    );
    Node::branch(label, children)
}

fn guest_node(guest: &Guest) -> Node {
    let d = &guest.device;
    let mut label = format!("guest {} {}", d.ifname, d.guest_type);
    label.push_str(&link_summary(guest.link.as_ref()));
    if guest.follows_default {
        label.push_str(" [follows the default network]");
    }
    let mut children = Vec::new();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let guest_if = if d.guest_ifname.is_empty() {
        String::new()
    } else {
        format!(" on {}", d.guest_ifname)
    };
    children.push(Node::leaf(format!(
        "subnet {}, host {}, guest {}{guest_if}",
        opt(&d.ipv4_subnet),
        opt(&d.host_ipv4_addr),
        opt(&d.guest_ipv4_addr),
    )));
    if !guest.members.is_empty() {
        children.push(Node::branch(
            "members",
            guest
                .members
                .iter()
                .map(|m| Node::leaf(format!("{}{}", m.ifname, link_summary(Some(m)))))
                .collect(),
        ));
    }
    children.extend(details(
        &guest.addresses,
        &guest.routes,
        &[],
        &guest.fwmarks,
        &guest.chains,
    ));
    Node::branch(label, children)
}

/// Addresses, routes, ip rules, fwmarks and chains, each group left out
/// when empty.
fn details(
    addresses: &[String],
    routes: &[Route],
    rules: &[Rule],
    marks: &[Fwmark],
    chains: &[Chain],
) -> Vec<Node> {
    let mut nodes = Vec::new();
    if !addresses.is_empty() {
        nodes.push(Node::leaf(format!("addresses {}", addresses.join(", "))));
    }
    if !routes.is_empty() {
        nodes.push(Node::branch(
            "routes",
            routes.iter().map(|r| Node::leaf(route_text(r))).collect(),
        ));
    }
    if !rules.is_empty() {
        nodes.push(Node::branch(
            "ip rules",
            rules.iter().map(rule_node).collect(),
        ));
    }
    if !marks.is_empty() {
        nodes.push(Node::branch(
            "fwmarks",
            marks.iter().map(|m| Node::leaf(mark_text(m))).collect(),
        ));
    }
    if !chains.is_empty() {
        nodes.push(Node::branch(
            "chains",
            chains.iter().map(|c| Node::leaf(chain_text(c))).collect(),
        ));
    }
    nodes
}

fn link_summary(link: Option<&Link>) -> String {
    let Some(link) = link else {
        return " (not in the kernel)".into();
    };
    let mut parts = Vec::new();
    if let Some(kind) = &link.kind {
        parts.push(kind.clone());
    }
    if let Some(state) = &link.state {
        parts.push(state.clone());
    }
    parts.push(format!("ifindex {}", link.ifindex));
    if let Some(mac) = &link.mac {
        parts.push(mac.clone());
    }
    format!(" ({})", parts.join(", "))
}

fn route_text(r: &Route) -> String {
    let mut text = r.dst.clone();
    if let Some(gw) = &r.gateway {
        let _ = write!(text, " via {gw}");
    }
    let _ = write!(text, " dev {} table {}", r.dev, r.table);
    if let Some(proto) = &r.protocol {
        let _ = write!(text, " proto {proto}");
    }
    text
}

fn rule_node(r: &Rule) -> Node {
    Node::leaf(format!(
        "{} {}: {} lookup {}",
        r.family, r.priority, r.selector, r.table
    ))
}

fn mark_text(m: &Fwmark) -> String {
    let meaning = if m.meaning.is_empty() {
        String::new()
    } else {
        format!(" {}", m.meaning)
    };
    format!(
        "{} {}/{}{meaning} (set in {}, {})",
        m.kind,
        m.value,
        m.mask,
        m.chain,
        m.families.join("+")
    )
}

fn chain_text(c: &Chain) -> String {
    format!("{}/{} ({})", c.table, c.chain, c.families.join("+"))
}

/// A Graphviz digraph: uplinks and guests as nodes, an edge from each guest
/// to its uplink (dashed when it follows the default network), member links
/// into their guest.
pub fn dot(topology: &Topology) -> String {
    let mut out = String::from(
        "digraph patchpanel {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
    );
    for uplink in &topology.uplinks {
        let mut lines = vec![format!("uplink {}", uplink.ifname)];
        lines.extend(uplink.addresses.iter().cloned());
        if topology.default_uplink.as_deref() == Some(uplink.ifname.as_str()) {
            lines.push("default network".into());
        }
        let _ = writeln!(
            out,
            "  {} [label={}, shape=box3d];",
            quote(&format!("uplink:{}", uplink.ifname)),
            quote(&lines.join("\n"))
        );
    }
    for guest in &topology.guests {
        let d = &guest.device;
        let id = format!("guest:{}", d.ifname);
        let mut lines = vec![format!("{} {}", d.ifname, d.guest_type)];
        lines.extend(guest.addresses.iter().cloned());
        if let Some(addr) = &d.guest_ipv4_addr {
            lines.push(format!("guest {addr}"));
        }
        lines.extend(
            guest
                .fwmarks
                .iter()
                .filter(|m| m.kind == "mark" && !m.meaning.is_empty())
                .map(|m| format!("{} {}/{}", m.meaning, m.value, m.mask)),
        );
        let _ = writeln!(
            out,
            "  {} [label={}];",
            quote(&id),
            quote(&lines.join("\n"))
        );
        if let Some(uplink) = &guest.uplink {
            let attributes = if guest.follows_default {
                " [style=dashed, label=\"default\"]"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {} -> {}{attributes};",
                quote(&id),
                quote(&format!("uplink:{uplink}")),
            );
        }
        for member in &guest.members {
            let member_id = format!("link:{}", member.ifname);
            let _ = writeln!(
                out,
                "  {} [label={}, shape=ellipse];\n  {} -> {} [arrowhead=none];",
                quote(&member_id),
                quote(&member.ifname),
                quote(&member_id),
                quote(&id)
            );
        }
    }
    out.push_str("}\n");
    out
}

/// A Graphviz quoted string (`"`, `\` escaped; newlines as `\n`).
fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
