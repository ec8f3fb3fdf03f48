//! The cut of a backfill: the moment from which every update of the
//! subtree that the source replica Y will not have reaches the new monitor
//! M directly.
//!
//! Two conditions, checked in turn, within one deadline of
//! [`CUT_WAIT_MAX`]:
//!
//! 1. M's own forwarder toward Y has passed the log position M had when it
//!    took the new interest (its next seq toward Y is above it).
//! 2. Each other peer O that is not down answers `GET /v1/peer/cut` first
//!    with a version of M's interests at least M's version once condition 1
//!    held (O has M's interest) and its log's last seq s_O, then, on a later
//!    answer, with a forwarding cursor toward Y past s_O. Every update O
//!    published before it had M's interest has then reached Y. A peer that
//!    refuses the connection is passed over: it is not running, and it
//!    forwards to M from its own cursor when it is back.
//!
//! [`Cut`] decides from what the driver polls; the driver owns the polling
//! (every [`cut_poll`]) and the requests.

use std::time::Duration;

use super::rules::{PeerView, Reach};
use super::CUT_WAIT_MAX;

/// How often a backfill polls for its cut: a tenth of the supervisor's
/// interval, within 10 ms to 200 ms.
pub fn cut_poll(interval: Duration) -> Duration {
    (interval / 10).clamp(Duration::from_millis(10), Duration::from_millis(200))
}

/// One peer's answer to a cut request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CutReply {
    /// The peer answered: the version of M's interests it holds, its log's
    /// last seq and its forwarder's next seq toward the source (`None`
    /// where the answer lacks a number).
    Answer {
        /// The version of M's interests the peer holds (0: none).
        interests_version: u64,
        /// The peer's last seq.
        seq: Option<u64>,
        /// The peer's forwarder's next seq toward the source.
        cursor: Option<u64>,
    },
    /// The connection was refused: the peer is passed over.
    Unreachable,
    /// A timeout or another transport error: ask again.
    Retry,
    /// The peer answered with an error status (its text, as `409 Conflict`).
    Status(String),
    /// The answer could not be read (the reader's message).
    Undecodable(String),
}

/// Where a cut stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CutProgress {
    /// Poll this site's forwarder toward the source: [`Cut::own_cursor`].
    Own,
    /// This site's forwarder passed: give this site's interests version and
    /// its peers, [`Cut::peers`].
    NeedPeers,
    /// Ask these peers (in this order) and give each answer to
    /// [`Cut::reply`].
    Ask(Vec<String>),
    /// Every update the source will not have reaches this site directly.
    Passed,
    /// The cut was not reached: why.
    Failed(String),
}

#[derive(Debug)]
enum Stage {
    Own,
    NeedPeers,
    Peers { version: u64, peers: Vec<PeerCut> },
    Failed(String),
}

#[derive(Debug)]
struct PeerCut {
    name: String,
    /// The peer's last seq once it held M's interest.
    at: Option<u64>,
    done: Option<Result<(), String>>,
}

/// A backfill's wait for its cut.
#[derive(Debug)]
pub struct Cut {
    source: String,
    own_seq: u64,
    deadline: Duration,
    stage: Stage,
}

impl Cut {
    /// A wait for the cut toward `source` beginning at `now`, when this
    /// site's log ends at `own_seq`.
    pub fn new(source: &str, own_seq: u64, now: Duration) -> Cut {
        Cut { source: source.to_string(), own_seq, deadline: now + CUT_WAIT_MAX, stage: Stage::Own }
    }

    /// This site's forwarder's next seq toward the source, read at `now`
    /// (`None`: it has none).
    pub fn own_cursor(&mut self, now: Duration, cursor: Option<u64>) {
        if !matches!(self.stage, Stage::Own) {
            return;
        }
        if cursor.is_some_and(|c| c > self.own_seq) {
            self.stage = Stage::NeedPeers;
        } else if now > self.deadline {
            let message =
                format!("this site's forwarder toward {} did not pass seq {} in time", self.source, self.own_seq);
            self.stage = Stage::Failed(message);
        }
    }

