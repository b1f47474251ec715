//! The timestamps frames carry.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// A UTC instant written as ISO-8601 with microseconds, e.g.
/// `2026-11-27T12:24:04.051023Z`, without a date-time dependency.
///
/// The year is written in four digits, from 1970: an instant before the
/// Unix epoch is written as the epoch, and one after the end of year 9999
/// as its last microsecond, `9999-12-31T23:59:59.999999Z`, never as
/// another year.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Timestamp(SystemTime::now())
    }

    pub(crate) fn write(&self, out: &mut [u8; 27]) {
        use std::cell::Cell;
        thread_local! {
            // The date and time to the second last written on this thread:
            // frames written within one second share them.
            static LAST: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
        }
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let (secs, micros) = match d.as_secs() {
            secs @ ..=LAST_SECOND => (secs, d.subsec_micros()),
            _ => (LAST_SECOND, 999_999),
        };
        let put = |out: &mut [u8], at: usize, v: u64, width: usize| {
            let mut v = v;
            for i in (0..width).rev() {
                out[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        let (last, prefix) = LAST.get();
        if last == secs {
            out[..20].copy_from_slice(&prefix);
        } else {
            let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
            let (y, m, day) = civil_from_days(days);
            put(out, 0, y as u64, 4);
            put(out, 5, m as u64, 2);
            put(out, 8, day as u64, 2);
            put(out, 11, rem / 3600, 2);
            put(out, 14, rem / 60 % 60, 2);
            put(out, 17, rem % 60, 2);
            out[4] = b'-';
            out[7] = b'-';
            out[10] = b'T';
            out[13] = b':';
            out[16] = b':';
            out[19] = b'.';
            let mut prefix = [0; 20];
            prefix.copy_from_slice(&out[..20]);
            LAST.set((secs, prefix));
        }
        put(out, 20, u64::from(micros), 6);
        out[26] = b'Z';
    }
}

/// 9999-12-31T23:59:59Z, the last second with a four-digit year, in
/// seconds since the Unix epoch.
const LAST_SECOND: u64 = 253_402_300_799;

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm, `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 27];
        self.write(&mut buf);
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut buf = [0u8; 27];
        self.write(&mut buf);
        s.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_iso_8601_utc() {
        let t = Timestamp(UNIX_EPOCH + Duration::from_micros(1_795_782_244_051_023));
        assert_eq!(t.to_string(), "2026-11-27T12:24:04.051023Z");
        assert_eq!(
            Timestamp(UNIX_EPOCH).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
        let leap = Timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)); // 2000-02-29
        assert_eq!(leap.to_string(), "2000-02-29T00:00:00.000000Z");
        // The same second again (its date and time are reused), then the next.
        let t = Timestamp(UNIX_EPOCH + Duration::from_micros(951_782_400_999_999));
        assert_eq!(t.to_string(), "2000-02-29T00:00:00.999999Z");
        let t = Timestamp(UNIX_EPOCH + Duration::from_micros(951_782_401_000_001));
        assert_eq!(t.to_string(), "2000-02-29T00:00:01.000001Z");
        assert_eq!(
            Timestamp(UNIX_EPOCH).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
    }
}
