//! The kubelet's path without a kubelet: containerd's CRI plugin driven over its
//! gRPC API (RunPodSandbox, CreateContainer with a Localhost seccomp profile and
//! pod annotations, StartContainer), with an image written locally and imported
//! with `ctr -n k8s.io images import`.
//!
//! The gRPC client is `cri/cri_call.py` (Debian's python3-grpcio and
//! python3-grpc-tools; stubs generated at each call from `cri/cri_subset.proto`).
//! The image is written by the agent image's own writer,
//! `contrib/kubernetes/oci-image.py`.
//! containerd runs in a network namespace the test owns. Pods get a network
//! namespace of their own through CNI (a bridge plugin network inside the test's
//! namespace), or use the node's network (`hostNetwork`), which is the test's
//! namespace: either way port 80 is the test's alone and nothing is left on the
//! host.

use crate::containers::{client_rootfs, Containerd};
use crate::oci::{unique, Runtime, TempDir};
use crate::output_timeout;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Debian's interpreter: python3-grpcio is installed for it, not for another
/// python3 that may come first on PATH.
const PYTHON: &str = "/usr/bin/python3";

/// The image every pod and container of the CRI tests uses (also the sandbox
/// image, so nothing is pulled).
pub const IMAGE: &str = "docker.io/library/fdgrab-test:1";

/// The CRI plugin's settings: the sandbox image is ours; the OOM score of pods is
/// kept at or above containerd's own (lowering it needs CAP_SYS_RESOURCE, which
/// container hosts may lack). The runtime handlers and their `org.fdgrab.*` pod
/// annotation allowlist come from the shipped `contrib/kubernetes/containerd-config.toml`.
const CRI_CONFIG: &str = r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/library/fdgrab-test:1"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "@DIR@/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
"#;

/// The shipped containerd snippet, without its `version` line (ours has one).
fn shipped_runtimes() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib/kubernetes/containerd-config.toml");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.starts_with("version"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cri/cri_call.py")
}

/// `contrib/kubernetes/oci-image.py`: the image writer the agent's image is built
/// with, so the tests exercise the shipped script.
pub fn oci_image_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/kubernetes/oci-image.py")
}

/// Whether the CRI client can run (python3-grpcio, python3-grpc-tools);
/// skips loudly when not.
pub fn client_usable() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import grpc, grpc_tools.protoc, google.protobuf"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::skip("the CRI client needs python3-grpcio and python3-grpc-tools (scripts/test installs them)");
    }
    ok
}

/// A private containerd with its CRI plugin on, the test image imported.
#[derive(Debug)]
pub struct Cri {
    pub containerd: Containerd,
    pub logs: TempDir,
}

impl Cri {
    /// Starts containerd in `netns` and imports an image of a busybox rootfs.
    pub fn start(netns: &Path) -> Cri {
        let config = format!("{CRI_CONFIG}\n{}", shipped_runtimes());
        let containerd = Containerd::start_with("", &config, Some(netns));
        // Pod networks: a bridge with host-local addresses. containerd, and so the
        // CNI plugins it runs, live in the test's network namespace: the bridge
        // and its routes are made there, and vanish with it.
        let cni = containerd.dir.path().join("cni");
        std::fs::create_dir_all(&cni).expect("cni conf dir");
        let conflist = json!({
            "cniVersion": "0.4.0",
            "name": "fdgrab-pods",
            "plugins": [
                {"type": "bridge", "bridge": "fdgbr0", "isGateway": true, "ipMasq": false,
                 "ipam": {"type": "host-local", "dataDir": containerd.dir.path().join("cni-ipam"),
                          "ranges": [[{"subnet": "10.88.77.0/24"}]]}},
                {"type": "loopback"}
            ]
        });
        std::fs::write(cni.join("10-fdgrab.conflist"), conflist.to_string()).expect("conflist");
        let work = TempDir::new("fdgrab-cri-image");
        let rootfs = client_rootfs(work.path());
        let archive = work.path().join("image.tar");
        let out = output_timeout(
            Command::new(PYTHON)
                .arg(oci_image_script())
                .arg(&rootfs)
                .arg(&archive)
                .arg(IMAGE)
                .args(["--cmd", r#"["/bin/sleep", "86400"]"#]),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "writing the image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = output_timeout(
            containerd
                .ctr("k8s.io")
                .args(["images", "import"])
                .arg(&archive),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "ctr images import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cri {
            containerd,
            logs: TempDir::new("fdgrab-cri-logs"),
        }
    }

    /// One CRI call: `RuntimeService/METHOD` with `request` (protobuf JSON).
    pub fn call(&self, method: &str, request: &Value) -> Result<Value, String> {
        let req = self.containerd.dir.path().join(unique("req"));
        std::fs::write(&req, request.to_string()).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(PYTHON);
        cmd.arg(script())
            .arg(&self.containerd.address)
            .arg(method)
            .arg(&req);
        let out = output_timeout(&mut cmd, Duration::from_secs(90));
        let _ = std::fs::remove_file(&req);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{method} answer: {e}"))
    }

    /// RunPodSandbox, `annotations` on the pod, in a network of its own (through
    /// CNI, as a kubelet's pods) or the node's (`hostNetwork: true`).
    pub fn run_pod(
        &self,
        runtime: Runtime,
        name: &str,
        annotations: &[(&str, &str)],
        network: PodNetwork,
    ) -> Pod<'_> {
        let ann: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let mut config = json!({
            "metadata": {"name": name, "uid": unique("uid"), "namespace": "fdgrab-test"},
            "log_directory": self.logs.path(),
            "annotations": ann,
            "linux": {},
        });
        match network {
            PodNetwork::Pod => config["hostname"] = json!(name),
            PodNetwork::Node => {
                config["linux"] =
                    json!({"security_context": {"namespace_options": {"network": "NODE"}}})
            }
        }
        let handler = match runtime {
            Runtime::Runc => "runc",
            Runtime::Crun => "crun",
        };
        let resp = self
            .call(
                "RunPodSandbox",
                &json!({"config": config, "runtime_handler": handler}),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "RunPodSandbox: {e}; containerd: {}",
                    self.containerd.log.text()
                )
            });
        let id = resp["pod_sandbox_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no pod_sandbox_id in {resp}"))
            .to_owned();
        Pod {
            cri: self,
            id,
            config,
        }
    }
}

