//! Parsing of the human quantities that specs carry: cpu (`16`, `500m`), memory (`64Gi`, `512Mi`,
//! a bare number of MiB), GPU quota (`8`, `2.5`) and durations (`90s`, `30m`, `2h`, `1d`, a bare
//! number of seconds). Every parser returns a reason string that the caller prefixes with the
//! field's path, so an error reads `jobs[0].tasks[1].memory: unknown unit "Gx" (use Ki, Mi, Gi, Ti)`.

use serde::{Deserialize, Serialize};

/// A number or a string in a spec; which one a user wrote is kept so errors can quote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Quantity {
    /// A bare number.
    Number(f64),
    /// A string with a unit suffix.
    Text(String),
}

impl From<f64> for Quantity {
    fn from(v: f64) -> Self {
        Quantity::Number(v)
    }
}

impl From<&str> for Quantity {
    fn from(v: &str) -> Self {
        Quantity::Text(v.to_string())
    }
}

fn split_number(s: &str) -> Result<(f64, &str), String> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e'))
        .unwrap_or(s.len());
    // `e` is only an exponent when digits follow; "1e" is not a number.
    let (num, unit) = s.split_at(end);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a number with an optional unit"))?;
    if !v.is_finite() {
        return Err(format!("{s:?} is not finite"));
    }
    Ok((v, unit.trim()))
}

fn non_negative(v: f64, what: &str) -> Result<f64, String> {
    if v < 0.0 {
        Err(format!("{what} must not be negative, got {v}"))
    } else {
        Ok(v)
    }
}

impl Quantity {
    /// CPU in millicores: `16` → 16000, `0.5` → 500, `"250m"` → 250.
    pub fn cpu_milli(&self) -> Result<u32, String> {
        let milli = match self {
            Quantity::Number(v) => non_negative(*v, "cpu")? * 1000.0,
            Quantity::Text(s) => {
                let (v, unit) = split_number(s)?;
                let v = non_negative(v, "cpu")?;
                match unit {
                    "" => v * 1000.0,
                    "m" => v,
                    u => return Err(format!("unknown cpu unit {u:?} (use cores or m)")),
                }
            }
        };
        if milli > u32::MAX as f64 {
            return Err(format!("cpu {milli}m is too large"));
        }
        Ok(milli.round() as u32)
    }

    /// Memory in MiB: a bare number is MiB; `Ki Mi Gi Ti` are binary, `K M G T` decimal.
    pub fn memory_mib(&self) -> Result<u64, String> {
        let mib = match self {
            Quantity::Number(v) => non_negative(*v, "memory")?,
            Quantity::Text(s) => {
                let (v, unit) = split_number(s)?;
                let v = non_negative(v, "memory")?;
                let bytes_per_unit: f64 = match unit {
                    "" | "Mi" => 1024.0 * 1024.0,
                    "Ki" => 1024.0,
                    "Gi" => 1024.0 * 1024.0 * 1024.0,
                    "Ti" => 1024.0f64.powi(4),
                    "K" | "k" => 1e3,
                    "M" => 1e6,
                    "G" => 1e9,
                    "T" => 1e12,
                    u => return Err(format!("unknown memory unit {u:?} (use Ki, Mi, Gi, Ti)")),
                };
                v * bytes_per_unit / (1024.0 * 1024.0)
            }
        };
        if mib > (u64::MAX / 2) as f64 {
            return Err(format!("memory {mib} MiB is too large"));
        }
        Ok(mib.ceil() as u64)
    }

    /// A GPU amount in thousandths of a GPU (`1` → 1000, `0.25` → 250).
    pub fn gpu_milli(&self) -> Result<u64, String> {
        let v = match self {
            Quantity::Number(v) => *v,
            Quantity::Text(s) => {
                let (v, unit) = split_number(s)?;
                if !unit.is_empty() {
                    return Err(format!("a GPU count takes no unit, got {unit:?}"));
                }
                v
            }
        };
        let v = non_negative(v, "gpu quantity")?;
        if v > 1e12 {
            return Err(format!("gpu quantity {v} is too large"));
        }
        Ok((v * 1000.0).round() as u64)
    }

    /// A duration in milliseconds: a bare number is seconds; `ms s m h d` suffixes.
    pub fn duration_ms(&self) -> Result<u64, String> {
        let ms = match self {
            Quantity::Number(v) => non_negative(*v, "duration")? * 1000.0,
            Quantity::Text(s) => {
                let (v, unit) = split_number(s)?;
                let v = non_negative(v, "duration")?;
                let per: f64 = match unit {
                    "ms" => 1.0,
                    "" | "s" => 1e3,
                    "m" => 60e3,
                    "h" => 3600e3,
                    "d" => 86400e3,
                    u => return Err(format!("unknown duration unit {u:?} (use ms, s, m, h, d)")),
                };
                v * per
            }
        };
        if ms > 1e15 {
            return Err(format!("duration {ms} ms is too large"));
        }
        Ok(ms.round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_table() {
        for (q, want) in [
            (Quantity::from(16.0), Ok(16000)),
            (Quantity::from("500m"), Ok(500)),
            (Quantity::from("2"), Ok(2000)),
            (Quantity::from(0.25), Ok(250)),
        ] {
            assert_eq!(q.cpu_milli(), want, "{q:?}");
        }
        assert!(Quantity::from("2x").cpu_milli().is_err());
        assert!(Quantity::from(-1.0).cpu_milli().is_err());
    }

    #[test]
    fn memory_table() {
        assert_eq!(Quantity::from("64Gi").memory_mib(), Ok(65536));
        assert_eq!(Quantity::from("512Mi").memory_mib(), Ok(512));
        assert_eq!(Quantity::from(1024.0).memory_mib(), Ok(1024));
        assert_eq!(Quantity::from("1G").memory_mib(), Ok(954));
        let err = Quantity::from("3Gx").memory_mib().expect_err("bad unit");
        assert!(err.contains("Gx"), "{err}");
    }

    #[test]
    fn gpu_and_duration_table() {
        assert_eq!(Quantity::from(2.5).gpu_milli(), Ok(2500));
        assert_eq!(Quantity::from("8").gpu_milli(), Ok(8000));
        assert_eq!(Quantity::from("90s").duration_ms(), Ok(90_000));
        assert_eq!(Quantity::from("2h").duration_ms(), Ok(7_200_000));
        assert_eq!(Quantity::from(30.0).duration_ms(), Ok(30_000));
        assert_eq!(Quantity::from("1d").duration_ms(), Ok(86_400_000));
        assert!(Quantity::from("soon").duration_ms().is_err());
    }
}
