//! The price table: GPUs by the hour, CPUs by the vCPU-hour and hosted APIs by the million tokens, each row with
//! where the figure comes from and the date it was checked. The bundled table (`prices.toml`) is a starting
//! point; `--prices FILE` (the same format) replaces rows of the same name and adds new ones.

use serde::{Deserialize, Serialize};

use crate::EngineError;

/// The bundled table.
pub const BUNDLED: &str = include_str!("prices.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuPrice {
    /// As `--gpu` names it (`H100-80GB`).
    pub name: String,
    pub provider: String,
    /// One GPU for one hour, on demand.
    pub usd_per_hour: f64,
    pub source: String,
    /// `YYYY-MM-DD`.
    pub checked_on: String,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuPrice {
    pub name: String,
    pub provider: String,
    pub usd_per_vcpu_hour: f64,
    pub source: String,
    pub checked_on: String,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiPrice {
    pub name: String,
    pub provider: String,
    pub usd_per_1m_input: f64,
    pub usd_per_1m_output: f64,
    pub source: String,
    pub checked_on: String,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    #[serde(default, rename = "gpu")]
    pub gpus: Vec<GpuPrice>,
    #[serde(default, rename = "cpu")]
    pub cpus: Vec<CpuPrice>,
    #[serde(default, rename = "api")]
    pub apis: Vec<ApiPrice>,
}

impl PriceTable {
    /// The bundled table.
    pub fn bundled() -> Self {
        Self::parse(BUNDLED, "the bundled prices.toml").expect("the bundled table parses")
    }

    /// A table in our TOML format; `origin` names it in errors. Every price must be a finite number ≥ 0 and
    /// every date `YYYY-MM-DD`.
    pub fn parse(text: &str, origin: &str) -> Result<Self, EngineError> {
        let t: PriceTable =
            toml::from_str(text).map_err(|e| EngineError::Config(format!("{origin}: {e}")))?;
        let bad = |what: &str, name: &str, why: &str| {
            Err(EngineError::Config(format!(
                "{origin}: {what} {name:?}: {why}"
            )))
        };
        // Every row: its kind, name, prices (field, value) and date, checked by one rule.
        let gpus = t.gpus.iter().map(|g| {
            (
                "gpu",
                &g.name,
                vec![("usd_per_hour", g.usd_per_hour)],
                &g.checked_on,
            )
        });
        let cpus = t.cpus.iter().map(|c| {
            (
                "cpu",
                &c.name,
                vec![("usd_per_vcpu_hour", c.usd_per_vcpu_hour)],
                &c.checked_on,
            )
        });
        let apis = t.apis.iter().map(|a| {
            let prices = vec![
                ("usd_per_1m_input", a.usd_per_1m_input),
                ("usd_per_1m_output", a.usd_per_1m_output),
            ];
            ("api", &a.name, prices, &a.checked_on)
        });
        for (kind, name, prices, date) in gpus.chain(cpus).chain(apis) {
            if let Some((field, _)) = prices.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
                return bad(kind, name, &format!("{field} must be a number ≥ 0"));
            }
            if !is_date(date) {
                return bad(kind, name, "checked_on must be a date YYYY-MM-DD");
            }
        }
        Ok(t)
    }

    /// This table with `other`'s rows over it: a row of the same kind, name and provider replaces, any other is
    /// added.
    pub fn overlay(mut self, other: PriceTable) -> Self {
        fn merge<T, F: Fn(&T) -> String>(rows: &mut Vec<T>, new: Vec<T>, key: F) {
            for row in new {
                match rows.iter().position(|r| key(r) == key(&row)) {
                    Some(i) => rows[i] = row,
                    None => rows.push(row),
                }
            }
        }
        let lower = |s: &str| s.to_ascii_lowercase();
        merge(&mut self.gpus, other.gpus, |g| {
            lower(&format!("{}@{}", g.name, g.provider))
        });
        merge(&mut self.cpus, other.cpus, |c| {
            lower(&format!("{}@{}", c.name, c.provider))
        });
        merge(&mut self.apis, other.apis, |a| {
            lower(&format!("{}@{}", a.name, a.provider))
        });
        self
    }

    /// The GPU row for `NAME[@PROVIDER]` (any case; `H100-80GB` also matches `H100-80GB-SXM`, and a provider
    /// matches by its start): the cheapest such row, or an error listing the names there are.
    pub fn gpu(&self, spec: &str) -> Result<&GpuPrice, EngineError> {
        let (name, provider) = match spec.split_once('@') {
            Some((n, p)) => (
                n.trim().to_ascii_lowercase(),
                Some(p.trim().to_ascii_lowercase()),
            ),
            None => (spec.trim().to_ascii_lowercase(), None),
        };
        self.gpus
            .iter()
            .filter(|g| {
                let n = g.name.to_ascii_lowercase();
                (n == name || n.starts_with(&format!("{name}-")))
                    && provider
                        .as_ref()
                        .is_none_or(|p| g.provider.to_ascii_lowercase().starts_with(p.as_str()))
            })
            .min_by(|a, b| a.usd_per_hour.total_cmp(&b.usd_per_hour))
            .ok_or_else(|| {
                let mut names: Vec<&str> = self.gpus.iter().map(|g| g.name.as_str()).collect();
                names.dedup();
                EngineError::Config(format!(
                    "no GPU {spec:?} in the price table (there are: {}); add a row with --prices FILE, or give \
                     --price-per-hour",
                    names.join(", ")
                ))
            })
    }

    /// The CPU row for pricing this machine by its vCPUs: the first of this machine's architecture (a row whose
    /// name or note says Graviton or ARM is an AArch64 one), else the first.
    pub fn cpu(&self) -> Option<&CpuPrice> {
        let arm = |c: &CpuPrice| {
            let text = format!("{} {}", c.name, c.note).to_ascii_lowercase();
            text.contains("graviton") || text.contains("arm")
        };
        let here_arm = cfg!(target_arch = "aarch64");
        self.cpus
            .iter()
            .find(|c| arm(c) == here_arm)
            .or(self.cpus.first())
    }
}

/// Days from `date` (`YYYY-MM-DD`) to today (UTC), for a warning about an old price.
pub fn days_since(date: &str) -> Option<i64> {
    let p: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [y, m, d] = p[..] else { return None };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64
        / 86400;
    Some(now - days_from_civil(y, m, d))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` with a month 1–12 and a day 1–31.
fn is_date(s: &str) -> bool {
    let p: Vec<&str> = s.split('-').collect();
    p.len() == 3
        && p[0].len() == 4
        && p[1].len() == 2
        && p[2].len() == 2
        && p.iter().all(|x| x.chars().all(|c| c.is_ascii_digit()))
        && (1..=12).contains(&p[1].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&p[2].parse::<u32>().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_table_has_sources_and_dates_and_files_override_it() {
        let t = PriceTable::bundled();
        assert!(!t.gpus.is_empty() && !t.apis.is_empty() && !t.cpus.is_empty());
        for g in &t.gpus {
            assert!(g.source.starts_with("https://"), "{g:?}");
        }
        for a in &t.apis {
            assert!(a.source.starts_with("https://"), "{a:?}");
            assert!(a.usd_per_1m_output >= a.usd_per_1m_input, "{a:?}");
        }
        let first = t.gpus[0].name.clone();
        let first_provider = t.gpus[0].provider.clone();
        let mine = PriceTable::parse(
            &format!(
                "[[gpu]]\nname = \"{}\"\nprovider = \"{first_provider}\"\nusd_per_hour = 0.01\nsource = \"invoice\"\n\
                 checked_on = \"2026-12-01\"\n\n[[api]]\nname = \"my-api\"\nprovider = \"me\"\n\
                 usd_per_1m_input = 0.1\nusd_per_1m_output = 0.2\nsource = \"s\"\nchecked_on = \"2026-12-01\"\n",
                first.to_lowercase()
            ),
            "mine.toml",
        )
        .unwrap();
        let n = t.apis.len();
        let merged = t.clone().overlay(mine);
        // The replaced row is now the cheapest of its name.
        assert_eq!(merged.gpu(&first).unwrap().usd_per_hour, 0.01);
        assert_eq!(
            merged
                .gpu(&format!("{first}@{first_provider}"))
                .unwrap()
                .usd_per_hour,
            0.01
        );
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert!(days_since("2026-01-01").unwrap() > 300);
        assert_eq!(merged.gpus.len(), t.gpus.len());
        assert_eq!(merged.apis.len(), n + 1);
        let e = merged.gpu("TPU-v9").unwrap_err().to_string();
        assert!(e.contains(&first) && e.contains("--prices"), "{e}");
        for (text, needle) in [
            ("[[gpu]]\nname = \"x\"\nprovider = \"p\"\nusd_per_hour = -1.0\nsource = \"s\"\nchecked_on = \"2026-01-01\"\n", "≥ 0"),
            ("[[gpu]]\nname = \"x\"\nprovider = \"p\"\nusd_per_hour = 1.0\nsource = \"s\"\nchecked_on = \"last week\"\n", "YYYY-MM-DD"),
            ("[[gpu]]\nname = \"x\"\nprovider = \"p\"\nusd_per_hour = 1.0\nsource = \"s\"\nchecked_on = \"2026-01-01\"\ncolour = 1\n", "colour"),
        ] {
            let e = PriceTable::parse(text, "f.toml").unwrap_err().to_string();
            assert!(e.contains("f.toml") && e.contains(needle), "{e}");
        }
    }
}
