//! Facts about this build, set at compile time by the image build (and `cargo xtask build`).

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = match option_env!("LOGBOOK_GIT_REVISION") {
    Some(revision) => revision,
    None => "unknown",
};
pub const BUILD_TIME: &str = match option_env!("LOGBOOK_BUILD_TIME") {
    Some(time) => time,
    None => "unknown",
};
