//! Network namespaces a test makes (`ip`, iproute2; needs root), so that no packet of a test
//! leaves the machine, and links between them that a test can cut: a partition.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

/// A network namespace with loopback up, deleted on drop (even when the test panics).
pub struct Netns(pub String);

/// Runs `ip` in the calling thread's namespace; panics with its error.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("`ip` (iproute2) is required for this test: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// A new namespace named after `tag` and this test process.
    pub fn new(tag: &str) -> Netns {
        let name = format!("mover-{tag}-{}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Makes one and moves the calling thread into it: every socket the thread opens and
    /// every process it spawns from now on lives there.
    pub fn enter(tag: &str) -> Netns {
        let ns = Netns::new(tag);
        move_into(&ns.0);
        ns
    }

    /// `ip` run inside this namespace.
    pub fn ip(&self, args: &[&str]) {
        ip(&[&["netns", "exec", &self.0, "ip"], args].concat());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Moves the calling thread into the named namespace.
pub fn move_into(name: &str) {
    let fd = std::fs::File::open(format!("/var/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("network namespace {name}: {e}"));
    rustix::thread::move_into_link_name_space(
        fd.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap_or_else(|e| panic!("entering network namespace {name}: {e}"));
}

/// A command for `exe` that runs in the named namespace (through `ip netns exec`, which
/// execs it: the child's pid is its own), or in the caller's when `None`.
pub fn command(ns: Option<&str>, exe: &Path) -> Command {
    match ns {
        None => Command::new(exe),
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(exe);
            c
        }
    }
}

/// `f` run on a thread inside the named namespace, or on this one when `None`.
pub fn within<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> T {
    match ns {
        None => f(),
        Some(name) => std::thread::scope(|s| {
            s.spawn(|| {
                move_into(name);
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        }),
    }
}

/// A veth pair from the caller's namespace into `ns`, on a /30 of its own: `near` is the
/// address on the caller's side, `far` the one inside `ns`. `cut` and `mend` take the link
/// down and up: packets between the two sides are dropped, no connection is reset.
pub struct Link {
    near_dev: String,
    pub near: String,
    pub far: String,
}

impl Link {
    /// `subnet` (0..=63) picks 10.77.0.4*subnet/30.
    pub fn new(ns: &Netns, subnet: u8) -> Link {
        assert!(subnet < 64, "subnet {subnet}");
        let (near_dev, far_dev) = (
            format!("mvn{}-{subnet}", std::process::id()),
            format!("mvf{}-{subnet}", std::process::id()),
        );
        let base = 4 * u16::from(subnet);
        let (near, far) = (
            format!("10.77.0.{}", base + 1),
            format!("10.77.0.{}", base + 2),
        );
        ip(&[
            "link", "add", &near_dev, "type", "veth", "peer", "name", &far_dev, "netns", &ns.0,
        ]);
        ip(&["addr", "add", &format!("{near}/30"), "dev", &near_dev]);
        ip(&["link", "set", &near_dev, "up"]);
        ns.ip(&["addr", "add", &format!("{far}/30"), "dev", &far_dev]);
        ns.ip(&["link", "set", &far_dev, "up"]);
        Link {
            near_dev,
            near,
            far,
        }
    }

    pub fn cut(&self) {
        ip(&["link", "set", &self.near_dev, "down"]);
    }

    pub fn mend(&self) {
        ip(&["link", "set", &self.near_dev, "up"]);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.near_dev])
            .status();
    }
}