/// Where a pod's network is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodNetwork {
    /// Its own network namespace, set up by CNI (a bridge in the test's namespace).
    Pod,
    /// The node's, that is the test's namespace containerd runs in.
    Node,
}

/// A pod sandbox; stopped and removed on drop, with its containers.
#[derive(Debug)]
pub struct Pod<'a> {
    cri: &'a Cri,
    pub id: String,
    config: Value,
}

impl Pod<'_> {
    /// CreateContainer + StartContainer the way the kubelet does for a container
    /// with `runAsUser: 1000`, `capabilities: drop: [ALL]`,
    /// `allowPrivilegeEscalation: false` and a Localhost seccomp profile.
    /// Returns the container id.
    pub fn start_container(&self, name: &str, command: &[&str], profile: &Path) -> String {
        let config = json!({
            "metadata": {"name": name},
            "image": {"image": IMAGE},
            "command": command,
            "log_path": format!("{name}.log"),
            "linux": {"security_context": {
                "run_as_user": {"value": 1000},
                "run_as_group": {"value": 1000},
                "capabilities": {"drop_capabilities": ["ALL"]},
                "no_new_privs": true,
                "seccomp": {"profile_type": "Localhost", "localhost_ref": profile},
            }},
        });
        let resp = self
            .cri
            .call(
                "CreateContainer",
                &json!({"pod_sandbox_id": self.id, "config": config, "sandbox_config": self.config}),
            )
            .unwrap_or_else(|e| panic!("CreateContainer: {e}"));
        let id = resp["container_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no container_id in {resp}"))
            .to_owned();
        self.cri
            .call("StartContainer", &json!({"container_id": id}))
            .unwrap_or_else(|e| panic!("StartContainer: {e}"));
        id
    }

    /// The pod's IP address (PodSandboxStatus), on the bridge in the test's
    /// network namespace.
    pub fn ip(&self) -> std::net::IpAddr {
        let resp = self
            .cri
            .call("PodSandboxStatus", &json!({"pod_sandbox_id": self.id}))
            .unwrap_or_else(|e| panic!("PodSandboxStatus: {e}"));
        resp["status"]["network"]["ip"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("no pod IP in {resp}"))
    }

    /// ContainerStatus's `status`.
    pub fn status(&self, container: &str) -> Value {
        self.cri
            .call("ContainerStatus", &json!({"container_id": container}))
            .map(|r| r["status"].clone())
            .unwrap_or_else(|e| panic!("ContainerStatus: {e}"))
    }

    /// Waits until the container has exited; its status.
    pub fn wait_exited(&self, container: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status(container);
            if st["state"] == "CONTAINER_EXITED" {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(format!("container {container} still not exited: {st}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The container's CRI log (`TIMESTAMP STREAM TAG LINE` lines).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.cri.logs.path().join(format!("{name}.log")))
            .unwrap_or_default()
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        let req = json!({"pod_sandbox_id": self.id});
        let _ = self.cri.call("StopPodSandbox", &req);
        let _ = self.cri.call("RemovePodSandbox", &req);
    }
}
