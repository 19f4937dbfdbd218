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
        "monitoring/prometheus/prometheus.yml",
        "monitoring/prometheus/alerts.yml",
        "monitoring/prometheus/alerts.test.yml",
        "monitoring/grafana/provisioning/datasources/prometheus.yml",
        "monitoring/grafana/provisioning/dashboards/logbook.yml",
    ] {
        assert!(!yaml(path).is_badvalue(), "{path}");
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
    assert_eq!(names, ["LogbookDown", "LogbookHighErrorRatio", "LogbookHighLatency", "LogbookStorageErrors"]);
    // The runbook covers each one.
    let runbook = std::fs::read_to_string(root().join("docs/OPERATIONS.md")).unwrap();
    for name in names {
        assert!(runbook.contains(&format!("`{name}`")), "docs/OPERATIONS.md has no entry for {name}");
    }
}
