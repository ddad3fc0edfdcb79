//! The egress decision (target `egress`): a URL built from structured parts
//! (an IPv4 address in any of the notations WHATWG accepts, an IPv6 address,
//! or a name) with the resolver's answers for it. The decision agrees with a
//! reference model written independently of the runtime's table (integer
//! bounds rather than prefixes); an allow implies every address is public or
//! explicitly allowed; the URL names the address it was built from; and
//! canonicalizing a canonical URL changes nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use airlock_host_apis::http::{Destination, canonical_url};
use arbitrary::{Arbitrary, Unstructured};

use super::{Violation, ensure};
use crate::egress::address::Allowed;
use crate::egress::screen;

/// Special IPv4 ranges, first and last address, from the IANA registry.
const V4: &[(u32, u32)] = &[
    (0x0000_0000, 0x00ff_ffff), // this network
    (0x0a00_0000, 0x0aff_ffff), // private
    (0x6440_0000, 0x647f_ffff), // shared address space
    (0x7f00_0000, 0x7fff_ffff), // loopback
    (0xa9fe_0000, 0xa9fe_ffff), // link-local
    (0xac10_0000, 0xac1f_ffff), // private
    (0xc000_0000, 0xc000_00ff), // IETF protocol assignments
    (0xc000_0200, 0xc000_02ff), // TEST-NET-1
    (0xc01f_c400, 0xc01f_c4ff), // AS112
    (0xc034_c100, 0xc034_c1ff), // AMT
    (0xc058_6300, 0xc058_63ff), // 6to4 relay anycast
    (0xc0a8_0000, 0xc0a8_ffff), // private
    (0xc0af_3000, 0xc0af_30ff), // direct delegation AS112
    (0xc612_0000, 0xc613_ffff), // benchmarking
    (0xc633_6400, 0xc633_64ff), // TEST-NET-2
    (0xcb00_7100, 0xcb00_71ff), // TEST-NET-3
    (0xe000_0000, 0xffff_ffff), // multicast, reserved, broadcast
];

/// Special IPv6 ranges, first and last address.
const V6: &[(u128, u128)] = &[
    (0, 0xffff_ffff),                     // unspecified, loopback, IPv4-compatible
    (0xffff_0000_0000, 0xffff_ffff_ffff), // IPv4-mapped
    (0xffff_0000_0000_0000, 0xffff_0000_ffff_ffff), // IPv4-translated
    (
        0x0064_ff9b_u128 << 96,
        (0x0064_ff9b_u128 << 96) | 0xffff_ffff,
    ),
    (
        0x0064_ff9b_0001_u128 << 80,
        ((0x0064_ff9b_0001_u128 + 1) << 80) - 1,
    ),
    (0x0100_u128 << 112, (0x0100_u128 << 112) | u64::MAX as u128),
    (
        0x2001_u128 << 112,
        ((0x2001_u128 << 112) | (0x01ff_u128 << 96)) | ((1u128 << 96) - 1),
    ),
    (
        0x2001_0db8_u128 << 96,
        (0x2001_0db8_u128 << 96) | ((1u128 << 96) - 1),
    ),
    (0x2002_u128 << 112, (0x2003_u128 << 112) - 1),
    (
        0x3fff_u128 << 112,
        (0x3fff_0fff_u128 << 96) | ((1u128 << 96) - 1),
    ),
    (0x5f00_u128 << 112, (0x5f01_u128 << 112) - 1),
    (0xfc00_u128 << 112, (0xfe00_u128 << 112) - 1),
    (0xfe80_u128 << 112, (0xfec0_u128 << 112) - 1),
    (0xfec0_u128 << 112, (0xff00_u128 << 112) - 1),
    (0xff00_u128 << 112, u128::MAX),
];

