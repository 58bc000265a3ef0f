//! Client addresses: ranges of them (`server.trusted_proxies`) and the key the address
//! limits of [`crate::gate`] count by.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IP address or a CIDR range of them (`server.trusted_proxies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    net: IpAddr,
    prefix: u8,
}

impl FromStr for IpRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net = addr
            .trim()
            .parse::<IpAddr>()
            .map_err(|e| e.to_string())?
            .to_canonical();
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|e| e.to_string())?,
            None => max,
        };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than the address"));
        }
        Ok(IpRange {
            net: mask(net, prefix),
            prefix,
        })
    }
}

impl IpRange {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.net.is_ipv4() && mask(ip, self.prefix) == self.net
    }
}

/// `ip` with all but its first `prefix` bits cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let keep = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::from((bits & keep).to_be_bytes())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let keep = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::from((bits & keep).to_be_bytes())
        }
    }
}

/// The key address limits count by: an IPv4 address, or an IPv6 address's /64 (one host
/// usually holds a whole /64, and could otherwise use a fresh address per connection).
pub fn address_key(ip: IpAddr) -> IpAddr {
    let ip = ip.to_canonical();
    if ip.is_ipv6() {
        mask(ip, 64)
    } else {
        ip
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Serialize for IpRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|e| {
            serde::de::Error::custom(format!("`{text}` is not an IP address or CIDR range: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_hold_their_addresses() {
        let r: IpRange = "10.1.0.0/16".parse().expect("range");
        assert!(r.contains("10.1.200.3".parse().expect("ip")));
        assert!(!r.contains("10.2.0.1".parse().expect("ip")));
        let one: IpRange = "127.0.0.1".parse().expect("address");
        assert!(one.contains("::ffff:127.0.0.1".parse().expect("mapped")));
        let v6: IpRange = "fd00::/8".parse().expect("v6 range");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!(!v6.contains("10.0.0.1".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "nonsense", "::/129", "1.2.3.4/x"] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
        let a = address_key("2001:db8::1".parse().expect("ip"));
        assert_eq!(a, address_key("2001:db8::ffff:2".parse().expect("ip")));
    }

    #[test]
    fn a_range_is_written_as_it_is_read() {
        for text in ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"] {
            let r: IpRange = text.parse().expect("range");
            assert_eq!(r.to_string(), text);
        }
    }
}
