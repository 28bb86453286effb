//! Date expressions: `$year $month $dayOfMonth $dayOfWeek $dayOfYear $hour $minute $second
//! $millisecond $dateToString $dateTrunc $dateFromString`, in UTC or a fixed-offset timezone.
//!
//! Timezones: `"UTC"`, `"GMT"`, `"Z"`, fixed offsets (`"+05:30"`, `"-08"`, `"+0530"`) and Olson
//! names (`"Europe/Paris"`), read from the system's zoneinfo database ([`crate::mql::tz`]); a
//! zone that cannot be found is a runtime error naming it, never a silent UTC.
//!
//! ```
//! use bson::{bson, doc};
//! use changeflow_operators::mql::expr::Expr;
//! let d = doc! { "ts": bson::DateTime::from_millis(1_700_000_000_123) }; // 2023-11-14T22:13:20.123Z
//! let e = |v| Expr::parse(&v).unwrap().eval(&d).unwrap().unwrap();
//! assert_eq!(e(bson!({"$year": "$ts"})), bson!(2023));
//! assert_eq!(e(bson!({"$hour": {"date": "$ts", "timezone": "+05:30"}})), bson!(3));
//! assert_eq!(e(bson!({"$dateToString": {"date": "$ts", "format": "%Y-%m-%d %H:%M"}})), bson!("2023-11-14 22:13"));
//! ```

use bson::Bson;
use changeflow_core::calendar::{civil_from_days as civil, days_from_civil};

use crate::mql::expr::{EvalError, type_name};
use crate::mql::number::{Dec, Num};
use crate::mql::tz::Zone;

fn fail<T>(op: &str, reason: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError {
        operator: op.into(),
        reason: reason.into(),
    })
}

/// A timezone's offset from UTC in milliseconds (see the module docs).
pub fn offset_millis(tz: &str) -> Option<i64> {
    if matches!(tz, "UTC" | "GMT" | "Z" | "Etc/UTC" | "Etc/GMT") {
        return Some(0);
    }
    let (sign, rest) = match tz.as_bytes().first()? {
        b'+' => (1, &tz[1..]),
        b'-' => (-1, &tz[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (h, m) = match digits.len() {
        2 => (digits.parse::<i64>().ok()?, 0),
        4 => (
            digits[..2].parse::<i64>().ok()?,
            digits[2..].parse::<i64>().ok()?,
        ),
        _ => return None,
    };
    (h <= 23 && m <= 59).then_some(sign * (h * 3_600_000 + m * 60_000))
}

/// The parts of a local time.
struct Parts {
    year: i64,
    month: u32,
    day: u32,
    hour: i64,
    minute: i64,
    second: i64,
    milli: i64,
    days: i64,
}

fn parts(local_ms: i64) -> Parts {
    let days = local_ms.div_euclid(86_400_000);
    let ms = local_ms.rem_euclid(86_400_000);
    let (year, month, day) = civil(days);
    Parts {
        year,
        month,
        day,
        hour: ms / 3_600_000,
        minute: ms / 60_000 % 60,
        second: ms / 1000 % 60,
        milli: ms % 1000,
        days,
    }
}

/// Parses an ISO-8601 date (`2023-11-14`, `2023-11-14T22:13:20.123Z`, with an offset) or, with
/// `format`, a date in that format; `tz_ms` applies when the string has no offset.
pub fn parse_date(s: &str, format: Option<&str>, tz_ms: i64) -> Option<i64> {
    parse_date_in(s, format, &Zone::Fixed(tz_ms))
}

/// [`parse_date`] with `zone` for strings without an offset.
pub fn parse_date_in(s: &str, format: Option<&str>, zone: &Zone) -> Option<i64> {
    let s = s.trim();
    if let Some(format) = format {
        return parse_with_format(s, format, zone);
    }
    let (date, time) = match s.find(['T', ' ']) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    let mut ymd = date.split('-');
    let y: i64 = ymd.next()?.parse().ok()?;
    let m: u32 = ymd.next()?.parse().ok()?;
    let d: u32 = ymd.next().map_or(Some(1), |d| d.parse().ok())?;
    if ymd.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let (clock, offset) = match time.find(['Z', '+', '-']) {
        Some(i) => (&time[..i], Some(&time[i..])),
        None => (time, None),
    };
    let mut ms = 0i64;
    if !clock.is_empty() {
        let (hms, frac) = match clock.split_once('.') {
            Some((a, b)) => (a, b),
            None => (clock, ""),
        };
        let mut fields = hms.split(':');
        let h: i64 = fields.next()?.parse().ok()?;
        let mi: i64 = fields.next().map_or(Some(0), |v| v.parse().ok())?;
        let se: i64 = fields.next().map_or(Some(0), |v| v.parse().ok())?;
        let frac_ms: i64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<3}")[..3].parse().ok()?
        };
        ms = ((h * 60 + mi) * 60 + se) * 1000 + frac_ms;
    }
    let local = days_from_civil(y, m, d) * 86_400_000 + ms;
    Some(match offset {
        Some(o) => local - offset_millis(o)?,
        None => zone.local_to_utc(local),
    })
}

fn parse_with_format(s: &str, format: &str, zone: &Zone) -> Option<i64> {
    let (mut y, mut mo, mut d, mut h, mut mi, mut se, mut ms) =
        (1970i64, 1u32, 1u32, 0i64, 0i64, 0i64, 0i64);
    let mut offset: Option<i64> = None;
    let mut rest = s;
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            rest = rest.strip_prefix(c)?;
            continue;
        }
        let spec = chars.next()?;
        let width = match spec {
            'Y' => 4,
            'L' => 3,
            'z' => 5,
            _ => 2,
        };
        if spec == '%' {
            rest = rest.strip_prefix('%')?;
            continue;
        }
        let (field, tail) = rest.split_at(width.min(rest.len()));
        rest = tail;
        match spec {
            'Y' => y = field.parse().ok()?,
            'm' => mo = field.parse().ok()?,
            'd' => d = field.parse().ok()?,
            'H' => h = field.parse().ok()?,
            'M' => mi = field.parse().ok()?,
            'S' => se = field.parse().ok()?,
            'L' => ms = field.parse().ok()?,
            'z' => offset = Some(offset_millis(field)?),
            _ => return None,
        }
    }
    if !rest.is_empty() {
        return None;
    }
    let local = days_from_civil(y, mo, d) * 86_400_000 + ((h * 60 + mi) * 60 + se) * 1000 + ms;
    Some(match offset {
        Some(o) => local - o,
        None => zone.local_to_utc(local),
    })
}