    /// This site's interests version now, and its peers: those that are
    /// not down, other than the source and `me`, must reach the cut.
    /// Suspect peers count too: a slow peer's updates must not slip
    /// through.
    pub fn peers(&mut self, version: u64, me: &str, peers: &[PeerView]) {
        if !matches!(self.stage, Stage::NeedPeers) {
            return;
        }
        let peers = peers
            .iter()
            .filter(|p| p.name != self.source && p.name != me && p.reach != Reach::Down)
            .map(|p| PeerCut { name: p.name.clone(), at: None, done: None })
            .collect();
        self.stage = Stage::Peers { version, peers };
    }

    /// `peer`'s answer to its latest request.
    pub fn reply(&mut self, peer: &str, reply: CutReply) {
        let Stage::Peers { version, peers } = &mut self.stage else { return };
        let Some(p) = peers.iter_mut().find(|p| p.name == peer && p.done.is_none()) else { return };
        match reply {
            CutReply::Answer { interests_version, seq, cursor } => match p.at {
                None if interests_version >= *version => p.at = seq,
                Some(at) if cursor.is_some_and(|c| c > at) => p.done = Some(Ok(())),
                _ => {}
            },
            CutReply::Unreachable => p.done = Some(Ok(())),
            CutReply::Retry => {}
            CutReply::Status(status) => p.done = Some(Err(format!("{peer} answered the cut with {status}"))),
            CutReply::Undecodable(message) => p.done = Some(Err(message)),
        }
    }

