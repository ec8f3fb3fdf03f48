//! What a supervisor hears: a monitor announcement ([`Heard`]), its kind
//! (a heartbeat or a state change) and the monitor's state as announced.
//! The machine and its record of what was seen both read these.

/// A monitor's state, as announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorStatus {
    /// Started, copying its history from a replica.
    Importing,
    /// Recording every update of its subtree.
    Complete,
    /// Stopped; its rows are gone.
    Stopped,
    /// A state this version does not know; it counts as live, not complete.
    Other(String),
}

impl MonitorStatus {
    /// Reads a state name (`importing`, `complete`, `stopped`).
    pub fn parse(name: &str) -> MonitorStatus {
        match name {
            "importing" => MonitorStatus::Importing,
            "complete" => MonitorStatus::Complete,
            "stopped" => MonitorStatus::Stopped,
            other => MonitorStatus::Other(other.to_string()),
        }
    }

    /// The state's name in announcements and the API.
    pub fn name(&self) -> &str {
        match self {
            MonitorStatus::Importing => "importing",
            MonitorStatus::Complete => "complete",
            MonitorStatus::Stopped => "stopped",
            MonitorStatus::Other(name) => name,
        }
    }
}

/// Which monitor event an announcement is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnounceKind {
    /// Every interval, per running monitor (`pepper.monitor`).
    Heartbeat,
    /// A monitor started, importing (`pepper.monitor.start`).
    Start,
    /// A backfill reached its cut and copies from a source
    /// (`pepper.monitor.backfill`).
    Backfill,
    /// A backfill completed (`pepper.monitor.complete`).
    Complete,
    /// A monitor stopped (`pepper.monitor.stop`).
    Stop,
    /// A backfill failed and its monitor stopped (`pepper.monitor.failed`).
    Failed,
}

impl AnnounceKind {
    const ALL: [AnnounceKind; 6] = [
        AnnounceKind::Heartbeat,
        AnnounceKind::Start,
        AnnounceKind::Backfill,
        AnnounceKind::Complete,
        AnnounceKind::Stop,
        AnnounceKind::Failed,
    ];

    /// The event type this announcement is published as.
    pub fn event_type(self) -> &'static str {
        match self {
            AnnounceKind::Heartbeat => "pepper.monitor",
            AnnounceKind::Start => "pepper.monitor.start",
            AnnounceKind::Backfill => "pepper.monitor.backfill",
            AnnounceKind::Complete => "pepper.monitor.complete",
            AnnounceKind::Stop => "pepper.monitor.stop",
            AnnounceKind::Failed => "pepper.monitor.failed",
        }
    }

    /// The kind of an event type; `None` for any other type.
    pub fn parse(event_type: &str) -> Option<AnnounceKind> {
        AnnounceKind::ALL.into_iter().find(|k| k.event_type() == event_type)
    }
}

/// An announcement this site heard, its own included, as read from its log.
#[derive(Clone, Debug, PartialEq)]
pub struct Heard {
    /// Which event it was; `None` for an event type of no known kind, which
    /// counts like a heartbeat.
    pub kind: Option<AnnounceKind>,
    /// The site running the monitor.
    pub site: String,
    /// Its region.
    pub region: Option<String>,
    /// The recording pattern.
    pub pattern: String,
    /// The monitor's state.
    pub status: MonitorStatus,
    /// When the monitor reached its state, microseconds since the Unix epoch.
    pub since_us: u64,
    /// Monitors the site runs.
    pub monitors: usize,
}

impl Heard {
    /// Whether it says the monitor is gone: a stop or a failure, or any
    /// event in the stopped state.
    pub fn ends(&self) -> bool {
        matches!(self.kind, Some(AnnounceKind::Stop | AnnounceKind::Failed)) || self.status == MonitorStatus::Stopped
    }
}
