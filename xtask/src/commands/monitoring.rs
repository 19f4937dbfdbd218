//! `cargo xtask monitoring-up` and `monitoring-down`: Prometheus and Grafana beside the app.

use std::time::Duration;

use anyhow::Result;
use xshell::Shell;

use crate::flags::{MonitoringDown, MonitoringService, MonitoringUp};
use crate::outside::docker;
use crate::outside::{image, process};
use crate::targets::compose::{self, monitoring};

impl MonitoringUp {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let program = docker::connect(sh)?;
        let image = image::ensure(sh, self.no_build)?;
        let stack = compose::stack(sh, program);
        let services = if self.services.is_empty() {
            vec![MonitoringService::Prometheus, MonitoringService::Alertmanager, MonitoringService::Grafana]
        } else {
            self.services.clone()
        };
        let history = compose::history_path(sh, &stack)?;
        let timeout = Duration::from_secs(self.timeout);
        let _lock = compose::lock_and_repair(sh, &stack, &history, &self.lock.request(), timeout)?;
        let urls = monitoring::monitoring_up(sh, &stack, &history, &image, &services, timeout)?;
        for (name, url) in urls.0 {
            process::result(&format!("{name:<11} {url}"));
        }
        Ok(())
    }
}

impl MonitoringDown {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let stack = monitoring::interpolable(sh, compose::stack(sh, docker::connect(sh)?));
        let history = compose::history_path(sh, &stack)?;
        let _lock =
            compose::lock_and_repair(sh, &stack, &history, &self.lock.request(), Duration::from_secs(60))?;
        monitoring::monitoring_down(sh, &stack)?;
        process::result(&format!("monitoring stopped in project {}; the app keeps running", stack.project));
        Ok(())
    }
}
