//! The rules every name, endpoint and size from a peer or the command line must meet.
//!
//! One place for them, so the registry, the client and the CLI refuse the same inputs with
//! the same words. Each function returns the cleaned value or a [`Invalid`] that says what
//! is wrong in terms a person can act on.

/// Smallest cluster size; smaller requests are raised to it.
pub const MIN_CLUSTER_SIZE: u32 = 2;
/// Largest cluster size (the member bitmap is a u64); larger requests are lowered to it.
pub const MAX_CLUSTER_SIZE: u32 = 64;
/// Most endpoints a cluster may require, and a member may register.
pub const MAX_ENDPOINTS: u32 = 8;
/// Longest member name, in bytes.
pub const MAX_MEMBER_NAME_LEN: usize = 255;
/// Longest cluster name, in bytes.
pub const MAX_CLUSTER_NAME_LEN: usize = 64;
/// Longest endpoint text, in bytes.
pub const MAX_ENDPOINT_LEN: usize = 255;

/// A value that breaks one of the rules; the text says which and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(text: impl Into<String>) -> Invalid {
    Invalid(text.into())
}

/// A member name: non-empty UTF-8, at most 255 bytes, no control characters.
pub fn member_name(name: &str) -> Result<&str, Invalid> {
    if name.is_empty() {
        return Err(invalid("member name is empty"));
    }
    if name.len() > MAX_MEMBER_NAME_LEN {
        return Err(invalid(format!(
            "member name is {} bytes long; the limit is {MAX_MEMBER_NAME_LEN}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("member name contains a control character"));
    }
    Ok(name)
}

/// A cluster name: a letter or '_' first, then letters, digits, '_', '-' or '.'; at most 64
/// bytes.
pub fn cluster_name(name: &str) -> Result<&str, Invalid> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err(invalid("cluster name is empty"));
    };
    if name.len() > MAX_CLUSTER_NAME_LEN {
        return Err(invalid(format!(
            "cluster name is {} bytes long; the limit is {MAX_CLUSTER_NAME_LEN}",
            name.len()
        )));
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Err(invalid(format!(
            "cluster name {name:?} must start with a letter or '_'"
        )));
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(invalid(format!(
            "cluster name {name:?} contains {bad:?}; only letters, digits, '_', '-' and '.' are allowed"
        )));
    }
    Ok(name)
}

/// A requested cluster size, clamped to 2..=64. Returns the size the cluster gets.
pub fn clamp_cluster_size(requested: u32) -> u32 {
    requested.clamp(MIN_CLUSTER_SIZE, MAX_CLUSTER_SIZE)
}

/// The number of endpoints a cluster requires of each member: 1..=8.
pub fn endpoint_count(count: u32) -> Result<u32, Invalid> {
    if (1..=MAX_ENDPOINTS).contains(&count) {
        Ok(count)
    } else {
        Err(invalid(format!(
            "endpoint count {count} is out of range; it must be 1 to {MAX_ENDPOINTS}"
        )))
    }
}

/// One endpoint, `host:port`: host a DNS name, an IPv4 address or a bracketed IPv6
/// address; port 1..=65535.
pub fn endpoint(text: &str) -> Result<&str, Invalid> {
    let bad = |why: &str| invalid(format!("endpoint {text:?} is not host:port ({why})"));
    if text.len() > MAX_ENDPOINT_LEN {
        return Err(invalid(format!(
            "endpoint is {} bytes long; the limit is {MAX_ENDPOINT_LEN}",
            text.len()
        )));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(bad("no port"));
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 && !port.starts_with('+') => {}
        _ => return Err(bad("port must be 1 to 65535")),
    }
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let Some(address) = inner.strip_suffix(']') else {
            return Err(bad("unclosed '['"));
        };
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address inside brackets"));
        }
        return Ok(text);
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(text);
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if host.len() > 253 || !host.trim_end_matches('.').split('.').all(label_ok) {
        return Err(bad("host is not a valid DNS name or IP address"));
    }
    Ok(text)
}

