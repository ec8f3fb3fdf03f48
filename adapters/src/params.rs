//! Query parameters shared by the paged and ranged reads of the API:
//! page sizes, and history bounds given as a sequence number or a time.

use crate::error::ApiError;

/// A bound of a history range: a sequence number or a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bound {
    Seq(u64),
    TimeUs(u64),
}

pub(crate) fn parse_bound(what: &str, s: &str) -> Result<Bound, ApiError> {
    if let Ok(seq) = s.parse::<u64>() {
        return Ok(Bound::Seq(seq));
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|_| {
        ApiError::invalid_query(format!("{what} {s:?} is neither a sequence number nor an RFC 3339 time"))
    })?;
    let us = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros().min(u128::from(u64::MAX)) as u64);
    Ok(Bound::TimeUs(us))
}

/// A history range's two ends, each a sequence number or a time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    since: Option<Bound>,
    until: Option<Bound>,
}

impl Bounds {
    /// Parses `since` and `until` query values.
    pub(crate) fn parse(since: Option<&str>, until: Option<&str>) -> Result<Bounds, ApiError> {
        Ok(Bounds {
            since: since.map(|s| parse_bound("since", s)).transpose()?,
            until: until.map(|s| parse_bound("until", s)).transpose()?,
        })
    }

    /// The sequence range the ends allow (everything, for time ends).
    pub(crate) fn seqs(self) -> (u64, u64) {
        let from = match self.since {
            Some(Bound::Seq(s)) => s,
            _ => 0,
        };
        let to = match self.until {
            Some(Bound::Seq(s)) => s,
            _ => u64::MAX,
        };
        (from, to)
    }

    /// Whether the ends admit a row written at `time_us`.
    pub(crate) fn admits_time(self, time_us: u64) -> bool {
        !matches!(self.since, Some(Bound::TimeUs(t)) if time_us < t)
            && !matches!(self.until, Some(Bound::TimeUs(t)) if time_us > t)
    }
}

/// Checks a page size: 1 to `max`, 100 when not given.
pub(crate) fn page_limit(limit: Option<usize>, max: usize) -> Result<usize, String> {
    match limit.unwrap_or(100) {
        n @ 1.. if n <= max => Ok(n),
        _ => Err(format!("limit must be 1 to {max}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_sequence_numbers_or_times() {
        assert_eq!(parse_bound("since", "42").ok(), Some(Bound::Seq(42)));
        assert_eq!(parse_bound("since", "2026-11-27T12:00:00Z").ok(), Some(Bound::TimeUs(1_795_780_800_000_000)));
        assert!(parse_bound("since", "yesterday").is_err());
    }

    #[test]
    fn page_limits_default_to_100_and_stay_in_range() {
        assert_eq!(page_limit(None, 1000), Ok(100));
        assert_eq!(page_limit(Some(1000), 1000), Ok(1000));
        assert!(page_limit(Some(0), 1000).is_err());
        assert!(page_limit(Some(1001), 1000).expect_err("over the max").contains("1 to 1000"));
    }
}
