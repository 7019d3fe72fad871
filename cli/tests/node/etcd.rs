//! A real etcd (Debian's `etcd-server`, installed by `scripts/install-deps.sh`) on 127.0.0.1
//! free ports with its data in the test's directory; killed when dropped.

use super::free_port;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long etcd may take to answer on its client port.
const START: Duration = Duration::from_secs(30);

pub struct Etcd {
    pub port: u16,
    peer: u16,
    /// Another address its client port listens on, besides loopback.
    also: Option<String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    pub fn start(dir: &Path) -> Etcd {
        Self::start_also_on(dir, None)
    }

    /// `start`, its client port on `also` as well (an address of a namespace's link).
    pub fn start_also_on(dir: &Path, also: Option<&str>) -> Etcd {
        let mut e = Etcd {
            port: free_port(),
            peer: free_port(),
            also: also.map(str::to_string),
            dir: dir.to_path_buf(),
            child: None,
        };
        e.spawn();
        e
    }

    /// The JSON record etcd holds at `key` now, if any (through its JSON gateway).
    pub fn get_json(&self, key: &str) -> Option<serde_json::Value> {
        let v = self.range(serde_json::json!({"key": BASE64.encode(key)}));
        let value = BASE64.decode(v["kvs"].get(0)?["value"].as_str()?).unwrap();
        Some(serde_json::from_slice(&value).unwrap())
    }

    /// One range request to the JSON gateway, its answer.
    fn range(&self, body: serde_json::Value) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}/v3/kv/range", self.port);
        let mut res = ureq::post(&url).send_json(&body).unwrap();
        serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap()
    }

    /// How many keys below `prefix` etcd holds now (through its JSON gateway on the client
    /// port: the tests have no etcdctl).
    pub fn count(&self, prefix: &str) -> u64 {
        // The prefix's range end: its last byte one higher (the keys here are ASCII).
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().expect("a prefix") += 1;
        let body = serde_json::json!({
            "key": BASE64.encode(prefix),
            "range_end": BASE64.encode(&end),
            "count_only": true,
        });
        let v = self.range(body);
        // Counts are int64, which the gateway writes as strings, and leaves out at 0.
        v["count"].as_str().map_or(0, |c| c.parse().unwrap())
    }

    /// `--cluster` for daemons.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.port)
    }

    /// `--cluster` for daemons that reach it at `also`.
    pub fn url_also(&self) -> String {
        let host = self.also.as_deref().expect("started with another address");
        format!("etcd://{host}:{}", self.port)
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let mut client = format!("http://127.0.0.1:{}", self.port);
        if let Some(host) = &self.also {
            client.push_str(&format!(",http://{host}:{}", self.port));
        }
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", "mover-test", "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("mover-test={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("etcd (Debian package etcd-server; scripts/install-deps.sh) must run: {e}")
            });
        self.child = Some(child);
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(t0.elapsed() < START, "etcd did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Killed and started again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
