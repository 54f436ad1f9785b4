//! The CNI spec versions weft-cni speaks, and which commands each allows.

use std::fmt;

use super::error::{CniError, code};

/// A supported CNI spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    /// Every supported version, oldest first.
    pub const ALL: [Version; 5] = [
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];
    /// The newest version, used where the request names none.
    pub const LATEST: Version = Version::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Parses a `cniVersion` value.
    ///
    /// # Errors
    /// Code 1 (incompatible version), naming the value and the supported list.
    pub fn parse(s: &str) -> Result<Version, CniError> {
        Version::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "cniVersion {s:?} is not supported by weft-cni; supported versions: {}",
                        Version::supported().join(", ")
                    ),
                )
            })
    }

    pub fn supported() -> Vec<&'static str> {
        Version::ALL.iter().map(|v| v.as_str()).collect()
    }

    /// Whether `ips` entries carry a `version` field (dropped in 1.0.0).
    pub fn ips_have_version(self) -> bool {
        self < Version::V1_0_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        for v in Version::ALL {
            assert_eq!(Version::parse(v.as_str()).unwrap(), v);
        }
        assert!(Version::V0_4_0 < Version::V1_0_0);
        let e = Version::parse("0.2.0").unwrap_err();
        assert_eq!(e.code, 1);
        assert!(
            e.msg.contains("0.2.0") && e.msg.contains("1.1.0"),
            "{}",
            e.msg
        );
    }
}
