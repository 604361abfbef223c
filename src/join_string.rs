//! The join string: everything a node needs to join one cluster, in one paste-able line.
//!
//! This module owns the text form of a join string (docs/protocol.md, "Join strings"):
//! parsing with bounds and clear errors, and writing. It is pure: it neither dials nor
//! checks the pin; the client library does that ([`crate::client`]).
//!
//! ```text
//! xlreg1:<tid>.<secret>:<cluster ID, 64 hex>:<registry pin, 64 hex>@<endpoint>[,<endpoint>...]
//! ```
//!
//! Like a k3s token (`K10<CA hash>::<credentials>`) it pins the registry, so a node holding
//! only this string can fetch the registry's credentials from any endpoint, check them
//! against the pin, and refuse an impostor before it presents anything; like a Kubernetes
//! bootstrap token it carries a public token id and a secret (`tid.secret`), so the id can
//! be named in logs and listings while the secret stays with the holder.

use std::fmt;

use zeroize::Zeroizing;

use crate::id::{Id, ID_LEN};
use crate::model::admission::JoinTokenSecret;

/// How every join string of this format starts; a later format takes a later number.
pub const PREFIX: &str = "xlreg1:";

/// Longest join string accepted (real ones are about 200 bytes).
pub const MAX_JOIN_STRING_LEN: usize = 4096;

/// Most registry endpoints a join string may carry.
pub const MAX_REGISTRY_ENDPOINTS: usize = 8;

/// Length in bytes of the registry pin (a SHA-256 digest).
pub const PIN_LEN: usize = 32;

/// Why a text is not a join string; each says what is wrong without repeating the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinStringError {
    /// The text is longer than [`MAX_JOIN_STRING_LEN`].
    #[error("a join string is at most {MAX_JOIN_STRING_LEN} bytes; this one is {0}")]
    TooLong(usize),
    /// The text does not start with `xlreg1:`; it may be a bare token or something else.
    #[error("not a join string: it must start with {PREFIX:?}{hint}")]
    NoPrefix {
        /// A hint about what the text looks like instead (empty if none).
        hint: &'static str,
    },
    /// The text starts with a later version's prefix (`xlreg2:`, ...).
    #[error("join string format {0:?} is newer than this xlreg understands ({PREFIX:?})")]
    NewerFormat(String),
    /// A part of the string is missing or out of place.
    #[error("join string: {0}")]
    Shape(&'static str),
    /// The token part is not `tid.secret` (docs/protocol.md section 14.1).
    #[error("join string token: {0}")]
    Token(String),
    /// The cluster ID is not 64 hex digits.
    #[error("join string cluster ID: must be {} hex digits", 2 * ID_LEN)]
    ClusterId,
    /// The registry pin is not 64 hex digits.
    #[error("join string registry pin: must be {} hex digits", 2 * PIN_LEN)]
    Pin,
    /// An endpoint is not `host:port`.
    #[error("join string endpoint {index}: {problem}")]
    Endpoint {
        /// 1-based position of the endpoint.
        index: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// More than [`MAX_REGISTRY_ENDPOINTS`] endpoints.
    #[error("join string has {0} endpoints; at most {MAX_REGISTRY_ENDPOINTS} are allowed")]
    TooManyEndpoints(usize),
}

/// A parsed join string.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinString {
    /// The token to join with.
    pub token: JoinTokenSecret,
    /// The cluster to join.
    pub cluster: Id,
    /// The registry pin: SHA-256 over the registry's identity (docs/protocol.md).
    pub pin: [u8; PIN_LEN],
    /// The registry's endpoints, in the order to try them (at least one).
    pub endpoints: Vec<String>,
}

impl fmt::Debug for JoinString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinString")
            .field("token", &self.token)
            .field("cluster", &self.cluster)
            .field("pin", &hex::encode(self.pin))
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl JoinString {
    /// Parses a join string; surrounding whitespace (a pasted newline) is ignored.
    pub fn parse(text: &str) -> Result<JoinString, JoinStringError> {
        let text = text.trim();
        if text.len() > MAX_JOIN_STRING_LEN {
            return Err(JoinStringError::TooLong(text.len()));
        }
        let Some(rest) = text.strip_prefix(PREFIX) else {
            return Err(no_prefix(text));
        };
        let Some((head, endpoints)) = rest.split_once('@') else {
            return Err(JoinStringError::Shape(
                "no '@' before the registry endpoints",
            ));
        };
        let mut parts = head.split(':');
        let (Some(token), Some(cluster), Some(pin), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JoinStringError::Shape(
                "expected token:cluster-id:pin before the '@'",
            ));
        };
        let token =
            JoinTokenSecret::parse(token).map_err(|e| JoinStringError::Token(e.to_string()))?;
        let cluster = parse_hex_id(cluster)?;
        let pin = parse_pin(pin)?;
        let endpoints = parse_endpoints(endpoints)?;
        Ok(JoinString {
            token,
            cluster,
            pin,
            endpoints,
        })
    }

    /// The text form. It holds the secret: hand it only to whoever may join.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{PREFIX}{}:{}:{}@{}",
            Zeroizing::new(self.token.expose()).as_str(),
            self.cluster.to_hex(),
            hex::encode(self.pin),
            self.endpoints.join(",")
        ))
    }
}

