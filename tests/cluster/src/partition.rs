//! Network partition of one node: `iptables` DROP rules inside the node container's
//! network namespace, entered from the host with `nsenter`.
//!
//! Why not `docker network disconnect`: on the engines we measured it removes the port
//! mapping, so clients get "connection refused" at once, exactly like a dead node, and
//! the host port may change on reconnect. A DROP rule inside the container keeps the
//! node running and its port mapping in place, but nothing reaches Redis and nothing
//! leaves it: clients hang until their own timeouts, as in a real partition.
//!
//! Needs root on the host (`nsenter` into another network namespace needs
//! `CAP_SYS_ADMIN`, `iptables` needs `CAP_NET_ADMIN`), the `nsenter` binary (Debian
//! package `util-linux`) and an `iptables` binary (Debian package `iptables`, which
//! ships both the nf_tables backend `iptables-nft` and `iptables-legacy`).

use std::{
    env,
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
    time::Duration,
};

use tokio::process::Command;

use crate::{Cluster, Error, NodeState, REDIS_PORT};

/// Environment variable naming the `iptables` binary (a name looked up in `PATH` or a
/// path) to use instead of probing for one.
pub const IPTABLES_ENV: &str = "FREDLOCK_IPTABLES";

/// Binaries tried, in order, when [`IPTABLES_ENV`] is not set: the system's choice
/// (Debian's `update-alternatives` link), then each backend by name.
const IPTABLES_CANDIDATES: [&str; 3] = ["iptables", "iptables-nft", "iptables-legacy"];
/// Directories searched after `PATH`: the `sbin` directories are missing from many
/// users' `PATH`.
const EXTRA_DIRS: [&str; 5] = ["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"];
/// Seconds `iptables` waits for the host-wide xtables lock (`-w`), which parallel test
/// processes and the Docker daemon also take.
const XTABLES_WAIT_SECS: &str = "5";
/// Upper bound for one `nsenter … iptables …` invocation.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound on duplicate rules deleted by one heal (duplicates only arise if rules
/// were added behind this crate's back).
const MAX_DELETES: usize = 64;

/// The `iptables` binary chosen by the first successful probe of this process.
static CHOSEN_IPTABLES: OnceLock<PathBuf> = OnceLock::new();

/// The two rules of a partition: nothing reaches Redis, nothing leaves it.
fn rules() -> [Vec<String>; 2] {
    let port = REDIS_PORT.to_string();
    let rule = |chain: &str, dir: &str| {
        [chain, "-p", "tcp", dir, &port, "-j", "DROP"]
            .map(str::to_string)
            .to_vec()
    };
    [rule("INPUT", "--dport"), rule("OUTPUT", "--sport")]
}

impl Cluster {
    /// Partitions node `i` from every client: the node keeps running, but inside its
    /// network namespace every TCP packet to Redis' port is dropped (`INPUT --dport
    /// 6379 -j DROP`) and so is every packet from it (`OUTPUT --sport 6379 -j DROP`).
    ///
    /// What a client on the host sees: Docker's userland proxy (`docker-proxy`) still
    /// accepts connections on the node's host port, so a *connect* succeeds, but no
    /// command is answered; connections opened before the partition hang too. Clients
    /// only notice through their own timeouts. This differs from [`Cluster::kill`]
    /// (refused at once) and resembles [`Cluster::pause`] (which freezes the process
    /// rather than the network).
    ///
    /// Partitioning a partitioned node is `Ok` and adds no second rule. A paused node
    /// can be partitioned. Partitioning a killed node is [`Error::NodeKilled`]. Killing
    /// or restarting a partitioned node ends the partition (the new container process
    /// gets a new network namespace, without the rules).
    ///
    /// Needs root, `nsenter` and `iptables` on the host ([`Error::MissingTool`] names
    /// the Debian package when one is missing). The `iptables` binary is taken from
    /// `FREDLOCK_IPTABLES` if set; otherwise `iptables`, `iptables-nft` and
    /// `iptables-legacy` are tried in that order and the first that can list the
    /// namespace's rules is used for the rest of the process.
    pub async fn partition(&self, i: usize) -> Result<(), Error> {
        let node = self.node(i)?;
        if node.host_network {
            return Err(Error::HostNetwork(i));
        }
        let mut partition = node.partition.lock().await;
        if node.get_state() == NodeState::Killed {
            return Err(Error::NodeKilled(i));
        }
        let nsenter = find_tool("nsenter", "util-linux")?;
        let pid = container_pid(i, node.container.id()).await?;
        let iptables = match partition.as_ref() {
            Some(chosen) => chosen.clone(),
            None => choose_iptables(&nsenter, pid).await?,
        };
        // Recorded before the rules are added, so that a failure half-way can be healed.
        *partition = Some(iptables.clone());
        let ipt = Iptables {
            nsenter: &nsenter,
            iptables: &iptables,
            pid,
        };
        for rule in rules() {
            if !ipt.has_rule(&rule).await? {
                ipt.run("-A", &rule).await?;
            }
        }
        Ok(())
    }

