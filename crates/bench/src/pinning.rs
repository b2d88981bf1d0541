//! Pinned mode (`mvllm bench overhead --pin`): the router under test alone on one CPU, the load
//! generator and the simulated backend on the others, as the team's peers overhead kit measures
//! (router on core 0 with `taskset`, `wrk` and the backends on core 1).
//!
//! Why: unpinned, the router, the load generator and the backend share every core, and a
//! router's cost shows up as everyone's latency. Pinned, the router's core is its capacity: at
//! 64 connections it saturates, so requests per second is what one core serves and CPU per
//! request is the router's own, as a production router sized by cores is. The proxies are
//! started under `taskset -c CPU` (so every thread they ever make is pinned from the start);
//! this process moves all its threads off that CPU, and the backend it starts inherits that.

use std::process::Command;

/// Where the router runs and where everything else does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinning {
    pub router_cpu: usize,
    pub load_cpus: Vec<usize>,
}

impl Pinning {
    /// The router on the first CPU this process may use, the rest for the load. Needs two CPUs
    /// and `taskset` (util-linux).
    pub fn plan() -> Result<Pinning, String> {
        let allowed =
            allowed_cpus(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
                .ok_or("--pin: cannot read this process's CPUs (Linux /proc/self/status)")?;
        let (&router_cpu, rest) = allowed
            .split_first()
            .ok_or("--pin: this process may use no CPU")?;
        if rest.is_empty() {
            return Err(
                "--pin needs at least two CPUs: one for the router, one for the load".into(),
            );
        }
        let found = Command::new("taskset")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err("--pin needs `taskset` (util-linux: apt-get install util-linux)".into());
        }
        Ok(Pinning {
            router_cpu,
            load_cpus: rest.to_vec(),
        })
    }

    /// Moves every thread of this process (and so what it starts later) to the load CPUs.
    pub fn move_this_process(&self) -> Result<(), String> {
        use nix::sched::{CpuSet, sched_setaffinity};
        use nix::unistd::Pid;
        let mut set = CpuSet::new();
        for &cpu in &self.load_cpus {
            set.set(cpu).map_err(|e| format!("--pin: CPU {cpu}: {e}"))?;
        }
        let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| format!("--pin: {e}"))?;
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            // A thread that ended since the listing is gone, not an error.
            if let Err(e) = sched_setaffinity(Pid::from_raw(tid), &set)
                && e != nix::errno::Errno::ESRCH
            {
                return Err(format!("--pin: cannot move thread {tid}: {e}"));
            }
        }
        Ok(())
    }

    /// The words that start a command on the router's CPU.
    pub fn router_prefix(&self) -> Vec<String> {
        vec!["taskset".into(), "-c".into(), self.router_cpu.to_string()]
    }
}

/// `Cpus_allowed_list` of a process (`0-1,4`), as numbers.
pub fn allowed_cpus(status: &str) -> Option<Vec<usize>> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.trim().parse::<usize>().ok()?..=b.trim().parse().ok()?),
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    Some(cpus)
}

/// The CPUs a running process (all its threads) may use, as `/proc` lists them: each thread's
/// list, deduplicated (`["0"]` when pinning held).
pub fn affinity_of(pid: u32) -> Vec<String> {
    let mut seen: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|l| l.trim().to_string())
        })
        .collect();
    seen.sort();
    seen.dedup();
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_read_as_the_kernel_writes_them() {
        let status = "Name:\tx\nCpus_allowed:\t3\nCpus_allowed_list:\t0-2,5\n";
        assert_eq!(allowed_cpus(status), Some(vec![0, 1, 2, 5]));
        assert_eq!(allowed_cpus("Cpus_allowed_list:\t1\n"), Some(vec![1]));
        assert_eq!(allowed_cpus("Name:\tx\n"), None);
        assert_eq!(allowed_cpus("Cpus_allowed_list:\tnonsense\n"), None);
    }
}
