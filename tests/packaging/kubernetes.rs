//! The Kubernetes manifests (deploy/kubernetes/): valid against the API schema (offline, with
//! PyPI's kubernetes-validate), and consistent with the shim and the image they run — probe paths
//! and port, the termination grace period above `--grace`, the volume where the image keeps its
//! lock, the image's user, and a config the shim accepts.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::base_image::{repo, require, run_ok, shim_start_up};

fn dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// The YAML documents of `path`, as JSON (PyYAML comes with kubernetes-validate).
fn documents(path: &Path) -> Vec<Value> {
    require("python3");
    let output = run_ok(Command::new("python3").arg("-c").arg(
        "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
    ).arg(path));
    serde_json::from_slice(&output.stdout).expect("python printed JSON")
}

fn document(name: &str) -> Value {
    let mut all = documents(&dir().join(name));
    assert_eq!(all.len(), 1, "{name}: one resource per file");
    all.remove(0)
}

/// The files the kustomization lists.
fn resources() -> Vec<String> {
    document("kustomization.yaml")["resources"]
        .as_array()
        .expect("kustomization.yaml lists resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

/// The StatefulSet's one container.
fn container(statefulset: &Value) -> &Value {
    let containers = statefulset["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container: the shim");
    &containers[0]
}

/// `--flag value` pairs of the container's args.
fn flags(container: &Value) -> HashMap<String, String> {
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.len().is_multiple_of(2),
        "args are --flag value pairs: {args:?}"
    );
    args.chunks(2)
        .map(|pair| (pair[0].to_string(), pair[1].to_string()))
        .collect()
}

/// Whole seconds of a duration written `Ns` (the manifests' style, so it is compared exactly).
fn seconds(duration: &str) -> u64 {
    duration
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("write durations in the manifests as whole seconds: {duration}"))
}

#[test]
fn every_manifest_validates_offline_against_the_api_schema() {
    require("kubernetes-validate");
    let listed = resources();
    for entry in fs::read_dir(dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(
                listed.contains(&name),
                "{name} is not in kustomization.yaml"
            );
        }
    }
    for name in &listed {
        let output = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .arg(dir().join(name))
            .output()
            .expect("cannot run kubernetes-validate");
        assert!(
            output.status.success(),
            "{name} does not validate:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn one_replica_on_a_read_write_once_volume_holding_the_lock() {
    let statefulset = document("statefulset.yaml");
    assert_eq!(statefulset["kind"], "StatefulSet");
    assert_eq!(statefulset["spec"]["replicas"], 1);
    let claims = statefulset["spec"]["volumeClaimTemplates"]
        .as_array()
        .expect("volumeClaimTemplates");
    assert_eq!(claims.len(), 1);
    assert_eq!(
        claims[0]["spec"]["accessModes"],
        serde_json::json!(["ReadWriteOnce"])
    );
    let claim = claims[0]["metadata"]["name"].as_str().unwrap();
    // Mounted where the image keeps its lock and the engine its keys and data.db.
    let mounts = container(&statefulset)["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == claim && m["mountPath"] == "/etc/chainflip"),
        "{mounts:?}"
    );
    let containerfile = fs::read_to_string(repo().join("deploy/container/Containerfile")).unwrap();
    assert!(containerfile.contains("ENGINE_SHIM_LOCK_DIR=/etc/chainflip"));
    // Run as the image's user, with the volume writable by it.
    let security = &statefulset["spec"]["template"]["spec"]["securityContext"];
    for key in ["runAsUser", "runAsGroup", "fsGroup"] {
        let id = security[key].as_u64().unwrap_or_else(|| panic!("{key}"));
        assert!(
            containerfile.contains(&format!("--uid {id}"))
                && containerfile.contains(&format!("--gid {id}")),
            "{key} {id} is not the image's user"
        );
    }
}

#[test]
fn probes_and_grace_agree_with_the_shims_flags() {
    let statefulset = document("statefulset.yaml");
    let container = container(&statefulset);
    let flags = flags(container);

    let grace = seconds(&flags["--grace"]);
    let termination = statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination > grace,
        "terminationGracePeriodSeconds {termination} must be above --grace {grace}s"
    );

    let listen_port: u64 = flags["--metrics-listen"]
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("--metrics-listen HOST:PORT");
    let port_of = |probe: &Value| -> u64 {
        let port = &probe["httpGet"]["port"];
        match port.as_u64() {
            Some(number) => number,
            None => container["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == *port)
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("no container port named {port}")),
        }
    };
    let liveness = &container["livenessProbe"];
    let readiness = &container["readinessProbe"];
    assert_eq!(liveness["httpGet"]["path"], "/livez");
    assert_eq!(readiness["httpGet"]["path"], "/readyz");
    assert_eq!(port_of(liveness), listen_port);
    assert_eq!(port_of(readiness), listen_port);
    // The service scrapes the same port.
    let service = document("service.yaml");
    assert_eq!(
        service["spec"]["ports"][0]["port"].as_u64(),
        Some(listen_port)
    );
}

#[test]
fn the_shim_accepts_the_manifests_flags_and_config() {
    let statefulset = document("statefulset.yaml");
    let container = container(&statefulset);
    let mut flags = flags(container);
    // The ConfigMap's key, where the StatefulSet mounts it and where --config looks.
    let config_path = Path::new(&flags["--config"]).to_path_buf();
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| config_path.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("--config lies in a mounted volume");
    let volume = statefulset["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let configmap = document("configmap.yaml");
    assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
    let key = config_path.file_name().unwrap().to_str().unwrap();
    let toml = configmap["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("the ConfigMap has no {key}"));

    // The real shim with these flags and this file, outside the image: everything parses (no
    // usage error, exit 2); start-up stops only at the engine programs, which only the image has.
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join(key);
    fs::write(&file, toml).unwrap();
    flags.insert("--config".into(), file.display().to_string());
    flags.insert("--metrics-listen".into(), "127.0.0.1:0".into());
    let args: Vec<String> = flags.into_iter().flat_map(|(f, v)| [f, v]).collect();
    let (code, output) = shim_start_up(&args, scratch.path());
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("engine program /usr/local/bin/chainflip-engine1.0 does not exist"),
        "{output}"
    );
}