    /// Ends the partition of node `i` made by [`Cluster::partition`]: deletes its rules
    /// (`iptables -D`). New connections are answered at once; connections opened before
    /// or during the partition recover only when TCP retransmits (measured: about one
    /// second after heal), so a client with short timeouts may have closed them.
    ///
    /// Healing a node that is not partitioned (never was, already healed, or killed or
    /// restarted since) is `Ok` and runs no command.
    pub async fn heal(&self, i: usize) -> Result<(), Error> {
        let node = self.node(i)?;
        let mut partition = node.partition.lock().await;
        let Some(iptables) = partition.clone() else {
            return Ok(());
        };
        if node.get_state() == NodeState::Killed {
            // The namespace that held the rules is gone with the process.
            *partition = None;
            return Ok(());
        }
        let nsenter = find_tool("nsenter", "util-linux")?;
        let pid = container_pid(i, node.container.id()).await?;
        let ipt = Iptables {
            nsenter: &nsenter,
            iptables: &iptables,
            pid,
        };
        for rule in rules() {
            let mut deleted = 0;
            while ipt.has_rule(&rule).await? {
                if deleted == MAX_DELETES {
                    return Err(Error::Command {
                        command: ipt.describe("-D", &rule),
                        message: format!("rule still present after {MAX_DELETES} deletions"),
                    });
                }
                ipt.run("-D", &rule).await?;
                deleted += 1;
            }
        }
        *partition = None;
        Ok(())
    }
}

/// `nsenter -t PID -n IPTABLES -w 5 …`: one `iptables` call in a container's network
/// namespace.
struct Iptables<'a> {
    nsenter: &'a Path,
    iptables: &'a Path,
    pid: i64,
}

impl Iptables<'_> {
    fn command(&self, op: &str, args: &[String]) -> Command {
        let mut cmd = Command::new(self.nsenter);
        cmd.arg("-t")
            .arg(self.pid.to_string())
            .arg("-n")
            .arg(self.iptables)
            .args(["-w", XTABLES_WAIT_SECS, op])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    fn describe(&self, op: &str, args: &[String]) -> String {
        format!(
            "{} -t {} -n {} -w {XTABLES_WAIT_SECS} {op} {}",
            self.nsenter.display(),
            self.pid,
            self.iptables.display(),
            args.join(" ")
        )
    }

    /// Runs the command; returns its exit code, or an error if it could not be run.
    async fn status(&self, op: &str, args: &[String]) -> Result<(Option<i32>, String), Error> {
        let describe = || self.describe(op, args);
        let output = tokio::time::timeout(COMMAND_TIMEOUT, self.command(op, args).output())
            .await
            .map_err(|_| Error::Command {
                command: describe(),
                message: format!("no exit within {COMMAND_TIMEOUT:?}"),
            })?
            .map_err(|e| Error::Command {
                command: describe(),
                message: format!("cannot run: {e}"),
            })?;
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        Ok((output.status.code(), stderr))
    }

    /// Runs the command and requires exit status 0.
    async fn run(&self, op: &str, args: &[String]) -> Result<(), Error> {
        match self.status(op, args).await? {
            (Some(0), _) => Ok(()),
            (code, stderr) => Err(Error::Command {
                command: self.describe(op, args),
                message: exit_message(code, &stderr),
            }),
        }
    }

    /// `iptables -C`: exit 0 when the rule exists, 1 when it does not. Anything else
    /// (bad backend, no permission, nsenter failure) is an error, so that a broken
    /// set-up is not mistaken for "no rule".
    async fn has_rule(&self, rule: &[String]) -> Result<bool, Error> {
        match self.status("-C", rule).await? {
            (Some(0), _) => Ok(true),
            (Some(1), stderr) if is_missing_rule(&stderr) => Ok(false),
            (code, stderr) => Err(Error::Command {
                command: self.describe("-C", rule),
                message: exit_message(code, &stderr),
            }),
        }
    }
}

/// Whether `iptables -C` failed only because the rule is absent. Both backends print
/// "Bad rule (does a matching rule exist in that chain?)"; older versions print nothing
/// or "No chain/target/match by that name".
fn is_missing_rule(stderr: &str) -> bool {
    stderr.is_empty()
        || stderr.contains("does a matching rule exist")
        || stderr.contains("No chain/target/match by that name")
}