/// The model: is `ip` in a special range?
pub fn special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let n = u32::from(v4);
            V4.iter().any(|(a, b)| (*a..=*b).contains(&n))
        }
        IpAddr::V6(v6) => {
            let n = u128::from(v6);
            V6.iter().any(|(a, b)| (*a..=*b).contains(&n))
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Host {
    /// An IPv4 address (near a range's edge, or any) and its notation.
    V4 {
        pick: u8,
        noise: u32,
        notation: u8,
    },
    V6 {
        pick: u8,
        noise: u128,
    },
    /// A name, from a few labels.
    Name {
        labels: Vec<u8>,
        upper: bool,
        dot: bool,
    },
}

#[derive(Debug, Arbitrary)]
struct Case {
    https: bool,
    host: Host,
    port: Option<u16>,
    path: String,
    /// The resolver's answers for a name, as addresses near interesting ones.
    answers: Vec<(u8, u32)>,
    /// Allow the first answer explicitly, as an operator might.
    allow_first: bool,
}

/// One IPv4 address in one of the notations WHATWG URL parsing accepts.
fn write_v4(ip: u32, notation: u8) -> String {
    let [a, b, c, d] = ip.to_be_bytes();
    match notation % 6 {
        0 => format!("{a}.{b}.{c}.{d}"),
        1 => format!("{ip}"),
        2 => format!("0x{ip:x}"),
        3 => format!("0{ip:o}"),
        4 => format!("{a}.{}", ip & 0x00ff_ffff),
        _ => format!("0x{a:x}.0{b:o}.{c}.0x{d:02X}"),
    }
}

/// An address at or just beside an edge of a special range, or any.
fn v4_near(pick: u8, noise: u32) -> u32 {
    let Some((first, last)) = V4.get(usize::from(pick)).copied() else {
        return noise;
    };
    match noise % 4 {
        0 => first,
        1 => last,
        2 => first.wrapping_sub(1),
        _ => last.wrapping_add(1),
    }
}

fn v6_near(pick: u8, noise: u128) -> u128 {
    let Some((first, last)) = V6.get(usize::from(pick)).copied() else {
        return noise;
    };
    match noise % 4 {
        0 => first,
        1 => last,
        2 => first.wrapping_sub(1),
        _ => last.wrapping_add(1),
    }
}

/// A resolver's answer: IPv4, IPv4-mapped IPv6, or IPv6, near an edge.
fn answer(kind: u8, noise: u32) -> IpAddr {
    let pick = kind % 32;
    match kind / 32 % 4 {
        0 | 1 => IpAddr::V4(Ipv4Addr::from(v4_near(pick, noise))),
        2 => IpAddr::V6(Ipv4Addr::from(v4_near(pick, noise)).to_ipv6_mapped()),
        _ => IpAddr::V6(Ipv6Addr::from(v6_near(pick, u128::from(noise)))),
    }
}

pub fn check(bytes: &[u8]) -> Result<(), Violation> {
    match Case::arbitrary(&mut Unstructured::new(bytes)) {
        Ok(case) => check_case(&case),
        Err(_) => Ok(()),
    }
}

fn check_case(case: &Case) -> Result<(), Violation> {
    let (host_text, expected) = match &case.host {
        Host::V4 {
            pick,
            noise,
            notation,
        } => {
            let address = v4_near(pick % 32, *noise);
            (
                write_v4(address, *notation),
                Some(IpAddr::V4(Ipv4Addr::from(address))),
            )
        }
        Host::V6 { pick, noise } => {
            let address = Ipv6Addr::from(v6_near(pick % 32, *noise));
            (format!("[{address}]"), Some(IpAddr::V6(address)))
        }
        Host::Name { labels, upper, dot } => {
            let words = ["api", "example", "com", "reports", "xn--bcher-kva", "a-b"];
            let mut name: Vec<&str> = labels
                .iter()
                .take(4)
                .filter_map(|l| words.get(usize::from(*l) % words.len()).copied())
                .collect();
            if name.is_empty() {
                name.push("example");
            }
            let mut text = name.join(".");
            if *upper {
                text = text.to_uppercase();
            }
            if *dot {
                text.push('.');
            }
            (text, None)
        }
    };
    let scheme = if case.https { "https" } else { "http" };
    let port = case.port.map(|p| format!(":{p}")).unwrap_or_default();
    let path: String = url::form_urlencoded::byte_serialize(case.path.as_bytes()).collect();
    let text = format!("{scheme}://{host_text}{port}/{path}");
    let Ok((url, _, destination, port)) = canonical_url(&text) else {
        // Refused before anything else; only a bad port may refuse an address.
        ensure!(
            expected.is_none() || case.port == Some(0),
            "`{text}` was refused although it names an address"
        );
        return Ok(());
    };
    if let Some(ip) = expected {
        ensure!(
            destination == Destination::Ip(ip),
            "`{text}` names {ip} but was read as {destination:?}"
        );
    }
    let again = canonical_url(url.as_str())
        .map_err(|e| Violation(format!("the canonical `{url}` does not parse again: {e}")))?;
    ensure!(
        again.0 == url && again.2 == destination && again.3 == port,
        "canonicalizing `{url}` again changed it to `{}`",
        again.0
    );
    let addresses: Vec<IpAddr> = match destination {
        Destination::Ip(ip) => vec![ip],
        Destination::Name(_) => case
            .answers
            .iter()
            .take(6)
            .map(|(kind, noise)| answer(*kind, *noise))
            .collect(),
    };
    let allowed_text: Vec<String> = addresses
        .first()
        .filter(|_| case.allow_first)
        .map(|ip| vec![ip.to_string()])
        .unwrap_or_default();
    let allowed = Allowed::parse(&allowed_text).map_err(Violation)?;
    let decision = screen(
        url.host_str().unwrap_or_default(),
        "is",
        &addresses,
        &allowed,
    );
    let model = !addresses.is_empty()
        && addresses
            .iter()
            .all(|ip| !special(*ip) || allowed.contains(*ip));
    ensure!(
        decision.is_ok() == model,
        "`{text}` with answers {addresses:?} (allowed {allowed_text:?}): the runtime says {decision:?}, the model {}",
        if model { "allow" } else { "deny" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_and_the_table_agree_on_range_edges() {
        for (first, last) in V4 {
            for n in [*first, *last, first.wrapping_sub(1), last.wrapping_add(1)] {
                let ip = IpAddr::V4(Ipv4Addr::from(n));
                assert_eq!(
                    special(ip),
                    crate::egress::address::special(ip).is_some(),
                    "{ip}"
                );
            }
        }
        for (first, last) in V6 {
            for n in [*first, *last, first.wrapping_sub(1), last.wrapping_add(1)] {
                let ip = IpAddr::V6(Ipv6Addr::from(n));
                assert_eq!(
                    special(ip),
                    crate::egress::address::special(ip).is_some(),
                    "{ip}"
                );
            }
        }
    }

    /// Every range edge (and either side of it), in every notation, as the
    /// URL's host and as a resolver's answer.
    #[test]
    fn every_edge_holds_in_every_notation_and_as_an_answer() {
        let base = |host| Case {
            https: true,
            host,
            port: None,
            path: String::new(),
            answers: Vec::new(),
            allow_first: false,
        };
        for pick in 0..=32u8 {
            for noise in 0..4u32 {
                for notation in 0..6u8 {
                    check_case(&base(Host::V4 {
                        pick,
                        noise,
                        notation,
                    }))
                    .unwrap_or_else(|v| panic!("{v}"));
                }
                check_case(&base(Host::V6 {
                    pick,
                    noise: u128::from(noise),
                }))
                .unwrap_or_else(|v| panic!("{v}"));
            }
        }
        for kind in 0..=255u8 {
            for noise in 0..4u32 {
                for allow_first in [false, true] {
                    let mut case = base(Host::Name {
                        labels: vec![0, 1, 2],
                        upper: false,
                        dot: false,
                    });
                    case.answers = vec![(kind, noise), (6, 3)];
                    case.allow_first = allow_first;
                    check_case(&case).unwrap_or_else(|v| panic!("{v}"));
                }
            }
        }
    }

    #[test]
    fn the_seed_corpus_holds() {
        for (name, bytes) in super::super::corpus::seeds("egress") {
            if let Err(v) = check(&bytes) {
                panic!("{name}: {v}");
            }
        }
    }
}
