//! Milliseconds for measuring work as it runs: the tuning loops' step times and the filter's
//! device measurement at load. `std::time::Instant` does not exist on wasm32, where the
//! browser's clock is read instead.

/// Milliseconds from an arbitrary origin (fixed for the process).
pub fn now_ms() -> f64 {
    #[cfg(target_arch = "wasm32")]
    return js_sys::Date::now();
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
        ORIGIN
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs_f64()
            * 1000.0
    }
}
