//! Ctrl-C and SIGTERM: the first becomes an error at the next wait, so cleanup runs; a
//! second exits at once.

/// Set by SIGINT or SIGTERM, so long waits stop and RAII guards get to clean up.
static INTERRUPTED: std::sync::LazyLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::LazyLock::new(Default::default);

/// Turns the first Ctrl-C (or SIGTERM) into an error at the next wait, so cleanup runs;
/// a second one exits at once.
pub fn install_interrupt_handler() {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 130, INTERRUPTED.clone());
        let _ = signal_hook::flag::register(signal, INTERRUPTED.clone());
    }
}

/// Forgets an interrupt that has been handled (say, by starting a restore), so the
/// restore's own waits can run; a further Ctrl-C interrupts those.
pub fn clear_interrupt() {
    INTERRUPTED.store(false, std::sync::atomic::Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}
