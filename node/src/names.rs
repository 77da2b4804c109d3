//! The names a deployment is placed and reported by: a physical host's
//! ([`HostName`]), a VM's, which is its Xen domain name ([`VmName`]), and a
//! deployment's ([`DeploymentName`]). Each is its own type over its text, so a
//! placement matches hosts against hosts and never a VM's name against a host's; each
//! is serialised as its text, so the formats that carry them are unchanged.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        // Ordered, compared and hashed as its text, so maps keyed by it are looked up
        // by `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

name!(
    /// A physical host, as its `vwd.toml` names it: unique in the cluster.
    HostName
);
name!(
    /// A VM: its Xen domain name, `<deployment>-<hostname>`.
    VmName
);
name!(
    /// A deployment: its workspace's name.
    DeploymentName
);

#[cfg(test)]
mod tests {
    use super::*;

    /// A name travels as its bare text: what carried a `String` before reads the same.
    #[test]
    fn a_name_is_serialised_as_its_text() {
        let host = HostName::from("node1");
        assert_eq!(serde_json::to_string(&host).expect("json"), "\"node1\"");
        assert_eq!(
            postcard::to_allocvec(&host).expect("postcard"),
            postcard::to_allocvec("node1").expect("postcard")
        );
        let back: VmName = serde_json::from_str("\"grid3-head\"").expect("json");
        assert_eq!(back, "grid3-head");
        // Tables pad it like text.
        assert_eq!(format!("{host:<7}|{host:>6}"), "node1  | node1");
    }
}