impl std::str::FromStr for JoinString {
    type Err = JoinStringError;

    fn from_str(text: &str) -> Result<JoinString, JoinStringError> {
        JoinString::parse(text)
    }
}

/// The error for a text without the prefix, saying what it looks like instead.
fn no_prefix(text: &str) -> JoinStringError {
    if let Some((version, _)) = text.split_once(':') {
        if let Some(number) = version.strip_prefix("xlreg") {
            if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
                return JoinStringError::NewerFormat(format!("{version}:"));
            }
        }
    }
    let hint = if JoinTokenSecret::parse(text).is_ok() {
        " (this looks like a bare token tid.secret: a join string also carries the cluster \
         and the registry; `xlreg cluster create` and `cluster token create` print one)"
    } else {
        ""
    };
    JoinStringError::NoPrefix { hint }
}

fn parse_hex_id(text: &str) -> Result<Id, JoinStringError> {
    if text.len() != 2 * ID_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(JoinStringError::ClusterId);
    }
    Id::from_hex(text).map_err(|_| JoinStringError::ClusterId)
}

fn parse_pin(text: &str) -> Result<[u8; PIN_LEN], JoinStringError> {
    let mut pin = [0u8; PIN_LEN];
    if text.len() != 2 * PIN_LEN {
        return Err(JoinStringError::Pin);
    }
    hex::decode_to_slice(text, &mut pin).map_err(|_| JoinStringError::Pin)?;
    Ok(pin)
}