fn format_date(local_ms: i64, offset_ms: i64, format: &str) -> Result<String, EvalError> {
    let p = parts(local_ms);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&format!("{:04}", p.year)),
            Some('m') => out.push_str(&format!("{:02}", p.month)),
            Some('d') => out.push_str(&format!("{:02}", p.day)),
            Some('H') => out.push_str(&format!("{:02}", p.hour)),
            Some('M') => out.push_str(&format!("{:02}", p.minute)),
            Some('S') => out.push_str(&format!("{:02}", p.second)),
            Some('L') => out.push_str(&format!("{:03}", p.milli)),
            Some('j') => out.push_str(&format!("{:03}", day_of_year(&p))),
            Some('w') => out.push_str(&format!("{}", day_of_week(p.days))),
            Some('u') => out.push_str(&format!("{}", (day_of_week(p.days) + 5) % 7 + 1)),
            Some('z') => {
                let m = offset_ms / 60_000;
                out.push_str(&format!(
                    "{}{:02}{:02}",
                    if m < 0 { '-' } else { '+' },
                    m.abs() / 60,
                    m.abs() % 60
                ));
            }
            Some('Z') => out.push_str(&(offset_ms / 60_000).to_string()),
            Some('%') => out.push('%'),
            other => {
                return fail(
                    "$dateToString",
                    format!("unsupported format specifier %{}", other.unwrap_or(' ')),
                );
            }
        }
    }
    Ok(out)
}

/// 1 (Sunday) to 7 (Saturday), as `$dayOfWeek`.
fn day_of_week(days: i64) -> i64 {
    (days + 4).rem_euclid(7) + 1
}

fn day_of_year(p: &Parts) -> i64 {
    p.days - days_from_civil(p.year, 1, 1) + 1
}