    /// Where the cut stands at `now`. A peer still waited for past the
    /// deadline fails; a failure is final once every peer is settled, and
    /// names the first failed peer in the order given.
    pub fn progress(&mut self, now: Duration) -> CutProgress {
        let past = now > self.deadline;
        match &mut self.stage {
            Stage::Own if past => {
                let message =
                    format!("this site's forwarder toward {} did not pass seq {} in time", self.source, self.own_seq);
                self.stage = Stage::Failed(message.clone());
                CutProgress::Failed(message)
            }
            Stage::Own => CutProgress::Own,
            Stage::NeedPeers => CutProgress::NeedPeers,
            Stage::Failed(message) => CutProgress::Failed(message.clone()),
            Stage::Peers { peers, .. } => {
                for p in peers.iter_mut().filter(|p| p.done.is_none() && past) {
                    p.done = Some(Err(format!(
                        "{}'s forwarder toward {} did not reach the cut in time",
                        p.name, self.source
                    )));
                }
                let asking: Vec<String> = peers.iter().filter(|p| p.done.is_none()).map(|p| p.name.clone()).collect();
                if !asking.is_empty() {
                    return CutProgress::Ask(asking);
                }
                match peers.iter().find_map(|p| p.done.clone().and_then(Result::err)) {
                    Some(message) => CutProgress::Failed(message),
                    None => CutProgress::Passed,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(100);

    fn peer(name: &str, reach: Reach) -> PeerView {
        PeerView { name: name.into(), region: None, reach, rtt_ms: Some(1.0) }
    }

    fn answer(interests_version: u64, seq: u64, cursor: u64) -> CutReply {
        CutReply::Answer { interests_version, seq: Some(seq), cursor: Some(cursor) }
    }

    #[test]
    fn the_own_forwarder_must_pass_the_seq_the_wait_began_at() {
        let mut cut = Cut::new("y", 50, T0);
        cut.own_cursor(T0, None);
        cut.own_cursor(T0, Some(50));
        assert_eq!(cut.progress(T0), CutProgress::Own);
        // At the deadline exactly it still waits; a moment after it fails.
        let deadline = T0 + CUT_WAIT_MAX;
        cut.own_cursor(deadline, Some(50));
        assert_eq!(cut.progress(deadline), CutProgress::Own);
        let late = deadline + Duration::from_nanos(1);
        assert_eq!(
            cut.progress(late),
            CutProgress::Failed("this site's forwarder toward y did not pass seq 50 in time".into())
        );
        // Passing late, but with the cursor read first, still passes.
        let mut cut = Cut::new("y", 50, T0);
        cut.own_cursor(late, Some(51));
        assert_eq!(cut.progress(late), CutProgress::NeedPeers);
    }

    #[test]
    fn each_peer_first_holds_the_interest_then_its_forwarder_passes_its_seq() {
        let mut cut = Cut::new("y", 50, T0);
        cut.own_cursor(T0, Some(51));
        let peers = [
            peer("a", Reach::Up),
            peer("me", Reach::Up),
            peer("s", Reach::Suspect),
            peer("d", Reach::Down),
            peer("y", Reach::Up),
        ];
        cut.peers(7, "me", &peers);
        assert_eq!(
            cut.progress(T0),
            CutProgress::Ask(vec!["a".into(), "s".into()]),
            "not down, not the source, not me"
        );
        // a: an old version of the interests does not count.
        cut.reply("a", answer(6, 900, 901));
        cut.reply("a", answer(7, 900, 950));
        assert_eq!(cut.progress(T0), CutProgress::Ask(vec!["a".into(), "s".into()]), "one answer sets the seq only");
        cut.reply("a", answer(9, 990, 900));
        cut.reply("a", answer(9, 990, 901));
        // s refused the connection: passed over.
        cut.reply("s", CutReply::Retry);
        assert_eq!(cut.progress(T0), CutProgress::Ask(vec!["s".into()]));
        cut.reply("s", CutReply::Unreachable);
        assert_eq!(cut.progress(T0), CutProgress::Passed);
    }

    #[test]
    fn a_failure_waits_for_every_peer_and_names_the_first() {
        let mut cut = Cut::new("y", 0, T0);
        cut.own_cursor(T0, Some(1));
        cut.peers(1, "me", &[peer("a", Reach::Up), peer("b", Reach::Up), peer("c", Reach::Up)]);
        cut.reply("b", CutReply::Status("409 Conflict".into()));
        cut.reply("c", answer(1, 5, 0));
        assert_eq!(cut.progress(T0), CutProgress::Ask(vec!["a".into(), "c".into()]));
        cut.reply("a", CutReply::Undecodable("expected value at line 1".into()));
        let deadline = T0 + CUT_WAIT_MAX;
        assert_eq!(cut.progress(deadline), CutProgress::Ask(vec!["c".into()]));
        assert_eq!(
            cut.progress(deadline + Duration::from_millis(1)),
            CutProgress::Failed("expected value at line 1".into())
        );
        let mut cut = Cut::new("y", 0, T0);
        cut.own_cursor(T0, Some(1));
        cut.peers(1, "me", &[peer("a", Reach::Up), peer("b", Reach::Up)]);
        cut.reply("a", CutReply::Unreachable);
        cut.reply("b", CutReply::Status("500 Internal Server Error".into()));
        assert_eq!(cut.progress(T0), CutProgress::Failed("b answered the cut with 500 Internal Server Error".into()));
        let mut cut = Cut::new("y", 0, T0);
        cut.own_cursor(T0, Some(1));
        cut.peers(1, "me", &[peer("slow", Reach::Suspect)]);
        assert_eq!(
            cut.progress(deadline + Duration::from_millis(1)),
            CutProgress::Failed("slow's forwarder toward y did not reach the cut in time".into())
        );
        // With no other peer the cut holds once this site's forwarder passed.
        let mut cut = Cut::new("y", 0, T0);
        cut.own_cursor(T0, Some(1));
        cut.peers(1, "me", &[peer("y", Reach::Up)]);
        assert_eq!(cut.progress(T0), CutProgress::Passed);
    }

    #[test]
    fn polls_are_a_tenth_of_the_interval_within_bounds() {
        assert_eq!(cut_poll(Duration::from_secs(1)), Duration::from_millis(100));
        assert_eq!(cut_poll(Duration::from_millis(20)), Duration::from_millis(10));
        assert_eq!(cut_poll(Duration::from_secs(60)), Duration::from_millis(200));
    }
}