fn parse_endpoints(text: &str) -> Result<Vec<String>, JoinStringError> {
    let list: Vec<&str> = text.split(',').collect();
    if list.len() > MAX_REGISTRY_ENDPOINTS {
        return Err(JoinStringError::TooManyEndpoints(list.len()));
    }
    list.iter()
        .enumerate()
        .map(|(i, endpoint)| {
            crate::validate::endpoint(endpoint)
                .map(str::to_string)
                .map_err(|e| JoinStringError::Endpoint {
                    index: i + 1,
                    problem: e.to_string(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: &str = "abc123";
    const SECRET: &str = "abcdefghijklmnopqrstuvwxyz";

    fn example() -> JoinString {
        JoinString {
            token: JoinTokenSecret::parse(&format!("{TID}.{SECRET}")).unwrap(),
            cluster: Id::from_bytes(&[0xcc; 32]).unwrap(),
            pin: [0x9a; 32],
            endpoints: vec!["127.0.0.1:56789".into(), "[::1]:56789".into()],
        }
    }

    fn example_text() -> String {
        format!(
            "xlreg1:abc123.abcdefghijklmnopqrstuvwxyz:{}:{}@127.0.0.1:56789,[::1]:56789",
            "cc".repeat(32),
            "9a".repeat(32)
        )
    }

    #[test]
    fn writes_the_documented_form() {
        assert_eq!(example().to_text().as_str(), example_text());
    }

    #[test]
    fn parses_the_documented_form_with_surrounding_whitespace() {
        let parsed = JoinString::parse(&format!("  {}\n", example_text())).unwrap();
        assert_eq!(parsed, example());
        assert_eq!(parsed.token.id(), TID);
        assert_eq!(parsed.token.expose(), format!("{TID}.{SECRET}"));
    }

    #[test]
    fn uppercase_hex_is_accepted_and_written_back_lowercase() {
        let text = example_text().replace(&"cc".repeat(32), &"CC".repeat(32));
        let parsed = JoinString::parse(&text).unwrap();
        assert_eq!(parsed.to_text().as_str(), example_text());
    }

    #[test]
    fn debug_forms_hide_the_secret() {
        let debug = format!("{:?}", example());
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains(TID), "{debug}");
    }

    #[test]
    fn refuses_each_malformed_part_with_its_own_error() {
        let good = example_text();
        type Expect = fn(&JoinStringError) -> bool;
        let cases: Vec<(String, Expect)> = vec![
            (good.replacen("xlreg1:", "", 1), |e| {
                matches!(e, JoinStringError::NoPrefix { .. })
            }),
            (
                good.replacen("xlreg1:", "xlreg2:", 1),
                |e| matches!(e, JoinStringError::NewerFormat(v) if v == "xlreg2:"),
            ),
            (good.replacen('@', "#", 1), |e| {
                matches!(e, JoinStringError::Shape(_))
            }),
            (
                good.replacen(&format!(":{}", "cc".repeat(32)), "", 1),
                |e| matches!(e, JoinStringError::Shape(_)),
            ),
            (good.replacen("abc123.", "abc123", 1), |e| {
                matches!(e, JoinStringError::Token(_))
            }),
            (good.replacen("abc123", "ABC123", 1), |e| {
                matches!(e, JoinStringError::Token(_))
            }),
            (good.replacen("abc123", "abc123abc123abc12", 1), |e| {
                matches!(e, JoinStringError::Token(_))
            }),
            (
                good.replacen(SECRET, "abcdefghijklmnopqrstuvwxy1", 1),
                |e| matches!(e, JoinStringError::Token(_)),
            ),
            (good.replacen(SECRET, "abcdefghij", 1), |e| {
                matches!(e, JoinStringError::Token(_))
            }),
            (good.replacen(&"cc".repeat(32), &"cc".repeat(20), 1), |e| {
                matches!(e, JoinStringError::ClusterId)
            }),
            (good.replacen(&"cc".repeat(32), &"zz".repeat(32), 1), |e| {
                matches!(e, JoinStringError::ClusterId)
            }),
            (good.replacen(&"9a".repeat(32), &"9a".repeat(31), 1), |e| {
                matches!(e, JoinStringError::Pin)
            }),
            (good.replacen(&"9a".repeat(32), &"9g".repeat(32), 1), |e| {
                matches!(e, JoinStringError::Pin)
            }),
            (good.replacen("127.0.0.1:56789", "127.0.0.1", 1), |e| {
                matches!(e, JoinStringError::Endpoint { index: 1, .. })
            }),
            (good.replacen("[::1]:56789", "", 1), |e| {
                matches!(e, JoinStringError::Endpoint { index: 2, .. })
            }),
            (format!("{good},{}", ["h:1"; 7].join(",")), |e| {
                matches!(e, JoinStringError::TooManyEndpoints(9))
            }),
            (format!("{good}{}", "x".repeat(MAX_JOIN_STRING_LEN)), |e| {
                matches!(e, JoinStringError::TooLong(_))
            }),
        ];
        for (text, expected) in cases {
            match JoinString::parse(&text) {
                Ok(parsed) => panic!("{text:?} parsed as {parsed:?}"),
                Err(error) => {
                    assert!(expected(&error), "{text:?}: unexpected {error:?}");
                    assert!(!error.to_string().contains(SECRET), "{error}");
                }
            }
        }
    }

    #[test]
    fn the_worked_example_of_the_spec() {
        let example = "xlreg1:k3x9p0.abcdefghijklmnopqrstuvwxyz:\
            5555555555555555555555555555555555555555555555555555555555555555:\
            f0af0b2608ca0a79578443a4b3c48393d274a74b7515dbf9b181c0af4e6105e1@127.0.0.1:56789";
        let spec = include_str!("../docs/protocol.md");
        assert!(
            spec.contains(example),
            "docs/protocol.md section 15.3 changed"
        );
        let parsed = JoinString::parse(example).unwrap();
        assert_eq!(parsed.token.id(), "k3x9p0");
        assert_eq!(parsed.token.expose(), "k3x9p0.abcdefghijklmnopqrstuvwxyz");
        assert_eq!(parsed.cluster.as_bytes(), &[0x55; 32]);
        assert_eq!(
            parsed.pin,
            crate::model::admission::regcred_pin(&[0x77; 32], &[0xc0, 0xc1], &[0x5a])
        );
        assert_eq!(parsed.endpoints, ["127.0.0.1:56789"]);
        assert_eq!(parsed.to_text().as_str(), example);
    }

    #[test]
    fn a_bare_token_gets_a_hint() {
        let error = JoinString::parse("abc123.abcdefghijklmnopqrstuvwxyz").unwrap_err();
        assert!(error.to_string().contains("bare token"), "{error}");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn endpoint() -> impl Strategy<Value = String> {
            prop_oneof![
                (any::<[u8; 4]>(), 1u16..)
                    .prop_map(|(ip, port)| format!("{}:{port}", std::net::Ipv4Addr::from(ip))),
                (any::<[u16; 8]>(), 1u16..)
                    .prop_map(|(ip, port)| format!("[{}]:{port}", std::net::Ipv6Addr::from(ip))),
                (
                    "[a-z][a-z0-9-]{0,20}[a-z0-9](\\.[a-z][a-z0-9]{0,10}){0,3}",
                    1u16..
                )
                    .prop_map(|(host, port)| format!("{host}:{port}")),
            ]
        }

        fn join_string() -> impl Strategy<Value = JoinString> {
            (
                "[a-z0-9]{1,16}",
                "[a-z2-7]{26}",
                any::<[u8; 32]>(),
                any::<[u8; 32]>(),
                proptest::collection::vec(endpoint(), 1..=MAX_REGISTRY_ENDPOINTS),
            )
                .prop_map(|(tid, secret, cluster, pin, endpoints)| JoinString {
                    token: JoinTokenSecret::parse(&format!("{tid}.{secret}")).unwrap(),
                    cluster: Id::from_bytes(&cluster).unwrap(),
                    pin,
                    endpoints,
                })
        }

        proptest! {
            #[test]
            fn every_join_string_survives_a_round_trip(join in join_string()) {
                let text = join.to_text();
                prop_assert!(text.len() <= MAX_JOIN_STRING_LEN);
                prop_assert_eq!(JoinString::parse(&text).unwrap(), join);
            }

            #[test]
            fn no_input_makes_the_parser_panic(text in "\\PC{0,300}") {
                let _ = JoinString::parse(&text);
                let _ = JoinString::parse(&format!("xlreg1:{text}"));
            }
        }
    }
}
