//! Olson timezones (`"America/New_York"`, `"Europe/Paris"`) for the date operators, read from
//! the system's zoneinfo database: no timezone data is compiled in, so no dependency is added.
//!
//! A zone is the TZif file `$TZDIR/NAME` (default `/usr/share/zoneinfo/NAME`, the `tzdata`
//! package): its version 2+ transitions (64-bit times) give the offset up to the last
//! transition, and its footer's POSIX TZ rule (`EST5EDT,M3.2.0,M11.1.0`) after it. A zone that
//! cannot be found or read is a [`TzError`] naming it, never a silent UTC. Parsed zones are
//! cached per process.
//!
//! ```
//! use changeflow_operators::mql::tz::Zone;
//! # if changeflow_operators::mql::tz::zoneinfo_dir().join("America/New_York").exists() {
//! let ny = Zone::named("America/New_York").unwrap();
//! // 2024-03-10 06:59:59Z is 01:59:59 EST; one second later it is 03:00:00 EDT.
//! assert_eq!(ny.offset_at(1_710_053_999_000), -5 * 3_600_000);
//! assert_eq!(ny.offset_at(1_710_054_000_000), -4 * 3_600_000);
//! # }
//! assert!(Zone::named("Nowhere/Atlantis").is_err());
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use changeflow_core::calendar::days_from_civil;

/// Why a timezone name could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TzError {
    /// No zone of that name in the zoneinfo directory.
    #[error(
        "unrecognized time zone identifier: \"{zone}\" (no such zone in {dir}; install tzdata or set TZDIR)"
    )]
    NotFound {
        /// The name as written.
        zone: String,
        /// Where it was looked for.
        dir: String,
    },
    /// The zone's file is not a TZif file changeflow can read.
    #[error("time zone \"{zone}\": {reason}")]
    Invalid {
        /// The name as written.
        zone: String,
        /// What is wrong.
        reason: String,
    },
}

/// The zoneinfo directory: `$TZDIR`, else `/usr/share/zoneinfo`.
pub fn zoneinfo_dir() -> PathBuf {
    std::env::var_os("TZDIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/usr/share/zoneinfo"), PathBuf::from)
}

/// A timezone: a fixed offset, or an Olson zone's rules.
#[derive(Clone, Debug, PartialEq)]
pub enum Zone {
    /// A fixed offset from UTC in milliseconds (UTC, `"+05:30"`, …).
    Fixed(i64),
    /// An Olson zone.
    Olson(Arc<TzInfo>),
}

/// An Olson zone: transitions and the rule after the last one.
#[derive(Debug, PartialEq)]
pub struct TzInfo {
    /// Transition instants (seconds since the epoch, ascending) and the offset (seconds east
    /// of UTC) from each on.
    transitions: Vec<(i64, i64)>,
    /// The offset before the first transition.
    initial: i64,
    /// The footer rule for instants after the last transition.
    rule: Option<PosixRule>,
}

/// A POSIX TZ rule: standard offset, and optionally daylight time between two dates a year.
#[derive(Debug, Clone, PartialEq)]
struct PosixRule {
    std: i64,
    dst: Option<(i64, RuleDate, i64, RuleDate, i64)>,
}

/// When in a year a rule switches.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RuleDate {
    /// `Mm.w.d`: day `d` (0 = Sunday) of week `w` (5 = last) of month `m`.
    Month(u32, u32, u32),
    /// `Jn`: day 1..=365, February 29 never counted.
    Julian1(u32),
    /// `n`: day 0..=365, counting February 29.
    Julian0(u32),
}

