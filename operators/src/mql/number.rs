//! Numbers as MongoDB treats them: int32, int64, double and Decimal128 compared by value across
//! types, and arithmetic with MongoDB's type promotion.
//!
//! # Rules
//!
//! * Comparison is by mathematical value: `NumberInt(1) == NumberLong(1) == 1.0 ==
//!   NumberDecimal("1.00")`. `NaN` equals `NaN` and sorts below every other number.
//! * `$add`, `$subtract`, `$multiply`: int32 op int32 is int32, widened to int64 on overflow and
//!   to double when int64 overflows; with a double the result is a double; with a Decimal128 it
//!   is a Decimal128.
//! * `$divide` returns a double, or a Decimal128 if either side is one.
//!
//! Decimal128 values are decoded from their BID encoding into an exact `(sign, coefficient,
//! exponent)`; arithmetic on them is exact while the coefficient fits 34 digits and rounds half
//! to even beyond, as IEEE 754 decimal128 does.
//!
//! ```
//! use bson::Bson;
//! use changeflow_operators::mql::number::{Num, add};
//! let one = Num::of(&Bson::Int32(1)).unwrap();
//! let half = Num::of(&Bson::Double(0.5)).unwrap();
//! assert_eq!(add(&one, &half).to_bson(), Bson::Double(1.5));
//! let max = Num::of(&Bson::Int32(i32::MAX)).unwrap();
//! assert_eq!(add(&max, &one).to_bson(), Bson::Int64(i32::MAX as i64 + 1));
//! ```

use std::cmp::Ordering;

use bson::{Bson, Decimal128};

/// An exact decimal: `(-1)^neg × coef × 10^exp`, or a special value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dec {
    /// A finite value.
    Finite {
        /// Negative (also for `-0`).
        neg: bool,
        /// The coefficient (at most 34 digits after normalisation).
        coef: u128,
        /// The power of ten.
        exp: i32,
    },
    /// Infinity with a sign.
    Inf(bool),
    /// Not a number.
    NaN,
}

const MAX_COEF: u128 = 9_999_999_999_999_999_999_999_999_999_999_999; // 10^34 - 1
const BIAS: i32 = 6176;

impl Dec {
    /// Decodes a BSON Decimal128 (BID encoding).
    pub fn from_decimal128(d: &Decimal128) -> Dec {
        let bits = u128::from_le_bytes(d.bytes());
        let neg = bits >> 127 == 1;
        let combination = (bits >> 122) & 0b11111;
        if combination == 0b11111 {
            return Dec::NaN;
        }
        if combination == 0b11110 {
            return Dec::Inf(neg);
        }
        let (exp, coef) = if (bits >> 125) & 0b11 == 0b11 {
            // Coefficient 100 + 111 bits: always above 10^34 - 1, so non-canonical: zero.
            (((bits >> 111) & 0x3FFF) as i32, 0)
        } else {
            (((bits >> 113) & 0x3FFF) as i32, bits & ((1u128 << 113) - 1))
        };
        let coef = if coef > MAX_COEF { 0 } else { coef };
        Dec::Finite {
            neg,
            coef,
            exp: exp - BIAS,
        }
    }

    /// Encodes as a BSON Decimal128, rounding the coefficient to 34 digits (half to even).
    pub fn to_decimal128(self) -> Decimal128 {
        let bits: u128 = match self {
            Dec::NaN => 0b11111 << 122,
            Dec::Inf(neg) => (u128::from(neg) << 127) | (0b11110 << 122),
            Dec::Finite { neg, coef, exp } => {
                let (mut coef, mut exp) = round34(coef, exp);
                // Clamp the exponent into range (overflow to infinity, underflow to zero).
                while exp > 6111 && coef <= MAX_COEF / 10 && coef != 0 {
                    coef *= 10;
                    exp -= 1;
                }
                if exp > 6111 {
                    if coef == 0 {
                        exp = 6111;
                    } else {
                        return Dec::Inf(neg).to_decimal128();
                    }
                }
                while exp < -6176 {
                    coef /= 10;
                    exp += 1;
                }
                (u128::from(neg) << 127) | (((exp + BIAS) as u128) << 113) | coef
            }
        };
        Decimal128::from_bytes(bits.to_le_bytes())
    }

