//! The counters parser (`patchpanel_firewall::counters::parse_counters`):
//! `iptables-save -c` text with the iptables backend, and the text the
//! nftables backend builds from dumped rules. The first byte picks the
//! family. Beyond "never panics": every sample names a non-empty device.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchpanel_firewall::counters::parse_counters;
use patchpanel_firewall::model::Family;

fuzz_target!(|data: &[u8]| {
    let Some((&f, text)) = data.split_first() else {
        return;
    };
    let family = if f & 1 == 0 { Family::V4 } else { Family::V6 };
    let text = String::from_utf8_lossy(text);
    if let Ok(samples) = parse_counters(&text, family) {
        for s in samples {
            assert!(!s.ifname.is_empty(), "{s:?}");
        }
    }
});
