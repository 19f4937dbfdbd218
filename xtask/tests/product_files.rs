//! Static checks of the monitoring product files that no tool here can run live (no
//! Grafana image can be had): they parse, and they agree with each other.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn yaml(path: &str) -> Yaml {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut docs =
        YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"));
    assert_eq!(docs.len(), 1, "{path}: expected one document");
    docs.remove(0)
}

fn dashboards() -> Vec<(String, serde_json::Value)> {
    let dir = root().join("monitoring/grafana/dashboards");
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), json)
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!found.is_empty(), "no dashboards");
    found
}

#[test]
fn every_yaml_product_file_parses() {
    for path in [
        "docker-compose.yml",
        "docker-compose.monitoring.yml",
        "docker-compose.tls.yml",
        "monitoring/prometheus/prometheus.yml",
        "monitoring/prometheus/alerts.yml",
        "monitoring/prometheus/alerts.test.yml",
        "monitoring/grafana/provisioning/datasources/prometheus.yml",
        "monitoring/grafana/provisioning/dashboards/logbook.yml",
    ] {
        // `yaml` fails on a parse error; a file that parses must also be a non-empty mapping.
        let doc = yaml(path);
        let keys = doc.as_hash().map_or(0, |h| h.len());
        assert!(keys > 0, "{path}: not a mapping of settings");
    }
}

#[test]
fn dashboards_use_the_provisioned_datasource() {
    let sources = yaml("monitoring/grafana/provisioning/datasources/prometheus.yml");
    let source = &sources["datasources"][0];
    let uid = source["uid"].as_str().unwrap();
    assert_eq!(source["url"].as_str(), Some("http://prometheus:9090"), "the compose service name and port");
    for (path, dashboard) in dashboards() {
        let panels = dashboard["panels"].as_array().unwrap();
        assert!(!panels.is_empty(), "{path}: no panels");
        let mut ids = std::collections::BTreeSet::new();
        for panel in panels {
            let title = panel["title"].as_str().unwrap();
            assert!(ids.insert(panel["id"].as_i64().unwrap()), "{path}: duplicate panel id at {title}");
            assert_eq!(panel["datasource"]["uid"], uid, "{path}: panel {title}");
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{path}: panel {title} has no query");
            for target in targets {
                assert_eq!(target["datasource"]["uid"], uid, "{path}: panel {title}");
                assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()), "{path}: panel {title}");
            }
        }
    }
}

#[test]
fn grafana_loads_dashboards_from_where_compose_mounts_them() {
    let provider = yaml("monitoring/grafana/provisioning/dashboards/logbook.yml");
    let path = provider["providers"][0]["options"]["path"].as_str().unwrap().to_owned();
    let compose = yaml("docker-compose.monitoring.yml");
    let mounts: Vec<&str> =
        compose["services"]["grafana"]["volumes"].as_vec().unwrap().iter().filter_map(Yaml::as_str).collect();
    assert!(mounts.contains(&format!("./monitoring/grafana/dashboards:{path}:ro").as_str()), "{mounts:?}");
    assert!(mounts.contains(&"./monitoring/grafana/provisioning:/etc/grafana/provisioning:ro"), "{mounts:?}");
}