    /// The exact decimal value of a double, if it has at most 34 significant digits (otherwise
    /// no Decimal128 equals it).
    pub fn from_f64(x: f64) -> Option<Dec> {
        if x.is_nan() {
            return Some(Dec::NaN);
        }
        if x.is_infinite() {
            return Some(Dec::Inf(x < 0.0));
        }
        let neg = x.is_sign_negative();
        let bits = x.abs().to_bits();
        let (biased, frac) = ((bits >> 52) as i32, bits & ((1u64 << 52) - 1));
        let (mut mant, mut e2) = if biased == 0 {
            (frac, -1074)
        } else {
            (frac | (1u64 << 52), biased - 1075)
        };
        if mant == 0 {
            return Some(Dec::Finite {
                neg,
                coef: 0,
                exp: 0,
            });
        }
        while mant & 1 == 0 {
            mant >>= 1;
            e2 += 1;
        }
        let (coef, exp) = if e2 >= 0 {
            (u128::from(mant).checked_shl(e2 as u32)?, 0)
        } else {
            // m / 2^k = m × 5^k / 10^k
            let k = (-e2) as u32;
            let five = 5u128.checked_pow(k)?;
            (u128::from(mant).checked_mul(five)?, -(k as i32))
        };
        (coef <= MAX_COEF).then_some(Dec::Finite { neg, coef, exp })
    }

    /// The nearest double.
    pub fn to_f64(self) -> f64 {
        match self {
            Dec::NaN => f64::NAN,
            Dec::Inf(neg) => {
                if neg {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                }
            }
            Dec::Finite { neg, coef, exp } => {
                let s = format!("{}{coef}e{exp}", if neg { "-" } else { "" });
                s.parse().unwrap_or(f64::NAN)
            }
        }
    }

    /// Strips trailing zeros: equal values get equal representations (zero has exponent 0 and no
    /// sign).
    pub fn normalized(self) -> Dec {
        match self {
            Dec::Finite { coef: 0, .. } => Dec::Finite {
                neg: false,
                coef: 0,
                exp: 0,
            },
            Dec::Finite {
                neg,
                mut coef,
                mut exp,
            } => {
                while coef % 10 == 0 {
                    coef /= 10;
                    exp += 1;
                }
                Dec::Finite { neg, coef, exp }
            }
            other => other,
        }
    }

    /// The value as an `i64` if it is an integer in range.
    pub fn to_i64(self) -> Option<i64> {
        let Dec::Finite { neg, coef, exp } = self.normalized() else {
            return None;
        };
        if exp < 0 {
            return None;
        }
        let v = coef.checked_mul(10u128.checked_pow(exp as u32)?)?;
        let v = i128::try_from(v).ok()?;
        i64::try_from(if neg { -v } else { v }).ok()
    }
}

/// Rounds a coefficient to at most 34 digits, half to even.
fn round34(mut coef: u128, mut exp: i32) -> (u128, i32) {
    let mut dropped_any = false;
    let mut last = 0u128;
    while coef > MAX_COEF {
        dropped_any |= last != 0;
        last = coef % 10;
        coef /= 10;
        exp += 1;
    }
    if last > 5 || (last == 5 && (dropped_any || coef % 2 == 1)) {
        coef += 1;
        if coef > MAX_COEF {
            coef /= 10;
            exp += 1;
        }
    }
    (coef, exp)
}

/// A BSON number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    /// int32.
    Int(i32),
    /// int64.
    Long(i64),
    /// double.
    Double(f64),
    /// Decimal128, decoded.
    Decimal(Dec),
}

impl Num {
    /// The number in `value`, if it is one.
    pub fn of(value: &Bson) -> Option<Num> {
        Some(match value {
            Bson::Int32(n) => Num::Int(*n),
            Bson::Int64(n) => Num::Long(*n),
            Bson::Double(x) => Num::Double(*x),
            Bson::Decimal128(d) => Num::Decimal(Dec::from_decimal128(d)),
            _ => return None,
        })
    }

    /// Back to BSON.
    pub fn to_bson(self) -> Bson {
        match self {
            Num::Int(n) => Bson::Int32(n),
            Num::Long(n) => Bson::Int64(n),
            Num::Double(x) => Bson::Double(x),
            Num::Decimal(d) => Bson::Decimal128(d.to_decimal128()),
        }
    }

    /// As a double (decimals rounded).
    pub fn to_f64(self) -> f64 {
        match self {
            Num::Int(n) => f64::from(n),
            Num::Long(n) => n as f64,
            Num::Double(x) => x,
            Num::Decimal(d) => d.to_f64(),
        }
    }