impl Zone {
    /// The zone named `name` (see the module docs), cached.
    pub fn named(name: &str) -> Result<Zone, TzError> {
        type Loaded = Result<Arc<TzInfo>, TzError>;
        static CACHE: OnceLock<Mutex<HashMap<String, Loaded>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Mutex::default);
        if let Ok(cache) = cache.lock()
            && let Some(found) = cache.get(name)
        {
            return found.clone().map(Zone::Olson);
        }
        let loaded = load(name).map(Arc::new);
        if let Ok(mut cache) = cache.lock() {
            cache.insert(name.to_string(), loaded.clone());
        }
        loaded.map(Zone::Olson)
    }

    /// The offset from UTC (milliseconds) at the UTC instant `utc_ms`.
    pub fn offset_at(&self, utc_ms: i64) -> i64 {
        match self {
            Zone::Fixed(ms) => *ms,
            Zone::Olson(info) => info.offset_at(utc_ms.div_euclid(1000)) * 1000,
        }
    }

    /// The UTC instant of local wall time `local_ms`. In a gap (spring forward) the time is
    /// read with the offset before the gap; in an overlap (fall back) the earlier instant wins.
    pub fn local_to_utc(&self, local_ms: i64) -> i64 {
        match self {
            Zone::Fixed(ms) => local_ms - ms,
            Zone::Olson(_) => {
                let before = self.offset_at(local_ms - self.offset_at(local_ms) - 86_400_000);
                let after = self.offset_at(local_ms - self.offset_at(local_ms) + 86_400_000);
                // Try the earlier offset's reading first (the earlier instant in an overlap).
                let (first, second) = if before >= after {
                    (before, after)
                } else {
                    (after, before)
                };
                for offset in [first, second] {
                    let utc = local_ms - offset;
                    if self.offset_at(utc) == offset {
                        return utc;
                    }
                }
                local_ms - before
            }
        }
    }
}

impl TzInfo {
    fn offset_at(&self, t: i64) -> i64 {
        match self.transitions.partition_point(|(at, _)| *at <= t) {
            0 => self.initial,
            n if n == self.transitions.len() => match &self.rule {
                Some(rule) => rule.offset_at(t),
                None => self.transitions[n - 1].1,
            },
            n => self.transitions[n - 1].1,
        }
    }
}

