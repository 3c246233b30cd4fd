//! Shared state of the service: the predictor, the limits, and the semaphores and gate that
//! hold processing slots and the in-flight pixel budget.

use std::sync::Arc;

use allscan::infer::Predictor;
use tokio::sync::{OwnedRwLockWriteGuard, OwnedSemaphorePermit, RwLock, Semaphore};

use crate::ServerConfig;

/// Shared state of the service.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) predictor: Predictor,
    pub(crate) model_info: serde_json::Value,
    pub(crate) config: ServerConfig,
    pub(crate) permits: Arc<Semaphore>,
    /// The process-wide pixel budget, in units of [`PIXEL_UNIT`] pixels (tokio semaphores
    /// count in `u32` per acquisition, too few for pixels).
    pub(crate) pixel_units: Arc<Semaphore>,
    /// Passed (read, at once released) by every request's blocking work before it starts;
    /// held for writing only by [`AppState::pause_processing`].
    pub(crate) gate: Arc<RwLock<()>>,
}

/// Pixels per permit of the in-flight pixel budget.
const PIXEL_UNIT: u64 = 1024;

pub(crate) fn pixel_units(pixels: u64) -> u64 {
    pixels.div_ceil(PIXEL_UNIT)
}

impl AppState {
    /// State for [`app`](crate::app): the predictor, the JSON `GET /api/model` returns, and the limits.
    pub fn new(predictor: Predictor, model_info: serde_json::Value, config: ServerConfig) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        let units =
            usize::try_from(pixel_units(config.max_inflight_pixels)).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        let pixel_units = Arc::new(Semaphore::new(units));
        let gate = Arc::new(RwLock::new(()));
        Self { inner: Arc::new(Inner { predictor, model_info, config, permits, pixel_units, gate }) }
    }

    /// Takes one processing slot, if free, and holds it until the permit is dropped: for
    /// maintenance and for testing the back-pressure path.
    pub fn hold_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.inner.permits.clone().try_acquire_owned().ok()
    }

    /// Takes `pixels` of the in-flight pixel budget, if free, until the permit is dropped: for
    /// testing the memory back-pressure path.
    pub fn hold_pixels(&self, pixels: u64) -> Option<OwnedSemaphorePermit> {
        let units = u32::try_from(pixel_units(pixels)).ok()?;
        self.inner.pixel_units.clone().try_acquire_many_owned(units).ok()
    }

    /// Makes every request's decoding and prediction wait, once its slot and pixel share are
    /// taken, until the guard is dropped (`None` if already paused): for testing the timeout
    /// path deterministically. Work whose request timed out meanwhile stops at once when
    /// released.
    pub fn pause_processing(&self) -> Option<OwnedRwLockWriteGuard<()>> {
        self.inner.gate.clone().try_write_owned().ok()
    }

    /// Processing slots free now (for tests and monitoring).
    pub fn free_slots(&self) -> usize {
        self.inner.permits.available_permits()
    }

    /// The limits in force.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }
}
