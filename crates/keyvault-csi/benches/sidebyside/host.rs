//! The host side of the bench: processes, `/proc` readings, `kubectl` and the API server's own
//! request counters.

use super::*;

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set (hack/bench.sh sets it)"))
}

pub fn kubectl(args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("kubectl on PATH");
    if let Some(text) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Requests the API server has served for the driver resources, from its own metrics, by
/// `<verb> <resource>` (clients of the kit's own components, `system_client` set, are left out).
pub fn api_requests_by_kind() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for l in kubectl(&["get", "--raw", "/metrics"], None).lines().filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |k: &str| l.split(&format!("{k}=\"")).nth(1).and_then(|v| v.split('"').next()).unwrap_or("");
        if !RESOURCES.contains(&label("resource")) || !label("system_client").is_empty() {
            continue;
        }
        let Some(n) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        *out.entry(format!("{} {}", label("verb"), label("resource"))).or_default() += n;
    }
    out
}

pub fn api_requests() -> f64 {
    api_requests_by_kind().values().sum()
}

pub fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// utime + stime of a process, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

pub fn rss_mib(pid: u32) -> f64 {
    proc_status_kb(&pid.to_string(), "VmRSS:") as f64 / 1024.0
}

pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &str, program: &str, args: &[String], log: &Path) -> Self {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(program)
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        Self { name: name.into(), child }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn chrono_now() -> String {
    String::from_utf8_lossy(&Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC").output().unwrap().stdout)
        .trim()
        .to_string()
}

pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_default();
    let mem_kb = proc_meminfo_kb();
    format!("{cpus} cores ({model}), {:.0} GiB", mem_kb as f64 / 1024.0 / 1024.0)
}

pub fn proc_meminfo_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
