//! Notifications to the service manager (systemd, `Type=notify`): `READY=1` once the
//! broker serves, `STOPPING=1` when it begins to shut down, and `WATCHDOG=1` pings while
//! its engine answers. Without `NOTIFY_SOCKET` (not started by systemd) each is a no-op.

use std::time::Duration;

use actix::prelude::*;
use sd_notify::NotifyState;
use switchboard_actors::router::{GetStats, Router};

fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        log::warn!("cannot notify the service manager: {e}");
    }
}

/// The broker serves.
pub fn ready() {
    notify(NotifyState::Ready);
}

/// The broker is shutting down.
pub fn stopping() {
    notify(NotifyState::Stopping);
}

/// The watchdog period systemd asks for: `WATCHDOG_USEC`, unless `WATCHDOG_PID` names
/// another process (as sd_watchdog_enabled(3) reads them).
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// With a watchdog configured (`WatchdogSec=`), pings it twice per period while the
/// router, through which every message passes, answers within a quarter period; a hung
/// engine stops the pings and the service manager restarts the broker.
pub fn start_watchdog(router: Addr<Router>) {
    let Some(period) = watchdog_period() else {
        return;
    };
    log::info!("service manager watchdog every {period:?}");
    actix_web::rt::spawn(async move {
        let mut every = tokio::time::interval(period / 2);
        loop {
            every.tick().await;
            match tokio::time::timeout(period / 4, router.send(GetStats)).await {
                Ok(Ok(_)) => notify(NotifyState::Watchdog),
                _ => log::warn!("the router did not answer: watchdog not pinged"),
            }
        }
    });
}
