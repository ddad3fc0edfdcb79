//! Special-purpose addresses: where Airlock never connects, however the
//! address was written or resolved. From the IANA IPv4 and IPv6
//! special-purpose address registries, plus cloud metadata endpoints.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A range and what it is.
struct Range {
    net: ipnet::IpNet,
    what: &'static str,
}

fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8, what: &'static str) -> Range {
    let net = ipnet::Ipv4Net::new(Ipv4Addr::new(a, b, c, d), prefix)
        .map(ipnet::IpNet::V4)
        .unwrap_or_default();
    Range { net, what }
}

fn v6(segments: [u16; 8], prefix: u8, what: &'static str) -> Range {
    let [a, b, c, d, e, f, g, h] = segments;
    let net = ipnet::Ipv6Net::new(Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix)
        .map(ipnet::IpNet::V6)
        .unwrap_or_default();
    Range { net, what }
}

fn table() -> &'static [Range] {
    static TABLE: std::sync::OnceLock<Vec<Range>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        vec![
            v4(0, 0, 0, 0, 8, "the unspecified/this-network range"),
            v4(10, 0, 0, 0, 8, "private (10/8)"),
            v4(100, 64, 0, 0, 10, "carrier-grade NAT (100.64/10)"),
            v4(127, 0, 0, 0, 8, "loopback"),
            v4(
                169,
                254,
                0,
                0,
                16,
                "link-local, where cloud metadata lives (169.254/16)",
            ),
            v4(172, 16, 0, 0, 12, "private (172.16/12)"),
            v4(192, 0, 0, 0, 24, "IETF protocol assignments (192.0.0/24)"),
            v4(192, 0, 2, 0, 24, "documentation (192.0.2/24)"),
            v4(192, 31, 196, 0, 24, "AS112 (192.31.196/24)"),
            v4(192, 52, 193, 0, 24, "AMT (192.52.193/24)"),
            v4(192, 88, 99, 0, 24, "6to4 relay anycast (192.88.99/24)"),
            v4(192, 168, 0, 0, 16, "private (192.168/16)"),
            v4(
                192,
                175,
                48,
                0,
                24,
                "direct delegation AS112 (192.175.48/24)",
            ),
            v4(198, 18, 0, 0, 15, "benchmarking (198.18/15)"),
            v4(198, 51, 100, 0, 24, "documentation (198.51.100/24)"),
            v4(203, 0, 113, 0, 24, "documentation (203.0.113/24)"),
            v4(224, 0, 0, 0, 4, "multicast"),
            v4(240, 0, 0, 0, 4, "reserved (240/4), including broadcast"),
            v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "the unspecified address"),
            v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback"),
            v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, "IPv4-mapped"),
            v6([0, 0, 0, 0, 0, 0, 0, 0], 96, "IPv4-compatible (deprecated)"),
            v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96, "IPv4-translated"),
            v6(
                [0x64, 0xff9b, 0, 0, 0, 0, 0, 0],
                96,
                "IPv4/IPv6 translation (64:ff9b::/96)",
            ),
            v6(
                [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
                48,
                "local IPv4/IPv6 translation (64:ff9b:1::/48)",
            ),
            v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only (100::/64)"),
            v6(
                [0x2001, 0, 0, 0, 0, 0, 0, 0],
                23,
                "IETF protocol assignments, Teredo included (2001::/23)",
            ),
            v6(
                [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
                32,
                "documentation (2001:db8::/32)",
            ),
            v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4 (2002::/16)"),
            v6(
                [0x3fff, 0, 0, 0, 0, 0, 0, 0],
                20,
                "documentation (3fff::/20)",
            ),
            v6(
                [0x5f00, 0, 0, 0, 0, 0, 0, 0],
                16,
                "segment routing (5f00::/16)",
            ),
            v6(
                [0xfc00, 0, 0, 0, 0, 0, 0, 0],
                7,
                "unique local, where some cloud metadata lives (fc00::/7)",
            ),
            v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local"),
            v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site-local (deprecated)"),
            v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast"),
        ]
    })
}

/// What special-purpose range `ip` is in, if any.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    table().iter().find(|r| r.net.contains(&ip)).map(|r| r.what)
}

/// Addresses an operator allowed explicitly, despite being special.
#[derive(Clone, Debug, Default)]
pub struct Allowed(Vec<ipnet::IpNet>);

impl Allowed {
    /// Parse `"127.0.0.1"`, `"10.1.0.0/16"`, `"::1"`.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in entries {
            let net = entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("`{entry}` is not an IP address or CIDR range"))?;
            nets.push(net);
        }
        Ok(Allowed(nets))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn special_ranges_are_found_in_every_form() {
        for addr in [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "192.0.0.171",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a00:1",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "ff02::1",
            "2001::1",
            "2002:7f00:1::",
            "2001:db8::1",
            "::ffff:0:a00:1",
            "fec0::1",
        ] {
            assert!(special(ip(addr)).is_some(), "{addr} is special");
        }
    }

    #[test]
    fn public_addresses_are_not_special() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "172.32.0.1",
            "2606:4700::1111",
            "2a00:1450::1",
        ] {
            assert_eq!(special(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn operators_allow_addresses_and_ranges() {
        let allowed =
            Allowed::parse(&["127.0.0.1".into(), "10.1.0.0/16".into()]).unwrap_or_default();
        assert!(allowed.contains(ip("127.0.0.1")));
        assert!(!allowed.contains(ip("127.0.0.2")));
        assert!(allowed.contains(ip("10.1.200.3")));
        assert!(Allowed::parse(&["localhost".into()]).is_err());
    }
}