/// The value of a timezone argument: `Ok(None)` when it was given as null (the result is null).
fn timezone(op: &str, tz: &Option<Bson>) -> Result<Option<Zone>, EvalError> {
    match tz {
        None => Ok(Some(Zone::Fixed(0))),
        Some(Bson::Null) => Ok(None),
        Some(Bson::String(s)) => match offset_millis(s) {
            Some(ms) => Ok(Some(Zone::Fixed(ms))),
            None => match Zone::named(s) {
                Ok(zone) => Ok(Some(zone)),
                Err(e) => fail(op, e.to_string()),
            },
        },
        Some(other) => fail(
            op,
            format!(
                "timezone must be a string, not {}",
                type_name(&Some(other.clone()))
            ),
        ),
    }
}

fn date_millis(op: &str, v: &Option<Bson>) -> Result<Option<i64>, EvalError> {
    match v {
        None | Some(Bson::Null | Bson::Undefined) => Ok(None),
        Some(Bson::DateTime(d)) => Ok(Some(d.timestamp_millis())),
        Some(Bson::Timestamp(t)) => Ok(Some(i64::from(t.time) * 1000)),
        Some(Bson::ObjectId(o)) => {
            let b = o.bytes();
            Ok(Some(
                i64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])) * 1000,
            ))
        }
        Some(other) => fail(
            op,
            format!(
                "can't convert from BSON type {} to Date",
                type_name(&Some(other.clone()))
            ),
        ),
    }
}