/// The replication sidecar is hardened like the service, runs as its user (files it
/// creates beside the database stay the service's), gets credentials only from a secret
/// file, and its image is the pinned public one unless overridden.
#[test]
fn the_replication_sidecar_is_hardened_and_keeps_credentials_in_a_secret() {
    let compose = yaml("docker-compose.replica.yml");
    for service in ["litestream", "replica-restore"] {
        // Both take the shared fields from one anchor (`<<: *litestream`).
        let own = &compose["services"][service];
        let s = &own["<<"];
        assert!(!own["command"].is_badvalue(), "{service} has no command");
        assert_eq!(
            s["image"].as_str(),
            Some("${LITESTREAM_IMAGE:-litestream/litestream:0.5.17}"),
            "{service}"
        );
        assert_eq!(s["user"].as_str(), Some("10001:10001"), "{service}");
        assert_eq!(s["read_only"].as_bool(), Some(true), "{service}");
        assert_eq!(s["cap_drop"][0].as_str(), Some("ALL"), "{service}");
        assert_eq!(s["secrets"][0].as_str(), Some("replica-credentials"), "{service}");
        let env = s["environment"].as_hash().unwrap();
        let names: Vec<&str> = env.keys().filter_map(Yaml::as_str).collect();
        assert!(
            names.iter().all(|n| !n.contains("SECRET") && !n.contains("ACCESS_KEY")),
            "{service}: {names:?}"
        );
        assert_eq!(
            s["environment"]["AWS_SHARED_CREDENTIALS_FILE"].as_str(),
            Some("/run/secrets/replica-credentials"),
            "{service}"
        );
    }
    let logbook = &compose["services"]["logbook"];
    assert_eq!(logbook["environment"]["LOGBOOK_WAL_AUTOCHECKPOINT"].as_str(), Some("0"));
    assert_eq!(
        logbook["depends_on"]["replica-restore"]["condition"].as_str(),
        Some("service_completed_successfully"),
        "an empty volume must be restored before the service creates a database"
    );
}

#[test]
fn every_alert_explains_itself() {
    let rules = yaml("monitoring/prometheus/alerts.yml");
    let mut names = Vec::new();
    for group in rules["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            for key in ["summary", "description"] {
                assert!(
                    rule["annotations"][key].as_str().is_some_and(|s| s.len() > 10),
                    "{name} has no {key}"
                );
            }
            assert!(rule["labels"]["severity"].as_str().is_some(), "{name} has no severity");
            names.push(name.to_owned());
        }
    }
    assert_eq!(
        names,
        [
            "LogbookDown",
            "LogbookHighErrorRatio",
            "LogbookHighLatency",
            "LogbookStorageErrors",
            "LogbookDiskLow",
            "LogbookDiskFillingUp",
            "LogbookReplicationLagging",
            "LogbookReplicationSidecarDown",
            "LogbookWalGrowing"
        ]
    );
    // The runbook covers each one.
    let runbook = std::fs::read_to_string(root().join("docs/OPERATIONS.md")).unwrap();
    for name in names {
        assert!(runbook.contains(&format!("`{name}`")), "docs/OPERATIONS.md has no entry for {name}");
    }
}

fn seconds(text: &str) -> u64 {
    let text = text.trim().trim_matches('"');
    match text.strip_suffix("ms") {
        Some(ms) => ms.parse::<u64>().unwrap() / 1000,
        None => text.trim_end_matches('s').parse().unwrap(),
    }
}

fn statefulset() -> Yaml {
    yaml("deploy/k8s/base/statefulset.yaml")
}

fn container(set: &Yaml) -> &Yaml {
    &set["spec"]["template"]["spec"]["containers"][0]
}

fn env_of(container: &Yaml, name: &str) -> String {
    container["env"].as_vec().unwrap().iter().find(|e| e["name"].as_str() == Some(name)).unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn k8s_probes_and_port_match_the_service_and_the_image() {
    let set = statefulset();
    let c = container(&set);
    let http = std::fs::read_to_string(root().join("logbook/src/http.rs")).unwrap();
    for (probe, path) in
        [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]
    {
        assert_eq!(c[probe]["httpGet"]["path"].as_str(), Some(path), "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"].as_str(), Some("http"), "{probe}");
        assert!(http.contains(&format!(".route(\"{path}\"")), "the service has no route {path}");
    }
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let exposed = dockerfile.lines().find_map(|l| l.strip_prefix("EXPOSE ")).unwrap().trim().to_owned();
    let port = c["ports"][0]["containerPort"].as_i64().unwrap();
    assert_eq!(c["ports"][0]["name"].as_str(), Some("http"));
    assert_eq!(port.to_string(), exposed, "containerPort and the image's EXPOSE differ");
    let user = dockerfile.lines().find_map(|l| l.strip_prefix("USER ")).unwrap().trim().to_owned();
    let pod = &set["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(
        format!("{}:{}", pod["runAsUser"].as_i64().unwrap(), pod["runAsGroup"].as_i64().unwrap()),
        user
    );
}