fn load(name: &str) -> Result<TzInfo, TzError> {
    let dir = zoneinfo_dir();
    let not_found = || TzError::NotFound {
        zone: name.into(),
        dir: dir.display().to_string(),
    };
    // Zone names are relative paths of letters, digits, '_', '-', '+' and '/'.
    let valid = !name.is_empty()
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-+/".contains(c));
    if !valid {
        return Err(not_found());
    }
    let bytes = std::fs::read(dir.join(name)).map_err(|_| not_found())?;
    parse_tzif(&bytes).map_err(|reason| TzError::Invalid {
        zone: name.into(),
        reason,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or("truncated TZif file")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u32(&mut self) -> Result<usize, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
}

struct Header {
    version: u8,
    isut: usize,
    isstd: usize,
    leap: usize,
    time: usize,
    types: usize,
    chars: usize,
}

fn header(r: &mut Reader) -> Result<Header, String> {
    if r.take(4)? != b"TZif" {
        return Err("not a TZif file".into());
    }
    let version = r.take(1)?[0];
    r.take(15)?;
    Ok(Header {
        version,
        isut: r.u32()?,
        isstd: r.u32()?,
        leap: r.u32()?,
        time: r.u32()?,
        types: r.u32()?,
        chars: r.u32()?,
    })
}

/// Parses a TZif file (RFC 8536), using the version 2+ block and footer when present.
fn parse_tzif(bytes: &[u8]) -> Result<TzInfo, String> {
    let mut r = Reader { bytes, at: 0 };
    let mut h = header(&mut r)?;
    let mut time_size = 4;
    if h.version >= b'2' {
        // Skip the 32-bit block: the 64-bit one follows with its own header.
        r.take(h.time * 5 + h.types * 6 + h.chars + h.leap * 8 + h.isstd + h.isut)?;
        h = header(&mut r)?;
        time_size = 8;
    }
    let mut times = Vec::with_capacity(h.time);
    for _ in 0..h.time {
        let b = r.take(time_size)?;
        times.push(if time_size == 8 {
            i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        } else {
            i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        });
    }
    let indices = r.take(h.time)?.to_vec();
    let mut offsets = Vec::with_capacity(h.types);
    for _ in 0..h.types {
        let b = r.take(6)?;
        offsets.push(i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])));
    }
    if offsets.is_empty() {
        return Err("no local time types".into());
    }
    r.take(h.chars + h.leap * (time_size + 4) + h.isstd + h.isut)?;
    let transitions = times
        .into_iter()
        .zip(indices)
        .map(|(t, i)| {
            offsets
                .get(usize::from(i))
                .map(|o| (t, *o))
                .ok_or_else(|| "a transition to an unknown type".to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rule = if h.version >= b'2' {
        let rest = &bytes[r.at..];
        let footer = std::str::from_utf8(rest)
            .ok()
            .and_then(|s| s.strip_prefix('\n'))
            .and_then(|s| s.split('\n').next())
            .unwrap_or("");
        if footer.is_empty() {
            None
        } else {
            Some(parse_posix(footer).ok_or_else(|| format!("unreadable TZ rule {footer:?}"))?)
        }
    } else {
        None
    };
    Ok(TzInfo {
        transitions,
        initial: offsets[0],
        rule,
    })
}

/// Parses a POSIX TZ string such as `CET-1CEST,M3.5.0,M10.5.0/3` or `<+0330>-3:30`.
fn parse_posix(s: &str) -> Option<PosixRule> {
    let mut p = Posix { s, at: 0 };
    p.name()?;
    // POSIX offsets are west of UTC: negate.
    let std = -p.offset()?;
    if p.done() {
        return Some(PosixRule { std, dst: None });
    }
    p.name()?;
    let dst = if p.peek() == Some(',') {
        std + 3600
    } else {
        -p.offset()?
    };
    p.eat(',')?;
    let start = p.date()?;
    let start_time = if p.peek() == Some('/') {
        p.eat('/')?;
        p.offset()?
    } else {
        7200
    };
    p.eat(',')?;
    let end = p.date()?;
    let end_time = if p.peek() == Some('/') {
        p.eat('/')?;
        p.offset()?
    } else {
        7200
    };
    p.done().then_some(PosixRule {
        std,
        dst: Some((dst, start, start_time, end, end_time)),
    })
}

struct Posix<'a> {
    s: &'a str,
    at: usize,
}

impl Posix<'_> {
    fn peek(&self) -> Option<char> {
        self.s[self.at..].chars().next()
    }
    fn done(&self) -> bool {
        self.at >= self.s.len()
    }
    fn eat(&mut self, c: char) -> Option<()> {
        (self.peek()? == c).then(|| self.at += c.len_utf8())
    }
    fn name(&mut self) -> Option<()> {
        if self.peek()? == '<' {
            let end = self.s[self.at..].find('>')?;
            self.at += end + 1;
        } else {
            let n = self.s[self.at..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .count();
            if n < 3 {
                return None;
            }
            self.at += n;
        }
        Some(())
    }
    fn number(&mut self) -> Option<i64> {
        let n = self.s[self.at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .count();
        let v = self.s[self.at..self.at + n].parse().ok()?;
        self.at += n;
        Some(v)
    }
    /// `[+-]hh[:mm[:ss]]` in seconds (as written, POSIX sign).
    fn offset(&mut self) -> Option<i64> {
        let sign = match self.peek()? {
            '-' => {
                self.at += 1;
                -1
            }
            '+' => {
                self.at += 1;
                1
            }
            _ => 1,
        };
        let mut v = self.number()? * 3600;
        for scale in [60, 1] {
            if self.peek() == Some(':') {
                self.at += 1;
                v += self.number()? * scale;
            } else {
                break;
            }
        }
        Some(sign * v)
    }
    fn date(&mut self) -> Option<RuleDate> {
        match self.peek()? {
            'M' => {
                self.at += 1;
                let m = self.number()?;
                self.eat('.')?;
                let w = self.number()?;
                self.eat('.')?;
                let d = self.number()?;
                ((1..=12).contains(&m) && (1..=5).contains(&w) && d <= 6)
                    .then_some(RuleDate::Month(m as u32, w as u32, d as u32))
            }
            'J' => {
                self.at += 1;
                let n = self.number()?;
                (1..=365)
                    .contains(&n)
                    .then_some(RuleDate::Julian1(n as u32))
            }
            _ => {
                let n = self.number()?;
                (n <= 365).then_some(RuleDate::Julian0(n as u32))
            }
        }
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

impl RuleDate {
    /// The day (days since the epoch) this rule names in `year`.
    fn day(self, year: i64) -> i64 {
        match self {
            RuleDate::Month(m, w, d) => {
                let first = days_from_civil(year, m, 1);
                // 1970-01-01 was a Thursday (4).
                let weekday = (first + 4).rem_euclid(7);
                let mut day =
                    first + (i64::from(d) - weekday).rem_euclid(7) + 7 * (i64::from(w) - 1);
                let next_month = if m == 12 {
                    days_from_civil(year + 1, 1, 1)
                } else {
                    days_from_civil(year, m + 1, 1)
                };
                while day >= next_month {
                    day -= 7;
                }
                day
            }
            RuleDate::Julian1(n) => {
                let jan1 = days_from_civil(year, 1, 1);
                let n = i64::from(n);
                jan1 + n - 1 + i64::from(is_leap(year) && n >= 60)
            }
            RuleDate::Julian0(n) => days_from_civil(year, 1, 1) + i64::from(n),
        }
    }
}

impl PosixRule {
    fn offset_at(&self, t: i64) -> i64 {
        let Some((dst, start, start_time, end, end_time)) = self.dst else {
            return self.std;
        };
        let year = changeflow_core::calendar::civil_from_days((t + self.std).div_euclid(86_400)).0;
        // Start is given in standard local time, end in daylight local time.
        let begins = start.day(year) * 86_400 + start_time - self.std;
        let ends = end.day(year) * 86_400 + end_time - dst;
        let in_dst = if begins < ends {
            begins <= t && t < ends
        } else {
            !(ends <= t && t < begins)
        };
        if in_dst { dst } else { self.std }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_rules_switch_on_the_right_instants() {
        // US rules: second Sunday of March 02:00 EST, first Sunday of November 02:00 EDT.
        let us = parse_posix("EST5EDT,M3.2.0,M11.1.0").expect("rule");
        assert_eq!(us.offset_at(1_710_053_999), -5 * 3600); // 2024-03-10 06:59:59Z
        assert_eq!(us.offset_at(1_710_054_000), -4 * 3600);
        assert_eq!(us.offset_at(1_730_613_599), -4 * 3600); // 2024-11-03 05:59:59Z
        assert_eq!(us.offset_at(1_730_613_600), -5 * 3600);
        // EU rules: last Sunday of March 01:00Z, last Sunday of October 01:00Z.
        let eu = parse_posix("CET-1CEST,M3.5.0,M10.5.0/3").expect("rule");
        assert_eq!(eu.offset_at(1_711_846_799), 3600); // 2024-03-31 00:59:59Z
        assert_eq!(eu.offset_at(1_711_846_800), 7200);
        assert_eq!(eu.offset_at(1_729_990_799), 7200); // 2024-10-27 00:59:59Z
        assert_eq!(eu.offset_at(1_729_990_800), 3600);
        // Southern hemisphere (Sydney): daylight time spans the new year.
        let au = parse_posix("AEST-10AEDT,M10.1.0,M4.1.0/3").expect("rule");
        assert_eq!(au.offset_at(1_704_067_200), 11 * 3600); // 2024-01-01
        assert_eq!(au.offset_at(1_719_792_000), 10 * 3600); // 2024-07-01
        // Fixed, with angle-bracket names and minutes.
        assert_eq!(
            parse_posix("<+0330>-3:30").expect("rule").offset_at(0),
            12_600
        );
        assert!(parse_posix("EST5EDT,M13.1.0,M11.1.0").is_none());
    }

    #[test]
    fn names_that_are_not_zone_paths_are_not_found() {
        for name in ["../etc/passwd", "/etc/localtime", "America/../../x", ""] {
            assert!(matches!(Zone::named(name), Err(TzError::NotFound { .. })));
        }
    }

    #[test]
    fn a_truncated_file_is_invalid_not_a_panic() {
        assert!(parse_tzif(b"TZif2").is_err());
        assert!(parse_tzif(b"nope").is_err());
    }
}
