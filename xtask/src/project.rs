//! The one block a team edits to adopt this layout for its own service.

/// The service's crate and binary, the image repository, and the compose service name.
pub const NAME: &str = "logbook";
/// The port the service listens on inside the container.
pub const CONTAINER_PORT: u16 = 8080;
/// Host port when neither the environment nor `.env` sets `LOGBOOK_HOST_PORT`.
pub const DEFAULT_HOST_PORT: u16 = 8080;
/// The reverse proxy in front of the service: the only published port, and the port it
/// listens on inside its container.
pub const PROXY_SERVICE: &str = "proxy";
pub const PROXY_PORT: u16 = 8080;
/// The proxy's build context and configuration, and the tag its image is built under
/// where LOGBOOK_PROXY_IMAGE names no other.
pub const PROXY_DIR: &str = "deploy/proxy";
pub const PROXY_CONFIG: &str = "deploy/proxy/haproxy.cfg";
/// The proxy's script that holds requests while no container is ready.
pub const PROXY_HOLD: &str = "deploy/proxy/hold.lua";
pub const DEFAULT_PROXY_IMAGE: &str = "logbook-proxy:2.6";
/// The proxy image's base, where DEBIAN_IMAGE names no other.
pub const DEFAULT_DEBIAN_IMAGE: &str = "debian:bookworm-slim";
/// The HTTPS front for a domain (docker-compose.tls.yml): its configuration, and its
/// public image where CADDY_IMAGE names no other.
pub const TLS_SERVICE: &str = "tls";
pub const TLS_CONFIG: &str = "deploy/proxy/Caddyfile";
pub const DEFAULT_TLS_IMAGE: &str = "caddy:2.11.7";
/// The app stack's compose file, and its project name.
pub const COMPOSE_FILE: &str = "docker-compose.yml";
pub const COMPOSE_PROJECT: &str = NAME;
/// HTTPS for a domain, layered on the app stack when LOGBOOK_DOMAIN is set.
pub const TLS_COMPOSE_FILE: &str = "docker-compose.tls.yml";
/// Continuous replication of the database, layered on the app stack when
/// LOGBOOK_REPLICA_URL is set.
pub const REPLICA_COMPOSE_FILE: &str = "docker-compose.replica.yml";
/// The replication sidecar's public image, where LITESTREAM_IMAGE names no other.
pub const DEFAULT_LITESTREAM_IMAGE: &str = "litestream/litestream:0.5.17";
/// Prometheus and Grafana, layered on the app stack.
pub const MONITORING_COMPOSE_FILE: &str = "docker-compose.monitoring.yml";
/// The most the runtime image may weigh, in MB (checked by `cargo xtask audit-image`).
pub const IMAGE_SIZE_BUDGET_MB: u64 = 16;

/// An image reference from a tag: `abc` is `logbook:abc`; a full reference stays as it is.
pub fn image_name(tag: &str) -> String {
    if tag.contains(':') { tag.to_owned() } else { format!("{NAME}:{tag}") }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bare_tags_get_the_repository() {
        assert_eq!(super::image_name("abc"), "logbook:abc");
        assert_eq!(super::image_name("registry.example/logbook:abc"), "registry.example/logbook:abc");
    }
}