/// Evaluates one of the date operators over its evaluated arguments (in the order the parser
/// gives them; see `Expr::parse`).
pub fn eval_date_op(op: &str, args: Vec<Option<Bson>>) -> Result<Option<Bson>, EvalError> {
    let arg = |i: usize| args.get(i).cloned().flatten();
    match op {
        "$dateFromString" => {
            let tz = match timezone(op, &arg(2))? {
                Some(t) => t,
                None => return Ok(Some(Bson::Null)),
            };
            let format = match arg(1) {
                Some(Bson::String(f)) => Some(f),
                None => None,
                Some(other) => {
                    return fail(
                        op,
                        format!("format must be a string, not {}", type_name(&Some(other))),
                    );
                }
            };
            match arg(0) {
                None | Some(Bson::Null) => Ok(Some(arg(4).unwrap_or(Bson::Null))),
                Some(Bson::String(s)) => match parse_date_in(&s, format.as_deref(), &tz) {
                    Some(ms) => Ok(Some(Bson::DateTime(bson::DateTime::from_millis(ms)))),
                    None => match args.get(3).cloned().flatten() {
                        Some(on_error) => Ok(Some(on_error)),
                        None => fail(op, format!("error parsing date string '{s}'")),
                    },
                },
                Some(other) => fail(
                    op,
                    format!(
                        "dateString must be a string, not {}",
                        type_name(&Some(other))
                    ),
                ),
            }
        }
        "$dateToString" => {
            let Some(ms) = date_millis(op, &arg(0))? else {
                return Ok(Some(arg(3).unwrap_or(Bson::Null)));
            };
            let Some(tz) = timezone(op, &arg(2))? else {
                return Ok(Some(Bson::Null));
            };
            let format = match arg(1) {
                Some(Bson::String(f)) => f,
                None => "%Y-%m-%dT%H:%M:%S.%LZ".into(),
                Some(other) => {
                    return fail(
                        op,
                        format!("format must be a string, not {}", type_name(&Some(other))),
                    );
                }
            };
            let offset = tz.offset_at(ms);
            Ok(Some(Bson::String(format_date(
                ms + offset,
                offset,
                &format,
            )?)))
        }
        "$dateTrunc" => {
            let Some(ms) = date_millis(op, &arg(0))? else {
                return Ok(Some(Bson::Null));
            };
            let Some(tz) = timezone(op, &arg(3))? else {
                return Ok(Some(Bson::Null));
            };
            let unit = match arg(1) {
                Some(Bson::String(u)) => u,
                None | Some(Bson::Null) => return Ok(Some(Bson::Null)),
                Some(other) => {
                    return fail(
                        op,
                        format!("unit must be a string, not {}", type_name(&Some(other))),
                    );
                }
            };
            let bin = match arg(2) {
                None => 1,
                Some(b) => match Num::of(&b).and_then(|n| n.to_dec()).and_then(Dec::to_i64) {
                    Some(n) if n > 0 => n,
                    _ => return fail(op, "binSize must be a positive integer"),
                },
            };
            let local = ms + tz.offset_at(ms);
            let p = parts(local);
            // Bins count from 2000-01-01 (a Saturday; weeks start on Sunday), as MongoDB does.
            let reference_days = days_from_civil(2000, 1, 1);
            let fixed = |unit_ms: i64, origin: i64| {
                let span = unit_ms * bin;
                origin + (local - origin).div_euclid(span) * span
            };
            let truncated = match unit.as_str() {
                "millisecond" => fixed(1, reference_days * 86_400_000),
                "second" => fixed(1000, reference_days * 86_400_000),
                "minute" => fixed(60_000, reference_days * 86_400_000),
                "hour" => fixed(3_600_000, reference_days * 86_400_000),
                "day" => fixed(86_400_000, reference_days * 86_400_000),
                "week" => fixed(7 * 86_400_000, (reference_days + 1) * 86_400_000),
                "month" | "quarter" | "year" => {
                    let months = match unit.as_str() {
                        "month" => bin,
                        "quarter" => 3 * bin,
                        _ => 12 * bin,
                    };
                    let index = (p.year - 2000) * 12 + i64::from(p.month) - 1;
                    let start = index.div_euclid(months) * months;
                    let (y, m) = (
                        2000 + start.div_euclid(12),
                        (start.rem_euclid(12) + 1) as u32,
                    );
                    days_from_civil(y, m, 1) * 86_400_000
                }
                other => return fail(op, format!("unsupported unit '{other}'")),
            };
            Ok(Some(Bson::DateTime(bson::DateTime::from_millis(
                tz.local_to_utc(truncated),
            ))))
        }
        _ => {
            let Some(ms) = date_millis(op, &arg(0))? else {
                return Ok(Some(Bson::Null));
            };
            let Some(tz) = timezone(op, &arg(1))? else {
                return Ok(Some(Bson::Null));
            };
            let p = parts(ms + tz.offset_at(ms));
            let value = match op {
                "$year" => p.year,
                "$month" => i64::from(p.month),
                "$dayOfMonth" => i64::from(p.day),
                "$dayOfWeek" => day_of_week(p.days),
                "$dayOfYear" => day_of_year(&p),
                "$hour" => p.hour,
                "$minute" => p.minute,
                "$second" => p.second,
                _ => p.milli,
            };
            Ok(Some(Bson::Int32(value as i32)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the system zoneinfo is there; outside CI its absence skips (under `CI=true`
    /// it fails: `.ci/run` installs tzdata).
    fn zoneinfo() -> bool {
        let present = crate::mql::tz::zoneinfo_dir()
            .join("America/New_York")
            .exists();
        assert!(
            present || std::env::var("CI").is_err(),
            "the zoneinfo database must be installed in CI"
        );
        present
    }

    fn eval(op: &str, args: Vec<Option<Bson>>) -> Bson {
        eval_date_op(op, args).expect("evaluates").expect("a value")
    }

    fn date(ms: i64) -> Option<Bson> {
        Some(Bson::DateTime(bson::DateTime::from_millis(ms)))
    }

    fn tz(name: &str) -> Option<Bson> {
        Some(Bson::String(name.into()))
    }

    #[test]
    fn olson_zones_cross_daylight_saving_edges() {
        if !zoneinfo() {
            return;
        }
        let ny = tz("America/New_York");
        let paris = tz("Europe/Paris");
        let fmt = Some(Bson::String("%Y-%m-%d %H:%M:%S %z".into()));
        let show = |ms: i64, zone: &Option<Bson>| {
            eval("$dateToString", vec![date(ms), fmt.clone(), zone.clone()])
        };
        // New York, spring forward 2024-03-10: 01:59:59 EST, then 03:00:00 EDT.
        assert_eq!(
            show(1_710_053_999_000, &ny),
            Bson::String("2024-03-10 01:59:59 -0500".into())
        );
        assert_eq!(
            show(1_710_054_000_000, &ny),
            Bson::String("2024-03-10 03:00:00 -0400".into())
        );
        // New York, fall back 2024-11-03: 01:59:59 EDT, then 01:00:00 EST.
        assert_eq!(
            show(1_730_613_599_000, &ny),
            Bson::String("2024-11-03 01:59:59 -0400".into())
        );
        assert_eq!(
            show(1_730_613_600_000, &ny),
            Bson::String("2024-11-03 01:00:00 -0500".into())
        );
        // Paris, 2024-03-31 01:00Z: 01:59:59 CET, then 03:00:00 CEST; 2024-10-27 back.
        assert_eq!(
            show(1_711_846_799_000, &paris),
            Bson::String("2024-03-31 01:59:59 +0100".into())
        );
        assert_eq!(
            show(1_711_846_800_000, &paris),
            Bson::String("2024-03-31 03:00:00 +0200".into())
        );
        assert_eq!(
            show(1_729_990_800_000, &paris),
            Bson::String("2024-10-27 02:00:00 +0100".into())
        );
        // Before the transitions table's end and far after it (the footer rule): 1990 and 2090.
        assert_eq!(
            show(646_790_400_000, &ny),
            Bson::String("1990-06-30 20:00:00 -0400".into())
        );
        assert_eq!(
            show(3_802_896_000_000, &paris),
            Bson::String("2090-07-05 02:00:00 +0200".into())
        );
        // $hour / $dayOfMonth in a zone.
        assert_eq!(
            eval("$hour", vec![date(1_710_054_000_000), ny.clone()]),
            Bson::Int32(3)
        );
        assert_eq!(
            eval("$dayOfMonth", vec![date(1_710_040_000_000), ny.clone()]),
            Bson::Int32(9)
        );
        // $dateFromString reads local New York time (EST in January, EDT in July).
        let parse = |s: &str| {
            eval(
                "$dateFromString",
                vec![Some(Bson::String(s.into())), None, ny.clone()],
            )
        };
        assert_eq!(
            parse("2024-01-15T12:00:00"),
            date(1_705_338_000_000).expect("d")
        );
        assert_eq!(
            parse("2024-07-15T12:00:00"),
            date(1_721_059_200_000).expect("d")
        );
        // $dateTrunc to the day in Paris: local midnight, 22:00Z in summer.
        let trunc = eval(
            "$dateTrunc",
            vec![
                date(1_719_792_000_000 + 3_600_000),
                Some(Bson::String("day".into())),
                None,
                paris.clone(),
            ],
        );
        assert_eq!(trunc, date(1_719_784_800_000).expect("d")); // 2024-06-30T22:00:00Z
    }

    #[test]
    fn an_unknown_zone_is_an_error_naming_it() {
        let err =
            eval_date_op("$hour", vec![date(0), tz("Mars/Olympus_Mons")]).expect_err("unknown");
        assert!(err.to_string().contains("\"Mars/Olympus_Mons\""), "{err}");
    }

    #[test]
    fn civil_round_trips() {
        for days in [-1_000_000, -1, 0, 1, 10_957, 19_675, 2_932_896] {
            let (y, m, d) = civil(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
    }

    #[test]
    fn parse_and_format() {
        let ms = parse_date("2023-11-14T22:13:20.123Z", None, 0).unwrap();
        assert_eq!(ms, 1_700_000_000_123);
        assert_eq!(
            parse_date("2023-11-15T03:43:20.123+05:30", None, 0),
            Some(ms)
        );
        assert_eq!(
            format_date(ms, 0, "%Y-%m-%dT%H:%M:%S.%LZ").unwrap(),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            parse_date("14/11/2023", Some("%d/%m/%Y"), 0),
            Some(1_699_920_000_000)
        );
        assert!(offset_millis("Europe/Paris").is_none());
    }

    #[test]
    fn trunc_to_weeks_and_months() {
        let ms = parse_date("2023-11-14T22:13:20Z", None, 0).unwrap();
        let trunc = |unit: &str, bin: i64| {
            eval_date_op(
                "$dateTrunc",
                vec![
                    Some(Bson::DateTime(bson::DateTime::from_millis(ms))),
                    Some(Bson::String(unit.into())),
                    Some(Bson::Int64(bin)),
                    None,
                ],
            )
            .unwrap()
        };
        let date = |s: &str| {
            Some(Bson::DateTime(bson::DateTime::from_millis(
                parse_date(s, None, 0).unwrap(),
            )))
        };
        assert_eq!(trunc("week", 1), date("2023-11-12"));
        assert_eq!(trunc("month", 1), date("2023-11-01"));
        assert_eq!(trunc("quarter", 1), date("2023-10-01"));
        assert_eq!(trunc("hour", 6), date("2023-11-14T18:00:00Z"));
    }
}