    /// As an exact decimal, if it has one (every int, every double of at most 34 digits).
    pub fn to_dec(self) -> Option<Dec> {
        match self {
            Num::Int(n) => Some(int_dec(i128::from(n))),
            Num::Long(n) => Some(int_dec(i128::from(n))),
            Num::Double(x) => Dec::from_f64(x),
            Num::Decimal(d) => Some(d),
        }
    }

    /// As a decimal for arithmetic with a Decimal128: a double is first rounded to 15
    /// significant digits, as MongoDB converts doubles to decimals (`0.1` becomes exactly
    /// `0.1`).
    pub fn to_dec_for_arithmetic(self) -> Dec {
        match self {
            Num::Double(x) if x.is_finite() => format!("{x:.14e}")
                .parse::<Decimal128>()
                .map_or(Dec::NaN, |d| Dec::from_decimal128(&d))
                .normalized(),
            Num::Double(x) if x.is_nan() => Dec::NaN,
            Num::Double(x) => Dec::Inf(x < 0.0),
            other => other.to_dec().unwrap_or(Dec::NaN),
        }
    }

    /// Whether this is NaN.
    pub fn is_nan(self) -> bool {
        match self {
            Num::Double(x) => x.is_nan(),
            Num::Decimal(d) => d == Dec::NaN,
            _ => false,
        }
    }
}

fn int_dec(v: i128) -> Dec {
    Dec::Finite {
        neg: v < 0,
        coef: v.unsigned_abs(),
        exp: 0,
    }
}