fn exit_message(code: Option<i32>, stderr: &str) -> String {
    let code = code.map_or_else(|| "a signal".to_string(), |c| format!("status {c}"));
    if stderr.is_empty() {
        format!("exited with {code}")
    } else {
        format!("exited with {code}: {stderr}")
    }
}

/// The `iptables` binary to use: `FREDLOCK_IPTABLES` if set, else the one this process
/// chose before, else the first candidate that can list the rules of the namespace.
async fn choose_iptables(nsenter: &Path, pid: i64) -> Result<PathBuf, Error> {
    if let Some(name) = env::var_os(IPTABLES_ENV) {
        let name = PathBuf::from(name);
        return locate(&name).ok_or_else(|| Error::Command {
            command: name.display().to_string(),
            message: format!("{IPTABLES_ENV} names no executable file"),
        });
    }
    if let Some(chosen) = CHOSEN_IPTABLES.get() {
        return Ok(chosen.clone());
    }
    let mut failures = Vec::new();
    let mut seen = Vec::new();
    for name in IPTABLES_CANDIDATES {
        let Some(path) = locate(Path::new(name)) else {
            continue;
        };
        if seen.contains(&path) {
            continue;
        }
        seen.push(path.clone());
        let ipt = Iptables {
            nsenter,
            iptables: &path,
            pid,
        };
        let list = ["INPUT".to_string()];
        match ipt.run("-S", &list).await {
            Ok(()) => return Ok(CHOSEN_IPTABLES.get_or_init(|| path).clone()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    if seen.is_empty() {
        return Err(Error::MissingTool {
            tool: "iptables",
            package: "iptables",
        });
    }
    Err(Error::Command {
        command: "iptables -S INPUT (every backend)".to_string(),
        message: failures.join("; "),
    })
}

/// Finds an external tool or reports which Debian package provides it.
fn find_tool(tool: &'static str, package: &'static str) -> Result<PathBuf, Error> {
    locate(Path::new(tool)).ok_or(Error::MissingTool { tool, package })
}

/// Resolves a command name like a shell would (`PATH`, then the `sbin` directories);
/// a name with a `/` is taken as a path.
fn locate(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return is_executable(name).then(|| name.to_path_buf());
    }
    let path_dirs = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The host pid of the main process of a node's container (`docker inspect -f
/// '{{.State.Pid}}'`), whose network namespace is the container's.
async fn container_pid(index: usize, id: &str) -> Result<i64, Error> {
    use testcontainers::bollard::{Docker, query_parameters::InspectContainerOptions};
    let command = || format!("docker inspect {id}");
    let docker = Docker::connect_with_defaults().map_err(|e| Error::Command {
        command: command(),
        message: e.to_string(),
    })?;
    let info = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .map_err(|e| Error::Command {
            command: command(),
            message: e.to_string(),
        })?;
    match info.state.and_then(|s| s.pid) {
        Some(pid) if pid > 0 => Ok(pid),
        // Pid 0: the container is not running (stopped behind this crate's back).
        _ => Err(Error::NodeKilled(index)),
    }
}

#[cfg(test)]
mod tests {
    use super::{is_missing_rule, locate, rules};
    use std::path::Path;

    #[test]
    fn rules_drop_both_directions_of_the_redis_port() {
        let [input, output] = rules();
        assert_eq!(
            input.join(" "),
            "INPUT -p tcp --dport 6379 -j DROP".to_string()
        );
        assert_eq!(
            output.join(" "),
            "OUTPUT -p tcp --sport 6379 -j DROP".to_string()
        );
    }

    #[test]
    fn missing_rule_messages_are_recognised() {
        assert!(is_missing_rule(
            "iptables: Bad rule (does a matching rule exist in that chain?)."
        ));
        assert!(!is_missing_rule(
            "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)"
        ));
    }

    #[test]
    fn a_missing_tool_names_its_debian_package() {
        let err = super::find_tool("no-such-tool-fredlock", "some-package").unwrap_err();
        assert!(matches!(
            err,
            crate::Error::MissingTool {
                tool: "no-such-tool-fredlock",
                package: "some-package"
            }
        ));
        assert!(
            err.to_string()
                .contains("install the Debian package `some-package`")
        );
    }

    #[test]
    fn tools_are_located_by_name_or_path() {
        assert!(locate(Path::new("sh")).is_some());
        assert!(locate(Path::new("/bin/sh")).is_some());
        assert!(locate(Path::new("no-such-tool-fredlock")).is_none());
        assert!(locate(Path::new("/no/such/tool")).is_none());
    }
}
