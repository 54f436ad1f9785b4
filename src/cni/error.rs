//! The CNI error: the spec's codes and weft's own (100+). It depends on no
//! other CNI module; its JSON form, which carries a `cniVersion`, is written by
//! `result.rs` ([`CniError::to_json`]).

/// The error codes the CNI spec reserves (0-99), and weft's own (100+).
pub mod code {
    /// The plugin does not support the requested `cniVersion` or command.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A field of the network configuration is not supported.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// A `CNI_*` variable is missing or malformed.
    pub const INVALID_ENV: u32 = 4;
    /// stdin is not the JSON the spec describes.
    pub const DECODE: u32 = 6;
    /// The network configuration fails validation.
    pub const INVALID_CONFIG: u32 = 7;
    /// A transient condition; the runtime should retry.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADDs now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// weft: subnet.env exists but is not valid.
    pub const SUBNET_ENV: u32 = 100;
    /// weft: the delegate plugin is missing, failed, or answered nonsense.
    pub const DELEGATE: u32 = 101;
    /// weft: a netlink operation (link, address, route) failed.
    pub const NETLINK: u32 = 102;
    /// weft: ADD found `CNI_IFNAME` already present in the pod's netns.
    pub const IFACE_EXISTS: u32 = 103;
    /// weft: the node subnet has no free address.
    pub const IPAM_EXHAUSTED: u32 = 104;
    /// weft: the state under `dataDir` cannot be read or written.
    pub const STATE: u32 = 105;
    /// weft: the pod's network namespace cannot be opened.
    pub const NETNS: u32 = 106;
    /// weft: CHECK found the pod's network differing from the ADD result.
    pub const CHECK_FAILED: u32 = 107;
    /// weft: the address `runtimeConfig.ips` asks for is held by another attachment.
    pub const IP_IN_USE: u32 = 108;
}

/// A failure to report to the runtime: one CNI error object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }
}