/// Compares two decimals by value (NaN lowest, equal to itself).
pub fn cmp_dec(a: Dec, b: Dec) -> Ordering {
    use Dec::*;
    match (a, b) {
        (NaN, NaN) => Ordering::Equal,
        (NaN, _) => Ordering::Less,
        (_, NaN) => Ordering::Greater,
        (Inf(x), Inf(y)) => y.cmp(&x),
        (Inf(neg), _) => {
            if neg {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        }
        (_, Inf(neg)) => {
            if neg {
                Ordering::Greater
            } else {
                Ordering::Less
            }
        }
        (Finite { .. }, Finite { .. }) => {
            let (
                Finite {
                    neg: na,
                    coef: ca,
                    exp: ea,
                },
                Finite {
                    neg: nb,
                    coef: cb,
                    exp: eb,
                },
            ) = (a.normalized(), b.normalized())
            else {
                return Ordering::Equal;
            };
            let sign = |neg: bool, coef: u128| match (coef, neg) {
                (0, _) => 0,
                (_, true) => -1,
                _ => 1,
            };
            let (sa, sb) = (sign(na, ca), sign(nb, cb));
            if sa != sb || sa == 0 {
                return sa.cmp(&sb);
            }
            let magnitude = cmp_magnitude(ca, ea, cb, eb);
            if sa < 0 {
                magnitude.reverse()
            } else {
                magnitude
            }
        }
    }
}

/// Compares `ca × 10^ea` with `cb × 10^eb` (both non-zero).
fn cmp_magnitude(ca: u128, ea: i32, cb: u128, eb: i32) -> Ordering {
    let digits = |c: u128| c.checked_ilog10().map_or(1, |d| d as i32 + 1);
    // Compare orders of magnitude first, then align (both have at most 34 digits).
    let (ma, mb) = (digits(ca) + ea, digits(cb) + eb);
    if ma != mb {
        return ma.cmp(&mb);
    }
    let (mut a, mut b) = (ca, cb);
    let (da, db) = (digits(ca), digits(cb));
    if da < db {
        a *= 10u128.pow((db - da) as u32);
    } else {
        b *= 10u128.pow((da - db) as u32);
    }
    a.cmp(&b)
}

/// Compares two numbers by value, as MongoDB does (NaN lowest).
pub fn cmp_num(a: Num, b: Num) -> Ordering {
    use Num::*;
    match (a, b) {
        (Int(x), Int(y)) => x.cmp(&y),
        (Int(_) | Long(_), Int(_) | Long(_)) => as_i64(a).cmp(&as_i64(b)),
        (Double(x), Double(y)) => cmp_f64(x, y),
        (Int(_) | Long(_), Double(y)) => cmp_i64_f64(as_i64(a), y),
        (Double(x), Int(_) | Long(_)) => cmp_i64_f64(as_i64(b), x).reverse(),
        _ => match (a.to_dec(), b.to_dec()) {
            (Some(x), Some(y)) => cmp_dec(x, y),
            // A double with more than 34 significant digits against a decimal.
            (Some(d), None) => cmp_dec_f64(d, b.to_f64()),
            (None, Some(d)) => cmp_dec_f64(d, a.to_f64()).reverse(),
            (None, None) => cmp_f64(a.to_f64(), b.to_f64()),
        },
    }
}

/// Compares a decimal with a finite double that no decimal128 equals, exactly.
fn cmp_dec_f64(d: Dec, x: f64) -> Ordering {
    let rounded = d.to_f64();
    if rounded != x || !x.is_finite() {
        // Rounding is monotone, so distinct roundings order the exact values.
        return cmp_f64(rounded, x);
    }
    let Dec::Finite { coef, exp, .. } = d.normalized() else {
        return Ordering::Equal;
    };
    // Every double's decimal expansion ends within 767 significant digits.
    let text = format!("{:.800e}", x.abs());
    let Some((mantissa, e10)) = text.split_once('e') else {
        return Ordering::Equal;
    };
    let digits = mantissa.replace('.', "");
    let digits = digits.trim_end_matches('0');
    let x_exp = e10.parse::<i32>().unwrap_or(0) - (digits.len() as i32 - 1);
    let d_digits = coef.to_string();
    // Same sign (the double is d rounded); compare magnitudes as digit strings.
    let magnitude = (d_digits.len() as i32 + exp)
        .cmp(&(digits.len() as i32 + x_exp))
        .then_with(|| {
            let width = d_digits.len().max(digits.len());
            format!("{d_digits:0<width$}").cmp(&format!("{digits:0<width$}"))
        });
    if x < 0.0 {
        magnitude.reverse()
    } else {
        magnitude
    }
}

fn as_i64(n: Num) -> i64 {
    match n {
        Num::Int(x) => i64::from(x),
        Num::Long(x) => x,
        _ => 0,
    }
}

fn cmp_f64(x: f64, y: f64) -> Ordering {
    match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

/// Exact comparison of an integer with a double.
fn cmp_i64_f64(i: i64, y: f64) -> Ordering {
    if y.is_nan() {
        return Ordering::Greater;
    }
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if y >= TWO_63 {
        return Ordering::Less;
    }
    if y < -TWO_63 {
        return Ordering::Greater;
    }
    let t = y.trunc();
    match i.cmp(&(t as i64)) {
        Ordering::Equal => 0.0f64.partial_cmp(&(y - t)).unwrap_or(Ordering::Equal),
        other => other,
    }
}

/// `a + b` with MongoDB's promotion.
pub fn add(a: &Num, b: &Num) -> Num {
    arith(*a, *b, i64::checked_add, |x, y| x + y, dec_add)
}

/// `a - b` with MongoDB's promotion.
pub fn subtract(a: &Num, b: &Num) -> Num {
    arith(
        *a,
        *b,
        i64::checked_sub,
        |x, y| x - y,
        |x, y| dec_add(x, neg(y)),
    )
}

/// `a × b` with MongoDB's promotion.
pub fn multiply(a: &Num, b: &Num) -> Num {
    arith(*a, *b, i64::checked_mul, |x, y| x * y, dec_mul)
}

/// `a ÷ b`: a double, or a decimal if either is one; `None` when `b` is zero.
pub fn divide(a: &Num, b: &Num) -> Option<Num> {
    if cmp_num(*b, Num::Int(0)) == Ordering::Equal && !b.is_nan() {
        return None;
    }
    Some(match (a, b) {
        (Num::Decimal(_), _) | (_, Num::Decimal(_)) => Num::Decimal(dec_div(
            a.to_dec_for_arithmetic(),
            b.to_dec_for_arithmetic(),
        )),
        _ => Num::Double(a.to_f64() / b.to_f64()),
    })
}

fn arith(
    a: Num,
    b: Num,
    int: fn(i64, i64) -> Option<i64>,
    float: fn(f64, f64) -> f64,
    dec: fn(Dec, Dec) -> Dec,
) -> Num {
    use Num::*;
    match (a, b) {
        (Decimal(_), _) | (_, Decimal(_)) => {
            Decimal(dec(a.to_dec_for_arithmetic(), b.to_dec_for_arithmetic()))
        }
        (Double(_), _) | (_, Double(_)) => Double(float(a.to_f64(), b.to_f64())),
        (Int(x), Int(y)) => match int(i64::from(x), i64::from(y)) {
            Some(v) => i32::try_from(v).map_or(Long(v), Int),
            None => Double(float(a.to_f64(), b.to_f64())),
        },
        _ => match int(as_i64(a), as_i64(b)) {
            Some(v) => Long(v),
            None => Double(float(a.to_f64(), b.to_f64())),
        },
    }
}

fn neg(d: Dec) -> Dec {
    match d {
        Dec::Finite { neg, coef, exp } => Dec::Finite {
            neg: !neg,
            coef,
            exp,
        },
        Dec::Inf(n) => Dec::Inf(!n),
        Dec::NaN => Dec::NaN,
    }
}

/// Aligns two finite decimals to a common exponent, as signed i128s; `None` if that overflows.
fn align(a: (bool, u128, i32), b: (bool, u128, i32)) -> Option<(i128, i128, i32)> {
    let exp = a.2.min(b.2);
    let scale = |(neg, coef, e): (bool, u128, i32)| -> Option<i128> {
        let v = i128::try_from(coef.checked_mul(10u128.checked_pow((e - exp) as u32)?)?).ok()?;
        Some(if neg { -v } else { v })
    };
    Some((scale(a)?, scale(b)?, exp))
}

fn from_i128(v: i128, exp: i32) -> Dec {
    Dec::Finite {
        neg: v < 0,
        coef: v.unsigned_abs(),
        exp,
    }
}

fn dec_add(a: Dec, b: Dec) -> Dec {
    match (a, b) {
        (Dec::NaN, _) | (_, Dec::NaN) => Dec::NaN,
        (Dec::Inf(x), Dec::Inf(y)) => {
            if x == y {
                Dec::Inf(x)
            } else {
                Dec::NaN
            }
        }
        (Dec::Inf(x), _) | (_, Dec::Inf(x)) => Dec::Inf(x),
        (
            Dec::Finite {
                neg: na,
                coef: ca,
                exp: ea,
            },
            Dec::Finite {
                neg: nb,
                coef: cb,
                exp: eb,
            },
        ) => match align((na, ca, ea), (nb, cb, eb))
            .and_then(|(x, y, e)| Some((x.checked_add(y)?, e)))
        {
            Some((v, e)) => from_i128(v, e),
            // Exponents too far apart for exact alignment: the smaller operand is below the
            // 34-digit precision of the larger one.
            None => {
                if cmp_magnitude(ca.max(1), ea, cb.max(1), eb) == Ordering::Greater {
                    a
                } else {
                    b
                }
            }
        },
    }
}

fn dec_mul(a: Dec, b: Dec) -> Dec {
    match (a, b) {
        (Dec::NaN, _) | (_, Dec::NaN) => Dec::NaN,
        (Dec::Inf(x), Dec::Finite { neg, coef, .. })
        | (Dec::Finite { neg, coef, .. }, Dec::Inf(x)) => {
            if coef == 0 {
                Dec::NaN
            } else {
                Dec::Inf(x != neg)
            }
        }
        (Dec::Inf(x), Dec::Inf(y)) => Dec::Inf(x != y),
        (
            Dec::Finite {
                neg: na,
                coef: ca,
                exp: ea,
            },
            Dec::Finite {
                neg: nb,
                coef: cb,
                exp: eb,
            },
        ) => {
            let neg = na != nb;
            match ca.checked_mul(cb) {
                Some(coef) => Dec::Finite {
                    neg,
                    coef,
                    exp: ea + eb,
                },
                None => {
                    // Round each operand to 19 digits first (both are ≤ 34 digits): the product
                    // then fits, and rounds to 34 digits when encoded.
                    let (ca, ea) = shrink(ca, ea, 19);
                    let (cb, eb) = shrink(cb, eb, 19);
                    Dec::Finite {
                        neg,
                        coef: ca.saturating_mul(cb),
                        exp: ea + eb,
                    }
                }
            }
        }
    }
}

fn shrink(mut coef: u128, mut exp: i32, digits: u32) -> (u128, i32) {
    let limit = 10u128.pow(digits);
    while coef >= limit {
        coef = (coef + 5) / 10;
        exp += 1;
    }
    (coef, exp)
}

fn dec_div(a: Dec, b: Dec) -> Dec {
    match (a, b) {
        (Dec::NaN, _) | (_, Dec::NaN) | (Dec::Inf(_), Dec::Inf(_)) => Dec::NaN,
        (Dec::Inf(x), Dec::Finite { neg, .. }) => Dec::Inf(x != neg),
        (Dec::Finite { neg, .. }, Dec::Inf(x)) => Dec::Finite {
            neg: neg != x,
            coef: 0,
            exp: 0,
        },
        (
            Dec::Finite {
                neg: na,
                coef: ca,
                exp: ea,
            },
            Dec::Finite {
                neg: nb,
                coef: cb,
                exp: eb,
            },
        ) => {
            if cb == 0 {
                return if ca == 0 {
                    Dec::NaN
                } else {
                    Dec::Inf(na != nb)
                };
            }
            // Long division to 35 significant digits, then round.
            let (mut q, mut r, mut exp) = (ca / cb, ca % cb, ea - eb);
            while r != 0 && q < 10u128.pow(35) {
                match r.checked_mul(10) {
                    Some(r10) => {
                        q = q * 10 + r10 / cb;
                        r = r10 % cb;
                        exp -= 1;
                    }
                    None => break,
                }
            }
            let (coef, exp) = round34(q * 10 + u128::from(r != 0), exp - 1);
            Dec::Finite {
                neg: na != nb,
                coef,
                exp,
            }
            .normalized()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Num {
        Num::Decimal(Dec::from_decimal128(&s.parse::<Decimal128>().unwrap()))
    }

    #[test]
    fn decimal_round_trips_through_bid() {
        for s in [
            "0",
            "1",
            "-1.50",
            "1E+10",
            "123456789012345678901234567890.1234",
            "-0.000001",
        ] {
            let dec: Decimal128 = s.parse().unwrap();
            let decoded = Dec::from_decimal128(&dec);
            assert_eq!(decoded.to_decimal128(), dec, "{s}");
        }
        assert_eq!(Dec::from_decimal128(&"NaN".parse().unwrap()), Dec::NaN);
        assert_eq!(
            Dec::from_decimal128(&"-Infinity".parse().unwrap()),
            Dec::Inf(true)
        );
    }

    #[test]
    fn numbers_compare_by_value_across_types() {
        let all = [Num::Int(1), Num::Long(1), Num::Double(1.0), d("1.000")];
        for a in all {
            for b in all {
                assert_eq!(cmp_num(a, b), Ordering::Equal, "{a:?} {b:?}");
            }
        }
        assert_eq!(cmp_num(Num::Double(0.5), d("0.5")), Ordering::Equal);
        assert_eq!(cmp_num(Num::Double(0.1), d("0.1")), Ordering::Greater);
        assert_eq!(
            cmp_num(Num::Long(i64::MAX), Num::Double(i64::MAX as f64)),
            Ordering::Less
        );
        assert_eq!(
            cmp_num(Num::Double(f64::NAN), Num::Long(i64::MIN)),
            Ordering::Less
        );
        assert_eq!(cmp_num(d("-2"), d("1E-3")), Ordering::Less);
        assert_eq!(cmp_num(d("10"), d("9.99")), Ordering::Greater);
    }

    #[test]
    fn arithmetic_promotes_like_mongodb() {
        assert_eq!(add(&Num::Int(2), &Num::Int(3)), Num::Int(5));
        assert_eq!(
            add(&Num::Long(i64::MAX), &Num::Int(1)).to_bson(),
            Bson::Double(i64::MAX as f64 + 1.0)
        );
        assert_eq!(
            multiply(&Num::Int(1 << 20), &Num::Int(1 << 20)),
            Num::Long(1 << 40)
        );
        assert_eq!(divide(&Num::Int(1), &Num::Int(4)), Some(Num::Double(0.25)));
        assert_eq!(divide(&Num::Int(1), &Num::Double(0.0)), None);
        let third = divide(&d("1"), &Num::Int(3)).unwrap();
        assert_eq!(
            third.to_bson(),
            Bson::Decimal128("0.3333333333333333333333333333333333".parse().unwrap())
        );
        assert_eq!(
            add(&d("0.1"), &d("0.2")).to_bson(),
            Bson::Decimal128("0.3".parse().unwrap())
        );
        // Doubles meet decimals rounded to 15 digits, as in MongoDB.
        assert_eq!(
            add(&d("2.0"), &Num::Double(0.1)).to_bson(),
            Bson::Decimal128("2.1".parse().unwrap())
        );
        assert_eq!(
            subtract(&d("1.5"), &Num::Int(2)).to_bson(),
            Bson::Decimal128("-0.5".parse().unwrap())
        );
    }
}
