//! The `CNI_*` environment: which command, which container, which netns.
//!
//! Validation follows the spec's per-command requirements and names every
//! missing or malformed variable in one error (code 4).

use std::path::PathBuf;

use super::error::{CniError, code};

/// The operation the runtime asks for (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    /// Reads `CNI_COMMAND`.
    ///
    /// # Errors
    /// Code 4 when it is unset or not a CNI command.
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Command, CniError> {
        match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Ok(Command::Add),
            Some("DEL") => Ok(Command::Del),
            Some("CHECK") => Ok(Command::Check),
            Some("VERSION") => Ok(Command::Version),
            Some("STATUS") => Ok(Command::Status),
            Some("GC") => Ok(Command::Gc),
            None | Some("") => Err(CniError::new(
                code::INVALID_ENV,
                "CNI_COMMAND is not set: weft-cni is a CNI plugin run by a container runtime \
                 (set CNI_COMMAND to ADD, DEL, CHECK, VERSION, STATUS or GC); \
                 to install it run `weft-cni install`",
            )),
            Some(other) => Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_COMMAND={other:?} is not a CNI command (expected ADD, DEL, CHECK, VERSION, STATUS or GC)"
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// The validated environment of one call.
#[derive(Debug, Clone, Default)]
pub struct CniEnv {
    pub container_id: String,
    /// Empty for DEL without a netns (allowed by the spec), GC and STATUS.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: Option<String>,
    /// `CNI_PATH` split on `:`; where delegates are looked up.
    pub path: Vec<PathBuf>,
}

/// Whether `id` is a valid container ID: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, as
/// libcni requires (it also keeps it safe as a file name).
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Whether `name` is a valid Linux interface name (also safe as a file name).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

impl CniEnv {
    /// Reads and validates the variables `command` needs.
    ///
    /// # Errors
    /// Code 4 naming every missing or malformed variable.
    pub fn from_env(
        get: &dyn Fn(&str) -> Option<String>,
        command: Command,
    ) -> Result<CniEnv, CniError> {
        let val = |k: &str| get(k).filter(|v| !v.is_empty());
        let required: &[&str] = match command {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Gc => &["CNI_PATH"],
            Command::Version | Command::Status => &[],
        };
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|k| val(k).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "{} {} not set; {} needs {}",
                    missing.join(", "),
                    if missing.len() == 1 { "is" } else { "are" },
                    command.as_str(),
                    required.join(", ")
                ),
            ));
        }
        let env = CniEnv {
            container_id: val("CNI_CONTAINERID").unwrap_or_default(),
            netns: val("CNI_NETNS").map(PathBuf::from),
            ifname: val("CNI_IFNAME").unwrap_or_default(),
            args: val("CNI_ARGS"),
            path: val("CNI_PATH")
                .map(|p| {
                    p.split(':')
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                        .collect()
                })
                .unwrap_or_default(),
        };
        if !env.container_id.is_empty() && !valid_container_id(&env.container_id) {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_CONTAINERID={:?} has invalid characters (allowed: letters, digits, _ . -, starting with a letter or digit)",
                    env.container_id
                ),
            ));
        }
        if !env.ifname.is_empty() && !valid_ifname(&env.ifname) {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_IFNAME={:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)",
                    env.ifname
                ),
            ));
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn getter(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn missing_variables_are_named() {
        let g = getter(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]);
        let c = Command::from_env(&g).unwrap();
        let e = CniEnv::from_env(&g, c).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(
            e.msg
                .contains("CNI_CONTAINERID, CNI_NETNS, CNI_PATH are not set"),
            "{}",
            e.msg
        );
        let e = Command::from_env(&getter(&[])).unwrap_err();
        assert!(e.msg.contains("CNI_COMMAND is not set"));
        let e = Command::from_env(&getter(&[("CNI_COMMAND", "PING")])).unwrap_err();
        assert!(e.msg.contains("PING"));
    }

    #[test]
    fn del_needs_no_netns_and_ids_are_checked() {
        let g = getter(&[
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/a:/b"),
        ]);
        let env = CniEnv::from_env(&g, Command::Del).unwrap();
        assert!(env.netns.is_none());
        assert_eq!(env.path.len(), 2);
        let g = getter(&[
            ("CNI_CONTAINERID", "../etc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/a"),
        ]);
        let e = CniEnv::from_env(&g, Command::Del).unwrap_err();
        assert!(e.msg.contains("CNI_CONTAINERID"));
        assert!(!valid_ifname("a/b") && !valid_ifname("0123456789abcdef") && valid_ifname("eth0"));
    }
}