#[test]
fn k8s_security_context_is_locked_down() {
    let set = statefulset();
    let pod = &set["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(pod["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(pod["fsGroup"].as_i64(), pod["runAsGroup"].as_i64(), "fsGroup makes the volume writable");
    assert_eq!(pod["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    let sc = &container(&set)["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
    let mounts: Vec<&str> = container(&set)["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert!(mounts.contains(&"/tmp") && mounts.contains(&"/data"), "{mounts:?}");
    assert_eq!(set["spec"]["replicas"].as_i64(), Some(1), "one writer: see docs/SCALING.md");
}

#[test]
fn grace_periods_exceed_the_drain() {
    // Kubernetes: the manifest's own drain settings.
    let set = statefulset();
    let c = container(&set);
    let drain = seconds(&env_of(c, "LOGBOOK_DRAIN_DELAY")) + seconds(&env_of(c, "LOGBOOK_SHUTDOWN_TIMEOUT"));
    let grace = set["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap() as u64;
    assert!(grace > drain, "terminationGracePeriodSeconds {grace} <= drain {drain}");
    // Compose: the service's defaults, as .env.example documents them.
    let example = std::fs::read_to_string(root().join(".env.example")).unwrap();
    let default =
        |key: &str| seconds(example.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap());
    let drain = default("LOGBOOK_DRAIN_DELAY") + default("LOGBOOK_SHUTDOWN_TIMEOUT");
    let compose = yaml("docker-compose.yml");
    let stop = compose["services"]["logbook"]["stop_grace_period"].as_str().unwrap();
    let stop = seconds(stop.trim_start_matches("${LOGBOOK_STOP_GRACE_PERIOD:-").trim_end_matches('}'));
    assert!(stop > drain, "compose stop_grace_period {stop} <= drain {drain}");
    // Swarm: the stack's own drain settings.
    let stack = yaml("deploy/swarm/stack.yml");
    let service = &stack["services"]["logbook"];
    let env = &service["environment"];
    let drain = seconds(env["LOGBOOK_DRAIN_DELAY"].as_str().unwrap())
        + seconds(env["LOGBOOK_SHUTDOWN_TIMEOUT"].as_str().unwrap());
    let stop = seconds(service["stop_grace_period"].as_str().unwrap());
    assert!(stop > drain, "swarm stop_grace_period {stop} <= drain {drain}");
}

#[test]
fn the_swarm_stack_is_one_pinned_replica_updated_start_first_with_rollback() {
    let stack = yaml("deploy/swarm/stack.yml");
    let service = &stack["services"]["logbook"];
    let deploy = &service["deploy"];
    assert_eq!(deploy["replicas"].as_i64(), Some(1));
    assert_eq!(deploy["placement"]["constraints"][0].as_str(), Some("node.labels.logbook.data == true"));
    assert_eq!(deploy["update_config"]["order"].as_str(), Some("start-first"));
    assert_eq!(deploy["update_config"]["failure_action"].as_str(), Some("rollback"));
    assert!(deploy["update_config"]["monitor"].as_str().is_some());
    assert!(deploy["rollback_config"].as_hash().is_some());
    assert_eq!(service["read_only"].as_bool(), Some(true));
    assert_eq!(service["cap_drop"][0].as_str(), Some("ALL"));
    assert_eq!(
        service["environment"]["LOGBOOK_API_TOKEN_FILE"].as_str(),
        Some("/run/secrets/logbook_api_token")
    );
    assert_eq!(service["healthcheck"]["test"][1].as_str(), Some("/logbook"));
}

#[test]
fn the_disruption_budget_selects_the_pods() {
    let pdb = yaml("deploy/k8s/base/poddisruptionbudget.yaml");
    let selector = &pdb["spec"]["selector"]["matchLabels"];
    assert_eq!(
        selector["app.kubernetes.io/name"].as_str(),
        Some("logbook"),
        "a PDB without a selector protects nothing"
    );
    // kustomize adds the common labels to the pod template, so the selector matches it.
    let kustomization = yaml("deploy/k8s/base/kustomization.yaml");
    let common = &kustomization["labels"][0]["pairs"];
    assert_eq!(common["app.kubernetes.io/name"].as_str(), Some("logbook"));
}

#[test]
fn overlays_change_only_the_image_tag_and_resources() {
    for overlay in ["staging", "production"] {
        let k = yaml(&format!("deploy/k8s/overlays/{overlay}/kustomization.yaml"));
        let keys: Vec<&str> = k.as_hash().unwrap().keys().filter_map(Yaml::as_str).collect();
        assert_eq!(keys, ["apiVersion", "kind", "resources", "images", "patches"], "{overlay}");
        let patch = k["patches"][0]["patch"].as_str().unwrap();
        assert!(patch.contains("path: /spec/template/spec/containers/0/resources"), "{overlay}: {patch}");
        assert_eq!(k["patches"].as_vec().unwrap().len(), 1, "{overlay}");
    }
}

/// The proxy alone publishes a port, in compose and in Swarm, and reaches the service by
/// the name each orchestrator gives its containers, on the port open only while ready.
#[test]
fn the_proxy_alone_publishes_the_service() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    assert!(services["logbook"]["ports"].is_badvalue(), "the service publishes a port");
    let proxy = &services["proxy"];
    assert_eq!(proxy["ports"].as_vec().map(Vec::len), Some(1));
    assert_eq!(proxy["environment"]["LOGBOOK_UPSTREAM"].as_str(), Some("logbook"));
    assert_eq!(proxy["read_only"].as_bool(), Some(true));
    assert_eq!(proxy["cap_drop"][0].as_str(), Some("ALL"));
    let stack = yaml("deploy/swarm/stack.yml");
    assert!(stack["services"]["logbook"]["ports"].is_badvalue(), "the swarm service publishes a port");
    assert_eq!(stack["services"]["proxy"]["environment"]["LOGBOOK_UPSTREAM"].as_str(), Some("tasks.logbook"));
    let config = std::fs::read_to_string(root().join("deploy/proxy/haproxy.cfg")).unwrap();
    let lines: Vec<&str> = config.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    for setting in [
        "parse-resolv-conf",
        "lua-load /etc/logbook/hold.lua",
        "option redispatch 1",
        "retry-on conn-failure empty-response",
        "http-reuse never",
        // Each container is checked, and out of the rotation at the first connection it
        // refuses under a request.
        "default-server check inter 50ms fall 1 rise 1 observe layer4 error-limit 1 on-error mark-down",
        // With no container up, a request waits (in `listen hold`), rather than get a 503.
        "server hold abns@logbook-hold backup no-check",
        "http-request lua.hold_while_none_ready",
    ] {
        assert!(lines.contains(&setting), "haproxy.cfg has no `{setting}`");
    }
    let servers: Vec<&&str> = lines.iter().filter(|l| l.starts_with("server-template")).collect();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert!(servers[0].contains("\"${LOGBOOK_UPSTREAM}:${LOGBOOK_UPSTREAM_PORT}\" resolvers docker"));
    // `listen hold` sends nothing twice, and uses each connection for one request.
    let hold_section: Vec<&str> =
        config.split("\nlisten hold\n").nth(1).expect("no `listen hold`").lines().map(str::trim).collect();
    for setting in ["retry-on conn-failure", "option httpclose"] {
        assert!(hold_section.contains(&setting), "`listen hold` has no `{setting}`");
    }
    // The names the two files and the hops share.
    for pair in ["abns@logbook-hold", "abns@logbook-site"] {
        assert_eq!(config.matches(pair).count(), 2, "{pair}: one bind and one server");
    }
    assert!(
        lines.contains(&"backend service")
            && lines.contains(&"server hold abns@logbook-hold backup no-check")
    );
    let hold = std::fs::read_to_string(root().join("deploy/proxy/hold.lua")).unwrap();
    assert!(hold.contains("name ~= \"hold\""), "the script counts the hold server as a container");
    assert!(hold.contains("core.register_action(\"hold_while_none_ready\""), "{hold}");
    assert!(hold.contains("core.backends[\"service\"]"), "the script watches another backend");
    // An append without a key is never sent twice.
    assert!(
        lines.contains(
            &"http-request disable-l7-retry unless METH_GET || { req.hdr(Idempotency-Key) -m found }"
        )
    );
    // Readiness is the service's ready port: the proxy must use it in both stacks.
    for (file, services) in [("docker-compose.yml", services), ("deploy/swarm/stack.yml", &stack["services"])]
    {
        let ready_port = services["logbook"]["environment"]["LOGBOOK_READY_PORT"].as_str();
        assert!(ready_port.is_some(), "{file}: the service has no LOGBOOK_READY_PORT");
        let upstream_port = services["proxy"]["environment"]["LOGBOOK_UPSTREAM_PORT"].as_str();
        assert_eq!(upstream_port, ready_port, "{file}: the proxy does not use the service's ready port");
    }
}

#[test]
fn nothing_is_exposed_without_authentication_by_default() {
    let app = yaml("docker-compose.yml");
    let allow = &app["services"]["logbook"]["environment"]["LOGBOOK_ALLOW_UNAUTHENTICATED"];
    // A name without a value: only the runner (loopback alone) or the user sets it.
    assert!(allow.is_null(), "the compose file sets LOGBOOK_ALLOW_UNAUTHENTICATED: {allow:?}");
    let monitoring = yaml("docker-compose.monitoring.yml");
    for service in ["prometheus", "alertmanager"] {
        for port in monitoring["services"][service]["ports"].as_vec().unwrap() {
            let port = port.as_str().unwrap();
            assert!(port.starts_with("127.0.0.1:"), "{service} is published beyond loopback: {port}");
        }
    }
    // The HTTPS front serves the domain alone (plain HTTP there only redirects), with HSTS;
    // the stack's proxy never sets it.
    let caddyfile = std::fs::read_to_string(root().join("deploy/proxy/Caddyfile")).unwrap();
    let sites: Vec<&str> =
        caddyfile.lines().filter(|l| l.ends_with(" {") && !l.starts_with(['\t', ' ', '(', '#'])).collect();
    assert_eq!(sites, ["{$LOGBOOK_DOMAIN} {"], "the HTTPS front serves more than the domain");
    assert!(caddyfile.contains("header Strict-Transport-Security"), "no HSTS over HTTPS");
    let config = std::fs::read_to_string(root().join("deploy/proxy/haproxy.cfg")).unwrap();
    assert!(!config.contains("Strict-Transport-Security"), "HSTS over plain HTTP");
    let tls = yaml("docker-compose.tls.yml");
    let front = &tls["services"]["tls"];
    assert_eq!(front["read_only"].as_bool(), Some(true));
    assert_eq!(front["cap_drop"][0].as_str(), Some("ALL"));
    assert!(tls["services"]["proxy"].is_badvalue(), "the TLS layer changes the proxy");
}

/// Nothing is published or deployed unless every gate passed: the job that publishes needs,
/// directly, every job that runs `cargo xtask ci` for the gates (coverage included).
#[test]
fn publishing_needs_every_gate() {
    let workflow = yaml(".github/workflows/ci.yml");
    let jobs = workflow["jobs"].as_hash().unwrap();
    let runs = |job: &Yaml, needle: &str| {
        job["steps"]
            .as_vec()
            .into_iter()
            .flatten()
            .any(|s| s["run"].as_str().is_some_and(|r| r.contains(needle)))
    };
    let gates: Vec<&str> = jobs
        .iter()
        .filter(|(_, job)| runs(job, "cargo xtask ci --only") && !runs(job, "cargo xtask publish"))
        .map(|(name, _)| name.as_str().unwrap())
        .collect();
    assert!(gates.contains(&"coverage") && gates.contains(&"test") && gates.contains(&"lint"), "{gates:?}");
    let (publisher, job) =
        jobs.iter().find(|(_, job)| runs(job, "cargo xtask publish")).expect("a job publishes the image");
    let needs: Vec<&str> = job["needs"].as_vec().unwrap().iter().filter_map(|n| n.as_str()).collect();
    for gate in gates {
        assert!(
            needs.contains(&gate),
            "{} publishes without waiting for {gate}",
            publisher.as_str().unwrap()
        );
    }
}