/// A cluster named on the command line or in an admin request: 64 hex digits are its ID,
/// anything else must be a valid cluster name.
pub fn cluster_ref(text: &str) -> Result<crate::model::ClusterRef, Invalid> {
    use crate::model::ClusterRef;
    if text.len() == 2 * crate::id::ID_LEN && text.chars().all(|c| c.is_ascii_hexdigit()) {
        let id = crate::id::Id::from_hex(text).map_err(|e| invalid(e.to_string()))?;
        return Ok(ClusterRef::Id(id));
    }
    cluster_name(text)?;
    Ok(ClusterRef::Name(text.to_string()))
}

/// A member's endpoint list as xlReg/2 registers it: 1..=8 valid endpoints.
pub fn endpoints(list: &[String]) -> Result<(), Invalid> {
    if list.is_empty() {
        return Err(invalid("a member must register at least one endpoint"));
    }
    stored_endpoints(list)
}

/// A node's endpoint list as the registry may hold it: 0..=8 valid endpoints. A node with
/// none came over the 1.9 wire, as the Go client library's `AdminClient` and `SoloMember`
/// register (the Go registry accepts them); it can create and read clusters, but joining
/// one still needs the cluster's endpoint count.
pub fn stored_endpoints(list: &[String]) -> Result<(), Invalid> {
    if list.len() > MAX_ENDPOINTS as usize {
        return Err(invalid(format!(
            "{} endpoints given; a member may register at most {MAX_ENDPOINTS}",
            list.len()
        )));
    }
    for item in list {
        endpoint(item)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names() {
        assert!(member_name("node-1 (rack 4)").is_ok());
        assert!(member_name("ünïcode").is_ok());
        assert!(member_name("").is_err());
        assert!(member_name("a\nb").is_err());
        assert!(member_name(&"x".repeat(255)).is_ok());
        assert!(member_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn cluster_names() {
        for good in ["a", "_x", "web.prod-2", "A_b-c.d9"] {
            assert!(cluster_name(good).is_ok(), "{good}");
        }
        for bad in ["", "9lives", "-x", ".x", "a b", "a/b", "é"] {
            assert!(cluster_name(bad).is_err(), "{bad}");
        }
        assert!(cluster_name(&"a".repeat(64)).is_ok());
        assert!(cluster_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn cluster_refs() {
        use crate::model::ClusterRef;
        let hex = "ab".repeat(32);
        assert!(matches!(cluster_ref(&hex), Ok(ClusterRef::Id(id)) if id.to_hex() == hex));
        assert_eq!(
            cluster_ref("web.prod"),
            Ok(ClusterRef::Name("web.prod".into()))
        );
        assert!(cluster_ref("9lives").is_err());
        assert!(cluster_ref("").is_err());
    }

    #[test]
    fn sizes_and_counts() {
        assert_eq!(clamp_cluster_size(0), 2);
        assert_eq!(clamp_cluster_size(1), 2);
        assert_eq!(clamp_cluster_size(5), 5);
        assert_eq!(clamp_cluster_size(65), 64);
        assert_eq!(clamp_cluster_size(u32::MAX), 64);
        assert!(endpoint_count(0).is_err());
        assert!(endpoint_count(1).is_ok());
        assert!(endpoint_count(8).is_ok());
        assert!(endpoint_count(9).is_err());
    }

    #[test]
    fn endpoint_forms() {
        for good in [
            "127.0.0.1:80",
            "[::1]:65535",
            "node-1.example:9000",
            "localhost:1",
        ] {
            assert!(endpoint(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "host",
            ":80",
            "host:",
            "host:0",
            "host:65536",
            "host:-1",
            "host:+80",
            "[::1:80",
            "[zz]:80",
            "a b:80",
            "-x:80",
            "x..y:80",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
        assert!(endpoints(&[]).is_err());
        assert!(endpoints(&vec!["h:1".to_string(); 9]).is_err());
        assert!(stored_endpoints(&[]).is_ok());
        assert!(stored_endpoints(&vec!["h:1".to_string(); 8]).is_ok());
        assert!(stored_endpoints(&vec!["h:1".to_string(); 9]).is_err());
        assert!(stored_endpoints(&["nohost".to_string()]).is_err());
    }
}
